//! State a hostile client could make a node hold without publishing, and publications too large
//! for the outboxes they go to (issue 13, items 4 and 11), attacked through real sockets:
//! - reads of channels that have no stream (`history`, recovering subscribes, conflated snapshots)
//!   keep nothing — no memory stream, no Redis key, no NATS message — while a subscriber of a
//!   fresh channel still recovers its first publications exactly;
//! - a publication over `channel.max_publication_bytes` is refused at every entry point (API,
//!   client, WebSocket/Redis/NATS feeds) with an error or a counted drop naming the limit; the
//!   channel's subscribers stay connected, get the next publication, and history never holds it.

mod support;

use herald::config::{Config, FeedConfig, NamespaceOptions};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::brokers::{Broker, NatsState};
use support::upstream::FakeUpstream;
use support::*;

/// Tests of this file run one at a time: some measure the process's RSS.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A namespace anyone connected may read history of, without subscribing first.
fn readable(name: &str) -> NamespaceOptions {
    NamespaceOptions {
        allow_history_for_client: true,
        presence: false,
        join_leave: false,
        force_push_join_leave: false,
        ..open_namespace(name)
    }
}

/// A conflated namespace: a subscribe reads the latest value of every key.
fn conflated(name: &str) -> NamespaceOptions {
    NamespaceOptions {
        conflation_key: "tag:k".into(),
        ..readable(name)
    }
}

/// Attacker-friendly client limits: no command rate limit, the largest frames.
fn hostile_reader_config(c: &mut Config) {
    c.client.command_rate = 0;
    c.channel.namespaces.push(readable("open"));
    c.channel.namespaces.push(conflated("snap"));
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// One frame of commands; waits for every reply and returns the unexpected errors.
async fn frame(client: &mut Client, commands: &[Value]) -> usize {
    let lines: Vec<String> = commands
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut c = c.clone();
            c["id"] = json!(1_000_000 + i);
            c.to_string()
        })
        .collect();
    client.send_text(&lines.join("\n")).await;
    let (mut replies, mut errors) = (0, 0);
    while replies < commands.len() {
        let message = client.next().await;
        if message.get("id").is_some() {
            replies += 1;
            if message.get("error").is_some_and(|e| e["code"] != 112) {
                eprintln!("unexpected error: {message}");
                errors += 1;
            }
        }
    }
    errors
}

/// Every kind of read of a channel without a stream, for `n` names `{tag}{i}`, generated one
/// frame at a time (so the test's own memory stays flat): history with and without `since`, a
/// recovering subscribe (and its unsubscribe), a conflated snapshot (or a history read).
async fn read_new_names(client: &mut Client, tag: &str, n: usize, conflated_too: bool) -> usize {
    let mut errors = 0;
    for start in (0..n).step_by(50) {
        let commands: Vec<Value> = (start..(start + 50).min(n))
            .flat_map(|i| read_commands(tag, i, conflated_too))
            .collect();
        errors += frame(client, &commands).await;
    }
    errors
}

fn read_commands(tag: &str, i: usize, conflated_too: bool) -> Vec<Value> {
    let channel = format!("open:{tag}{i}");
    match i % 4 {
        0 => vec![json!({"history": {"channel": channel, "limit": -1}})],
        1 => vec![json!({"history": {"channel": channel, "limit": 0,
            "since": {"offset": 5, "epoch": "guess"}}})],
        2 => vec![
            json!({"subscribe": {"channel": channel, "recover": true,
                "offset": 7, "epoch": "guess"}}),
            json!({"unsubscribe": {"channel": channel}}),
        ],
        _ if conflated_too => {
            let channel = format!("snap:{tag}{i}");
            vec![
                json!({"subscribe": {"channel": channel}}),
                json!({"unsubscribe": {"channel": channel}}),
            ]
        }
        _ => vec![json!({"history": {"channel": channel, "limit": 10}})],
    }
}

