//! The one-node broker: history in memory, delivery by a direct call.

use super::{Broker, BrokerError, BrokerHandler, Control, NodeEntry, PresenceStore};
use crate::history::{HistoryOptions, HistoryPage, HistoryQuery, MemoryHistory};
use crate::metrics::Metrics;
use crate::presence::MemoryPresence;
use async_trait::async_trait;
use herald_protocol::{ClientInfo, Publication, StreamPosition};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// One-node broker: history in memory, delivery by a direct call.
#[derive(Default)]
pub struct MemoryBroker {
    history: MemoryHistory,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    /// The only node's registry entry.
    entry: Mutex<Option<NodeEntry>>,
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
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>, _metrics: Arc<Metrics>) {
        let _ = self.handler.set(handler);
    }

    async fn subscribe(&self, _channel: &str) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn unsubscribe(&self, _channel: &str) {}

    fn is_ready(&self) -> bool {
        true
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

    async fn announce(&self, entry: &NodeEntry) -> Result<(), BrokerError> {
        *self.entry.lock() = Some(entry.clone());
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeEntry>, BrokerError> {
        Ok(self.entry.lock().iter().cloned().collect())
    }

    async fn close(&self) {}
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
