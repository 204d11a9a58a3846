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
        }
    }
}

impl HttpConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        parse_addr(&self.listen).map_err(|m| field("http.listen", m))?;
        if !self.internal_listen.is_empty() {
            parse_addr(&self.internal_listen).map_err(|m| field("http.internal_listen", m))?;
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
    fn drain_period_and_upgrade_timeout() {
        let c = load_str("", &[], &[]).unwrap();
        assert!(c.http.drain_period.is_zero(), "all at once unless asked");
        let c = load_str("[http]\ndrain_period = \"10s\"\n", &[], &[]).unwrap();
        assert_eq!(c.http.drain_period, std::time::Duration::from_secs(10));
        let e = load_str("[http]\nupgrade_timeout = \"0s\"\n", &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("http.upgrade_timeout"));
    }
}
