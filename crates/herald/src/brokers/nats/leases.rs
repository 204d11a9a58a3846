//! Leases in a NATS JetStream KV bucket, for feeds on the NATS broker. Same contract as the Redis
//! store ([`LeaseStore`]): one holder at a time, expiry when the holder dies, release on a
//! graceful stop, and fencing tokens that only grow.
//!
//! - **Where:** one bucket per `broker.prefix` ([`bucket_name`]), one value per key, no `max_age`.
//!   A lease is the key `<prefix>.<base64url(name)>` holding `holder|token`. Releasing writes
//!   `|token` (no holder), so the last token stays after a release or an expiry.
//! - **One holder:** every grant, renewal and release is a compare-and-set on the key's revision
//!   (JetStream's expected last subject sequence). Of two nodes writing over the same revision,
//!   exactly one succeeds.
//! - **Tokens:** a grant's token is one more than the larger of the previous token and the
//!   revision it replaces. Revisions are the bucket stream's sequence numbers, which never go
//!   back, so tokens grow even if a value was overwritten by hand.
//! - **Expiry, observed:** nats-server 2.9 has no per-key TTL (2.11 adds it), and a bucket's
//!   `max_age` is one TTL for every feed and would drop the token with the lease. So a node
//!   takes a lease over once it has seen the same revision, unchanged, for `ttl` of its own
//!   monotonic clock (Kubernetes' leader election does the same). The holder writes a new
//!   revision on every renewal; a revision this node first saw at time `f` was written before
//!   `f`, so the holder's own deadline (the start of that renewal + `ttl`) passed before
//!   `f + ttl`. No two clocks are compared, wall clocks may jump; only clock rates must roughly
//!   agree. The price: takeover comes up to one retry interval later than with a server TTL.

use super::kv::open_bucket;
use super::subjects::encode_token;
use crate::brokers::leases::LeaseStore;
use crate::brokers::BrokerError;
use crate::config::BrokerConfig;
use async_nats::jetstream::kv::{self, UpdateErrorKind};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

/// The lease bucket of a cluster: its prefix with dots as `_` (bucket names allow no dots),
/// then `_leases`; any other character a bucket name cannot hold also becomes `_`.
pub fn bucket_name(prefix: &str) -> String {
    let safe: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}_leases")
}

/// A lease as read from the bucket. `revision` 0: the key was never written.
#[derive(Debug, PartialEq, Eq)]
struct State {
    revision: u64,
    /// Empty when released (or deleted by hand).
    holder: String,
    token: u64,
}

impl State {
    fn of(entry: Option<kv::Entry>) -> State {
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let (holder, token) = parse_value(&e.value);
                State {
                    revision: e.revision,
                    holder,
                    token,
                }
            }
            Some(e) => State {
                revision: e.revision,
                holder: String::new(),
                token: 0,
            },
            None => State {
                revision: 0,
                holder: String::new(),
                token: 0,
            },
        }
    }
}

/// `holder|token`. A value in any other shape (written by something else) counts as held by an
/// unknown holder with token 0: it expires like any lease and the next token still grows.
fn parse_value(value: &[u8]) -> (String, u64) {
    let text = String::from_utf8_lossy(value);
    match text.rsplit_once('|').map(|(h, t)| (h, t.parse::<u64>())) {
        Some((holder, Ok(token))) => (holder.to_string(), token),
        _ => (text.into_owned(), 0),
    }
}

fn value(holder: &str, token: u64) -> Bytes {
    Bytes::from(format!("{holder}|{token}"))
}

/// When this node first saw a lease's current revision.
struct Seen {
    revision: u64,
    at: Instant,
}

fn unavailable(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("nats leases: {e}"))
}

/// See the module documentation.
pub struct NatsLeases {
    config: BrokerConfig,
    bucket: String,
    client: tokio::sync::OnceCell<async_nats::Client>,
    /// The bucket once found or created; dropped after an error so the next call finds (or
    /// re-creates) it again.
    store: parking_lot::Mutex<Option<kv::Store>>,
    seen: parking_lot::Mutex<HashMap<String, Seen>>,
}

