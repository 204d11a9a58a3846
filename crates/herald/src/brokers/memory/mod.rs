//! The one-node broker: history in memory, delivery by a direct call; its presence and leases
//! live in this process too.

mod leases;
mod presence;

pub use leases::MemoryLeases;
pub use presence::MemoryPresence;

use super::{Broker, BrokerError, BrokerHandler, Control, NodeEntry};
use crate::core::history::{HistoryOptions, HistoryPage, HistoryQuery, MemoryHistory, StreamUsers};
use crate::core::metrics::{Metrics, ReasonLabel};
use async_trait::async_trait;
use herald_protocol::{ClientInfo, Publication, StreamPosition};
use parking_lot::Mutex;
use std::sync::{Arc, OnceLock};

/// One-node broker: history in memory, delivery by a direct call.
#[derive(Default)]
pub struct MemoryBroker {
    history: MemoryHistory,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    metrics: OnceLock<Arc<Metrics>>,
    /// The only node's registry entry.
    entry: Mutex<Option<NodeEntry>>,
}

/// The node's subscribers, as the history sees them: a forgotten stream's subscribers are told
/// to recover (their positions are void).
struct Subscribers(Arc<dyn BrokerHandler>);

impl StreamUsers for Subscribers {
    fn has_subscribers(&self, channel: &str) -> bool {
        self.0.has_subscribers(channel)
    }
    fn forgotten(&self, channel: &str) {
        self.0.handle_gap(channel);
    }
}

impl MemoryBroker {
    /// A broker keeping at most `max_streams` history streams (`channel.max_streams`).
    pub fn new(max_streams: usize) -> MemoryBroker {
        MemoryBroker {
            history: MemoryHistory::with_max_streams(max_streams),
            ..Default::default()
        }
    }

    /// Brings the stream metrics up to date (the gauge, and counters that only move forward).
    fn update_metrics(&self) {
        let Some(metrics) = self.metrics.get() else {
            return;
        };
        metrics
            .history_streams
            .set(i64::try_from(self.history.len()).unwrap_or(i64::MAX));
        let f = &self.history.forgotten;
        for (reason, count) in [
            ("idle", &f.idle),
            ("empty", &f.empty),
            ("limit", &f.limit),
            ("removed", &f.removed),
        ] {
            let count = count.load(std::sync::atomic::Ordering::Relaxed);
            let counter = metrics
                .history_streams_forgotten
                .get_or_create(&ReasonLabel { reason });
            counter.inc_by(count.saturating_sub(counter.get()));
        }
    }

    fn handler(&self) -> Result<&Arc<dyn BrokerHandler>, BrokerError> {
        self.handler
            .get()
            .ok_or_else(|| BrokerError::Unavailable("no handler registered".into()))
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>, metrics: Arc<Metrics>) {
        self.history
            .set_users(Arc::new(Subscribers(handler.clone())));
        let _ = self.handler.set(handler);
        let _ = self.metrics.set(metrics);
        self.update_metrics();
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
                let before = (self.history.len(), self.history.evictions());
                let (position, ()) = self
                    .history
                    .append(channel, publication, key, options, |p| {
                        handler.handle_publication(channel, p, key)
                    });
                if (self.history.len(), self.history.evictions()) != before {
                    self.update_metrics();
                }
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
        self.update_metrics();
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
        self.update_metrics();
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
