//! Everything one Herald node shares between its connections, its API and its background tasks.

mod admission;
mod keys;
mod members;

pub use admission::{AppSlot, ConnectionSlot};
pub use keys::TokenKeys;

use crate::brokers::{Broker, BrokerError, BrokerHealth, PresenceStore};
use crate::config::{Config, NamespaceOptions};
use crate::core::channel::Namespaces;
use crate::core::clock::unix_millis;
use crate::core::history::HistoryOptions;
use crate::core::hub::Hub;
use crate::core::metrics::{Metrics, SourceLabel};
use crate::core::pointer_key::pointer_key;
use herald_protocol::{single_line, ClientInfo, ErrorCode, Publication, StreamPosition};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

pub struct Node {
    /// Swapped whole by a reload (`app/reload.rs`); read it through [`Node::config`].
    config: arc_swap::ArcSwap<Config>,
    /// Unique per process life, so a restarted node is never mistaken for its previous life.
    pub uid: String,
    pub name: String,
    started: Instant,
    pub namespaces: Arc<Namespaces>,
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn PresenceStore>,
    /// Leases of singleton work (feed consumers), shared through the broker in a cluster.
    pub leases: Arc<dyn crate::brokers::leases::LeaseStore>,
    /// Token keys, with the previous ones kept for `client.token.rotation_grace` after a reload.
    pub verifier: TokenKeys,
    pub metrics: Arc<Metrics>,
    /// Backend proxy hooks and webhooks (docs/hooks.md).
    pub hooks: crate::hooks::Hooks,
    /// Cancelled when the node starts shutting down: connections close with `shutdown`.
    pub shutdown: CancellationToken,
    /// Open WebSocket connections (including those still in `connect`): see [`ConnectionSlot`].
    connections: AtomicUsize,
    ready: AtomicBool,
    /// The public listener's address, shown in the node registry.
    address: std::sync::OnceLock<String>,
    /// New-connection token buckets per client IP (`client.connection_rate_per_ip`).
    ip_buckets: parking_lot::Mutex<
        std::collections::HashMap<std::net::IpAddr, crate::core::rate::TokenBucket>,
    >,
    seq: AtomicU64,
    /// Open connections per Pusher app id (`pusher.apps[].max_connections`).
    app_connections: parking_lot::Mutex<std::collections::HashMap<String, usize>>,
}

impl Node {
    pub fn new(
        config: Config,
        verifier: TokenKeys,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn PresenceStore>,
        leases: Arc<dyn crate::brokers::leases::LeaseStore>,
    ) -> Arc<Node> {
        let metrics = Arc::new(Metrics::new());
        metrics
            .config_last_reload_success
            .set(crate::core::clock::unix_secs());
        // Both outcomes exist from the start, so `increase()` sees the first refused reload.
        for result in ["ok", "refused"] {
            let _ = metrics
                .config_reloads
                .get_or_create(&crate::core::metrics::ResultLabel { result });
        }
        let namespaces = Arc::new(Namespaces::new(&config.channel));
        let hub = Hub::new(metrics.clone(), namespaces.clone());
        broker.set_handler(hub.clone(), metrics.clone());
        let name = if config.node.name.is_empty() {
            format!("{}-{}", hostname(), std::process::id())
        } else {
            config.node.name.clone()
        };
        let hooks = crate::hooks::Hooks::new(&config, metrics.clone(), &name);
        Arc::new(Node {
            hooks,
            namespaces,
            uid: uuid::Uuid::new_v4().to_string(),
            name,
            started: Instant::now(),
            hub,
            broker,
            presence,
            leases,
            verifier,
            metrics,
            shutdown: CancellationToken::new(),
            connections: AtomicUsize::new(0),
            ready: AtomicBool::new(true),
            ip_buckets: parking_lot::Mutex::new(std::collections::HashMap::new()),
            address: std::sync::OnceLock::new(),
            seq: AtomicU64::new(1),
            app_connections: parking_lot::Mutex::new(std::collections::HashMap::new()),
            config: arc_swap::ArcSwap::from_pointee(config),
        })
    }

    /// The configuration in force. Read it per use: a reload swaps it (keep the guard short, not
    /// across an `.await` that may last).
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// Puts a new configuration in force (the reload checked it; restart-only fields kept).
    pub fn replace_config(&self, config: Config) {
        self.namespaces.replace(&config.channel);
        let (old, new) = (&self.config().client, &config.client);
        if (old.connection_rate_per_ip, old.connection_burst_per_ip)
            != (new.connection_rate_per_ip, new.connection_burst_per_ip)
        {
            // Buckets are sized at their first use: start them over at the new rate.
            self.ip_buckets.lock().clear();
        }
        self.config.store(Arc::new(config));
    }

    /// This node's entry in the cluster registry (the `info` API).
    pub fn entry(&self) -> crate::brokers::NodeEntry {
        crate::brokers::NodeEntry {
            uid: self.uid.clone(),
            name: self.name.clone(),
            address: self.address.get().cloned().unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            num_clients: self.hub.num_clients(),
            num_users: self.hub.num_users(),
            num_channels: self.hub.num_channels(),
            num_subs: self.hub.num_subscriptions(),
            uptime: self.started.elapsed().as_secs(),
        }
    }

    /// Starts the node's stop: whatever waits on `shutdown` ends, and every connection closes
    /// with `shutdown`.
    pub fn stop(&self) {
        self.shutdown.cancel();
        self.hub.stop_sessions();
    }

