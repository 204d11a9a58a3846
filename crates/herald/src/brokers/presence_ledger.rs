//! The presence entries this node wrote to a shared store (Redis, NATS KV), kept so the node can
//! write them again before they expire (and after the store lost them), and remove them when it
//! stops. The shared store is the truth for readers; this ledger is only what the node owns.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;

/// Channel → client → the entry's stored value (`V`: how the backend writes it).
pub(crate) struct PresenceLedger<V> {
    entries: Mutex<HashMap<String, HashMap<String, V>>>,
}

impl<V> Default for PresenceLedger<V> {
    fn default() -> Self {
        PresenceLedger {
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl<V: Clone> PresenceLedger<V> {
    /// Writes an entry through `write`, remembered before the write so a refresh running
    /// meanwhile cannot miss it. A failed write forgets it again: the session rolls its
    /// subscription back on that error, and a later refresh must not keep a client present that
    /// is not subscribed.
    pub async fn add<E>(
        &self,
        channel: &str,
        client: &str,
        value: V,
        write: impl Future<Output = Result<(), E>>,
    ) -> Result<(), E> {
        self.entries
            .lock()
            .entry(channel.to_string())
            .or_default()
            .insert(client.to_string(), value);
        let written = write.await;
        if written.is_err() {
            self.forget(channel, client);
        }
        written
    }

    /// The entry is no longer the node's to refresh (the client left).
    pub fn forget(&self, channel: &str, client: &str) {
        let mut entries = self.entries.lock();
        if let Some(clients) = entries.get_mut(channel) {
            clients.remove(client);
            if clients.is_empty() {
                entries.remove(channel);
            }
        }
    }

    /// Every entry of the channels `keep` accepts, as (channel, client, value), to write again.
    pub fn entries(&self, keep: impl Fn(&str) -> bool) -> Vec<(String, String, V)> {
        self.entries
            .lock()
            .iter()
            .filter(|(channel, _)| keep(channel))
            .flat_map(|(channel, clients)| {
                clients
                    .iter()
                    .map(move |(client, value)| (channel.clone(), client.clone(), value.clone()))
            })
            .collect()
    }

    /// Empties the ledger (graceful stop): the (channel, client) pairs to remove from the store.
    pub fn drain(&self) -> Vec<(String, String)> {
        self.entries
            .lock()
            .drain()
            .flat_map(|(channel, clients)| clients.into_keys().map(move |c| (channel.clone(), c)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_write_is_forgotten_and_a_drain_empties() {
        let ledger = PresenceLedger::<u8>::default();
        ledger
            .add("a", "c1", 1, async { Ok::<_, ()>(()) })
            .await
            .unwrap();
        ledger
            .add("a", "c2", 2, async { Err(()) })
            .await
            .unwrap_err();
        ledger
            .add("b", "c3", 3, async { Ok::<_, ()>(()) })
            .await
            .unwrap();
        let mut all = ledger.entries(|_| true);
        all.sort();
        assert_eq!(
            all,
            [("a".into(), "c1".into(), 1), ("b".into(), "c3".into(), 3)]
        );
        assert_eq!(ledger.entries(|c| c == "b").len(), 1);
        ledger.forget("a", "c1");
        assert_eq!(ledger.drain(), [("b".to_string(), "c3".to_string())]);
        assert!(ledger.entries(|_| true).is_empty());
    }
}
