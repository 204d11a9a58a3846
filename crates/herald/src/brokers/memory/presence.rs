//! In-memory presence (the memory broker's): which clients are subscribed to a channel, with
//! their info.

use crate::brokers::{BrokerError, PresenceStore};
use async_trait::async_trait;
use herald_protocol::ClientInfo;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};

const SHARDS: usize = 64;

pub struct MemoryPresence {
    shards: Vec<Mutex<HashMap<String, BTreeMap<String, ClientInfo>>>>,
    hasher: RandomState,
}

impl Default for MemoryPresence {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryPresence {
    pub fn new() -> MemoryPresence {
        MemoryPresence {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, channel: &str) -> &Mutex<HashMap<String, BTreeMap<String, ClientInfo>>> {
        &self.shards[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    pub fn add(&self, channel: &str, info: ClientInfo) {
        self.shard(channel)
            .lock()
            .entry(channel.to_string())
            .or_default()
            .insert(info.client.clone(), info);
    }

    pub fn remove(&self, channel: &str, client: &str) {
        let mut shard = self.shard(channel).lock();
        if let Some(clients) = shard.get_mut(channel) {
            clients.remove(client);
            if clients.is_empty() {
                shard.remove(channel);
            }
        }
    }

    pub fn get(&self, channel: &str) -> BTreeMap<String, ClientInfo> {
        self.shard(channel)
            .lock()
            .get(channel)
            .cloned()
            .unwrap_or_default()
    }

    /// (clients, unique users)
    pub fn stats(&self, channel: &str) -> (u32, u32) {
        let shard = self.shard(channel).lock();
        let Some(clients) = shard.get(channel) else {
            return (0, 0);
        };
        let users: HashSet<&str> = clients.values().map(|c| c.user.as_str()).collect();
        (clients.len() as u32, users.len() as u32)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn info(user: &str, client: &str) -> ClientInfo {
        ClientInfo {
            user: user.into(),
            client: client.into(),
            conn_info: None,
            chan_info: None,
        }
    }

    #[test]
    fn add_remove_and_count_users() {
        let p = MemoryPresence::new();
        p.add("c", info("alice", "1"));
        p.add("c", info("alice", "2"));
        p.add("c", info("bob", "3"));
        assert_eq!(p.stats("c"), (3, 2));
        p.remove("c", "2");
        assert_eq!(p.stats("c"), (2, 2));
        assert_eq!(
            p.get("c").keys().cloned().collect::<Vec<_>>(),
            vec!["1", "3"]
        );
        p.remove("c", "1");
        p.remove("c", "3");
        assert_eq!(p.stats("c"), (0, 0));
        assert!(p.get("missing").is_empty());
    }
}
