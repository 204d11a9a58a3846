//! The NATS broker: nodes sharing one NATS server or cluster (and one `broker.prefix`) are one
//! system.
//!
//! - Delivery: core NATS, one subject per channel (`<prefix>.ch.<base64url(channel)>`, so any
//!   channel name is one valid subject token), subscribed while the node has local subscribers of
//!   the channel, plus `<prefix>.control` for API commands that target users. Frames are
//!   [`wire`](crate::brokers::wire)'s, serialized once by the publishing node.
//! - History: one JetStream stream per prefix (`history.rs`): a publication on a channel with
//!   history is appended under the next offset (optimistic concurrency on the subject's last
//!   sequence), then its frame goes out on the core subject. Core frames of two publishers may
//!   cross, so each node puts them back in offset order per channel, waiting
//!   [`REORDER_WINDOW`] for a missing offset before telling the channel's subscribers of a gap
//!   (they recover from the stream). Conflation is refused by configuration.
//! - Presence and the node registry: JetStream KV buckets whose `max_age` is the entry TTL; the
//!   owning node rewrites its entries well within it, so a dead node's entries expire.
//! - Faults: async-nats reconnects (with our backoff) and resubscribes by itself. A probe (a
//!   message to ourselves through the server) runs every half second: readiness is "connected and
//!   the probe came back". When the node was ready and stops being so, publications may have been
//!   lost on the way; once ready again every local channel's subscribers are told
//!   ([`BrokerHandler::handle_gap`]).
//!
//! The files, by job: `subjects.rs` (names), `supervisor.rs` (connection readiness),
//! `delivery.rs` (subject messages to the node, in order), `broker.rs` (the
//! [`Broker`](crate::brokers::Broker) trait), `history.rs` (the JetStream stream), `kv.rs` (the
//! KV buckets), `presence.rs`, `registry.rs` (the node registry) and `leases.rs`.

mod broker;
mod delivery;
mod history;
mod kv;
pub mod leases;
mod presence;
mod registry;
mod subjects;
mod supervisor;

pub use leases::NatsLeases;
pub use subjects::{delivery_subject, history_subject};

use crate::brokers::presence_ledger::PresenceLedger;
use crate::brokers::{unavailable, BrokerError, BrokerHandler, NodeEntry};
use crate::config::BrokerConfig;
use crate::core::metrics::Metrics;
use bytes::Bytes;
use futures_util::StreamExt;
use history::{HistoryStore, Order};
use kv::Buckets;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use subjects::Subjects;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The history stream's name for a broker prefix (tests delete it), and the headers of a stored
/// publication (tests store one the way a publisher that crashed before its core publish would).
pub use history::{
    stream_name as history_stream_name, EPOCH_HEADER as HISTORY_EPOCH_HEADER,
    OFFSET_HEADER as HISTORY_OFFSET_HEADER,
};

/// How long a node holds a publication whose predecessors have not arrived (another publisher's
/// core frame may still be on its way) before reporting a gap.
pub const REORDER_WINDOW: Duration = Duration::from_millis(150);

struct Inner {
    config: BrokerConfig,
    subjects: Subjects,
    /// Names this node's probe subject (a node restarted in the same process gets a new one).
    uid: String,
    client: OnceLock<async_nats::Client>,
    /// JetStream on `client` (history).
    js: OnceLock<async_nats::jetstream::Context>,
    history: HistoryStore,
    /// Per channel with local subscribers: offset order of delivered publications.
    orders: Mutex<HashMap<String, Order>>,
    /// The KV buckets, once found or created (JetStream on).
    buckets: Mutex<Option<Buckets>>,
    /// Channel → the task reading its subscription (aborting it unsubscribes).
    channels: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Serializes subscribe/unsubscribe so an unsubscribe never overtakes a later subscribe.
    subscribe_ops: tokio::sync::Mutex<()>,
    /// Set by connection events: the TCP connection is up.
    connected: AtomicBool,
    ready: AtomicBool,
    /// Publications may have been lost since the node was last ready (outage, slow consumer).
    gap: AtomicBool,
    /// Wakes the supervisor on a connection event.
    wake: tokio::sync::Notify,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    metrics: OnceLock<Arc<Metrics>>,
    /// This node's presence entries (info JSON), rewritten while it lives.
    local_presence: PresenceLedger<Bytes>,
    /// This node's last registry entry, removed on close (and all `info` shows without JetStream).
    entry: Mutex<Option<NodeEntry>>,
    stop: CancellationToken,
    /// Set by [`NatsBroker::abandon`]: behave like a crashed process (no cleanup, no commands).
    dead: AtomicBool,
}

/// See the module documentation. Cloning shares the broker.
#[derive(Clone)]
pub struct NatsBroker {
    inner: Arc<Inner>,
}

