//! Native TLS for the HTTP listeners and chosen device listeners (rustls with ring; TLS 1.3 and
//! 1.2). Certificates are read at start (errors name the config field), and again when their files
//! change (polled every [`POLL_INTERVAL`]) or when [`Certificates::reload`] is called (SIGHUP).

mod certs;
mod endpoint;
mod expiry;
mod metrics;
mod socket;

pub use certs::Pair;
pub use endpoint::Endpoint;
pub use metrics::TlsMetrics;
pub use socket::Socket;

use crate::config::Config;
use std::sync::Arc;
use std::time::Duration;

/// How often the certificate files' modification times are checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// The TLS listeners of a node, each with its certificate.
#[derive(Default, Clone)]
pub struct Certificates {
    pub public: Option<Arc<Endpoint>>,
    pub internal: Option<Arc<Endpoint>>,
    pub devices: Option<Arc<Endpoint>>,
}

impl Certificates {
    /// Loads every pair the configuration names. The internal listener, when it has no pair of
    /// its own, serves the public pair.
    pub fn open(config: &Config, metrics: &TlsMetrics) -> Result<Certificates, String> {
        let http = &config.http;
        let pair = |cert_field, cert: &str, key_field, key: &str| Pair {
            cert_field,
            cert_path: cert.to_string(),
            key_field,
            key_path: key.to_string(),
        };
        let public_pair = (!http.tls_cert.is_empty()).then(|| {
            pair(
                "http.tls_cert",
                &http.tls_cert,
                "http.tls_key",
                &http.tls_key,
            )
        });
        let internal_pair = if config.internal_addr().is_none() {
            None
        } else if !http.internal_tls_cert.is_empty() {
            Some(pair(
                "http.internal_tls_cert",
                &http.internal_tls_cert,
                "http.internal_tls_key",
                &http.internal_tls_key,
            ))
        } else {
            public_pair.clone()
        };
        let tls = &config.devices.tls;
        let devices_pair = (config.devices.enabled && !tls.cert.is_empty())
            .then(|| pair("devices.tls.cert", &tls.cert, "devices.tls.key", &tls.key));
        let open = |listener, pair: Option<Pair>, http| {
            pair.map(|p| Endpoint::open(listener, p, http, metrics.clone()))
                .transpose()
        };
        Ok(Certificates {
            public: open("public", public_pair, true)?,
            internal: open("internal", internal_pair, true)?,
            devices: open("devices", devices_pair, false)?,
        })
    }

    fn all(&self) -> impl Iterator<Item = &Arc<Endpoint>> {
        [&self.public, &self.internal, &self.devices]
            .into_iter()
            .flatten()
    }

    /// Reloads every listener's certificate now. A listener whose files are bad keeps its
    /// certificate; the errors (each naming its field) are joined in the result.
    pub fn reload(&self) -> Result<(), String> {
        let errors: Vec<String> = self.all().filter_map(|e| e.reload().err()).collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Whether any listener speaks TLS.
    pub fn any(&self) -> bool {
        self.all().next().is_some()
    }

    /// Reloads a listener's certificate whenever its files change, until `stop`.
    pub async fn watch(self, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            for endpoint in self.all() {
                // Blocking file reads, rarely: off the async workers.
                let endpoint = endpoint.clone();
                let _ = tokio::task::spawn_blocking(move || endpoint.reload_if_changed()).await;
            }
        }
    }
}

/// `herald checkconfig`: every certificate pair the configuration names must load.
pub fn check(config: &Config) -> anyhow::Result<()> {
    Certificates::open(config, &TlsMetrics::default())
        .map(|_| ())
        .map_err(anyhow::Error::msg)
}
