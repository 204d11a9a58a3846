//! Upstream feed bridges: each `[[feeds]]` entry is consumed by exactly one node of the cluster
//! (the holder of the feed's lease), mapped to channels and published through the node.
//!
//! Leadership: a runner takes the lease `feed:<name>`, renews it every third of its TTL, and
//! stops reading upstream the moment its lease may have lapsed (its local deadline passed or a
//! renewal found another holder). Every publication carries the lease's fencing token, checked
//! where publications enter the hub, so a leader that was frozen past its lease (GC pause,
//! SIGSTOP) and wakes up with messages in hand cannot publish them.

pub mod mapping;
pub mod source;
pub mod upstream;

use crate::brokers::leases::LeaseStore;
use crate::config::{FeedConfig, FeedPayload};
use crate::node::{Node, PublishError};
use async_trait::async_trait;
use mapping::{Mapped, Mapping, Skip, Template};
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why a feed publication was not made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FeedPublishError {
    /// A newer lease holder exists: this runner must stop.
    #[error("fenced: a newer leader holds the feed")]
    Fenced,
    /// Over `channel.max_publication_bytes`: dropped, counted, the feed goes on.
    #[error("publication of {size} bytes is over channel.max_publication_bytes ({limit})")]
    TooLarge { size: usize, limit: usize },
    #[error("publish failed: {0}")]
    Failed(String),
}

/// Where a feed's publications go (the node; tests use a recorder).
#[async_trait]
pub trait FeedSink: Send + Sync {
    /// `valid_until`: the lease's local deadline, checked after the store confirmed the token and
    /// right before publishing, so a leader frozen in between publishes nothing when it wakes.
    async fn publish(
        &self,
        lease: &str,
        token: u64,
        valid_until: Instant,
        mapped: Mapped,
    ) -> Result<(), FeedPublishError>;
}