impl NatsLeases {
    /// Leases on the broker's NATS servers, in the bucket of its prefix. Connects on first use and
    /// reconnects by itself, so a NATS that is down at start only delays the feeds.
    pub fn lazy(config: &BrokerConfig) -> Result<NatsLeases, BrokerError> {
        if config.nats_urls.is_empty() {
            return Err(unavailable("no NATS url"));
        }
        for url in &config.nats_urls {
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| unavailable(format!("{url:?}: {e}")))?;
        }
        Ok(NatsLeases {
            bucket: bucket_name(&config.prefix),
            config: config.clone(),
            client: tokio::sync::OnceCell::new(),
            store: parking_lot::Mutex::new(None),
            seen: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    fn key(&self, name: &str) -> String {
        let name = encode_token(name);
        format!("{}.{name}", self.config.prefix)
    }

    async fn client(&self) -> Result<&async_nats::Client, BrokerError> {
        self.client.get_or_try_init(|| connect(&self.config)).await
    }

    async fn store(&self) -> Result<kv::Store, BrokerError> {
        if let Some(store) = self.store.lock().clone() {
            return Ok(store);
        }
        let client = self.client().await?;
        let js = async_nats::jetstream::new(client.clone());
        let timeout = self.config.command_timeout;
        let store = open_bucket(client, &js, &self.bucket, Duration::ZERO, timeout).await?;
        *self.store.lock() = Some(store.clone());
        Ok(store)
    }

    /// Bounds one request by the command timeout; any failure forgets the bucket handle.
    async fn timed<T, E: std::fmt::Display>(
        &self,
        fut: impl Future<Output = Result<T, E>>,
    ) -> Result<T, BrokerError> {
        let result = match tokio::time::timeout(self.config.command_timeout, fut).await {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(unavailable("request timed out")),
        };
        if result.is_err() {
            *self.store.lock() = None;
        }
        result
    }

    async fn read(&self, store: &kv::Store, key: &str) -> Result<State, BrokerError> {
        self.timed(store.entry(key)).await.map(State::of)
    }

    /// Compare-and-set over `revision`: `Ok(None)` when someone else wrote first.
    async fn write(
        &self,
        store: &kv::Store,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<Option<u64>, BrokerError> {
        let update = async {
            match store.update(key, value, revision).await {
                Ok(revision) => Ok(Some(revision)),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(e) => Err(e),
            }
        };
        self.timed(update).await
    }

    /// Whether the lease at `revision` has been seen unchanged for `ttl`; starts the watch when
    /// the revision is new to this node.
    fn lapsed(&self, name: &str, revision: u64, ttl: Duration) -> bool {
        let mut seen = self.seen.lock();
        match seen.get(name) {
            Some(s) if s.revision == revision => s.at.elapsed() >= ttl,
            _ => {
                seen.insert(name.to_string(), Seen::now(revision));
                false
            }
        }
    }

    /// Our own write: the revision counts from after its acknowledgement (never early).
    fn wrote(&self, name: &str, revision: u64) {
        self.seen
            .lock()
            .insert(name.to_string(), Seen::now(revision));
    }
}

impl Seen {
    fn now(revision: u64) -> Seen {
        Seen {
            revision,
            at: Instant::now(),
        }
    }
}

/// Backoff between reconnection attempts: 50 ms doubling up to `max`.
fn backoff(attempts: usize, max: Duration) -> Duration {
    Duration::from_millis(50)
        .saturating_mul(1u32 << attempts.min(16))
        .min(max)
}

/// A client of its own (like the Redis lease store's connection): returns at once and connects
/// in the background, so requests made while NATS is down time out as `Unavailable`.
async fn connect(config: &BrokerConfig) -> Result<async_nats::Client, BrokerError> {
    let urls: Vec<async_nats::ServerAddr> = config
        .nats_urls
        .iter()
        .filter_map(|u| u.parse().ok())
        .collect();
    let max_delay = config.max_reconnect_delay;
    async_nats::ConnectOptions::new()
        .name("herald-leases")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.command_timeout))
        .reconnect_delay_callback(move |attempts| backoff(attempts, max_delay))
        .connect(urls)
        .await
        .map_err(unavailable)
}

#[async_trait]
impl LeaseStore for NatsLeases {
    async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, BrokerError> {
        if holder.is_empty() {
            // An empty holder is how a released lease reads.
            return Err(unavailable("empty lease holder"));
        }
        let store = self.store().await?;
        let key = self.key(name);
        let state = self.read(&store, &key).await?;
        let token = if state.holder == holder {
            // Renewal: same token, new revision (which restarts the others' watch).
            state.token
        } else if state.holder.is_empty() || self.lapsed(name, state.revision, ttl) {
            state.token.max(state.revision) + 1
        } else {
            return Ok(None);
        };
        let written = self
            .write(&store, &key, value(holder, token), state.revision)
            .await?;
        Ok(written.map(|revision| {
            self.wrote(name, revision);
            token
        }))
    }

