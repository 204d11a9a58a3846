//! The brokers cluster tests run against, and one test's share of each: the shared Redis
//! (`HERALD_TEST_REDIS`), a Redis Cluster the test starts itself, or the shared NATS server with
//! JetStream (`HERALD_TEST_NATS`). A share is a prefix no other test uses (on NATS also KV buckets
//! and a history stream of its own, deleted when the share is dropped); the shared servers are
//! never stopped, faults go through [`super::proxy::Proxy`].

use super::redis_cluster::RedisCluster;
use super::{test_nats, test_redis, unique_prefix, Cluster, TestServer};
use herald::config::Config;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// A broker a cluster scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// The shared Redis.
    Redis,
    /// A three-shard Redis Cluster (no replicas) of the test's own.
    RedisCluster,
    /// The shared NATS server, history in JetStream.
    Nats,
}

impl Broker {
    /// A share of this broker for the test named `test` (starting what only it uses).
    pub fn share(self, test: &str) -> Share {
        let prefix = unique_prefix(test);
        let owned = match self {
            Broker::Redis => Owned::Nothing,
            Broker::RedisCluster => Owned::RedisCluster(RedisCluster::start(3, 0)),
            Broker::Nats => Owned::Nats(NatsState::new(&prefix)),
        };
        Share {
            broker: self,
            prefix,
            owned,
        }
    }

    /// Whether a node proves, after an outage, which channels missed publications (and tells
    /// only their subscribers). NATS cannot: every local channel's subscribers are told.
    pub fn proves_no_gap(self) -> bool {
        self != Broker::Nats
    }

    /// How long entries of a crashed node (presence 2 s, registry 3 × 300 ms) may outlive it:
    /// NATS KV expires them in a server pass of its own, later than Redis's TTLs.
    pub fn expiry_within(self) -> Duration {
        match self {
            Broker::Nats => Duration::from_secs(8),
            Broker::Redis | Broker::RedisCluster => Duration::from_secs(5),
        }
    }
}

/// Node logs (herald at debug, or `RUST_LOG`) go to the test's captured output, shown when it
/// fails. For the cluster suites: a file measuring memory or speed would pay for them.
pub fn log_to_test_output() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "herald=debug,async_nats=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// What a share owns besides its prefix.
enum Owned {
    Nothing,
    RedisCluster(RedisCluster),
    Nats(NatsState),
}

/// One test's part of a broker; see the module docs.
pub struct Share {
    pub broker: Broker,
    pub prefix: String,
    owned: Owned,
}

impl Share {
    /// Configures a node to join this share directly, with short timers.
    pub fn configure(&self, c: &mut Config) {
        match &self.owned {
            Owned::Nothing => self.configure_via(c, &test_redis()),
            Owned::RedisCluster(redis) => redis.configure(c, &self.prefix),
            Owned::Nats(_) => self.configure_via(c, &test_nats()),
        }
    }

    /// As [`Share::configure`], the broker reached at `url` (a proxy's, see [`Share::url_of`]).
    pub fn configure_via(&self, c: &mut Config, url: &str) {
        short_timers(c);
        c.broker.prefix = self.prefix.clone();
        match &self.owned {
            Owned::Nothing => {
                c.broker.kind = herald::config::BrokerKind::Redis;
                c.broker.redis_addresses = vec![url.to_string()];
            }
            Owned::RedisCluster(_) => {
                panic!("a Redis Cluster is reached through its own addresses, not one url")
            }
            Owned::Nats(nats) => {
                c.broker.kind = herald::config::BrokerKind::Nats;
                c.broker.nats_urls = vec![url.to_string()];
                nats.configure(c);
            }
        }
    }

    /// The shared server's socket address (for a proxy in front of it).
    pub fn server_addr(&self) -> SocketAddr {
        let url = match self.broker {
            Broker::Redis => test_redis(),
            Broker::Nats => test_nats(),
            Broker::RedisCluster => panic!("a Redis Cluster has no single address"),
        };
        socket_addr(&url)
    }

    /// The url of this broker at `addr` (a proxy in front of the server).
    pub fn url_of(&self, addr: SocketAddr) -> String {
        match self.broker {
            Broker::Redis => format!("redis://{addr}"),
            Broker::Nats => format!("nats://{addr}"),
            Broker::RedisCluster => panic!("a Redis Cluster has no single address"),
        }
    }