impl NatsBroker {
    pub fn new(config: &BrokerConfig) -> Result<NatsBroker, BrokerError> {
        for url in &config.nats_urls {
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| unavailable(format!("broker.nats_urls: {url:?}: {e}")))?;
        }
        Ok(NatsBroker {
            inner: Arc::new(Inner {
                subjects: Subjects {
                    prefix: config.prefix.clone(),
                },
                uid: uuid::Uuid::new_v4().simple().to_string(),
                client: OnceLock::new(),
                js: OnceLock::new(),
                history: HistoryStore::new(&config.prefix, config.command_timeout),
                orders: Mutex::new(HashMap::new()),
                buckets: Mutex::new(None),
                channels: Mutex::new(HashMap::new()),
                subscribe_ops: tokio::sync::Mutex::new(()),
                connected: AtomicBool::new(false),
                ready: AtomicBool::new(false),
                gap: AtomicBool::new(false),
                wake: tokio::sync::Notify::new(),
                handler: OnceLock::new(),
                metrics: OnceLock::new(),
                local_presence: PresenceLedger::default(),
                entry: Mutex::new(None),
                stop: CancellationToken::new(),
                dead: AtomicBool::new(false),
                config: config.clone(),
            }),
        })
    }

    /// Connects in the background and starts the supervisor. Call after the handler is set.
    pub fn start(&self) {
        tokio::spawn(supervisor::supervise(self.inner.clone()));
    }

    /// Test hook: stop like a killed process — subscriptions and connection dropped, nothing
    /// cleaned up, every later operation fails. What the node left in NATS must expire by itself.
    pub fn abandon(&self) {
        let inner = &self.inner;
        inner.dead.store(true, Ordering::SeqCst);
        inner.ready.store(false, Ordering::SeqCst);
        inner.stop.cancel();
        for (_, task) in inner.channels.lock().drain() {
            task.abort();
        }
        if let Some(client) = inner.client.get().cloned() {
            tokio::spawn(async move {
                let _ = client.drain().await;
            });
        }
    }
}

impl Inner {
    fn client(&self) -> Result<&async_nats::Client, BrokerError> {
        if self.dead.load(Ordering::Relaxed) {
            return Err(unavailable("node stopped"));
        }
        self.client
            .get()
            .ok_or_else(|| unavailable("not connected to NATS"))
    }

    fn ready_client(&self) -> Result<&async_nats::Client, BrokerError> {
        let client = self.client()?;
        if !self.ready.load(Ordering::SeqCst) {
            return Err(unavailable("not connected to NATS"));
        }
        Ok(client)
    }

    fn buckets(&self) -> Result<Buckets, BrokerError> {
        if self.dead.load(Ordering::Relaxed) {
            return Err(unavailable("node stopped"));
        }
        self.buckets
            .lock()
            .clone()
            .ok_or_else(|| unavailable("NATS JetStream buckets not available"))
    }

    /// Publishes with the command timeout (async-nats queues while disconnected; a node must not
    /// report success for a message that sits in a queue of a dead connection, hence the ready
    /// check before).
    async fn publish(&self, subject: String, payload: Bytes) -> Result<(), BrokerError> {
        let client = self.ready_client()?;
        match tokio::time::timeout(
            self.config.command_timeout,
            client.publish(subject, payload),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable("NATS publish timed out")),
        }
    }

    /// One round trip through the server on this connection: the server handles a connection's
    /// commands in order, so whatever was sent before (a SUB) is in effect when this returns.
    async fn barrier(&self, client: &async_nats::Client) -> Result<(), BrokerError> {
        let inbox = client.new_inbox();
        let round_trip = async {
            let mut sub = client.subscribe(inbox.clone()).await.map_err(unavailable)?;
            client
                .publish(inbox, Bytes::new())
                .await
                .map_err(unavailable)?;
            client.flush().await.map_err(unavailable)?;
            sub.next()
                .await
                .map(|_| ())
                .ok_or_else(|| unavailable("probe subscription closed"))
        };
        tokio::time::timeout(self.config.command_timeout, round_trip)
            .await
            .map_err(|_| unavailable("NATS round trip timed out"))?
    }

    fn jetstream(&self) -> Result<async_nats::jetstream::Context, BrokerError> {
        let client = self.ready_client()?;
        if !self.config.nats_jetstream {
            return Err(unavailable(
                "history on NATS needs broker.nats_jetstream = true",
            ));
        }
        Ok(self
            .js
            .get_or_init(|| async_nats::jetstream::new(client.clone()))
            .clone())
    }

    fn set_ready(&self, ready: bool) {
        let was = self.ready.swap(ready, Ordering::SeqCst);
        if was && !ready {
            // Whatever was published from now until the next ready moment may not reach us.
            self.gap.store(true, Ordering::SeqCst);
            tracing::warn!("nats broker: not ready");
        }
        if let Some(metrics) = self.metrics.get() {
            metrics.broker_ready.set(i64::from(ready));
        }
    }
}
