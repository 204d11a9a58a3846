//! Upstream feed bridge: a fake exchange WebSocket through Herald to subscribed clients, and
//! leadership with failover and fencing between runners sharing one lease store.

mod support;

use async_trait::async_trait;
use herald::brokers::leases::LeaseStore;
use herald::brokers::MemoryLeases;
use herald::config::{FeedConfig, FeedKind, FeedPayload};
use herald::edges::feeds::mapping::Mapped;
use herald::edges::feeds::{mapping_of, FeedMetrics, FeedPublishError, FeedRunner, FeedSink};
use parking_lot::Mutex;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::proxy;
use support::upstream::FakeUpstream;
use support::*;
use tokio_util::sync::CancellationToken;

fn ticker(url: String) -> FeedConfig {
    FeedConfig {
        name: "ticker".into(),
        url,
        send: vec![r#"{"method":"SUBSCRIBE","params":["btc@trade","eth@trade"]}"#.into()],
        matches: [("/e".to_string(), "trade".to_string())].into(),
        channel: "market:{/s}".into(),
        tags: [("symbol".to_string(), "{/s}".to_string())].into(),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        ..FeedConfig::default()
    }
}

/// A fake exchange and a server consuming it with the `ticker` feed into the `market` namespace.
async fn ticker_server() -> (FakeUpstream, TestServer) {
    let upstream = FakeUpstream::start().await;
    let server = TestServer::with(|c| {
        c.channel.namespaces.push(open_namespace("market"));
        c.feeds.push(ticker(upstream.url()));
    })
    .await;
    (upstream, server)
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    assert!(
        eventually(WAIT, &mut check).await,
        "timed out waiting for {what}"
    );
}

#[tokio::test]
async fn upstream_messages_reach_exactly_their_channels_subscribers() {
    let (upstream, server) = ticker_server().await;
    let mut btc = server.client("alice").await;
    btc.subscribe("market:BTC").await;
    let mut eth = server.client("bob").await;
    eth.subscribe("market:ETH").await;
    wait_for("the feed to subscribe upstream", || {
        !upstream.received.lock().is_empty()
    })
    .await;
    assert!(upstream.received.lock()[0].contains("SUBSCRIBE"));

    upstream.send(r#"{"result":null,"id":1}"#);
    upstream.send("not json at all");
    upstream.send(r#"{"e":"trade","s":"BTC","p":"97000.5"}"#);
    upstream.send(r#"{"e":"trade","s":"ETH","p":"3100"}"#);

    let p = btc.publication("market:BTC").await;
    assert_eq!(p["data"], json!({"e":"trade","s":"BTC","p":"97000.5"}));
    assert_eq!(p["tags"]["symbol"], "BTC");
    let p = eth.publication("market:ETH").await;
    assert_eq!(p["data"]["p"], "3100");
    btc.expect_silence(Duration::from_millis(300)).await;

    let metrics = server.metrics().await;
    assert!(metrics.contains(r#"herald_feed_skipped_total{feed="ticker",reason="unmatched"} 1"#));
    assert!(metrics.contains(r#"herald_feed_skipped_total{feed="ticker",reason="not_json"} 1"#));
    assert!(metrics.contains(r#"herald_feed_publications_total{feed="ticker"} 2"#));
    assert!(metrics.contains(r#"herald_feed_leader{feed="ticker"} 1"#));
}

#[tokio::test]
async fn a_dropped_upstream_is_reconnected_and_resubscribed() {
    let (upstream, server) = ticker_server().await;
    let mut client = server.client("alice").await;
    client.subscribe("market:BTC").await;
    wait_for("first connection", || upstream.open_now() == 1).await;
    upstream.drop_all();
    wait_for("the reconnect", || {
        upstream.accepted() == 2 && upstream.open_now() == 1
    })
    .await;
    wait_for("the second subscribe", || {
        upstream.received.lock().len() == 2
    })
    .await;
    upstream.send(r#"{"e":"trade","s":"BTC","p":"1"}"#);
    assert_eq!(client.publication("market:BTC").await["data"]["p"], "1");
    drop(server);
}

#[tokio::test]
async fn a_silent_upstream_is_replaced_after_the_idle_timeout() {
    let upstream = FakeUpstream::start().await;
    let server = TestServer::with(|c| {
        c.channel.namespaces.push(open_namespace("market"));
        let mut feed = ticker(upstream.url());
        feed.idle_timeout = Duration::from_millis(300);
        feed.heartbeat_interval = Duration::from_millis(100);
        c.feeds.push(feed);
    })
    .await;
    wait_for("two reconnects after idling", || upstream.accepted() >= 3).await;
    // Never more than one connection at a time.
    assert!(upstream.open_now() <= 1);
    drop(server);
}

#[tokio::test]
async fn messages_split_from_arrays_and_data_pointer() {
    let upstream = FakeUpstream::start().await;
    let server = TestServer::with(|c| {
        c.channel.namespaces.push(open_namespace("quotes"));
        c.feeds.push(FeedConfig {
            name: "batch".into(),
            url: upstream.url(),
            items: "/data".into(),
            channel: "quotes:{/sym}".into(),
            data: "/q".into(),
            ..FeedConfig::default()
        });
    })
    .await;
    let mut client = server.client("alice").await;
    client.subscribe("quotes:A").await;
    wait_for("connection", || upstream.open_now() == 1).await;
    upstream.send(r#"{"data":[{"sym":"A","q":{"bid":1}},{"sym":"B","q":{"bid":2}},{"sym":"A","q":{"bid":3}}]}"#);
    assert_eq!(
        client.publication("quotes:A").await["data"],
        json!({"bid":1})
    );
    assert_eq!(
        client.publication("quotes:A").await["data"],
        json!({"bid":3})
    );
}

/// Records publications with the fencing token they carried; refuses stale tokens as the node
/// does.
struct Recorder {
    leases: Arc<MemoryLeases>,
    /// (token, seq, when) in arrival order.
    seen: Mutex<Vec<(u64, i64, Instant)>>,
    /// Emulates a frozen process: the next publication blocks its thread (and so the runner's
    /// renewals with it) for this long, with the message in hand.
    freeze: Mutex<Option<Duration>>,
}

impl Recorder {
    fn new(leases: &Arc<MemoryLeases>) -> Arc<Recorder> {
        Arc::new(Recorder {
            leases: leases.clone(),
            seen: Mutex::new(Vec::new()),
            freeze: Mutex::new(None),
        })
    }

    fn tokens(&self) -> Vec<u64> {
        let mut t: Vec<u64> = self.seen.lock().iter().map(|s| s.0).collect();
        t.dedup();
        t
    }
}

#[async_trait]
impl FeedSink for Recorder {
    async fn publish(
        &self,
        lease: &str,
        token: u64,
        valid_until: Instant,
        mapped: Mapped,
    ) -> Result<(), FeedPublishError> {
        let freeze = self.freeze.lock().take();
        if let Some(d) = freeze {
            std::thread::sleep(d);
        }
        if !self.leases.is_current(lease, token).await.unwrap() || Instant::now() >= valid_until {
            return Err(FeedPublishError::Fenced);
        }
        let seq = mapped.data["seq"].as_i64().unwrap();
        self.seen.lock().push((token, seq, Instant::now()));
        Ok(())
    }
}

fn runner(
    url: String,
    holder: &str,
    leases: &Arc<MemoryLeases>,
    sink: &Arc<Recorder>,
) -> FeedRunner {
    let cfg = FeedConfig {
        name: "seq".into(),
        url,
        channel: "s".into(),
        lease_ttl: Duration::from_millis(600),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(100),
        ..FeedConfig::default()
    };
    FeedRunner {
        mapping: mapping_of(&cfg).unwrap(),
        cfg,
        holder: holder.into(),
        leases: leases.clone() as Arc<dyn LeaseStore>,
        sink: sink.clone() as Arc<dyn FeedSink>,
        metrics: FeedMetrics::default(),
    }
}

/// Sends `{"seq":n}` every 5 ms until aborted.
fn pump(upstream: &Arc<FakeUpstream>) -> tokio::task::JoinHandle<()> {
    let upstream = upstream.clone();
    tokio::spawn(async move {
        for seq in 0.. {
            upstream.send(&json!({ "seq": seq }).to_string());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

fn assert_no_duplicates(seen: &[(u64, i64, Instant)]) {
    let mut seqs: Vec<i64> = seen.iter().map(|s| s.1).collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "a sequence number was published twice");
}

#[tokio::test]
async fn a_crashed_leader_is_replaced_within_the_lease_and_nothing_is_published_twice() {
    let upstream = Arc::new(FakeUpstream::start().await);
    let leases = Arc::new(MemoryLeases::default());
    let sink = Recorder::new(&leases);
    let stop = CancellationToken::new();
    let a = tokio::spawn(runner(upstream.url(), "a", &leases, &sink).run(stop.clone()));
    wait_for("a to connect", || upstream.open_now() == 1).await;
    let b = tokio::spawn(runner(upstream.url(), "b", &leases, &sink).run(stop.clone()));
    let pump = pump(&upstream);
    wait_for("a to publish", || sink.seen.lock().len() > 20).await;
    assert_eq!(upstream.accepted(), 1, "only the leader consumes");

    // Crash: the runner vanishes without releasing its lease.
    a.abort();
    let crashed = Instant::now();
    wait_for("b to publish", || sink.tokens().len() == 2).await;
    let tokens = sink.tokens();
    assert!(tokens[1] > tokens[0], "fencing tokens grow: {tokens:?}");
    let gap = sink
        .seen
        .lock()
        .iter()
        .find(|s| s.0 == tokens[1])
        .map(|s| s.2.duration_since(crashed))
        .unwrap();
    eprintln!("failover gap after a crash: {gap:?} (lease 600ms)");
    assert!(gap < Duration::from_secs(3), "takeover took {gap:?}");
    pump.abort();
    stop.cancel();
    let _ = b.await;
    assert_no_duplicates(&sink.seen.lock());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_frozen_past_its_lease_cannot_publish_what_it_held() {
    let upstream = Arc::new(FakeUpstream::start().await);
    let leases = Arc::new(MemoryLeases::default());
    let sink = Recorder::new(&leases);
    let stop = CancellationToken::new();
    let a = tokio::spawn(runner(upstream.url(), "a", &leases, &sink).run(stop.clone()));
    wait_for("a to connect", || upstream.open_now() == 1).await;
    let b = tokio::spawn(runner(upstream.url(), "b", &leases, &sink).run(stop.clone()));
    let pump = pump(&upstream);
    wait_for("a to publish", || sink.seen.lock().len() > 10).await;
    // a freezes for 2 s holding a message: its 600 ms lease lapses and b takes over meanwhile.
    *sink.freeze.lock() = Some(Duration::from_secs(2));
    wait_for("b to publish", || sink.tokens().len() >= 2).await;
    // a wakes up, tries the message it held, is fenced, and stops consuming.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let open = upstream.open_now();
    pump.abort();
    stop.cancel();
    let _ = (a.await, b.await);
    let tokens = sink.tokens();
    assert_eq!(
        tokens.len(),
        2,
        "publications alternate between leaders: {tokens:?}"
    );
    assert!(tokens[1] > tokens[0]);
    assert_eq!(open, 1, "the fenced leader let go of the upstream");
    assert_no_duplicates(&sink.seen.lock());
}

#[tokio::test]
async fn the_node_refuses_publications_with_a_stale_fencing_token() {
    let server = TestServer::start().await;
    let node = server.node();
    let mut client = server.client("alice").await;
    client.subscribe("fenced").await;
    let ttl = Duration::from_secs(5);
    let old = node
        .leases
        .acquire("feed:x", "old", ttl)
        .await
        .unwrap()
        .unwrap();
    let mapped = || Mapped {
        channel: "fenced".into(),
        data: json!({"v": 1}),
        tags: Default::default(),
    };
    let valid_until = Instant::now() + ttl;
    FeedSink::publish(&**node, "feed:x", old, valid_until, mapped())
        .await
        .unwrap();
    assert_eq!(client.publication("fenced").await["data"]["v"], 1);
    // The store still names this holder, but its lease's local deadline passed (a leader that was
    // frozen between the store's answer and the publish): refused all the same.
    let lapsed = FeedSink::publish(&**node, "feed:x", old, Instant::now(), mapped()).await;
    assert_eq!(lapsed, Err(FeedPublishError::Fenced));
    client.expect_silence(Duration::from_millis(200)).await;
    node.leases.release("feed:x", "old").await.unwrap();
    let new = node
        .leases
        .acquire("feed:x", "new", ttl)
        .await
        .unwrap()
        .unwrap();
    assert!(new > old);
    let refused = FeedSink::publish(&**node, "feed:x", old, valid_until, mapped()).await;
    assert_eq!(refused, Err(FeedPublishError::Fenced));
    client.expect_silence(Duration::from_millis(200)).await;
}

fn redis_addr() -> std::net::SocketAddr {
    std::env::var("HERALD_TEST_REDIS")
        .unwrap_or_else(|_| "127.0.0.1:6379".into())
        .parse()
        .expect("HERALD_TEST_REDIS is host:port")
}

async fn redis_publish(channel: &str, payload: &str) {
    let client = redis::Client::open(format!("redis://{}/", redis_addr())).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(&mut conn)
        .await
        .unwrap();
}

fn redis_feed(url: String, prefix: &str) -> FeedConfig {
    FeedConfig {
        name: "stocks".into(),
        kind: FeedKind::Redis,
        url,
        subscribe: vec![format!("{prefix}:ticker:*")],
        channel: "market:{$source[2]}".into(),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        heartbeat_interval: Duration::from_millis(250),
        connect_timeout: Duration::from_secs(1),
        ..FeedConfig::default()
    }
}

#[tokio::test]
async fn a_redis_pattern_feed_reaches_subscribers_and_survives_a_stalled_redis() {
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let proxy = proxy::Proxy::start(redis_addr()).await;
    let server = TestServer::with(|c| {
        c.channel.namespaces.push(open_namespace("market"));
        c.channel.namespaces.push(open_namespace("quotes"));
        c.feeds
            .push(redis_feed(format!("redis://{}/", proxy.addr), &prefix));
        let mut text = redis_feed(format!("redis://{}/", redis_addr()), &prefix);
        text.name = "text".into();
        text.subscribe = vec![format!("{prefix}:raw:*")];
        text.channel = "quotes:{$source[2]}".into();
        text.payload = FeedPayload::Text;
        c.feeds.push(text);
    })
    .await;
    let mut client = server.client("alice").await;
    client.subscribe("market:AAPL").await;
    let mut quotes = server.client("bob").await;
    quotes.subscribe("quotes:MSFT").await;
    let leaders = || async {
        let m = server.metrics().await;
        metric(&m, r#"herald_feed_connects_total{feed="stocks"}"#) >= 1.0
            && metric(&m, r#"herald_feed_connects_total{feed="text"}"#) >= 1.0
    };
    let deadline = Instant::now() + WAIT;
    while !leaders().await {
        assert!(Instant::now() < deadline, "feeds never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Subscriptions are confirmed before `connects` is counted, so these cannot be missed.
    redis_publish(&format!("{prefix}:ticker:AAPL"), r#"{"p":231.5}"#).await;
    redis_publish(&format!("{prefix}:ticker:GOOG"), r#"{"p":180}"#).await;
    redis_publish(&format!("{prefix}:raw:MSFT"), "512.25").await;
    assert_eq!(client.publication("market:AAPL").await["data"]["p"], 231.5);
    assert_eq!(quotes.publication("quotes:MSFT").await["data"], "512.25");
    client.expect_silence(Duration::from_millis(200)).await;

    // Redis stops answering: the PING goes unanswered, the feed drops the connection and keeps
    // trying; when Redis answers again the patterns are subscribed anew.
    proxy.blackhole();
    let disconnected = || async {
        let m = server.metrics().await;
        metric(&m, r#"herald_feed_disconnects_total{feed="stocks"}"#)
    };
    let deadline = Instant::now() + WAIT;
    while disconnected().await < 1.0 {
        assert!(Instant::now() < deadline, "a stalled Redis went unnoticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.restore();
    let connects = || async {
        let m = server.metrics().await;
        metric(&m, r#"herald_feed_connects_total{feed="stocks"}"#)
    };
    let deadline = Instant::now() + WAIT;
    while connects().await < 2.0 {
        assert!(Instant::now() < deadline, "the feed never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Pub/sub is at-most-once: a message published while a (loaded) machine makes the feed
    // reconnect once more is gone, so publish until one arrives.
    for attempt in 0.. {
        redis_publish(&format!("{prefix}:ticker:AAPL"), r#"{"p":232}"#).await;
        if let Some(v) = client.next_within(Duration::from_millis(500)).await {
            assert_eq!(v["push"]["pub"]["data"]["p"], 232, "{v}");
            break;
        }
        assert!(attempt < 10, "no publication after the feed came back");
    }
}

#[tokio::test]
async fn a_nats_subject_feed_reaches_subscribers() {
    let nats_url =
        std::env::var("HERALD_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let server = TestServer::with(|c| {
        c.channel.namespaces.push(open_namespace("ticks"));
        c.feeds.push(FeedConfig {
            name: "ticks".into(),
            kind: FeedKind::Nats,
            url: nats_url.clone(),
            subscribe: vec![format!("{prefix}.ticks.>")],
            channel: "ticks:{$source[2]}.{$source[3]}".into(),
            ..FeedConfig::default()
        });
    })
    .await;
    let mut client = server.client("alice").await;
    client.subscribe("ticks:eu.AIR").await;
    let deadline = Instant::now() + WAIT;
    while metric(
        &server.metrics().await,
        r#"herald_feed_connects_total{feed="ticks"}"#,
    ) < 1.0
    {
        assert!(Instant::now() < deadline, "feed never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let nats = async_nats::connect(nats_url.as_str()).await.unwrap();
    nats.publish(format!("{prefix}.ticks.us.AAPL"), r#"{"p":1}"#.into())
        .await
        .unwrap();
    nats.publish(format!("{prefix}.ticks.eu.AIR"), r#"{"p":150.2}"#.into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    assert_eq!(client.publication("ticks:eu.AIR").await["data"]["p"], 150.2);
    client.expect_silence(Duration::from_millis(200)).await;
}
