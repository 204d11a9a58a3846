//! The Redis broker: nodes sharing one Redis or one Redis Cluster (and one `broker.prefix`) are
//! one system. On a cluster, pub/sub is sharded (`SSUBSCRIBE`/`SPUBLISH`, see `conn.rs`) and
//! every key of a channel carries the channel as hash tag, so all of the below runs per shard.
//!
//! - Publications: one Lua script assigns the offset, appends to the channel's stream (trimmed to
//!   the history size), keeps the latest value per key for conflated channels and PUBLISHes the
//!   framed payload ([`wire`](crate::brokers::wire)) on the channel's pub/sub channel — atomically, so pub/sub order is
//!   offset order.
//! - Delivery: one pub/sub connection per node (per shard on a cluster), subscribed to a channel
//!   while the node has local subscribers of it, plus one control channel for API commands that
//!   target users.
//! - Presence and the node registry: a hash beside a zset of expiry times, refreshed by their
//!   owner, so entries of a dead node vanish within their TTL.
//! - Faults: a supervisor task owns both connections. Any failed or timed-out command tears them
//!   down; the node reports not ready, reconnects with backoff, resubscribes every local channel,
//!   and then proves for each channel that nothing was missed — or tells its subscribers
//!   ([`BrokerHandler::handle_gap`]) so they resubscribe and recover from history.
//! - Partial faults (a Redis Cluster): a lost shard (a primary without a replica to take over)
//!   fails only its own channels. A failed command wakes a probe of every primary instead of
//!   tearing the connection down; a primary that does not answer (or answers with the cluster
//!   down) is marked lost: commands for its slots fail at once with
//!   [`BrokerError::ShardUnavailable`], its channels are dropped and their subscribers told,
//!   and the broker reports [`BrokerHealth::Degraded`](crate::brokers::BrokerHealth::Degraded). When it serves again its channels are
//!   subscribed again and checked for gaps. A changed slot map (a failover, a slot moved) or a
//!   shard connection lost and restored by itself still rebuilds everything, as above.
//!
//! The files, by job: `keys.rs` (names), `scripts.rs` (Lua), `conn.rs` (a single Redis or a
//! cluster behind one connection type), `supervisor.rs` (connect, resubscribe, listen,
//! reconnect), `inbox.rs` (a connection's pub/sub traffic read and delivered in bursts),
//! `delivery.rs` (pub/sub to the node, gap checks), `cluster.rs` (shards lost and
//! returned), `broker.rs` (the [`Broker`](crate::brokers::Broker) trait), `history.rs`,
//! `expiring.rs` (expiring hashes), `presence.rs`, `registry.rs` (the node registry) and
//! `leases.rs`.

mod broker;
mod cluster;
mod conn;
mod delivery;
mod expiring;
mod history;
mod inbox;
mod keys;
pub mod leases;
mod presence;
mod registry;
mod scripts;
mod supervisor;

pub use leases::RedisLeases;