    /// Ready to serve: not stopping, and the broker connected (possibly degraded: a lost Redis
    /// Cluster shard fails only its own channels, so the node stays in the load balancer).
    pub fn is_ready(&self) -> bool {
        self.readiness() != BrokerHealth::Down
    }

    /// What `/ready` reports: [`BrokerHealth::Down`] also while the node is stopping.
    pub fn readiness(&self) -> BrokerHealth {
        if !self.ready.load(Ordering::Relaxed) || self.shutdown.is_cancelled() {
            return BrokerHealth::Down;
        }
        self.broker.health()
    }

    /// The public listener's address, set once it is bound.
    pub fn set_address(&self, address: String) {
        let _ = self.address.set(address);
    }

    /// Stops reporting ready (`/ready` 503) before the node stops, so load balancers move on.
    pub fn stop_being_ready(&self) {
        self.ready.store(false, Ordering::Relaxed);
    }

    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    pub fn history_options(&self, ns: &NamespaceOptions) -> Option<HistoryOptions> {
        ns.history_enabled().then_some(HistoryOptions {
            size: ns.history_size,
            ttl: ns.history_ttl,
            meta_ttl: self.config().channel.history_meta_ttl,
            max_keys: if ns.conflated() {
                ns.conflation_max_keys
            } else {
                0
            },
        })
    }

    /// The single publish path used by clients, the API, devices and feeds.
    pub async fn publish(
        &self,
        channel: &str,
        data: Box<serde_json::value::RawValue>,
        info: Option<ClientInfo>,
        tags: std::collections::BTreeMap<String, String>,
        source: &'static str,
    ) -> Result<StreamPosition, PublishError> {
        self.publish_with(channel, data, info, tags, source, false)
            .await
    }

    /// `publish`, optionally keeping the publication out of history (a publish proxy's
    /// `skip_history`). Every source passes here, so the size rule holds for all of them.
    pub async fn publish_with(
        &self,
        channel: &str,
        data: Box<serde_json::value::RawValue>,
        info: Option<ClientInfo>,
        tags: std::collections::BTreeMap<String, String>,
        source: &'static str,
        skip_history: bool,
    ) -> Result<StreamPosition, PublishError> {
        let ns = self.namespaces.resolve(channel)?;
        let publication = Publication {
            data: single_line(data),
            info,
            offset: 0,
            tags,
            time: unix_millis(),
        };
        let limit = self.config().max_publication_bytes();
        let size = publication_size(&publication);
        if size > limit {
            self.metrics
                .publications_too_large
                .get_or_create(&SourceLabel { source })
                .inc();
            return Err(PublishError::TooLarge { size, limit });
        }
        let history = if skip_history {
            None
        } else {
            self.history_options(&ns)
        };
        let key = conflation_key(&ns, &publication);
        let position = self
            .broker
            .publish(channel, publication, key.as_deref(), history)
            .await
            .map_err(broker_error)?;
        self.metrics
            .publications
            .get_or_create(&SourceLabel { source })
            .inc();
        Ok(position)
    }
}

/// Why a publication was not made. Callers map it to their own error (API and client: code and
/// message; feeds: a counted drop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("limit exceeded: publication of {size} bytes is over channel.max_publication_bytes ({limit})")]
    TooLarge { size: usize, limit: usize },
    #[error("{}", .0.message())]
    Refused(ErrorCode),
}

impl PublishError {
    pub fn code(&self) -> ErrorCode {
        match self {
            PublishError::TooLarge { .. } => ErrorCode::LimitExceeded,
            PublishError::Refused(code) => *code,
        }
    }
}

impl From<ErrorCode> for PublishError {
    fn from(code: ErrorCode) -> Self {
        PublishError::Refused(code)
    }
}

impl From<PublishError> for herald_protocol::ReplyError {
    fn from(e: PublishError) -> Self {
        let code = e.code();
        herald_protocol::ReplyError {
            code: code.code(),
            message: e.to_string(),
            temporary: code.temporary(),
        }
    }
}

/// What a publication weighs against `channel.max_publication_bytes`: its data, tags and client
/// info as they are delivered (the fixed framing around them is small and bounded).
pub fn publication_size(publication: &Publication) -> usize {
    let tags: usize = publication
        .tags
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    let info = publication.info.as_ref().map_or(0, |i| {
        i.user.len()
            + i.client.len()
            + i.conn_info.as_ref().map_or(0, |j| j.get().len())
            + i.chan_info.as_ref().map_or(0, |j| j.get().len())
    });
    publication.data.get().len() + tags + info
}

/// The conflation key of a publication in a conflated namespace: the value at the JSON pointer in
/// its data (strings as they are, other values as JSON text) or the named tag. `None` when the
/// namespace does not conflate or the publication has no such key (it is then never superseded).
pub fn conflation_key(ns: &NamespaceOptions, publication: &Publication) -> Option<String> {
    if !ns.conflated() {
        return None;
    }
    if let Some(tag) = ns.conflation_key.strip_prefix("tag:") {
        return publication.tags.get(tag).cloned();
    }
    // Read in one pass without building the data's tree: it runs for every publication.
    pointer_key(publication.data.get(), &ns.conflation_key)
}

pub fn broker_error(e: BrokerError) -> ErrorCode {
    match e {
        BrokerError::Unrecoverable => ErrorCode::UnrecoverablePosition,
        BrokerError::Unavailable(reason) => {
            tracing::warn!(%reason, "broker unavailable");
            ErrorCode::Internal
        }
        BrokerError::ShardUnavailable(reason) => {
            tracing::debug!(%reason, "broker shard unavailable");
            ErrorCode::ShardUnavailable
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "herald".into())
}
