//! The node registry in Redis: one expiring hash for the whole cluster (its two keys share the
//! prefix as hash tag), each node's entry written again every `node_announce_interval` and
//! expiring after three of them; a graceful stop removes it at once.

use super::Inner;
use crate::brokers::{unavailable, BrokerError, NodeEntry};

impl Inner {
    pub(super) async fn announce(&self, entry: &NodeEntry) -> Result<(), BrokerError> {
        *self.node_uid.lock() = Some(entry.uid.clone());
        let value = serde_json::to_string(entry).map_err(unavailable)?;
        let ttl = self.config.node_announce_interval * 3;
        self.touch(
            &[(
                self.keys.nodes_expiry(),
                self.keys.nodes(),
                entry.uid.clone(),
                value,
            )],
            ttl,
        )
        .await
    }

    pub(super) async fn nodes(&self) -> Result<Vec<NodeEntry>, BrokerError> {
        let live = self
            .live(&self.keys.nodes_expiry(), &self.keys.nodes())
            .await?;
        let mut nodes: Vec<NodeEntry> = live
            .into_iter()
            .filter_map(|(_, value)| serde_json::from_slice(&value).ok())
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.uid.cmp(&b.uid)));
        Ok(nodes)
    }

    /// Graceful stop: this node's entry goes now rather than at its expiry.
    pub(super) async fn remove_entry(&self) {
        let uid = self.node_uid.lock().take();
        if let (Some(uid), Ok((generation, mut conn))) = (uid, self.conn()) {
            let mut pipe = redis::pipe();
            pipe.zrem(self.keys.nodes_expiry(), &uid)
                .ignore()
                .hdel(self.keys.nodes(), &uid)
                .ignore();
            if let Err(e) = self
                .timed(generation, pipe.query_async::<()>(&mut conn))
                .await
            {
                tracing::warn!(error = %e, "redis broker: node entry not removed");
            }
        }
    }
}
