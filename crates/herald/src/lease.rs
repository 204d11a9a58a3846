//! Leases: exactly one node of a cluster holds a named lease at a time (a feed's consumer), and
//! every grant carries a fencing token that only grows, so a holder that stalled past its lease
//! (GC pause, SIGSTOP, partition) can be told apart from the current one where it publishes.

use crate::broker::BrokerError;
use async_trait::async_trait;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes the lease for `holder`, or extends it if `holder` has it; returns the fencing token
    /// while `holder` holds it, `None` while someone else does.
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, BrokerError>;
    /// Gives the lease up (graceful stop) so another node takes over at once.
    async fn release(&self, name: &str, holder: &str) -> Result<(), BrokerError>;
    /// Whether `token` is still the newest grant of `name` (no later holder exists).
    async fn is_current(&self, name: &str, token: u64) -> Result<bool, BrokerError>;
}

struct Held {
    holder: String,
    token: u64,
    until: Instant,
}

/// Leases of one process (memory broker): one node, so the only contention is between tasks.
#[derive(Default)]
pub struct MemoryLeases {
    leases: parking_lot::Mutex<HashMap<String, Held>>,
    /// Last token granted per name; survives expiry so tokens only grow.
    tokens: parking_lot::Mutex<HashMap<String, u64>>,
}

#[async_trait]
impl LeaseStore for MemoryLeases {
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, BrokerError> {
        let now = Instant::now();
        let mut leases = self.leases.lock();
        if let Some(held) = leases.get_mut(name) {
            if held.holder == holder && held.until > now {
                held.until = now + ttl;
                return Ok(Some(held.token));
            }
            if held.until > now {
                return Ok(None);
            }
        }
        let mut tokens = self.tokens.lock();
        let token = tokens.entry(name.to_string()).or_insert(0);
        *token += 1;
        leases.insert(
            name.to_string(),
            Held {
                holder: holder.to_string(),
                token: *token,
                until: now + ttl,
            },
        );
        Ok(Some(*token))
    }

    async fn release(&self, name: &str, holder: &str) -> Result<(), BrokerError> {
        let mut leases = self.leases.lock();
        if leases.get(name).is_some_and(|h| h.holder == holder) {
            leases.remove(name);
        }
        Ok(())
    }

    async fn is_current(&self, name: &str, token: u64) -> Result<bool, BrokerError> {
        Ok(self.tokens.lock().get(name).copied() == Some(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_at_a_time_and_tokens_grow() {
        let leases = MemoryLeases::default();
        let ttl = Duration::from_millis(50);
        let a = leases.acquire("feed", "a", ttl).await.unwrap().unwrap();
        assert_eq!(leases.acquire("feed", "b", ttl).await.unwrap(), None);
        assert_eq!(leases.acquire("feed", "a", ttl).await.unwrap(), Some(a));
        tokio::time::sleep(Duration::from_millis(80)).await;
        let b = leases.acquire("feed", "b", ttl).await.unwrap().unwrap();
        assert!(b > a);
        assert!(!leases.is_current("feed", a).await.unwrap());
        assert!(leases.is_current("feed", b).await.unwrap());
        // The old holder waking up late does not get its lease back while b holds it.
        assert_eq!(leases.acquire("feed", "a", ttl).await.unwrap(), None);
        leases.release("feed", "b").await.unwrap();
        let a2 = leases.acquire("feed", "a", ttl).await.unwrap().unwrap();
        assert!(a2 > b);
    }
}