    /// The Redis Cluster of a [`Broker::RedisCluster`] share.
    pub fn redis_cluster(&self) -> Option<&RedisCluster> {
        match &self.owned {
            Owned::RedisCluster(redis) => Some(redis),
            _ => None,
        }
    }

    /// `n` nodes `node0`… on this share.
    pub async fn cluster(&self, n: usize) -> Cluster {
        self.cluster_with(n, |_| {}).await
    }

    /// As [`Share::cluster`], with `change` applied to each node's config after the broker's.
    pub async fn cluster_with(&self, n: usize, change: impl Fn(&mut Config)) -> Cluster {
        Cluster::start_configured(n, &self.prefix, |c| {
            self.configure(c);
            change(c);
        })
        .await
    }

    /// `n` nodes `node0`… reaching the broker at `url` (see [`Share::configure_via`]).
    pub async fn cluster_via(&self, n: usize, url: &str) -> Cluster {
        Cluster::start_configured(n, &self.prefix, |c| self.configure_via(c, url)).await
    }

    /// Adds a node named `name` to `cluster` on this share (e.g. a restarted one).
    pub async fn add<'c>(&self, cluster: &'c mut Cluster, name: &str) -> &'c TestServer {
        cluster.add_with(name, |c| self.configure(c)).await
    }
}

/// Timers short enough for tests: commands and connects time out after 500 ms, presence lives
/// 2 s, nodes announce themselves every 300 ms and reconnect within 300 ms; stream positions
/// outlive a test run only briefly in the shared servers.
pub fn short_timers(c: &mut Config) {
    c.broker.command_timeout = Duration::from_millis(500);
    c.broker.connect_timeout = Duration::from_millis(500);
    c.broker.presence_ttl = Duration::from_secs(2);
    c.broker.node_announce_interval = Duration::from_millis(300);
    c.broker.max_reconnect_delay = Duration::from_millis(300);
    c.channel.history_meta_ttl = Duration::from_secs(600);
}

/// No history in any namespace (delivery only, nothing to recover).
pub fn history_off(c: &mut Config) {
    for ns in c
        .channel
        .namespaces
        .iter_mut()
        .chain(std::iter::once(&mut c.channel.without_namespace))
    {
        ns.history_size = 0;
        ns.history_ttl = Duration::ZERO;
        ns.force_recovery = false;
    }
}

/// The socket address of a `scheme://[user@]host:port[/…]` url.
pub fn socket_addr(url: &str) -> SocketAddr {
    let host = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest)
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default();
    host.to_socket_addrs()
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .next()
        .unwrap_or_else(|| panic!("{url}: no address"))
}

/// One test's state in the shared NATS server under `prefix`: KV buckets for presence and the
/// node registry (and the feed leases' and the history stream the nodes create), deleted when
/// dropped — also after a failure, on a thread of its own since the test's runtime may be gone.
pub struct NatsState {
    pub prefix: String,
    pub presence_bucket: String,
    pub nodes_bucket: String,
}

impl NatsState {
    pub fn new(prefix: &str) -> NatsState {
        let id = uuid::Uuid::new_v4().simple().to_string();
        NatsState {
            prefix: prefix.to_string(),
            presence_bucket: format!("herald_test_{id}_presence"),
            nodes_bucket: format!("herald_test_{id}_nodes"),
        }
    }

    /// Points a node's buckets and prefix at this state (the urls and timers are the caller's).
    pub fn configure(&self, c: &mut Config) {
        c.broker.prefix = self.prefix.clone();
        c.broker.nats_presence_bucket = self.presence_bucket.clone();
        c.broker.nats_nodes_bucket = self.nodes_bucket.clone();
    }
}

impl Drop for NatsState {
    fn drop(&mut self) {
        let buckets = vec![
            self.presence_bucket.clone(),
            self.nodes_bucket.clone(),
            herald::brokers::nats::leases::bucket_name(&self.prefix),
        ];
        let stream = herald::brokers::nats::history_stream_name(&self.prefix);
        // Missing ones are fine.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let Ok(client) = async_nats::connect(test_nats()).await else {
                    return;
                };
                let js = async_nats::jetstream::new(client);
                for bucket in &buckets {
                    let _ = js.delete_key_value(bucket).await;
                }
                let _ = js.delete_stream(&stream).await;
            });
        });
        let _ = cleanup.join();
    }
}