    async fn release(&self, name: &str, holder: &str) -> Result<(), BrokerError> {
        let store = self.store().await?;
        let key = self.key(name);
        let state = self.read(&store, &key).await?;
        if state.holder != holder || holder.is_empty() {
            return Ok(());
        }
        // A lost race means someone else holds it now: nothing of ours to release.
        self.write(&store, &key, value("", state.token), state.revision)
            .await?;
        self.seen.lock().remove(name);
        Ok(())
    }

    async fn is_current(&self, name: &str, token: u64) -> Result<bool, BrokerError> {
        let store = self.store().await?;
        let state = self.read(&store, &self.key(name)).await?;
        Ok(token != 0 && state.token == token)
    }
}

/// For the tests: a store under a prefix of its own on the test NATS server
/// (`HERALD_TEST_NATS`, default nats://127.0.0.1:4222). Its bucket is deleted when it is dropped,
/// also when the test failed.
#[cfg(test)]
fn test_store() -> TestLeases {
    let url = std::env::var("HERALD_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    test_store_at(
        &url,
        &format!("herald-test.lease-{}", uuid::Uuid::new_v4().simple()),
    )
}

#[cfg(test)]
fn test_store_at(url: &str, prefix: &str) -> TestLeases {
    let config = BrokerConfig {
        nats_urls: vec![url.to_string()],
        prefix: prefix.to_string(),
        connect_timeout: Duration::from_millis(500),
        // Generous: the suite runs many tests at once on two cores; no test here waits it out.
        command_timeout: Duration::from_secs(5),
        max_reconnect_delay: Duration::from_millis(200),
        ..BrokerConfig::default()
    };
    match NatsLeases::lazy(&config) {
        Ok(leases) => TestLeases(leases),
        Err(e) => panic!("test store: {e}"),
    }
}

#[cfg(test)]
struct TestLeases(NatsLeases);

#[cfg(test)]
impl std::ops::Deref for TestLeases {
    type Target = NatsLeases;
    fn deref(&self) -> &NatsLeases {
        &self.0
    }
}

#[cfg(test)]
impl Drop for TestLeases {
    /// On a thread of its own: the test's runtime may be gone. Deleting twice is harmless.
    fn drop(&mut self) {
        let (url, bucket) = (self.config.nats_urls[0].clone(), self.bucket.clone());
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok(client) = async_nats::connect(url).await {
                    let js = async_nats::jetstream::new(client);
                    let _ = js.delete_key_value(&bucket).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brokers::leases::LeaseStore;

    const TTL: Duration = Duration::from_millis(400);

    #[tokio::test]
    async fn nats_leases() {
        // Its bucket is deleted when `leases` is dropped.
        let leases = test_store();
        crate::brokers::leases::one_holder_at_a_time_and_tokens_grow(
            &*leases,
            Duration::from_millis(300),
        )
        .await;
    }

    /// Another node of the same cluster: same prefix, its own connection and observations.
    fn peer(of: &NatsLeases) -> TestLeases {
        test_store_at(&of.config.nats_urls[0], &of.config.prefix)
    }

    #[tokio::test]
    async fn two_nodes_racing_get_one_grant_and_the_other_waits_out_the_ttl() {
        let a = test_store();
        let b = peer(&a);
        let (ra, rb) = tokio::join!(a.acquire("f", "a", TTL), b.acquire("f", "b", TTL));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert!(
            ra.is_some() != rb.is_some(),
            "exactly one grant: {ra:?} {rb:?}"
        );
        let (holder, holder_id, other, other_id) = match ra {
            Some(_) => (&a, "a", &b, "b"),
            None => (&b, "b", &a, "a"),
        };
        let first = ra.or(rb).unwrap();
        // Renewed every third of the TTL: the other node never gets it, for three TTLs.
        let until = Instant::now() + TTL * 3;
        let mut renewed = Instant::now();
        let mut observed_by = Instant::now();
        while Instant::now() < until {
            let asked = Instant::now();
            assert_eq!(
                holder.acquire("f", holder_id, TTL).await.unwrap(),
                Some(first)
            );
            renewed = asked;
            assert_eq!(other.acquire("f", other_id, TTL).await.unwrap(), None);
            // The other node has seen the holder's latest revision by now.
            observed_by = Instant::now();
            tokio::time::sleep(TTL / 3).await;
        }
        // The holder goes silent (as if killed): the other takes over no earlier than the
        // holder's own deadline (its last renewal request + TTL), and on the first attempt it
        // starts a TTL after it saw that renewal. Judged per attempt, not against a wall-clock
        // bound, so a loaded machine that delays attempts cannot fail it.
        let give_up = Instant::now() + TTL * 20;
        let second = loop {
            let started = Instant::now();
            if let Some(token) = other.acquire("f", other_id, TTL).await.unwrap() {
                break token;
            }
            assert!(
                started < observed_by + TTL,
                "an attempt {:?} after the renewal was seen was refused",
                started - observed_by
            );
            assert!(Instant::now() < give_up, "no takeover");
            tokio::time::sleep(TTL / 4).await;
        };
        let after = renewed.elapsed();
        assert!(
            after >= TTL,
            "taken over before the holder's deadline: {after:?}"
        );
        assert!(second > first);
        for store in [&a, &b] {
            assert!(!store.is_current("f", first).await.unwrap());
            assert!(store.is_current("f", second).await.unwrap());
        }
        assert_eq!(holder.acquire("f", holder_id, TTL).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_value_written_by_someone_else_expires_and_tokens_still_grow() {
        let leases = test_store();
        let store = leases.store().await.unwrap();
        let revision = store
            .put(leases.key("f"), Bytes::from_static(b"not a lease"))
            .await
            .unwrap();
        assert_eq!(leases.acquire("f", "a", TTL).await.unwrap(), None);
        tokio::time::sleep(TTL).await;
        let token = leases.acquire("f", "a", TTL).await.unwrap().unwrap();
        assert!(token > revision, "{token} after revision {revision}");
        // Deleted by hand: free at once, and the next token is still larger.
        store.delete(leases.key("f")).await.unwrap();
        let next = leases.acquire("f", "b", TTL).await.unwrap().unwrap();
        assert!(next > token);
    }

    #[tokio::test]
    async fn nats_down_is_unavailable_not_a_panic() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let leases = NatsLeases::lazy(&BrokerConfig {
            nats_urls: vec![format!("nats://127.0.0.1:{port}")],
            command_timeout: Duration::from_millis(300),
            ..BrokerConfig::default()
        })
        .unwrap();
        let started = Instant::now();
        let unavailable = |r: Result<_, BrokerError>| matches!(r, Err(BrokerError::Unavailable(_)));
        assert!(unavailable(leases.acquire("f", "a", TTL).await));
        assert!(unavailable(
            leases.release("f", "a").await.map(|_| None::<u64>)
        ));
        assert!(unavailable(
            leases.is_current("f", 1).await.map(|_| None::<u64>)
        ));
        // Each call: at most two requests of the 300 ms command timeout.
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert!(NatsLeases::lazy(&BrokerConfig {
            nats_urls: vec!["nats://bad host:x".into()],
            ..BrokerConfig::default()
        })
        .is_err());
        assert!(unavailable(leases.acquire("f", "", TTL).await));
    }

    #[test]
    fn values_parse_and_odd_ones_count_as_held() {
        assert_eq!(parse_value(b"node-1|42"), ("node-1".into(), 42));
        assert_eq!(parse_value(b"a|b|7"), ("a|b".into(), 7));
        assert_eq!(parse_value(b"|9"), (String::new(), 9));
        assert_eq!(parse_value(b"garbage"), ("garbage".into(), 0));
        assert_eq!(parse_value(b"x|-1"), ("x|-1".into(), 0));
        assert_eq!(parse_value(b"\xff|3"), ("\u{fffd}".into(), 3));
        assert_eq!(parse_value(b""), (String::new(), 0));
    }

    #[test]
    fn bucket_names_are_valid() {
        assert_eq!(bucket_name("herald"), "herald_leases");
        assert_eq!(bucket_name("a.b-c"), "a_b-c_leases");
        assert_eq!(bucket_name("x y*>"), "x_y___leases");
    }
}
