//! `[devices.tls]`: TLS on chosen TCP device listeners (trackers that speak TLS, or a TLS
//! terminating modem gateway).

use super::super::error::{field, ConfigError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceTlsConfig {
    /// PEM file with the certificate chain (leaf first) the listeners in `protocols` present.
    pub cert: String,
    /// PEM file with its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// The TCP listeners that speak TLS: any of "gt06", "h02", "teltonika", "jsonl". The others
    /// stay plain.
    pub protocols: Vec<String>,
}

/// The device listeners TLS may be put on (OsmAnd is HTTP: terminate it in front of Herald).
const TLS_PROTOCOLS: [&str; 4] = ["gt06", "h02", "teltonika", "jsonl"];

impl DeviceTlsConfig {
    /// Whether the listener of `protocol` speaks TLS.
    pub fn covers(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|p| p == protocol)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (i, p) in self.protocols.iter().enumerate() {
            if !TLS_PROTOCOLS.contains(&p.as_str()) {
                return Err(field(
                    format!("devices.tls.protocols[{i}]"),
                    format!("{p:?} is not one of {TLS_PROTOCOLS:?}"),
                ));
            }
        }
        super::super::http::pair_given(
            "devices.tls.cert",
            &self.cert,
            "devices.tls.key",
            &self.key,
        )?;
        match (self.cert.is_empty(), self.protocols.is_empty()) {
            (false, true) => Err(field(
                "devices.tls.protocols",
                "is empty: name the listeners that speak TLS, e.g. [\"gt06\", \"teltonika\"]",
            )),
            (true, false) => Err(field(
                "devices.tls.cert",
                "is required when devices.tls.protocols names listeners",
            )),
            _ => Ok(()),
        }
    }
}