use crate::brokers::presence_ledger::PresenceLedger;
use crate::brokers::{unavailable, BrokerError, BrokerHandler};
use crate::config::{redis_url, BrokerConfig};
use crate::core::metrics::Metrics;
use cluster::Shards;
use conn::{RedisConn, Subscriber};
use delivery::Seen;
use keys::Keys;
use parking_lot::Mutex;
use scripts::Scripts;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The shape of the Redis a broker runs on (`broker.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One Redis (its addresses tried in order): classic pub/sub.
    Single,
    /// A Redis Cluster (the addresses are seeds): sharded pub/sub.
    Cluster,
}

struct Inner {
    config: BrokerConfig,
    /// `channel.history_meta_ttl`: how long a stream position outlives its last publication.
    meta_ttl: Duration,
    keys: Keys,
    /// The addresses of a single Redis, tried in order ([`Topology::Single`]).
    clients: Vec<redis::Client>,
    /// The seed addresses of a Redis Cluster ([`Topology::Cluster`]).
    cluster: Option<Vec<String>>,
    scripts: Scripts,
    /// The command connection with its generation: a late failure of an old connection's command
    /// must not tear down its successor.
    conn: Mutex<Option<(u64, RedisConn)>>,
    generation: std::sync::atomic::AtomicU64,
    sink: Mutex<Option<Subscriber>>,
    /// Serializes SUBSCRIBE/UNSUBSCRIBE so an unsubscribe never overtakes a later subscribe.
    subscribe_ops: tokio::sync::Mutex<()>,
    /// Channels SUBSCRIBEd on the current pub/sub connection.
    subscribed: Mutex<HashSet<String>>,
    seen: Mutex<HashMap<String, Seen>>,
    ready: AtomicBool,
    /// Wakes the supervisor when a command failed: the connections are torn down and rebuilt.
    failed: tokio::sync::Notify,
    /// The cluster's shards and which of them are lost.
    shards: Mutex<Shards>,
    /// Wakes the cluster probe early: a command failed or a shard connection was lost.
    probe: tokio::sync::Notify,
    /// A cluster push said a shard connection was lost since the last probe.
    disconnected: AtomicBool,
    /// Whether the control channel is subscribed (its shard may be lost, on a cluster).
    control_subscribed: AtomicBool,
    /// How to reach a cluster node by address (the first seed's settings), for the probes.
    seed_info: Option<redis::ConnectionInfo>,
    /// One connection per primary for the probes, apart from the cluster connection: anything
    /// it routes to a node it cannot reach makes it reconnect to every node (dropping the
    /// healthy shards' subscriptions), so nothing for a lost shard goes through it.
    probe_conns: Mutex<HashMap<String, redis::aio::MultiplexedConnection>>,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    metrics: OnceLock<Arc<Metrics>>,
    /// This node's presence entries (info JSON), refreshed while it lives.
    local_presence: PresenceLedger<String>,
    /// This node's registry uid, removed on close.
    node_uid: Mutex<Option<String>>,
    stop: CancellationToken,
    /// Set by [`RedisBroker::abandon`]: behave like a crashed process (no cleanup, no commands).
    dead: AtomicBool,
}

/// See the module documentation. Cloning shares the broker.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

impl RedisBroker {
    pub fn new(
        config: &BrokerConfig,
        topology: Topology,
        meta_ttl: Duration,
    ) -> Result<RedisBroker, BrokerError> {
        let clients = config
            .redis_addresses
            .iter()
            .map(|a| redis::Client::open(redis_url(a).as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| BrokerError::Unavailable(format!("broker.redis_addresses: {e}")))?;
        let cluster = (topology == Topology::Cluster).then(|| {
            config
                .redis_addresses
                .iter()
                .map(|a| redis_url(a))
                .collect::<Vec<_>>()
        });
        let seed_info = match &cluster {
            Some(seeds) => Some(
                redis::IntoConnectionInfo::into_connection_info(seeds[0].as_str()).map_err(
                    |e| BrokerError::Unavailable(format!("broker.redis_addresses: {e}")),
                )?,
            ),
            None => None,
        };
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                seed_info,
                probe_conns: Mutex::new(HashMap::new()),
                keys: Keys {
                    prefix: config.prefix.clone(),
                },
                clients,
                cluster,
                scripts: Scripts::new(),
                conn: Mutex::new(None),
                generation: std::sync::atomic::AtomicU64::new(0),
                sink: Mutex::new(None),
                subscribe_ops: tokio::sync::Mutex::new(()),
                subscribed: Mutex::new(HashSet::new()),
                seen: Mutex::new(HashMap::new()),
                ready: AtomicBool::new(false),
                failed: tokio::sync::Notify::new(),
                shards: Mutex::new(Shards::default()),
                probe: tokio::sync::Notify::new(),
                disconnected: AtomicBool::new(false),
                control_subscribed: AtomicBool::new(false),
                handler: OnceLock::new(),
                metrics: OnceLock::new(),
                local_presence: PresenceLedger::default(),
                node_uid: Mutex::new(None),
                stop: CancellationToken::new(),
                dead: AtomicBool::new(false),
                config: config.clone(),
                meta_ttl,
            }),
        })
    }

    /// Starts the supervisor (connect, listen, reconnect). Call after the handler is set.
    pub fn start(&self) {
        tokio::spawn(supervisor::supervise(self.inner.clone()));
    }

    /// Test hook: stop like a killed process — connections dropped, nothing cleaned up, every
    /// later operation fails. What the node left in Redis must expire by itself.
    pub fn abandon(&self) {
        self.inner.dead.store(true, Ordering::SeqCst);
        self.inner.ready.store(false, Ordering::SeqCst);
        self.inner.stop.cancel();
        self.inner.conn.lock().take();
        self.inner.sink.lock().take();
    }
}

fn millis(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

impl Inner {
    fn handler(&self) -> Option<&Arc<dyn BrokerHandler>> {
        self.handler.get()
    }

    fn conn(&self) -> Result<(u64, RedisConn), BrokerError> {
        if self.dead.load(Ordering::Relaxed) {
            return Err(unavailable("node stopped"));
        }
        self.conn
            .lock()
            .clone()
            .ok_or_else(|| unavailable("not connected to Redis"))
    }

    /// Marks connection `generation` broken; the supervisor rebuilds it.
    fn fail(&self, generation: u64, reason: &str) {
        let mut conn = self.conn.lock();
        if conn.as_ref().is_none_or(|(g, _)| *g != generation) {
            return;
        }
        conn.take();
        drop(conn);
        if self.ready.swap(false, Ordering::SeqCst) {
            tracing::warn!(%reason, "redis broker: connection lost");
        }
        self.failed.notify_one();
    }

    /// A command of connection `generation` failed for want of its server. A single Redis's
    /// connection is rebuilt; on a cluster the probe finds out which shard is lost, and the
    /// others keep serving.
    fn connection_error(&self, generation: u64, reason: &str) {
        if self.cluster.is_some() {
            self.probe.notify_one();
        } else {
            self.fail(generation, reason);
        }
    }

    /// Runs one command with the command timeout. Connection errors and timeouts take the broker
    /// down (not ready) until the supervisor reconnects — on a cluster only the shard they
    /// reveal lost; script or type errors do not.
    async fn timed<T>(
        &self,
        generation: u64,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BrokerError> {
        match tokio::time::timeout(self.config.command_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error()
                    || e.is_timeout()
                {
                    self.connection_error(generation, &e.to_string());
                }
                Err(unavailable(e))
            }
            Err(_) => {
                self.connection_error(generation, "command timed out");
                Err(unavailable("redis command timed out"))
            }
        }
    }
}
