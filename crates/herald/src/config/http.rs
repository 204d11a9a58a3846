//! `[http]`: the listeners and the WebSocket handshake's `Origin` policy.

use super::error::{field, ConfigError};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Public listener: WebSocket endpoint, health, and (unless `internal_listen` is set) API and metrics.
    pub listen: String,
    /// When set, the server API and `/metrics` are served only here.
    pub internal_listen: String,
    /// Bind with SO_REUSEPORT so several Herald processes share one port.
    pub reuse_port: bool,
    /// How long a graceful shutdown waits for clients to leave.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// On a graceful stop (SIGTERM, or after handing the listeners to a new process), the clients
    /// are told to reconnect (3001) at random moments spread over this period, so the node that
    /// takes them is not hit by all reconnects at once. `0s`: all at once.
    #[serde(with = "humantime_serde")]
    pub drain_period: Duration,
    /// SIGUSR2: how long the new process may take to become ready before the old one gives up,
    /// stops it and keeps serving.
    #[serde(with = "humantime_serde")]
    pub upgrade_timeout: Duration,
    /// Allowed `Origin` values for WebSocket handshakes, streams and `/emulation` (and their CORS
    /// answer): `*` or exact origins; empty allows all.
    /// Required (without `*`) when the proxy hooks forward Cookie or Authorization.
    pub allowed_origins: Vec<String>,
    /// PEM certificate chain (leaf first) and private key: the public listener serves https/wss.
    /// Reloaded when the files change (docs/operations.md#tls).
    pub tls_cert: String,
    pub tls_key: String,
    /// The internal listener's pair; when empty, the internal listener uses `tls_cert`/`tls_key`.
    pub internal_tls_cert: String,
    pub internal_tls_key: String,
    /// A TLS client must finish its handshake within this, or it is dropped.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:8000".into(),
            internal_listen: String::new(),
            reuse_port: false,
            shutdown_timeout: Duration::from_secs(10),
            drain_period: Duration::ZERO,
            upgrade_timeout: Duration::from_secs(30),
            allowed_origins: Vec::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            internal_tls_cert: String::new(),
            internal_tls_key: String::new(),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl HttpConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        parse_addr(&self.listen).map_err(|m| field("http.listen", m))?;
        if !self.internal_listen.is_empty() {
            parse_addr(&self.internal_listen).map_err(|m| field("http.internal_listen", m))?;
        }
        pair_given(
            "http.tls_cert",
            &self.tls_cert,
            "http.tls_key",
            &self.tls_key,
        )?;
        pair_given(
            "http.internal_tls_cert",
            &self.internal_tls_cert,
            "http.internal_tls_key",
            &self.internal_tls_key,
        )?;
        if !self.internal_tls_cert.is_empty() && self.internal_listen.is_empty() {
            return Err(field(
                "http.internal_tls_cert",
                "is set but http.internal_listen is not",
            ));
        }
        if self.tls_handshake_timeout.is_zero() {
            return Err(super::error::positive("http.tls_handshake_timeout"));
        }
        if self.upgrade_timeout.is_zero() {
            return Err(field("http.upgrade_timeout", "must be above 0"));
        }
        Ok(())
    }

    /// Public listener address.
    pub fn listen_addr(&self) -> SocketAddr {
        parse_addr(&self.listen).unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 8000)))
    }

    /// Internal listener address, when configured.
    pub fn internal_addr(&self) -> Option<SocketAddr> {
        if self.internal_listen.is_empty() {
            return None;
        }
        parse_addr(&self.internal_listen).ok()
    }
}

/// A certificate and its key are given together or not at all (the files are read at start).
pub(super) fn pair_given(
    cert_field: &str,
    cert: &str,
    key_field: &str,
    key: &str,
) -> Result<(), ConfigError> {
    match (cert.is_empty(), key.is_empty()) {
        (false, true) => Err(field(key_field, format!("is required with {cert_field}"))),
        (true, false) => Err(field(cert_field, format!("is required with {key_field}"))),
        _ => Ok(()),
    }
}

/// An `IP:PORT` listen address (host names are refused: a listener binds an address).
pub(super) fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an address like 0.0.0.0:8000"))
}

#[cfg(test)]
mod tests {
    use crate::config::load::tests::load_str;

    #[test]
    fn listen_addresses_are_validated() {
        let c = load_str("", &[], &[]).unwrap();
        assert_eq!(c.http.listen, "0.0.0.0:8000");
        assert_eq!(c.listen_addr().port(), 8000);
        assert_eq!(c.internal_addr(), None);
        let e = load_str("[http]\nlisten = \"nowhere\"\n", &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("http.listen"));
        let e = load_str("[http]\ninternal_listen = \"localhost:9000\"\n", &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("http.internal_listen"));
    }

    #[test]
    fn tls_pairs_are_given_whole() {
        for (text, name) in [
            ("tls_cert = \"c.pem\"", "http.tls_key"),
            ("tls_key = \"k.pem\"", "http.tls_cert"),
            ("internal_tls_key = \"k.pem\"", "http.internal_tls_cert"),
            (
                "internal_tls_cert = \"c.pem\"\ninternal_tls_key = \"k.pem\"",
                "http.internal_tls_cert",
            ),
            (
                "tls_handshake_timeout = \"0s\"",
                "http.tls_handshake_timeout",
            ),
        ] {
            let e = load_str(&format!("[http]\n{text}\n"), &[], &[]).unwrap_err();
            assert_eq!(e.field(), Some(name), "{e}");
        }
        let c = load_str(
            "[http]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n",
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(c.http.tls_cert, "c.pem");
        for (text, name) in [
            ("protocols = [\"osmand\"]", "devices.tls.protocols[0]"),
            ("cert = \"c.pem\"\nkey = \"k.pem\"", "devices.tls.protocols"),
            ("protocols = [\"gt06\"]", "devices.tls.cert"),
            (
                "cert = \"c.pem\"\nprotocols = [\"gt06\"]",
                "devices.tls.key",
            ),
        ] {
            let e = load_str(&format!("[devices.tls]\n{text}\n"), &[], &[]).unwrap_err();
            assert_eq!(e.field(), Some(name), "{e}");
        }
    }

    #[test]
    fn drain_period_and_upgrade_timeout() {
        let c = load_str("", &[], &[]).unwrap();
        assert!(c.http.drain_period.is_zero(), "all at once unless asked");
        let c = load_str("[http]\ndrain_period = \"10s\"\n", &[], &[]).unwrap();
        assert_eq!(c.http.drain_period, std::time::Duration::from_secs(10));
        let e = load_str("[http]\nupgrade_timeout = \"0s\"\n", &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("http.upgrade_timeout"));
    }
}
