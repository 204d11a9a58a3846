//! [`Broker`] on NATS: core NATS subjects for delivery, the JetStream history stream for
//! positions; a publication with history is stored first, then its frame goes out live.

use super::subjects::encode_token;
use super::{delivery, kv, NatsBroker};
use crate::brokers::wire;
use crate::brokers::{unavailable, Broker, BrokerError, BrokerHandler, Control, NodeEntry};
use crate::core::history::{HistoryOptions, HistoryPage, HistoryQuery};
use crate::core::metrics::Metrics;
use async_trait::async_trait;
use bytes::Bytes;
use herald_protocol::{ClientInfo, Publication, StreamPosition};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

#[async_trait]
impl Broker for NatsBroker {
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>, metrics: Arc<Metrics>) {
        let _ = self.inner.handler.set(handler);
        let _ = self.inner.metrics.set(metrics);
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let client = inner.ready_client()?.clone();
        if inner.channels.lock().contains_key(channel) {
            return Ok(());
        }
        let _ops = inner.subscribe_ops.lock().await;
        if inner.channels.lock().contains_key(channel) {
            return Ok(());
        }
        let subject = inner.subjects.channel(channel);
        let mut sub = tokio::time::timeout(inner.config.command_timeout, client.subscribe(subject))
            .await
            .map_err(|_| unavailable("NATS subscribe timed out"))?
            .map_err(unavailable)?;
        // The SUB must be in effect before the caller goes on (it then publishes its join, or the
        // client expects every later publication).
        inner.barrier(&client).await?;
        let reader = {
            let inner = inner.clone();
            let channel = channel.to_string();
            tokio::spawn(async move { delivery::read_channel(&inner, &channel, &mut sub).await })
        };
        inner.channels.lock().insert(channel.to_string(), reader);
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) {
        let inner = &self.inner;
        let _ops = inner.subscribe_ops.lock().await;
        // Under the map's lock: a subscriber added meanwhile either sees the channel still
        // subscribed (and is seen here by the hub check) or sees it gone and subscribes after us.
        let mut channels = inner.channels.lock();
        if inner
            .handler
            .get()
            .is_some_and(|h| h.has_subscribers(channel))
        {
            return;
        }
        if let Some(task) = channels.remove(channel) {
            // Dropping the subscription sends the UNSUB.
            task.abort();
            inner.orders.lock().remove(channel);
        }
    }

    fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst) && !self.inner.dead.load(Ordering::SeqCst)
    }

    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        key: Option<&str>,
        history: Option<HistoryOptions>,
    ) -> Result<StreamPosition, BrokerError> {
        let inner = &self.inner;
        // Serialized once, here; the same bytes are stored and published.
        let payload = serde_json::to_vec(&publication).map_err(unavailable)?;
        let Some(options) = history else {
            let frame = wire::publication_frame(0, "", key, &payload);
            inner
                .publish(inner.subjects.channel(channel), frame.into())
                .await?;
            return Ok(StreamPosition::default());
        };
        let js = inner.jetstream()?;
        let payload = Bytes::from(payload);
        let position = inner
            .history
            .store(&js, channel, payload.clone(), &options)
            .await?;
        let frame = wire::publication_frame(position.offset, &position.epoch, key, &payload);
        if let Err(e) = inner
            .publish(inner.subjects.channel(channel), frame.into())
            .await
        {
            // Stored, so not failed (a retry would store it twice): subscribers find the hole at
            // the next publication and recover it from the stream.
            tracing::warn!(%channel, error = %e, "nats broker: stored publication not sent live");
        }
        Ok(position)
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        let frame = wire::join_frame(info);
        self.inner
            .publish(self.inner.subjects.channel(channel), frame.into())
            .await
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        let frame = wire::leave_frame(info);
        self.inner
            .publish(self.inner.subjects.channel(channel), frame.into())
            .await
    }

    async fn publish_control(&self, control: Control) -> Result<(), BrokerError> {
        let payload = serde_json::to_vec(&control).map_err(unavailable)?;
        self.inner
            .publish(self.inner.subjects.control(), payload.into())
            .await
    }

    async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
        options: HistoryOptions,
    ) -> Result<HistoryPage, BrokerError> {
        let inner = &self.inner;
        let js = inner.jetstream()?;
        let (entries, count) = (query.needs_entries(), query.entries_to_read());
        let since = query.since.as_ref().map(|s| s.offset);
        let (position, items) = inner
            .history
            .read(&js, channel, entries, since, count, &options)
            .await?;
        inner.note_read(channel, &position);
        Ok(crate::core::history::stored_page(
            position,
            items,
            query,
            options.ttl,
            crate::core::clock::unix_millis(),
        )?)
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let js = inner.jetstream()?;
        inner.history.remove(&js, channel).await
    }

    async fn latest(
        &self,
        _channel: &str,
    ) -> Result<(Vec<Arc<Publication>>, StreamPosition), BrokerError> {
        // Configuration refuses conflation on this broker: no latest values are kept.
        Err(unavailable(
            "conflation is not supported by the NATS broker",
        ))
    }

    fn sweep(&self, _meta_ttl: Duration) {
        // KV buckets expire entries by themselves (max_age).
    }

    async fn announce(&self, entry: &NodeEntry) -> Result<(), BrokerError> {
        self.inner.announce(entry).await
    }

    async fn nodes(&self) -> Result<Vec<NodeEntry>, BrokerError> {
        self.inner.nodes().await
    }

    async fn close(&self) {
        let inner = &self.inner;
        if inner.dead.load(Ordering::SeqCst) {
            return;
        }
        let timeout = inner.config.command_timeout;
        let entry = inner.entry.lock().take();
        let left: Vec<String> = inner
            .local_presence
            .drain()
            .into_iter()
            .map(|(channel, client)| kv::presence_key(&channel, &client))
            .collect();
        if let Ok(buckets) = inner.buckets() {
            if let Some(entry) = entry {
                if let Err(e) = buckets
                    .delete(&buckets.nodes, &encode_token(&entry.uid), timeout)
                    .await
                {
                    tracing::warn!(error = %e, "nats broker: node entry not removed");
                }
            }
            for key in left {
                if let Err(e) = buckets.delete(&buckets.presence, &key, timeout).await {
                    tracing::warn!(error = %e, "nats broker: presence not removed");
                    break;
                }
            }
        }
        inner.stop.cancel();
        for (_, task) in inner.channels.lock().drain() {
            task.abort();
        }
        if let Ok(client) = inner.client() {
            let _ = tokio::time::timeout(timeout, client.flush()).await;
        }
    }
}
