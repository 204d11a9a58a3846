//! Presence in Redis: an expiring hash per channel ([`Inner::touch`]); this node's own entries
//! are kept in a [`PresenceLedger`](crate::brokers::presence_ledger::PresenceLedger), written
//! again every third of `presence_ttl`, after a reconnect and when a lost shard returns, and
//! removed on a graceful stop.

use super::{Inner, RedisBroker};
use crate::brokers::{unavailable, BrokerError, PresenceStore};
use async_trait::async_trait;
use herald_protocol::ClientInfo;
use std::collections::{BTreeMap, HashSet};

impl Inner {
    /// Writes this node's presence entries again, but those on lost shards (written when their
    /// shard returns).
    pub(super) async fn refresh_presence(&self) -> Result<(), BrokerError> {
        let entries: Vec<(String, String, String, String)> = self
            .local_presence
            .entries(|channel| self.shard_available(channel).is_ok())
            .into_iter()
            .map(|(channel, client, info)| {
                (
                    self.keys.presence_expiry(&channel),
                    self.keys.presence(&channel),
                    client,
                    info,
                )
            })
            .collect();
        self.touch(&entries, self.config.presence_ttl).await
    }

    async fn remove_presence(&self, channel: &str, client: &str) -> Result<(), BrokerError> {
        self.shard_available(channel)?;
        let (generation, mut conn) = self.conn()?;
        let mut pipe = redis::pipe();
        pipe.zrem(self.keys.presence_expiry(channel), client)
            .ignore()
            .hdel(self.keys.presence(channel), client)
            .ignore();
        self.timed(generation, pipe.query_async::<()>(&mut conn))
            .await
    }

    /// Graceful stop: removes every entry this node still owns (those on a lost shard expire).
    pub(super) async fn remove_own_presence(&self) {
        for (channel, client) in self.local_presence.drain() {
            match self.remove_presence(&channel, &client).await {
                Ok(()) => {}
                // Expires by itself; the other shards' entries are still removed.
                Err(BrokerError::ShardUnavailable(_)) => {}
                Err(e) => {
                    tracing::warn!(%channel, error = %e, "redis broker: presence not removed");
                    break;
                }
            }
        }
    }
}

#[async_trait]
impl PresenceStore for RedisBroker {
    async fn add(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner.shard_available(channel)?;
        let value = serde_json::to_string(&info).map_err(unavailable)?;
        let entry = [(
            inner.keys.presence_expiry(channel),
            inner.keys.presence(channel),
            info.client.clone(),
            value.clone(),
        )];
        let write = inner.touch(&entry, inner.config.presence_ttl);
        inner
            .local_presence
            .add(channel, &info.client, value, write)
            .await
    }

    async fn remove(&self, channel: &str, client: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner.local_presence.forget(channel, client);
        inner.remove_presence(channel, client).await
    }

    async fn get(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, BrokerError> {
        let inner = &self.inner;
        let live = inner
            .live(
                &inner.keys.presence_expiry(channel),
                &inner.keys.presence(channel),
            )
            .await?;
        Ok(live
            .into_iter()
            .filter_map(|(client, value)| {
                serde_json::from_slice::<ClientInfo>(&value)
                    .ok()
                    .map(|info| (client, info))
            })
            .collect())
    }

    async fn stats(&self, channel: &str) -> Result<(u32, u32), BrokerError> {
        let presence = PresenceStore::get(self, channel).await?;
        let users: HashSet<&str> = presence.values().map(|i| i.user.as_str()).collect();
        Ok((presence.len() as u32, users.len() as u32))
    }
}
