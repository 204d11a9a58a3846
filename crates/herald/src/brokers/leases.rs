//! Leases: exactly one node of a cluster holds a named lease at a time (a feed's consumer), and
//! every grant carries a fencing token that only grows, so a holder that stalled past its lease
//! (GC pause, SIGSTOP, partition) can be told apart from the current one where it publishes.

use crate::brokers::BrokerError;
use async_trait::async_trait;
use std::time::Duration;

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

/// The contract every lease store keeps (each backend's tests run it); `ttl` short enough to
/// wait out.
#[cfg(test)]
pub(crate) async fn one_holder_at_a_time_and_tokens_grow(leases: &dyn LeaseStore, ttl: Duration) {
    let a = leases.acquire("feed", "a", ttl).await.unwrap().unwrap();
    assert_eq!(leases.acquire("feed", "b", ttl).await.unwrap(), None);
    assert_eq!(leases.acquire("feed", "a", ttl).await.unwrap(), Some(a));
    tokio::time::sleep(ttl * 2).await;
    let b = leases.acquire("feed", "b", ttl).await.unwrap().unwrap();
    assert!(b > a);
    assert!(!leases.is_current("feed", a).await.unwrap());
    assert!(leases.is_current("feed", b).await.unwrap());
    // Release by someone else is a no-op: the old holder waking up late gets nothing back.
    leases.release("feed", "a").await.unwrap();
    assert_eq!(leases.acquire("feed", "a", ttl).await.unwrap(), None);
    // Release by the holder frees the lease at once.
    leases.release("feed", "b").await.unwrap();
    let a2 = leases.acquire("feed", "a", ttl).await.unwrap().unwrap();
    assert!(a2 > b);
}
