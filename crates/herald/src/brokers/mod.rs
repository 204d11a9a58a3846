//! Cross-node publication delivery behind one trait. The memory broker (the default) serves one node;
//! the Redis broker makes every node sharing one Redis (and one `broker.prefix`) behave as one
//! system (on a single Redis or a Redis Cluster with sharded pub/sub), and the NATS broker does
//! the same over core NATS and JetStream (a history stream, KV buckets). The hub never knows which one is
//! in use.
//!
//! A broker owns stream positions: it assigns each publication its offset (through history) and
//! delivers it to the [`BrokerHandler`] of every node that has local subscribers of the channel, in
//! offset order per channel, once.
//!
//! One folder per backend (`memory/`, `redis/`, `nats/`), each with its broker, presence and
//! leases; [`build`] makes the set `broker.kind` names.

mod factory;
pub mod leases;
mod memory;
pub mod nats;
mod presence_ledger;
pub mod redis;
pub mod wire;

pub use crate::core::delivery::{BrokerHandler, Control};
pub use factory::{build, Backend, Links};
pub use memory::{MemoryBroker, MemoryLeases, MemoryPresence};

use crate::core::history::{HistoryError, HistoryOptions, HistoryPage, HistoryQuery};
use crate::core::metrics::Metrics;
use async_trait::async_trait;
use herald_protocol::{ClientInfo, Publication, StreamPosition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BrokerError {
    #[error("unrecoverable position")]
    Unrecoverable,
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The channel lives on a Redis Cluster shard that cannot be reached while the others can:
    /// only that shard's channels fail (see [`BrokerHealth::Degraded`]).
    #[error("broker shard unavailable: {0}")]
    ShardUnavailable(String),
}

/// What a broker can serve, for `/ready` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerHealth {
    /// Connected, every channel listened to.
    Ready,
    /// Connected, but `down` of `shards` Redis Cluster shards cannot be reached: their channels
    /// fail, every other channel works.
    Degraded { shards: usize, down: usize },
    /// Cannot serve any channel.
    Down,
}

/// A broker that cannot serve, with the cause (connection lost, timeout, malformed reply).
pub(crate) fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

impl From<HistoryError> for BrokerError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::Unrecoverable => BrokerError::Unrecoverable,
        }
    }
}

/// One node's entry in the cluster registry, as the `info` API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeEntry {
    pub uid: String,
    pub name: String,
    #[serde(default)]
    pub address: String,
    pub version: String,
    pub num_clients: usize,
    pub num_users: usize,
    pub num_channels: usize,
    pub num_subs: usize,
    pub uptime: u64,
}

#[async_trait]
pub trait Broker: Send + Sync {
    /// Registers the node's handler and metrics; called once at start.
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>, metrics: Arc<Metrics>);
    /// Makes sure this node receives `channel`'s publications and join/leave events. Returns once
    /// that holds, so a history read that follows cannot miss a publication in between. The node
    /// calls it for every new local subscriber (it is cheap when the channel is already listened to).
    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError>;
    /// The node's last local subscriber of `channel` left; the broker stops listening unless a new
    /// one arrived meanwhile.
    async fn unsubscribe(&self, channel: &str);
    /// Whether the broker can serve (connected, every channel listened to again after a reconnect
    /// — but those of a lost Redis Cluster shard, see [`Broker::health`]).
    fn is_ready(&self) -> bool;
    /// [`Broker::is_ready`], with partial faults told apart (a lost Redis Cluster shard). A
    /// degraded broker is ready: it serves every channel but the lost shard's.
    fn health(&self) -> BrokerHealth {
        if self.is_ready() {
            BrokerHealth::Ready
        } else {
            BrokerHealth::Down
        }
    }
    /// Stores (when `history` is set) and delivers a publication; returns its stream position.
    /// `key` is its conflation key on conflated channels.
    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        key: Option<&str>,
        history: Option<HistoryOptions>,
    ) -> Result<StreamPosition, BrokerError>;
    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError>;
    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError>;
    async fn publish_control(&self, control: Control) -> Result<(), BrokerError>;
    async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
        options: HistoryOptions,
    ) -> Result<HistoryPage, BrokerError>;
    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError>;
    /// The latest publication of every key of a conflated channel (oldest first) and its position.
    async fn latest(
        &self,
        channel: &str,
    ) -> Result<(Vec<Arc<Publication>>, StreamPosition), BrokerError>;
    /// Periodic housekeeping (expired streams).
    fn sweep(&self, meta_ttl: std::time::Duration);
    /// Writes this node's registry entry (it expires unless written again).
    async fn announce(&self, entry: &NodeEntry) -> Result<(), BrokerError>;
    /// Every live node's registry entry.
    async fn nodes(&self) -> Result<Vec<NodeEntry>, BrokerError>;
    /// Graceful stop: removes what this node left in the broker (registry entry, presence).
    async fn close(&self);
}

/// Presence storage shared by the nodes that use it.
#[async_trait]
pub trait PresenceStore: Send + Sync {
    async fn add(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError>;
    async fn remove(&self, channel: &str, client: &str) -> Result<(), BrokerError>;
    async fn get(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, BrokerError>;
    async fn stats(&self, channel: &str) -> Result<(u32, u32), BrokerError>;
}