async fn streams_metric(server: &TestServer) -> f64 {
    metric(&server.metrics().await, "herald_history_streams")
}

#[tokio::test]
async fn reads_of_new_channels_keep_no_memory_state() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::with(hostile_reader_config).await;
    // One real stream, so the gauge is known to count.
    server
        .api_ok("publish", json!({"channel": "open:real", "data": 1}))
        .await;
    assert_eq!(streams_metric(&server).await, 1.0);
    let mut attacker = server.client("mallory").await;
    // A first round brings buffers, maps and the allocator to their working size.
    assert_eq!(read_new_names(&mut attacker, "warm", 10_000, true).await, 0);
    let rss_before = rss_kib();
    let started = Instant::now();
    let errors = read_new_names(&mut attacker, "n", 40_000, true).await;
    assert_eq!(errors, 0, "every read of a new name is answered");
    // API reads too.
    for i in 0..300 {
        let reply = server
            .api_ok(
                "history",
                json!({"channel": format!("open:api{i}"), "limit": -1}),
            )
            .await;
        assert_eq!(reply["offset"], 0, "{reply}");
    }
    let rss_growth = rss_kib().saturating_sub(rss_before);
    eprintln!(
        "40,300 reads of new names in {:?}; RSS growth {rss_growth} KiB",
        started.elapsed()
    );
    assert_eq!(
        streams_metric(&server).await,
        1.0,
        "reads created no stream"
    );
    // Before, each name kept ~500 B for 30 days (~20 MiB here; the issue measured 30 MB for 60k).
    assert!(
        rss_growth < 6 * 1024,
        "RSS grew {rss_growth} KiB for reads that keep nothing"
    );
    attacker.assert_alive().await;
}

#[tokio::test]
async fn a_subscriber_of_a_channel_without_stream_recovers_its_first_publications() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::with(hostile_reader_config).await;
    let mut client = server.client("alice").await;
    let sub = client.subscribe("open:fresh").await;
    let epoch = sub["epoch"].as_str().expect("an epoch").to_string();
    assert!(!epoch.is_empty());
    assert_eq!(sub["offset"].as_u64().unwrap_or(0), 0);
    assert_eq!(
        streams_metric(&server).await,
        0.0,
        "subscribing kept nothing"
    );
    server
        .api_ok("publish", json!({"channel": "open:fresh", "data": 1}))
        .await;
    assert_eq!(client.publication("open:fresh").await["offset"], 1);
    drop(client);
    for n in 2..=3 {
        server
            .api_ok("publish", json!({"channel": "open:fresh", "data": n}))
            .await;
    }
    let mut client = server.client("alice").await;
    let (recovered, offsets) = resubscribe(&mut client, "open:fresh", 1, &epoch).await;
    assert!(
        recovered,
        "the stream continues the position read before it existed"
    );
    assert_eq!(offsets, vec![2, 3]);
    // Also from the empty position itself (nothing received before the reconnect).
    let mut late = server.client("bob").await;
    let (recovered, offsets) = resubscribe(&mut late, "open:fresh", 0, &epoch).await;
    assert!(recovered);
    assert_eq!(offsets, vec![1, 2, 3]);
    // A removed stream never continues an old position, even at the same offsets.
    server
        .api_ok("history_remove", json!({"channel": "open:fresh"}))
        .await;
    for n in 1..=3 {
        server
            .api_ok("publish", json!({"channel": "open:fresh", "data": n}))
            .await;
    }
    let mut stale = server.client("carol").await;
    let (recovered, _) = resubscribe(&mut stale, "open:fresh", 1, &epoch).await;
    assert!(!recovered, "a position of the removed life");
    let m = server.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"herald_history_streams_forgotten_total{reason="removed"}"#
        ),
        1.0
    );
}

