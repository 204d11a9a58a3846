//! The TLS metrics: handshake failures, reloads, and the loaded certificates' expiry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub listener: &'static str,
    /// `timeout` (the handshake did not finish in time) or `error` (refused or broken).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub listener: &'static str,
    /// `ok` or `error` (the previous certificate stays).
    pub result: &'static str,
}

/// Shared by every TLS listener of a node; the families are handles, registered once.
#[derive(Clone, Default)]
pub struct TlsMetrics {
    pub handshake_failures: Family<FailureLabels, Counter>,
    pub reloads: Family<ReloadLabels, Counter>,
    pub expiry: Family<ListenerLabel, Gauge>,
}

impl TlsMetrics {
    pub fn register(&self, metrics: &crate::core::metrics::Metrics) {
        metrics.register(
            "tls_handshake_failures",
            "TLS handshakes that failed (reason: error) or did not finish in time (reason: timeout)",
            self.handshake_failures.clone(),
        );
        metrics.register(
            "tls_reloads",
            "Certificate reloads (file change or reload call); result=error keeps the previous certificate",
            self.reloads.clone(),
        );
        metrics.register(
            "tls_certificate_expiry_timestamp_seconds",
            "Not-after time (Unix seconds) of the certificate each TLS listener serves",
            self.expiry.clone(),
        );
    }
}
