//! Cross-node publication delivery behind one trait. The memory broker (the default) serves one node;
//! Redis and NATS brokers implement the same trait so the hub never knows which one is in use.
//!
//! A broker owns stream positions: it assigns each publication its offset (through history) and
//! delivers it to the [`BrokerHandler`] of every node, in offset order per channel.

use crate::history::{HistoryError, HistoryOptions, HistoryPage, HistoryQuery, MemoryHistory};
use crate::presence::MemoryPresence;
use async_trait::async_trait;
use herald_protocol::{ClientInfo, Publication, StreamPosition};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BrokerError {
    #[error("unrecoverable position")]
    Unrecoverable,
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

impl From<HistoryError> for BrokerError {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::Unrecoverable => BrokerError::Unrecoverable,
        }
    }
}

/// Node-wide commands that must reach the connections of a user wherever they are.
#[derive(Debug, Clone)]
pub enum Control {
    Subscribe {
        user: String,
        client: Option<String>,
        channel: String,
    },
    Unsubscribe {
        user: String,
        client: Option<String>,
        channel: String,
    },
    Disconnect {
        user: String,
        client: Option<String>,
        code: u16,
        reason: String,
    },
}

/// What a node does with what the broker delivers.
pub trait BrokerHandler: Send + Sync {
    /// `key`: the publication's conflation key, for channels that conflate.
    fn handle_publication(&self, channel: &str, publication: Arc<Publication>, key: Option<&str>);
    fn handle_join(&self, channel: &str, info: &ClientInfo);
    fn handle_leave(&self, channel: &str, info: &ClientInfo);
    fn handle_control(&self, control: &Control);
}

#[async_trait]
pub trait Broker: Send + Sync {
    /// Registers the node's handler; called once at start.
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>);
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
}

/// Presence storage shared by the nodes that use it.
#[async_trait]
pub trait PresenceStore: Send + Sync {
    async fn add(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError>;
    async fn remove(&self, channel: &str, client: &str) -> Result<(), BrokerError>;
    async fn get(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, BrokerError>;
    async fn stats(&self, channel: &str) -> Result<(u32, u32), BrokerError>;
}

/// One-node broker: history in memory, delivery by a direct call.
#[derive(Default)]
pub struct MemoryBroker {
    history: MemoryHistory,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
}

impl MemoryBroker {
    fn handler(&self) -> Result<&Arc<dyn BrokerHandler>, BrokerError> {
        self.handler
            .get()
            .ok_or_else(|| BrokerError::Unavailable("no handler registered".into()))
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>) {
        let _ = self.handler.set(handler);
    }

    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        key: Option<&str>,
        history: Option<HistoryOptions>,
    ) -> Result<StreamPosition, BrokerError> {
        let handler = self.handler()?;
        match history {
            Some(options) => {
                let (position, ()) = self
                    .history
                    .append(channel, publication, key, options, |p| {
                        handler.handle_publication(channel, p, key)
                    });
                Ok(position)
            }
            None => {
                handler.handle_publication(channel, Arc::new(publication), key);
                Ok(StreamPosition::default())
            }
        }
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        self.handler()?.handle_join(channel, info);
        Ok(())
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        self.handler()?.handle_leave(channel, info);
        Ok(())
    }

    async fn publish_control(&self, control: Control) -> Result<(), BrokerError> {
        self.handler()?.handle_control(&control);
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
        options: HistoryOptions,
    ) -> Result<HistoryPage, BrokerError> {
        Ok(self.history.read(channel, query, options)?)
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        self.history.remove(channel);
        Ok(())
    }

    async fn latest(
        &self,
        channel: &str,
    ) -> Result<(Vec<Arc<Publication>>, StreamPosition), BrokerError> {
        Ok(self.history.latest(channel))
    }

    fn sweep(&self, meta_ttl: std::time::Duration) {
        self.history.sweep(meta_ttl);
    }
}

#[async_trait]
impl PresenceStore for MemoryPresence {
    async fn add(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError> {
        MemoryPresence::add(self, channel, info);
        Ok(())
    }
    async fn remove(&self, channel: &str, client: &str) -> Result<(), BrokerError> {
        MemoryPresence::remove(self, channel, client);
        Ok(())
    }
    async fn get(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, BrokerError> {
        Ok(MemoryPresence::get(self, channel))
    }
    async fn stats(&self, channel: &str) -> Result<(u32, u32), BrokerError> {
        Ok(MemoryPresence::stats(self, channel))
    }
}