#[tokio::test]
async fn memory_streams_are_bounded_and_empty_ones_are_evicted_first() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::with(|c| {
        hostile_reader_config(c);
        c.channel.max_streams = 100;
        // `short` items expire at once: their streams have nothing left to recover.
        c.channel.namespaces.push(NamespaceOptions {
            history_ttl: Duration::from_millis(1),
            ..readable("short")
        });
    })
    .await;
    let mut keeper = server.client("alice").await;
    keeper.subscribe("open:kept").await;
    server
        .api_ok(
            "publish",
            json!({"channel": "open:kept", "data": "precious"}),
        )
        .await;
    for i in 0..99 {
        server
            .api_ok(
                "publish",
                json!({"channel": format!("short:{i}"), "data": i}),
            )
            .await;
    }
    assert_eq!(streams_metric(&server).await, 100.0);
    // A publisher flooding new names: the node stays at its limit.
    for i in 0..300 {
        server
            .api_ok(
                "publish",
                json!({"channel": format!("open:flood{i}"), "data": i}),
            )
            .await;
    }
    let m = server.metrics().await;
    assert!(metric(&m, "herald_history_streams") <= 100.0, "{m}");
    assert!(
        metric(
            &m,
            r#"herald_history_streams_forgotten_total{reason="limit"}"#
        ) >= 300.0,
        "{m}"
    );
    // The empty streams went first; the subscribed, non-empty one was never needed.
    let history = server
        .api_ok("history", json!({"channel": "open:kept", "limit": -1}))
        .await;
    assert_eq!(history["publications"][0]["data"], "precious", "{history}");
    keeper.assert_alive().await;
}

// ---------------------------------------------------------------------------------------------
// Redis

async fn redis_keys(prefix: &str) -> usize {
    let client = redis::Client::open(test_redis()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let mut cursor: u64 = 0;
    let mut count = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}.*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("scan");
        // Presence and the node registry are not per-channel history state.
        count += keys
            .iter()
            .filter(|k| !k.contains(".presence") && !k.contains(".nodes"))
            .count();
        cursor = next;
        if cursor == 0 {
            return count;
        }
    }
}

