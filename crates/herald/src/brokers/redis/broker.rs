//! [`Broker`] on Redis: listening to a channel's pub/sub channel while the node has local
//! subscribers of it, and publishing — a publication with history through the publish script,
//! which assigns its offset, stores it and publishes its frame in one atomic step.

use super::{millis, RedisBroker};
use crate::brokers::wire;
use crate::brokers::{
    unavailable, Broker, BrokerError, BrokerHandler, BrokerHealth, Control, NodeEntry,
};
use crate::core::history::{HistoryOptions, HistoryPage, HistoryQuery};
use crate::core::metrics::Metrics;
use async_trait::async_trait;
use herald_protocol::{ClientInfo, Publication, StreamPosition};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

#[async_trait]
impl Broker for RedisBroker {
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>, metrics: Arc<Metrics>) {
        let _ = self.inner.handler.set(handler);
        let _ = self.inner.metrics.set(metrics);
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        if !inner.ready.load(Ordering::SeqCst) {
            return Err(unavailable("not connected to Redis"));
        }
        if inner.subscribed.lock().contains(channel) {
            return Ok(());
        }
        inner.shard_available(channel)?;
        let _ops = inner.subscribe_ops.lock().await;
        if inner.subscribed.lock().contains(channel) {
            return Ok(());
        }
        if !inner.ready.load(Ordering::SeqCst) {
            return Err(unavailable("not connected to Redis"));
        }
        // Under the lock: a shard lost meanwhile has dropped its channels already.
        inner.shard_available(channel)?;
        let mut sink = inner
            .sink
            .lock()
            .clone()
            .ok_or_else(|| unavailable("not connected to Redis"))?;
        let generation = inner.generation.load(Ordering::SeqCst);
        inner
            .timed(generation, sink.subscribe(&[inner.keys.pubsub(channel)]))
            .await?;
        inner.subscribed.lock().insert(channel.to_string());
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) {
        let inner = &self.inner;
        let _ops = inner.subscribe_ops.lock().await;
        {
            // Under the set's lock: a subscriber added meanwhile either sees the channel still
            // subscribed (and is seen here by the hub check) or sees it gone and SUBSCRIBEs after us.
            let mut subscribed = inner.subscribed.lock();
            if inner.handler().is_some_and(|h| h.has_subscribers(channel)) {
                return;
            }
            if !subscribed.remove(channel) {
                return;
            }
            inner.seen.lock().remove(channel);
        }
        // Not connected (or cut off): the next connection subscribes only to channels with local
        // subscribers, so there is nothing to undo, and no session waits on a dead connection.
        if !inner.ready.load(Ordering::SeqCst) {
            return;
        }
        let Some(mut sink) = inner.sink.lock().clone() else {
            return;
        };
        let generation = inner.generation.load(Ordering::SeqCst);
        if let Err(e) = inner
            .timed(generation, sink.unsubscribe(&inner.keys.pubsub(channel)))
            .await
        {
            // Messages of the channel keep arriving and are ignored (no local subscriber); the
            // reconnect this error triggers resubscribes only what is needed.
            tracing::debug!(%channel, error = %e, "redis broker: unsubscribe failed");
        }
    }

    fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    fn health(&self) -> BrokerHealth {
        if !self.is_ready() {
            return BrokerHealth::Down;
        }
        let shards = self.inner.shards.lock();
        match shards.down.len() {
            0 => BrokerHealth::Ready,
            down => BrokerHealth::Degraded {
                shards: shards.primaries().len(),
                down,
            },
        }
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
        inner.shard_available(channel)?;
        let payload = serde_json::to_vec(&publication).map_err(unavailable)?;
        let (generation, mut conn) = inner.conn()?;
        match history {
            Some(options) => {
                let mut invocation = inner.scripts.publish.key(inner.keys.stream(channel));
                invocation
                    .key(inner.keys.meta(channel))
                    .key(inner.keys.latest_keys(channel))
                    .key(inner.keys.latest(channel))
                    .arg(inner.keys.pubsub(channel))
                    .arg(payload)
                    .arg(options.size)
                    .arg(millis(options.ttl))
                    .arg(millis(options.meta_ttl))
                    .arg(key.unwrap_or(""))
                    .arg(options.max_keys)
                    .arg(conn.publish_command());
                let (offset, epoch): (u64, String) = inner
                    .timed(generation, invocation.invoke_async(&mut conn))
                    .await?;
                Ok(StreamPosition { offset, epoch })
            }
            None => {
                let frame = wire::publication_frame(0, "", key, &payload);
                inner
                    .timed(
                        generation,
                        redis::cmd(conn.publish_command())
                            .arg(inner.keys.pubsub(channel))
                            .arg(frame)
                            .query_async::<i64>(&mut conn),
                    )
                    .await?;
                Ok(StreamPosition::default())
            }
        }
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner.shard_available(channel)?;
        let (generation, mut conn) = inner.conn()?;
        let cmd = redis::cmd(conn.publish_command())
            .arg(inner.keys.pubsub(channel))
            .arg(wire::join_frame(info))
            .to_owned();
        inner
            .timed(generation, cmd.query_async::<i64>(&mut conn))
            .await?;
        Ok(())
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner.shard_available(channel)?;
        let (generation, mut conn) = inner.conn()?;
        let cmd = redis::cmd(conn.publish_command())
            .arg(inner.keys.pubsub(channel))
            .arg(wire::leave_frame(info))
            .to_owned();
        inner
            .timed(generation, cmd.query_async::<i64>(&mut conn))
            .await?;
        Ok(())
    }

    async fn publish_control(&self, control: Control) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner.key_available(&inner.keys.control())?;
        let payload = serde_json::to_vec(&control).map_err(unavailable)?;
        let (generation, mut conn) = inner.conn()?;
        let cmd = redis::cmd(conn.publish_command())
            .arg(inner.keys.control())
            .arg(payload)
            .to_owned();
        inner
            .timed(generation, cmd.query_async::<i64>(&mut conn))
            .await?;
        Ok(())
    }

    async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
        options: HistoryOptions,
    ) -> Result<HistoryPage, BrokerError> {
        self.inner.history_page(channel, query, options).await
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        self.inner.remove_stream(channel).await
    }

    async fn latest(
        &self,
        channel: &str,
    ) -> Result<(Vec<Arc<Publication>>, StreamPosition), BrokerError> {
        self.inner.latest_values(channel).await
    }

    fn sweep(&self, _meta_ttl: Duration) {
        // Redis expires streams by itself (PEXPIRE on every publication).
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
        inner.remove_entry().await;
        inner.remove_own_presence().await;
        inner.stop.cancel();
    }
}
