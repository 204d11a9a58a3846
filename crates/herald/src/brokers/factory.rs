//! Builds the node's outbound links from `broker.kind`: the broker, the presence store and the
//! lease store of one backend, and the handle that starts its connections.

use super::leases::LeaseStore;
use super::memory::{MemoryBroker, MemoryLeases, MemoryPresence};
use super::nats::{NatsBroker, NatsLeases};
use super::redis::{RedisBroker, RedisLeases, Topology};
use super::{Broker, BrokerError, PresenceStore};
use crate::config::{BrokerKind, Config};
use std::sync::Arc;

/// What a node needs of its backend.
pub struct Links {
    pub broker: Arc<dyn Broker>,
    pub presence: Arc<dyn PresenceStore>,
    pub leases: Arc<dyn LeaseStore>,
    /// Starts the backend's connections, and drops them like a crash in tests.
    pub backend: Backend,
}

/// The backend behind the links, for what the traits do not cover: starting it (once the node
/// set its handler) and the crash test hook.
#[derive(Clone)]
pub enum Backend {
    Memory,
    Redis(RedisBroker),
    Nats(NatsBroker),
}

impl Backend {
    /// Connects in the background: a node whose broker is down still serves its local clients
    /// and reports not ready until the broker is back. Call after the handler is set.
    pub fn start(&self) {
        match self {
            Backend::Memory => {}
            Backend::Redis(redis) => redis.start(),
            Backend::Nats(nats) => nats.start(),
        }
    }

    /// Test hook: stops like a killed process (see [`RedisBroker::abandon`]).
    pub fn abandon(&self) {
        match self {
            Backend::Memory => {}
            Backend::Redis(redis) => redis.abandon(),
            Backend::Nats(nats) => nats.abandon(),
        }
    }
}

/// The links `config.broker.kind` names. Nothing connects yet (see [`Backend::start`]).
pub fn build(config: &Config) -> Result<Links, BrokerError> {
    match config.broker.kind {
        BrokerKind::Redis => redis(config, Topology::Single),
        BrokerKind::RedisCluster => redis(config, Topology::Cluster),
        BrokerKind::Nats => nats(config),
        BrokerKind::Memory => Ok(memory(config)),
    }
}

fn memory(config: &Config) -> Links {
    Links {
        broker: Arc::new(MemoryBroker::new(config.channel.max_streams)),
        presence: Arc::new(MemoryPresence::new()),
        leases: Arc::new(MemoryLeases::default()),
        backend: Backend::Memory,
    }
}

/// Broker and presence share one set of connections; leases have their own (they connect on
/// first use, so a Redis down at start only delays the feeds).
fn redis(config: &Config, topology: Topology) -> Result<Links, BrokerError> {
    let redis = RedisBroker::new(&config.broker, topology, config.channel.history_meta_ttl)?;
    let leases = RedisLeases::lazy(&config.broker, topology)?;
    Ok(Links {
        broker: Arc::new(redis.clone()),
        presence: Arc::new(redis.clone()),
        leases: Arc::new(leases),
        backend: Backend::Redis(redis),
    })
}

fn nats(config: &Config) -> Result<Links, BrokerError> {
    let nats = NatsBroker::new(&config.broker)?;
    let leases = NatsLeases::lazy(&config.broker)?;
    Ok(Links {
        broker: Arc::new(nats.clone()),
        presence: Arc::new(nats.clone()),
        leases: Arc::new(leases),
        backend: Backend::Nats(nats),
    })
}