#[tokio::test]
async fn reads_of_new_channels_write_no_redis_keys() {
    let _serial = SERIAL.lock().await;
    let share = Broker::Redis.share("hostile_reads");
    let cluster = share.cluster_with(1, hostile_reader_config).await;
    let node = &cluster.nodes[0];
    let before = redis_keys(&cluster.prefix).await;
    let mut attacker = node.client("mallory").await;
    let errors = read_new_names(&mut attacker, "r", 10_000, true).await;
    assert_eq!(errors, 0);
    for i in 0..100 {
        node.api_ok(
            "history",
            json!({"channel": format!("open:api{i}"), "limit": 0}),
        )
        .await;
    }
    assert_eq!(
        redis_keys(&cluster.prefix).await,
        before,
        "reads wrote no key under the prefix"
    );
    // The scan sees what a publication creates.
    node.api_ok("publish", json!({"channel": "open:r0", "data": 1}))
        .await;
    assert!(redis_keys(&cluster.prefix).await > before);
    // A subscriber that read the empty position recovers the first publications.
    let mut client = node.client("alice").await;
    let epoch = client.subscribe("open:r1").await["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    drop(client);
    for n in 1..=2 {
        publish_n(node, "open:r1", n).await;
    }
    let mut client = node.client("alice").await;
    let (recovered, offsets) = resubscribe(&mut client, "open:r1", 0, &epoch).await;
    assert!(recovered);
    assert_eq!(offsets, vec![1, 2]);
}

// ---------------------------------------------------------------------------------------------
// NATS

/// A node on the shared NATS under `nats`'s prefix and buckets, with timers for a loaded node.
fn nats_broker(c: &mut Config, nats: &NatsState) {
    c.broker.kind = herald::config::BrokerKind::Nats;
    c.broker.nats_urls = vec![test_nats()];
    nats.configure(c);
    c.broker.command_timeout = Duration::from_secs(2);
    c.broker.connect_timeout = Duration::from_secs(1);
    c.channel.history_meta_ttl = Duration::from_secs(600);
}

/// (messages, subjects) in the test's history stream.
async fn nats_stream_state(prefix: &str) -> (u64, u64) {
    let client = async_nats::connect(test_nats()).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .get_stream(herald::brokers::nats::history_stream_name(prefix))
        .await
        .expect("history stream");
    let info = stream.info().await.expect("stream info");
    (info.state.messages, info.state.subjects_count)
}

#[tokio::test]
async fn reads_of_new_channels_store_nothing_in_nats() {
    let _serial = SERIAL.lock().await;
    let nats = NatsState::new(&unique_prefix("hostile_reads"));
    let node = TestServer::with(|c| {
        nats_broker(c, &nats);
        c.client.command_rate = 0;
        c.channel.namespaces.push(readable("open"));
    })
    .await;
    assert!(node.wait_ready(WAIT).await);
    let mut attacker = node.client("mallory").await;
    // The first read creates the (one, per-prefix) history stream itself.
    assert_eq!(read_new_names(&mut attacker, "w", 4, false).await, 0);
    let before = nats_stream_state(&nats.prefix).await;
    assert_eq!(before, (0, 0), "reads stored nothing");
    let errors = read_new_names(&mut attacker, "n", 10_000, false).await;
    assert_eq!(errors, 0);
    assert_eq!(
        nats_stream_state(&nats.prefix).await,
        (0, 0),
        "10,000 reads of new names stored no message, no subject"
    );
    // A subscriber that read the empty position recovers the first publications.
    let mut client = node.client("alice").await;
    let epoch = client.subscribe("open:n1").await["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    assert!(!epoch.is_empty());
    publish_n(&node, "open:n1", 1).await;
    assert_eq!(client.publication("open:n1").await["offset"], 1);
    drop(client);
    publish_n(&node, "open:n1", 2).await;
    let mut client = node.client("alice").await;
    let (recovered, offsets) = resubscribe(&mut client, "open:n1", 1, &epoch).await;
    assert!(recovered);
    assert_eq!(offsets, vec![2]);
    assert_eq!(nats_stream_state(&nats.prefix).await, (2, 1));
}

// ---------------------------------------------------------------------------------------------
// Oversized publications

/// A publication limit of 4 KiB (clients may send frames up to 64 KiB).
fn small_publications(c: &mut Config) {
    c.channel.max_publication_bytes = Some(4096);
    c.channel.namespaces.push(open_namespace("market"));
}

fn blob(bytes: usize) -> String {
    "x".repeat(bytes)
}

/// `client` is still connected and its next publication on `channel` is `data`.
async fn next_is(client: &mut Client, channel: &str, data: Value) {
    let publication = client.publication(channel).await;
    assert_eq!(publication["data"], data, "{publication}");
}

async fn history_data(server: &TestServer, channel: &str) -> Vec<Value> {
    let history = server
        .api_ok("history", json!({"channel": channel, "limit": -1}))
        .await;
    history["publications"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|p| p["data"].clone())
        .collect()
}

#[tokio::test]
async fn oversized_api_and_client_publications_are_refused_naming_the_limit() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::with(small_publications).await;
    let mut watcher = server.client("alice").await;
    watcher.subscribe("chat:big").await;
    let mut publisher = server.client("bob").await;
    publisher.subscribe("chat:big").await;

    let (status, reply) = server
        .api(
            "publish",
            json!({"channel": "chat:big", "data": blob(5000)}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(reply["error"]["code"], 106, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("channel.max_publication_bytes") && message.contains("4096"),
        "{message}"
    );
    // Tags count too.
    let (_, reply) = server
        .api(
            "publish",
            json!({"channel": "chat:big", "data": 1, "tags": {"t": blob(5000)}}),
        )
        .await;
    assert_eq!(reply["error"]["code"], 106, "{reply}");
    let broadcast = server
        .api_ok(
            "broadcast",
            json!({"channels": ["chat:big", "chat:other"], "data": blob(5000)}),
        )
        .await;
    for response in broadcast["responses"].as_array().expect("responses") {
        assert_eq!(response["error"]["code"], 106, "{response}");
        assert!(response["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_publication_bytes")));
    }
    let reply = publisher
        .call(
            "publish",
            json!({"channel": "chat:big", "data": blob(5000)}),
        )
        .await;
    assert_eq!(reply["error"]["code"], 106, "{reply}");
    assert!(reply["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("channel.max_publication_bytes (4096)")));

    // At the limit is fine; every subscriber stayed and gets it.
    let fits = blob(4096 - 2);
    server
        .api_ok("publish", json!({"channel": "chat:big", "data": fits}))
        .await;
    next_is(&mut watcher, "chat:big", json!(fits)).await;
    next_is(&mut publisher, "chat:big", json!(fits)).await;
    assert_eq!(history_data(&server, "chat:big").await, vec![json!(fits)]);
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, r#"herald_publications_too_large_total{source="api"}"#),
        4.0
    );
    assert_eq!(
        metric(
            &m,
            r#"herald_publications_too_large_total{source="client"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "herald_disconnects_total"),
        0.0,
        "nobody was closed"
    );
}

fn feed_base(name: &str, kind: &str, url: String) -> FeedConfig {
    FeedConfig {
        name: name.into(),
        kind: kind.parse().expect("a feed kind"),
        url,
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        heartbeat_interval: Duration::from_millis(250),
        connect_timeout: Duration::from_secs(5),
        ..FeedConfig::default()
    }
}

async fn wait_connected(server: &TestServer, feed: &str) {
    let name = format!(r#"herald_feed_connects_total{{feed="{feed}"}}"#);
    let deadline = Instant::now() + WAIT;
    while metric(&server.metrics().await, &name) < 1.0 {
        assert!(Instant::now() < deadline, "feed {feed} never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn too_large_drops(server: &TestServer, feed: &str) -> f64 {
    metric(
        &server.metrics().await,
        &format!(r#"herald_feed_skipped_total{{feed="{feed}",reason="too_large"}}"#),
    )
}

/// The reported scenario: a 2 MB message on a Redis feed (over the feed's 1 MiB
/// `max_message_bytes`) and a 100 KB one (under it, over the 64 KiB publication limit). Neither
/// is published nor stored; subscribers stay connected and receive the next normal message.
#[tokio::test]
async fn an_oversized_redis_feed_message_is_dropped_and_counted_and_subscribers_stay() {
    let _serial = SERIAL.lock().await;
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let server = TestServer::with(|c| {
        c.channel.namespaces.push(open_namespace("market"));
        c.feeds.push(FeedConfig {
            subscribe: vec![format!("{prefix}:ticker:*")],
            channel: "market:{$source[2]}".into(),
            ..feed_base("stocks", "redis", test_redis())
        });
    })
    .await;
    let mut subscribers = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let mut client = server.client(user).await;
        client.subscribe("market:AAPL").await;
        subscribers.push(client);
    }
    wait_connected(&server, "stocks").await;
    let redis = redis::Client::open(test_redis()).expect("redis url");
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let channel = format!("{prefix}:ticker:AAPL");
    let mut publish = async |payload: String| {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(payload)
            .query_async(&mut conn)
            .await
            .expect("publish");
    };
    // Pub/sub is at-most-once: should the (debug-built, loaded) feed reconnect meanwhile, a
    // message is lost, so each one is published until its effect is seen.
    for (n, size) in [2_000_000, 100_000].into_iter().enumerate() {
        let mut counted = false;
        for _ in 0..5 {
            publish(json!({"p": blob(size)}).to_string()).await;
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline
                && too_large_drops(&server, "stocks").await < (n + 1) as f64
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if too_large_drops(&server, "stocks").await >= (n + 1) as f64 {
                counted = true;
                break;
            }
        }
        if !counted {
            let m = server.metrics().await;
            let feed: Vec<&str> = m.lines().filter(|l| l.contains("feed")).collect();
            panic!("the {size}-byte message was not counted: {feed:#?}");
        }
    }
    for client in &mut subscribers {
        while let Some(message) = client.next_within(Duration::from_millis(200)).await {
            assert!(
                message["push"]["pub"].is_null(),
                "nothing published: {message}"
            );
        }
    }
    let mut arrived = false;
    for _ in 0..10 {
        publish(json!({"p": 231.5}).to_string()).await;
        if let Some(message) = subscribers[0]
            .next_within(Duration::from_millis(1000))
            .await
        {
            assert_eq!(
                message["push"]["pub"]["data"],
                json!({"p": 231.5}),
                "{message}"
            );
            arrived = true;
            break;
        }
    }
    assert!(arrived, "the next normal message reaches the subscribers");
    for client in &mut subscribers[1..] {
        next_is(client, "market:AAPL", json!({"p": 231.5})).await;
    }
    for client in &mut subscribers {
        client.assert_alive().await;
    }
    assert_eq!(too_large_drops(&server, "stocks").await, 2.0);
    let history = history_data(&server, "market:AAPL").await;
    assert!(
        !history.is_empty() && history.iter().all(|d| *d == json!({"p": 231.5})),
        "history holds only the normal message: {} items",
        history.len()
    );
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, "herald_disconnects_total"),
        0.0,
        "nobody was closed"
    );
    assert_eq!(
        metric(&m, r#"herald_feed_connects_total{feed="stocks"}"#),
        1.0,
        "the feed kept its Redis connection"
    );
    assert_eq!(
        metric(&m, r#"herald_publications_too_large_total{source="feed"}"#),
        1.0,
        "the 2 MB message never reached the publish path (the 100 KB one did, and was refused)"
    );
}

#[tokio::test]
async fn oversized_websocket_and_nats_feed_publications_are_dropped_and_counted() {
    let _serial = SERIAL.lock().await;
    let upstream = FakeUpstream::start().await;
    let subject = format!("t{}", uuid::Uuid::new_v4().simple());
    let server = TestServer::with(|c| {
        small_publications(c);
        c.feeds.push(FeedConfig {
            channel: "market:{/s}".into(),
            ..feed_base("ws", "websocket", upstream.url())
        });
        c.feeds.push(FeedConfig {
            subscribe: vec![format!("{subject}.>")],
            channel: "market:{/s}".into(),
            ..feed_base("nats", "nats", test_nats())
        });
    })
    .await;
    let mut client = server.client("alice").await;
    client.subscribe("market:W").await;
    client.subscribe("market:N").await;
    wait_connected(&server, "ws").await;
    wait_connected(&server, "nats").await;

    upstream.send(&json!({"s": "W", "p": blob(10_000)}).to_string());
    upstream.send(&json!({"s": "W", "p": 1}).to_string());
    next_is(&mut client, "market:W", json!({"s": "W", "p": 1})).await;

    let nats = async_nats::connect(test_nats()).await.expect("nats");
    for payload in [
        json!({"s": "N", "p": blob(10_000)}).to_string(),
        json!({"s": "N", "p": 2}).to_string(),
    ] {
        nats.publish(format!("{subject}.x"), payload.into())
            .await
            .expect("nats publish");
    }
    nats.flush().await.expect("flush");
    next_is(&mut client, "market:N", json!({"s": "N", "p": 2})).await;

    assert_eq!(too_large_drops(&server, "ws").await, 1.0);
    assert_eq!(too_large_drops(&server, "nats").await, 1.0);
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, r#"herald_feed_connects_total{feed="ws"}"#),
        1.0,
        "the WebSocket upstream was kept"
    );
    assert_eq!(
        metric(&m, r#"herald_publications_too_large_total{source="feed"}"#),
        2.0
    );
    assert_eq!(history_data(&server, "market:W").await.len(), 1);
    client.assert_alive().await;
}

#[test]
fn the_publication_limit_must_fit_the_outbox() {
    let mut config = test_config();
    config.channel.max_publication_bytes = Some((1 << 20) / 4 + 1);
    let error = config
        .validate()
        .expect_err("over a quarter of the outbox")
        .to_string();
    assert!(
        error.contains("channel.max_publication_bytes")
            && error.contains("client.max_outbox_bytes"),
        "{error}"
    );
    config.channel.max_publication_bytes = Some(0);
    assert!(config
        .validate()
        .expect_err("zero")
        .to_string()
        .contains("channel.max_publication_bytes"));
    config.channel.max_publication_bytes = None;
    config.client.max_outbox_bytes = 8192;
    config.validate().expect("unset follows a smaller outbox");
    assert_eq!(config.max_publication_bytes(), 2048);
    config.channel.max_streams = 0;
    assert!(config
        .validate()
        .expect_err("zero")
        .to_string()
        .contains("channel.max_streams"));
}

/// A client that asks to recover a whole history (offset 0 of a deep stream) gets at most the
/// namespace's `recovery_max_publications`, and at most `client.max_outbox_bytes` of their data:
/// the oldest missed publications, answered `recovered: false` and counted. An honest recovery
/// of a few publications is still exact.
#[tokio::test]
async fn a_recovery_of_a_whole_history_is_bounded_in_count_and_bytes() {
    let _serial = SERIAL.lock().await;
    recovery_is_bounded(|_| {}).await;
}

/// The same through Redis, whose read takes only the bound from the stream.
#[tokio::test]
async fn a_recovery_through_redis_is_bounded_the_same() {
    let _serial = SERIAL.lock().await;
    let share = Broker::Redis.share("recovery_bound");
    recovery_is_bounded(|c| share.configure(c)).await;
}

/// And through NATS, whose read stops walking the stream at the bound.
#[tokio::test]
async fn a_recovery_through_nats_is_bounded_the_same() {
    let _serial = SERIAL.lock().await;
    let share = Broker::Nats.share("recovery_bound");
    recovery_is_bounded(|c| share.configure(c)).await;
}

async fn recovery_is_bounded(broker: impl FnOnce(&mut Config)) {
    let server = TestServer::with(|c| {
        broker(c);
        c.client.max_outbox_bytes = 256 << 10;
        c.channel.max_publication_bytes = Some(4096);
        c.channel.namespaces.push(NamespaceOptions {
            history_size: 2000,
            recovery_max_publications: 100,
            ..readable("deep")
        });
        c.channel.namespaces.push(NamespaceOptions {
            history_size: 2000,
            recovery_max_publications: 2000,
            ..readable("wide")
        });
    })
    .await;
    assert!(server.wait_ready(WAIT).await, "connected to the broker");
    let pad = "x".repeat(2000);
    let mut epochs = Vec::new();
    for channel in ["deep:log", "wide:log"] {
        let mut first = server.client("writer").await;
        let sub = first.subscribe(channel).await;
        epochs.push(sub["epoch"].as_str().expect("epoch").to_string());
        for n in 1..=1000 {
            server
                .api_ok(
                    "publish",
                    json!({"channel": channel, "data": {"n": n, "pad": pad}}),
                )
                .await;
        }
    }

    // By count: 100 of the 1,000 missed, the oldest first.
    let mut attacker = server.client("mallory").await;
    let (recovered, offsets) = resubscribe(&mut attacker, "deep:log", 0, &epochs[0]).await;
    assert!(!recovered, "a cut recovery is not recovered");
    assert_eq!(offsets, (1..=100).collect::<Vec<u64>>());
    // By bytes: 2,000-byte publications under a 256 KiB bound, though 2,000 are allowed.
    let (recovered, offsets) = resubscribe(&mut attacker, "wide:log", 0, &epochs[1]).await;
    assert!(!recovered);
    assert_eq!(offsets.first(), Some(&1));
    assert!(
        (100..=131).contains(&offsets.len()),
        "{} publications of ~2 KiB under 256 KiB",
        offsets.len()
    );
    let m = server.metrics().await;
    assert_eq!(metric(&m, "herald_client_recovery_capped_total"), 2.0);

    // An honest client that missed five recovers them exactly.
    let mut honest = server.client("alice").await;
    let (recovered, offsets) = resubscribe(&mut honest, "deep:log", 995, &epochs[0]).await;
    assert!(recovered);
    assert_eq!(offsets, vec![996, 997, 998, 999, 1000]);
    // And live publications follow the cut recovery without a gap past the top.
    server
        .api_ok(
            "publish",
            json!({"channel": "deep:log", "data": {"n": 1001}}),
        )
        .await;
    assert_eq!(attacker.publication("deep:log").await["offset"], 1001);
    attacker.assert_alive().await;
}

/// A node whose Redis connection receives more than it can fan out holds at most
/// `broker.max_queued_messages` of the backlog: it gives the connection up and reconnects, and a
/// subscriber of the channel that missed publications is told (2500) and recovers every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_its_redis_connection_by_a_whole_queue_reconnects_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    behind_by_a_whole_queue(Broker::Redis).await;
}

/// The same on a Redis Cluster, whose sharded messages come through the same bounded queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_its_redis_cluster_connection_reconnects_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    behind_by_a_whole_queue(Broker::RedisCluster).await;
}

async fn behind_by_a_whole_queue(broker: Broker) {
    let share = broker.share("queue_overflow");
    let cluster = share
        .cluster_with(2, |c| {
            c.broker.max_queued_messages = 8;
            c.channel.namespaces.push(NamespaceOptions {
                history_size: 1000,
                recovery_max_publications: 1000,
                ..readable("flood")
            });
        })
        .await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    // Node b fans every message out to 1,000 connections, far slower than node a publishes (all
    // at once: a parallel batch goes to Redis pipelined).
    let mut crowd = Vec::new();
    for i in 0..1000 {
        let mut client = b.client(&format!("crowd{i}")).await;
        client.subscribe("flood:x").await;
        crowd.push(client);
    }
    let mut alice = b.client("alice").await;
    let sub = alice.subscribe("flood:x").await;
    let epoch = sub["epoch"].as_str().expect("epoch").to_string();
    let commands: Vec<Value> = (1..=400)
        .map(|n| json!({"publish": {"channel": "flood:x", "data": {"n": n}}}))
        .collect();
    a.api_ok("batch", json!({"commands": commands, "parallel": true}))
        .await;

    // Live publications until the gap notice, then a recovery of the rest.
    let (code, mut offsets) = unsubscribe_push(&mut alice, "flood:x").await;
    assert_eq!(code, 2500, "told of the gap");
    assert!(b.wait_ready(WAIT).await, "node b reconnected");
    let last = offsets.last().copied().unwrap_or(0);
    let (recovered, rest) = resubscribe(&mut alice, "flood:x", last, &epoch).await;
    assert!(recovered, "the missed publications are in history");
    offsets.extend(rest);
    offsets.extend(offsets_until_quiet(&mut alice, "flood:x", Duration::from_millis(500)).await);
    assert_eq!(offsets, (1..=400).collect::<Vec<u64>>());
    let m = b.metrics().await;
    assert!(metric(&m, "herald_broker_reconnects_total") >= 1.0, "{m}");
    drop(crowd);
}
