//! The node registry on NATS: a JetStream KV bucket whose `max_age` is three announce intervals
//! (keys: the node uids). Without JetStream there is no shared registry: a node knows only
//! itself.

use super::subjects::encode_token;
use super::Inner;
use crate::brokers::{unavailable, BrokerError, NodeEntry};

impl Inner {
    pub(super) async fn announce(&self, entry: &NodeEntry) -> Result<(), BrokerError> {
        *self.entry.lock() = Some(entry.clone());
        if !self.config.nats_jetstream {
            return Ok(());
        }
        let buckets = self.buckets()?;
        let value = serde_json::to_vec(entry).map_err(unavailable)?;
        buckets
            .put(
                &buckets.nodes,
                &encode_token(&entry.uid),
                value.into(),
                self.config.command_timeout,
            )
            .await
    }

    pub(super) async fn nodes(&self) -> Result<Vec<NodeEntry>, BrokerError> {
        if !self.config.nats_jetstream {
            // Without JetStream there is no shared registry: the node knows only itself.
            return Ok(self.entry.lock().iter().cloned().collect());
        }
        let buckets = self.buckets()?;
        let values = buckets
            .values(&buckets.nodes, None, self.config.command_timeout)
            .await?;
        let mut nodes: Vec<NodeEntry> = values
            .into_iter()
            .filter_map(|(_, value)| serde_json::from_slice(&value).ok())
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.uid.cmp(&b.uid)));
        Ok(nodes)
    }
}
