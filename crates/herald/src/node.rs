//! Everything one Herald node shares between its connections, its API and its background tasks.

use crate::broker::{Broker, BrokerError, PresenceStore};
use crate::channel::Namespaces;
use crate::config::{Config, NamespaceOptions};
use crate::history::HistoryOptions;
use crate::hub::Hub;
use crate::metrics::{Metrics, SourceLabel};
use herald_auth::Verifier;
use herald_protocol::{single_line, ClientInfo, ErrorCode, Publication, StreamPosition};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

pub struct Node {
    pub config: Config,
    /// Unique per process life, so a restarted node is never mistaken for its previous life.
    pub uid: String,
    pub name: String,
    pub started: Instant,
    pub namespaces: Namespaces,
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn PresenceStore>,
    pub verifier: Verifier,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the node starts shutting down: connections close with `shutdown`.
    pub shutdown: CancellationToken,
    /// Open WebSocket connections (including those still in `connect`).
    pub connections: AtomicUsize,
    pub ready: AtomicBool,
    seq: AtomicU64,
}

impl Node {
    pub fn new(
        config: Config,
        verifier: Verifier,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceStore>,
    ) -> Arc<Node> {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(metrics.clone()));
        broker.set_handler(hub.clone());
        let name = if config.node.name.is_empty() {
            format!("{}-{}", hostname(), std::process::id())
        } else {
            config.node.name.clone()
        };
        Arc::new(Node {
            namespaces: Namespaces::new(&config.channel),
            uid: uuid::Uuid::new_v4().to_string(),
            name,
            started: Instant::now(),
            hub,
            broker,
            presence,
            verifier,
            metrics,
            shutdown: CancellationToken::new(),
            connections: AtomicUsize::new(0),
            ready: AtomicBool::new(true),
            seq: AtomicU64::new(1),
            config,
        })
    }

    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    pub fn history_options(&self, ns: &NamespaceOptions) -> Option<HistoryOptions> {
        ns.history_enabled().then_some(HistoryOptions {
            size: ns.history_size,
            ttl: ns.history_ttl,
            meta_ttl: self.config.channel.history_meta_ttl,
        })
    }

    /// The single publish path used by clients, the API and (later) devices and feeds.
    pub async fn publish(
        &self,
        channel: &str,
        data: Box<serde_json::value::RawValue>,
        info: Option<ClientInfo>,
        tags: std::collections::BTreeMap<String, String>,
        source: &'static str,
    ) -> Result<StreamPosition, ErrorCode> {
        let ns = self.namespaces.resolve(channel)?;
        let history = self.history_options(ns);
        let publication = Publication {
            data: single_line(data),
            info,
            offset: 0,
            tags,
            time: unix_millis(),
        };
        let position = self
            .broker
            .publish(channel, publication, history)
            .await
            .map_err(broker_error)?;
        self.metrics
            .publications
            .get_or_create(&SourceLabel { source })
            .inc();
        Ok(position)
    }
}

pub fn broker_error(e: BrokerError) -> ErrorCode {
    match e {
        BrokerError::Unrecoverable => ErrorCode::UnrecoverablePosition,
        BrokerError::Unavailable(reason) => {
            tracing::warn!(%reason, "broker unavailable");
            ErrorCode::Internal
        }
    }
}

pub fn unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn unix_secs() -> i64 {
    unix_millis() / 1000
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "herald".into())
}
