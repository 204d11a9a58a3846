//! Leases of one process (memory broker): one node, so the only contention is between tasks.

use crate::brokers::leases::LeaseStore;
use crate::brokers::BrokerError;
use async_trait::async_trait;
use std::collections::HashMap;
use std::time::{Duration, Instant};

struct Held {
    holder: String,
    token: u64,
    until: Instant,
}

/// See the module documentation.
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
    async fn memory_leases() {
        crate::brokers::leases::one_holder_at_a_time_and_tokens_grow(
            &MemoryLeases::default(),
            Duration::from_millis(50),
        )
        .await;
    }
}
