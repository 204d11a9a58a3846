//! Leases: exactly one node of a cluster holds a named lease at a time (a feed's consumer), and
//! every grant carries a fencing token that only grows, so a holder that stalled past its lease
//! (GC pause, SIGSTOP, partition) can be told apart from the current one where it publishes.

use crate::brokers::BrokerError;
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

/// Leases in Redis, shared by every node of a cluster on the same Redis (or Redis Cluster): the
/// lease is a key `<prefix>lease:{<name>}` holding `holder|token` with a TTL; tokens come from
/// `<prefix>lease_token:{<name>}`, which only ever grows (INCR) and never expires, so a token is
/// never reused even after every lease lapsed. Both keys carry the name as hash tag, so one
/// script can use them on a cluster.
pub struct RedisLeases {
    conn: LeaseConn,
    prefix: String,
    acquire: redis::Script,
    release: redis::Script,
}

const ACQUIRE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, '|', 1, true)
  if sep and string.sub(cur, 1, sep - 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(string.sub(cur, sep + 1))
  end
  return -1
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
"#;

const RELEASE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. '|' then
  redis.call('DEL', KEYS[1])
end
return 0
"#;

/// A reconnecting connection to a single Redis, or a cluster connection made on first use (it
/// then follows the cluster's topology by itself).
enum LeaseConn {
    Single(redis::aio::ConnectionManager),
    Cluster(Box<LazyCluster>),
}

struct LazyCluster {
    client: redis::cluster::ClusterClient,
    conn: tokio::sync::OnceCell<redis::cluster_async::ClusterConnection>,
}

impl LeaseConn {
    async fn get(&self) -> Result<crate::brokers::redis::RedisConn, BrokerError> {
        use crate::brokers::redis::RedisConn;
        match self {
            LeaseConn::Single(manager) => Ok(RedisConn::Managed(manager.clone())),
            LeaseConn::Cluster(lazy) => lazy
                .conn
                .get_or_try_init(|| lazy.client.get_async_connection())
                .await
                .map(|c| RedisConn::Cluster(c.clone()))
                .map_err(unavailable),
        }
    }
}

impl RedisLeases {
    pub fn new(conn: redis::aio::ConnectionManager, prefix: &str) -> RedisLeases {
        Self::with(LeaseConn::Single(conn), prefix)
    }

    fn with(conn: LeaseConn, prefix: &str) -> RedisLeases {
        RedisLeases {
            conn,
            prefix: prefix.to_string(),
            acquire: redis::Script::new(ACQUIRE),
            release: redis::Script::new(RELEASE),
        }
    }

    /// Leases on the broker's Redis (its first address and its prefix); connects on first use and
    /// reconnects by itself, so a Redis that is down at start only delays the feeds.
    pub fn lazy(cfg: &crate::config::BrokerConfig) -> Result<RedisLeases, BrokerError> {
        let prefix = format!("{}:", cfg.prefix);
        if cfg.kind == crate::config::BrokerKind::RedisCluster {
            let seeds: Vec<String> = cfg
                .redis_addresses
                .iter()
                .map(|a| crate::config::redis_url(a))
                .collect();
            let client = redis::cluster::ClusterClientBuilder::new(seeds)
                .connection_timeout(cfg.connect_timeout)
                .response_timeout(cfg.command_timeout)
                .retries(2)
                .build()
                .map_err(unavailable)?;
            let conn = LeaseConn::Cluster(Box::new(LazyCluster {
                client,
                conn: tokio::sync::OnceCell::new(),
            }));
            return Ok(RedisLeases::with(conn, &prefix));
        }
        let address = cfg
            .redis_addresses
            .first()
            .ok_or_else(|| BrokerError::Unavailable("no redis address".into()))?;
        let client =
            redis::Client::open(crate::config::redis_url(address).as_str()).map_err(unavailable)?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.command_timeout))
            .set_max_delay(cfg.max_reconnect_delay);
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, manager)
            .map_err(unavailable)?;
        Ok(RedisLeases::new(conn, &prefix))
    }

    fn keys(&self, name: &str) -> (String, String) {
        (
            format!(
                "{}lease:{{{}}}",
                self.prefix,
                crate::brokers::redis::hash_tag(name)
            ),
            format!(
                "{}lease_token:{{{}}}",
                self.prefix,
                crate::brokers::redis::hash_tag(name)
            ),
        )
    }

    /// The key holding a lease's newest token, for scripts that check fencing atomically.
    pub fn token_key(&self, name: &str) -> String {
        self.keys(name).1
    }
}

fn unavailable(e: redis::RedisError) -> BrokerError {
    BrokerError::Unavailable(format!("redis: {e}"))
}

#[async_trait]
impl LeaseStore for RedisLeases {
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, BrokerError> {
        let (lease, token) = self.keys(name);
        let got: i64 = self
            .acquire
            .key(lease)
            .key(token)
            .arg(holder)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut self.conn.get().await?)
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(got).ok())
    }

    async fn release(&self, name: &str, holder: &str) -> Result<(), BrokerError> {
        let (lease, _) = self.keys(name);
        let _: i64 = self
            .release
            .key(lease)
            .arg(holder)
            .invoke_async(&mut self.conn.get().await?)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn is_current(&self, name: &str, token: u64) -> Result<bool, BrokerError> {
        let current: Option<u64> = redis::cmd("GET")
            .arg(self.token_key(name))
            .query_async(&mut self.conn.get().await?)
            .await
            .map_err(unavailable)?;
        Ok(current == Some(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract every lease store keeps; `ttl` short enough to wait out.
    async fn one_holder_at_a_time_and_tokens_grow(leases: &dyn LeaseStore, ttl: Duration) {
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

    #[tokio::test]
    async fn memory_leases() {
        one_holder_at_a_time_and_tokens_grow(&MemoryLeases::default(), Duration::from_millis(50))
            .await;
    }

    #[tokio::test]
    async fn redis_leases() {
        let url = std::env::var("HERALD_TEST_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into());
        let client = redis::Client::open(format!("redis://{url}/")).unwrap();
        let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
        let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
        let leases = RedisLeases::new(conn.clone(), &prefix);
        one_holder_at_a_time_and_tokens_grow(&leases, Duration::from_millis(150)).await;
        let _: () = redis::cmd("DEL")
            .arg(format!("{prefix}lease:{{feed}}"))
            .arg(format!("{prefix}lease_token:{{feed}}"))
            .query_async(&mut conn.clone())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn nats_leases() {
        // Its bucket is deleted when `leases` is dropped.
        let leases = crate::brokers::nats::leases::test_store();
        one_holder_at_a_time_and_tokens_grow(&*leases, Duration::from_millis(300)).await;
    }
}
