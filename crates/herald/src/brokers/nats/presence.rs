//! Presence on NATS: a JetStream KV bucket whose `max_age` is the entry TTL (keys
//! `<channel>.<client>`, see [`kv::presence_key`]); this node's own entries are kept in a
//! [`PresenceLedger`](crate::brokers::presence_ledger::PresenceLedger) and rewritten well within
//! the TTL, after the buckets were re-created, and deleted on a graceful stop.

use super::kv;
use super::{Inner, NatsBroker};
use crate::brokers::{unavailable, BrokerError, PresenceStore};
use async_trait::async_trait;
use bytes::Bytes;
use herald_protocol::ClientInfo;
use std::collections::{BTreeMap, HashSet};

impl Inner {
    pub(super) async fn refresh_presence(&self) -> Result<(), BrokerError> {
        let Ok(buckets) = self.buckets() else {
            return Ok(());
        };
        let entries = self.local_presence.entries(|_| true);
        for (channel, client, value) in entries {
            buckets
                .put(
                    &buckets.presence,
                    &kv::presence_key(&channel, &client),
                    value,
                    self.config.command_timeout,
                )
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl PresenceStore for NatsBroker {
    async fn add(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let value = Bytes::from(serde_json::to_vec(&info).map_err(unavailable)?);
        let key = kv::presence_key(channel, &info.client);
        let write = async {
            let buckets = inner.buckets()?;
            buckets
                .put(
                    &buckets.presence,
                    &key,
                    value.clone(),
                    inner.config.command_timeout,
                )
                .await
        };
        inner
            .local_presence
            .add(channel, &info.client, value.clone(), write)
            .await
    }

    async fn remove(&self, channel: &str, client: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner.local_presence.forget(channel, client);
        let buckets = inner.buckets()?;
        buckets
            .delete(
                &buckets.presence,
                &kv::presence_key(channel, client),
                inner.config.command_timeout,
            )
            .await
    }

    async fn get(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, BrokerError> {
        let inner = &self.inner;
        let buckets = inner.buckets()?;
        let values = buckets
            .values(
                &buckets.presence,
                Some(&kv::presence_channel_filter(channel)),
                inner.config.command_timeout,
            )
            .await?;
        Ok(values
            .into_iter()
            .filter_map(|(_, value)| {
                serde_json::from_slice::<ClientInfo>(&value)
                    .ok()
                    .map(|info| (info.client.clone(), info))
            })
            .collect())
    }

    async fn stats(&self, channel: &str) -> Result<(u32, u32), BrokerError> {
        let presence = PresenceStore::get(self, channel).await?;
        let users: HashSet<&str> = presence.values().map(|i| i.user.as_str()).collect();
        Ok((presence.len() as u32, users.len() as u32))
    }
}
