//! One TLS listener's certificate and handshakes. The certificate sits behind an `ArcSwap` read by
//! rustls at each handshake: a reload changes what new handshakes get, while established
//! connections keep the keys they negotiated.

use super::certs::{Loaded, Pair, Stamp};
use super::metrics::{FailureLabels, ListenerLabel, ReloadLabels, TlsMetrics};
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// What a TLS listener serves to every new handshake.
#[derive(Debug)]
struct Current(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

pub struct Endpoint {
    /// `public`, `internal` or `devices`: the metrics' `listener` label.
    listener: &'static str,
    pair: Pair,
    current: Arc<Current>,
    acceptor: tokio_rustls::TlsAcceptor,
    /// The files as last seen by a poll or reload.
    stamp: parking_lot::Mutex<Stamp>,
    metrics: TlsMetrics,
}

impl Endpoint {
    /// Loads the pair (errors name the field) and builds the listener's TLS configuration: TLS 1.3
    /// and 1.2 with rustls' default cipher suites (ring), ALPN `http/1.1` when `http` is set.
    pub fn open(
        listener: &'static str,
        pair: Pair,
        http: bool,
        metrics: TlsMetrics,
    ) -> Result<Arc<Endpoint>, String> {
        let stamp = pair.stamp();
        let loaded = pair.load()?;
        let current = Arc::new(Current(ArcSwap::new(loaded.key.clone())));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("{}: {e}", pair.cert_field))?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        if http {
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        let endpoint = Endpoint {
            listener,
            pair,
            current,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            stamp: parking_lot::Mutex::new(stamp),
            metrics,
        };
        endpoint.set_expiry(&loaded);
        Ok(Arc::new(endpoint))
    }

    pub fn listener(&self) -> &'static str {
        self.listener
    }

    /// Reads the files again. On success new handshakes get the new certificate; on any error the
    /// previous one stays and the error (naming the field) is logged and returned.
    pub fn reload(&self) -> Result<(), String> {
        *self.stamp.lock() = self.pair.stamp();
        let result = self.pair.load();
        let label = |result| ReloadLabels {
            listener: self.listener,
            result,
        };
        match result {
            Ok(loaded) => {
                self.current.0.store(loaded.key.clone());
                self.set_expiry(&loaded);
                self.metrics.reloads.get_or_create(&label("ok")).inc();
                tracing::info!(
                    listener = self.listener,
                    cert = %self.pair.cert_path,
                    not_after = loaded.not_after,
                    "TLS certificate reloaded"
                );
                Ok(())
            }
            Err(e) => {
                self.metrics.reloads.get_or_create(&label("error")).inc();
                tracing::error!(
                    listener = self.listener,
                    error = %e,
                    "TLS certificate reload failed; keeping the previous certificate"
                );
                Err(e)
            }
        }
    }

    /// Reloads when either file changed (modification time or size) since it was last read.
    pub fn reload_if_changed(&self) {
        if self.pair.stamp() != *self.stamp.lock() {
            let _ = self.reload();
        }
    }

    /// The server side of the handshake, bounded by `timeout` (a client that connects and stays
    /// silent, or trickles its hello, is dropped then). Failures are counted, not logged: they are
    /// the client's doing.
    pub async fn accept(&self, tcp: TcpStream, timeout: Duration) -> Option<TlsStream<TcpStream>> {
        let reason = match tokio::time::timeout(timeout, self.acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => return Some(tls),
            Ok(Err(e)) => {
                tracing::debug!(listener = self.listener, error = %e, "TLS handshake failed");
                "error"
            }
            Err(_) => "timeout",
        };
        self.metrics
            .handshake_failures
            .get_or_create(&FailureLabels {
                listener: self.listener,
                reason,
            })
            .inc();
        None
    }

    fn set_expiry(&self, loaded: &Loaded) {
        let gauge = self.metrics.expiry.get_or_create(&ListenerLabel {
            listener: self.listener,
        });
        gauge.set(loaded.not_after.unwrap_or(0));
    }
}