#[async_trait]
impl FeedSink for Node {
    async fn publish(
        &self,
        lease: &str,
        token: u64,
        valid_until: Instant,
        mapped: Mapped,
    ) -> Result<(), FeedPublishError> {
        // Refused once a newer holder of `lease` exists, or once the lease's local deadline
        // passed, so a leader that stalled past its lease (also between the store's answer and
        // the publish) cannot publish what it still holds.
        match self.leases.is_current(lease, token).await {
            Ok(true) => {}
            Ok(false) => return Err(FeedPublishError::Fenced),
            Err(e) => return Err(FeedPublishError::Failed(e.to_string())),
        }
        if Instant::now() >= valid_until {
            return Err(FeedPublishError::Fenced);
        }
        let data = serde_json::value::to_raw_value(&mapped.data)
            .map_err(|e| FeedPublishError::Failed(e.to_string()))?;
        match Node::publish(self, &mapped.channel, data, None, mapped.tags, "feed").await {
            Ok(_) => Ok(()),
            Err(PublishError::TooLarge { size, limit }) => {
                Err(FeedPublishError::TooLarge { size, limit })
            }
            Err(PublishError::Refused(code)) => Err(FeedPublishError::Failed(format!("{code:?}"))),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeedLabel {
    pub feed: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FeedSkipLabel {
    pub feed: String,
    pub reason: &'static str,
}

/// Per-feed metrics, registered once per node.
#[derive(Clone, Default)]
pub struct FeedMetrics {
    pub messages: Family<FeedLabel, Counter>,
    pub publications: Family<FeedLabel, Counter>,
    pub skipped: Family<FeedSkipLabel, Counter>,
    pub publish_errors: Family<FeedLabel, Counter>,
    pub connects: Family<FeedLabel, Counter>,
    pub disconnects: Family<FeedLabel, Counter>,
    pub leader: Family<FeedLabel, Gauge>,
}

impl FeedMetrics {
    pub fn register(&self, metrics: &crate::core::metrics::Metrics) {
        metrics.register(
            "feed_messages",
            "Messages received from upstream feeds",
            self.messages.clone(),
        );
        metrics.register(
            "feed_publications",
            "Publications made from upstream feeds",
            self.publications.clone(),
        );
        metrics.register(
            "feed_skipped",
            "Upstream messages not published, by reason",
            self.skipped.clone(),
        );
        metrics.register(
            "feed_publish_errors",
            "Feed publications refused or failed",
            self.publish_errors.clone(),
        );
        metrics.register(
            "feed_connects",
            "Upstream connections made",
            self.connects.clone(),
        );
        metrics.register(
            "feed_disconnects",
            "Upstream connections lost",
            self.disconnects.clone(),
        );
        metrics.register(
            "feed_leader",
            "1 while this node holds the feed's lease",
            self.leader.clone(),
        );
    }
}

/// Builds a feed's mapping from its (validated) configuration.
pub fn mapping_of(cfg: &FeedConfig) -> Result<Mapping, mapping::TemplateError> {
    Ok(Mapping {
        text_payload: cfg.payload == FeedPayload::Text,
        items: cfg.items.clone(),
        matches: cfg
            .matches
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        channel: Template::parse(&cfg.channel)?,
        data: cfg.data.clone(),
        tags: cfg
            .tags
            .iter()
            .map(|(k, v)| Ok((k.clone(), Template::parse(v)?)))
            .collect::<Result<_, mapping::TemplateError>>()?,
    })
}

/// One feed's consumer on one node: competes for the lease, consumes while it holds it.
pub struct FeedRunner {
    pub cfg: FeedConfig,
    pub mapping: Mapping,
    /// This node's identity in the lease (unique per process life).
    pub holder: String,
    pub leases: Arc<dyn LeaseStore>,
    pub sink: Arc<dyn FeedSink>,
    pub metrics: FeedMetrics,
}

impl FeedRunner {
    pub fn lease_name(&self) -> String {
        format!("feed:{}", self.cfg.name)
    }

    fn label(&self) -> FeedLabel {
        FeedLabel {
            feed: self.cfg.name.clone(),
        }
    }

    /// Runs until `stop`; releases the lease on the way out so another node takes over at once.
    pub async fn run(self, stop: CancellationToken) {
        let lease = self.lease_name();
        let ttl = self.cfg.lease_ttl;
        let retry = ttl / 4;
        loop {
            if stop.is_cancelled() {
                return;
            }
            // The deadline counts from before the request: the store's TTL started no earlier.
            let asked = Instant::now();
            let token = match self.leases.acquire(&lease, &self.holder, ttl).await {
                Ok(Some(token)) => token,
                Ok(None) => {
                    sleep_or_stop(retry, &stop).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(feed = %self.cfg.name, error = %e, "feed lease unavailable");
                    sleep_or_stop(retry, &stop).await;
                    continue;
                }
            };
            tracing::info!(feed = %self.cfg.name, token, "feed leader");
            self.metrics.leader.get_or_create(&self.label()).set(1);
            let deadline = Arc::new(Mutex::new(asked + ttl));
            let lost = stop.child_token();
            tokio::select! {
                _ = self.renew(&lease, token, &deadline, &lost) => {}
                _ = self.consume(&lease, token, &deadline, &lost) => {}
            }
            lost.cancel();
            self.metrics.leader.get_or_create(&self.label()).set(0);
            if stop.is_cancelled() {
                let _ = self.leases.release(&lease, &self.holder).await;
                return;
            }
            tracing::warn!(feed = %self.cfg.name, token, "feed lease lost");
        }
    }

    /// Extends the lease every third of its TTL; cancels `lost` once it cannot be sure it holds it.
    async fn renew(
        &self,
        lease: &str,
        token: u64,
        deadline: &Mutex<Instant>,
        lost: &CancellationToken,
    ) {
        let ttl = self.cfg.lease_ttl;
        loop {
            sleep_or_stop(ttl / 3, lost).await;
            if lost.is_cancelled() {
                return;
            }
            let asked = Instant::now();
            match self.leases.acquire(lease, &self.holder, ttl).await {
                Ok(Some(t)) if t == token => *deadline.lock() = asked + ttl,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(feed = %self.cfg.name, error = %e, "feed lease renewal failed");
                    if Instant::now() >= *deadline.lock() {
                        break;
                    }
                }
            }
        }
        lost.cancel();
    }

    /// Connects and reconnects (with backoff) while the lease is held.
    async fn consume(
        &self,
        lease: &str,
        token: u64,
        deadline: &Mutex<Instant>,
        lost: &CancellationToken,
    ) {
        let label = self.label();
        let mut backoff = self.cfg.reconnect_min;
        loop {
            let started = Instant::now();
            if let Err(e) = self.connection(lease, token, deadline, lost).await {
                self.metrics.disconnects.get_or_create(&label).inc();
                tracing::warn!(feed = %self.cfg.name, error = %e, "feed connection ended");
            }
            if lost.is_cancelled() {
                return;
            }
            if started.elapsed() > Duration::from_secs(10) {
                backoff = self.cfg.reconnect_min;
            }
            sleep_or_stop(jitter(backoff), lost).await;
            if lost.is_cancelled() {
                return;
            }
            backoff = (backoff * 2).min(self.cfg.reconnect_max);
        }
    }

    /// One upstream connection: `Ok` when the lease was lost (stop), `Err` when it failed.
    async fn connection(
        &self,
        lease: &str,
        token: u64,
        deadline: &Mutex<Instant>,
        lost: &CancellationToken,
    ) -> Result<(), upstream::UpstreamError> {
        let label = self.label();
        let mut conn = tokio::select! {
            _ = lost.cancelled() => return Ok(()),
            c = source::open(&self.cfg) => c?,
        };
        self.metrics.connects.get_or_create(&label).inc();
        tracing::info!(feed = %self.cfg.name, kind = %self.cfg.kind, "feed connected");
        loop {
            let message = tokio::select! {
                _ = lost.cancelled() => break,
                message = conn.next() => message?,
            };
            if Instant::now() >= *deadline.lock() {
                // The lease may have lapsed while this process was not running (frozen, paused):
                // drop what was read and let the leadership loop find out who holds it now.
                lost.cancel();
                break;
            }
            self.metrics.messages.get_or_create(&label).inc();
            // WebSocket upstreams enforce it while reading (and close); pub/sub sources deliver
            // whole messages, which are dropped here instead.
            if message.payload.len() > self.cfg.max_message_bytes {
                self.count_skip("too_large");
                tracing::warn!(
                    feed = %self.cfg.name,
                    source = %message.source,
                    bytes = message.payload.len(),
                    limit = self.cfg.max_message_bytes,
                    "feed message over max_message_bytes dropped"
                );
                continue;
            }
            match self.mapping.apply(&message.payload, &message.source) {
                Err(skip) => self.skipped(skip),
                Ok(list) => {
                    if !self.publish_all(lease, token, deadline, list, lost).await {
                        break;
                    }
                }
            }
        }
        conn.close().await;
        Ok(())
    }

    async fn publish_all(
        &self,
        lease: &str,
        token: u64,
        deadline: &Mutex<Instant>,
        list: Vec<Mapped>,
        lost: &CancellationToken,
    ) -> bool {
        let label = self.label();
        for mapped in list {
            let valid_until = *deadline.lock();
            match self.sink.publish(lease, token, valid_until, mapped).await {
                Ok(()) => {
                    self.metrics.publications.get_or_create(&label).inc();
                }
                Err(FeedPublishError::Fenced) => {
                    self.metrics.publish_errors.get_or_create(&label).inc();
                    lost.cancel();
                    return false;
                }
                Err(e @ FeedPublishError::TooLarge { .. }) => {
                    self.count_skip("too_large");
                    tracing::warn!(feed = %self.cfg.name, error = %e, "feed publication dropped");
                }
                Err(FeedPublishError::Failed(e)) => {
                    self.metrics.publish_errors.get_or_create(&label).inc();
                    tracing::warn!(feed = %self.cfg.name, error = %e, "feed publication failed");
                }
            }
        }
        true
    }

    fn skipped(&self, skip: Skip) {
        let reason = match skip {
            Skip::NotJson => "not_json",
            Skip::Unmatched => "unmatched",
            Skip::Unmapped => "unmapped",
        };
        self.count_skip(reason);
    }

    fn count_skip(&self, reason: &'static str) {
        self.metrics
            .skipped
            .get_or_create(&FeedSkipLabel {
                feed: self.cfg.name.clone(),
                reason,
            })
            .inc();
    }
}

async fn sleep_or_stop(d: Duration, stop: &CancellationToken) {
    tokio::select! {
        _ = stop.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

/// 75–125 % of `d`, so nodes that lost one upstream together do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    let factor = 0.75 + rand::random::<f64>() * 0.5;
    d.mul_f64(factor)
}

/// Starts a runner per configured feed on this node; they stop with the node.
pub fn start(node: &Arc<Node>) -> Vec<JoinHandle<()>> {
    if node.config().feeds.is_empty() {
        return Vec::new();
    }
    let metrics = FeedMetrics::default();
    metrics.register(&node.metrics);
    let mut tasks = Vec::new();
    for cfg in &node.config().feeds {
        let mapping = match mapping_of(cfg) {
            Ok(m) => m,
            Err(e) => {
                // Validated at load; kept as a log rather than a panic.
                tracing::error!(feed = %cfg.name, error = %e, "feed mapping invalid");
                continue;
            }
        };
        let runner = FeedRunner {
            cfg: cfg.clone(),
            mapping,
            holder: node.uid.clone(),
            leases: node.leases.clone(),
            sink: node.clone(),
            metrics: metrics.clone(),
        };
        tasks.push(tokio::spawn(runner.run(node.shutdown.child_token())));
    }
    tasks
}
