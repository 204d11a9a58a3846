//! Smoke runs of every herald-bench scenario against in-process Herald servers, so the load
//! generator keeps working as the server evolves. Tiny numbers and seconds each: these check that
//! each scenario runs and reports sane, non-zero results, never how fast anything is (the numbers
//! live in docs/benchmarks.md, from bench/run.sh). The Node.js peers are covered by
//! `bench/run.sh smoke`, which needs npm.

use herald::app::server::Server;
use herald::config::Config;
use herald_bench::broadcast::{self, BroadcastArgs, PublishVia};
use herald_bench::chat::{self, ChatArgs};
use herald_bench::common::Common;
use herald_bench::hostile::{self, HostileArgs};
use herald_bench::idle::{self, IdleArgs};
use herald_bench::livemap::{self, LiveMapArgs};
use herald_bench::market::{self, MarketArgs};
use herald_bench::wsclient::{Target, Wire};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;

/// The namespaces bench/run.sh configures, plus device ingest when `store` is given.
fn config(dir: &tempfile::TempDir, store: Option<&str>) -> Config {
    let mut text = String::from(
        r#"
[http]
listen = "127.0.0.1:0"
[client.token]
hmac_secret = "bench-secret"
[api]
key = "bench-key"
[client]
command_rate = 100000
command_burst = 100000
[channel.without_namespace]
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
[[channel.namespaces]]
name = "chat"
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
[[channel.namespaces]]
name = "md"
allow_subscribe_for_client = true
history_size = 10
history_ttl = "1m"
batch_window = "100ms"
conflation_key = "/s"
[[channel.namespaces]]
name = "devices"
allow_subscribe_for_client = true
history_size = 100
history_ttl = "1m"
batch_window = "200ms"
conflation_key = "/device"
[[channel.namespaces]]
name = "pusher"
[pusher]
client_event_rate = 100000
[[pusher.apps]]
id = "bench-app"
key = "bench-app-key"
secret = "bench-app-secret"
namespace = "pusher"
client_events = true
"#,
    );
    if let Some(store) = store {
        let spool = dir.path().join("spool");
        text.push_str(&format!(
            "[devices]\nenabled = true\nspool_dir = {:?}\nstore = {store:?}\n\
             [devices.listen]\ngt06 = \"127.0.0.1:0\"\nh02 = \"\"\nteltonika = \"\"\nosmand = \"\"\njsonl = \"\"\n",
            spool.display().to_string()
        ));
    }
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, text).expect("write config");
    Config::load(Some(&path), Vec::new(), &[]).expect("bench config loads")
}

fn common(servers: Vec<SocketAddr>) -> Common {
    Common {
        servers,
        api: None,
        secret: "bench-secret".into(),
        api_key: "bench-key".into(),
        ramp_concurrency: 10,
        connect_rate: 0,
        server_pids: vec![std::process::id()],
        json: None,
    }
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

async fn start() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(config(&dir, None)).await.expect("server");
    (dir, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_delivers_every_publication_to_every_subscriber() {
    broadcast_in(Wire::Json).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_to_protobuf_subscribers_delivers_every_publication() {
    broadcast_in(Wire::Protobuf).await;
}

async fn broadcast_in(format: Wire) {
    let (_dir, server) = start().await;
    let args = BroadcastArgs {
        common: common(vec![server.addr]),
        target: Target::Herald,
        pusher: Default::default(),
        settle: Duration::from_millis(10).into(),
        format,
        channel: "smoke".into(),
        subscribers: 20,
        rates: vec![100, 200],
        batch: 10,
        payload: 100,
        duration: Duration::from_millis(500).into(),
        drain: Duration::from_secs(5).into(),
        publish_via: PublishVia::Api,
        in_flight: 8,
        watcher: false,
    };
    let result = broadcast::run(args).await.expect("broadcast runs");
    assert_eq!(result["subscribers"], 20, "{result}");
    let steps = result["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{result}");
    for step in steps {
        let published = step["publications"].as_u64().expect("publications");
        assert!(published >= 10, "{step}");
        assert_eq!(step["deliveries"].as_u64(), Some(published * 20), "{step}");
        assert!(f(&step["latency_ms"]["p50"]) > 0.0, "{step}");
        assert!(f(&step["server_rss_mib"]) > 0.0, "{step}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_publisher_reaches_every_subscriber_with_a_bounded_window() {
    client_publisher(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_publisher_paced_by_a_watcher_reaches_every_subscriber() {
    client_publisher(true).await;
}

async fn client_publisher(watcher: bool) {
    let (_dir, server) = start().await;
    let args = BroadcastArgs {
        common: common(vec![server.addr]),
        target: Target::Herald,
        pusher: Default::default(),
        settle: Duration::from_millis(10).into(),
        format: Wire::Json,
        channel: "smoke".into(),
        subscribers: 20,
        rates: vec![200],
        batch: 10,
        payload: 100,
        duration: Duration::from_millis(500).into(),
        drain: Duration::from_secs(5).into(),
        publish_via: PublishVia::Client,
        in_flight: 4,
        watcher,
    };
    let result = broadcast::run(args)
        .await
        .expect("client-publish broadcast runs");
    let paced_by = if watcher { "watcher" } else { "publisher" };
    assert_eq!(result["paced_by"], paced_by, "{result}");
    assert_eq!(result["publish_via"], "client", "{result}");
    assert_eq!(result["in_flight"], 4, "{result}");
    let step = &result["steps"][0];
    let published = step["publications"].as_u64().expect("publications");
    assert!(published >= 10, "{step}");
    // The publisher is a subscriber too, but only the 20 measured subscribers count.
    assert_eq!(step["deliveries"].as_u64(), Some(published * 20), "{step}");
    assert!(f(&step["latency_ms"]["p50"]) > 0.0, "{step}");
    server.shutdown().await;
}

/// The broadcast over the Pusher protocol: subscribers of a `private-` channel (signed with the
/// app secret), publications as client events from one more connection, or through the Pusher
/// HTTP API's `batch_events` to a public channel.
async fn pusher_broadcast(via: PublishVia, channel: &str) {
    let (_dir, server) = start().await;
    let args = BroadcastArgs {
        common: common(vec![server.addr]),
        target: Target::Pusher,
        pusher: Default::default(),
        settle: Duration::from_millis(10).into(),
        format: Wire::Json,
        channel: channel.into(),
        subscribers: 20,
        rates: vec![200],
        batch: 20,
        payload: 100,
        duration: Duration::from_millis(500).into(),
        drain: Duration::from_secs(5).into(),
        publish_via: via,
        in_flight: 4,
        watcher: false,
    };
    let result = broadcast::run(args).await.expect("Pusher broadcast runs");
    assert_eq!(result["target"], "pusher", "{result}");
    assert_eq!(result["subscribers"], 20, "{result}");
    assert_eq!(result["connect_errors"], 0, "{result}");
    assert!(f(&result["server_rss_subscribed_mib"]) > 0.0, "{result}");
    let step = &result["steps"][0];
    let published = step["publications"].as_u64().expect("publications");
    assert!(published >= 10, "{step}");
    assert_eq!(step["deliveries"].as_u64(), Some(published * 20), "{step}");
    assert!(f(&step["latency_ms"]["p50"]) > 0.0, "{step}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_client_events_reach_every_subscriber_of_a_private_channel() {
    pusher_broadcast(PublishVia::Client, "private-smoke").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pusher_api_batches_reach_every_subscriber_of_a_public_channel() {
    pusher_broadcast(PublishVia::Api, "smoke").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_holds_connections_and_measures_memory() {
    let (_dir, server) = start().await;
    let args = IdleArgs {
        common: common(vec![server.addr]),
        connections: 50,
        channel: "idle".into(),
        per_process: 1000,
        hold: Duration::from_millis(300).into(),
        child: false,
        first: 0,
    };
    let result = idle::run(args).await.expect("idle runs");
    assert_eq!(result["connections"], 50, "{result}");
    assert_eq!(result["errors"], 0, "{result}");
    assert!(
        result["server_process_kib_per_connection"].is_number(),
        "{result}"
    );
    assert!(f(&result["connections_per_second"]) > 0.0, "{result}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_members_receive_their_rooms_messages() {
    let (_dir, server) = start().await;
    let args = ChatArgs {
        common: common(vec![server.addr]),
        rooms: 3,
        members: 4,
        interval: Duration::from_millis(200).into(),
        payload: 100,
        namespace: "chat".into(),
        duration: Duration::from_secs(1).into(),
    };
    let result = chat::run(args).await.expect("chat runs");
    assert_eq!(result["connections"], 12, "{result}");
    let step = &result["steps"][0];
    // Each member sends ~5 and receives its room's ~20 in a second; allow for the edges.
    assert!(step["deliveries"].as_u64().unwrap_or(0) >= 100, "{result}");
    assert!(f(&step["latency_ms"]["p99"]) > 0.0, "{result}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn market_data_is_conflated() {
    let (_dir, server) = start().await;
    let args = MarketArgs {
        common: common(vec![server.addr]),
        symbols: 50,
        clients: 10,
        per_client: 5,
        rate: 2000,
        batch: 50,
        payload: 100,
        namespace: "md".into(),
        duration: Duration::from_secs(1).into(),
    };
    let result = market::run(args).await.expect("market runs");
    let step = &result["steps"][0];
    let deliveries = step["deliveries"].as_u64().unwrap_or(0);
    assert!(deliveries > 0, "{result}");
    // 2,000 ticks to 10 clients × 5 of 50 symbols would be ~2,000 deliveries unconflated; 100 ms
    // windows let through at most ~10 per symbol-follower per second.
    assert!(f(&step["conflation_ratio"]) > 1.0, "{result}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_harness_spreads_subscribers_over_nodes() {
    // Two independent nodes with the memory broker: only the first node's subscribers receive
    // the publications. With a real broker (bench/run.sh cluster, CLUSTER_CONFIG) all would.
    let (_a, first) = start().await;
    let (_b, second) = start().await;
    let args = BroadcastArgs {
        format: Wire::Json,
        common: common(vec![first.addr, second.addr]),
        target: Target::Herald,
        pusher: Default::default(),
        settle: Duration::from_millis(10).into(),
        channel: "cluster".into(),
        subscribers: 10,
        rates: vec![100],
        batch: 10,
        payload: 100,
        duration: Duration::from_millis(500).into(),
        drain: Duration::from_millis(500).into(),
        publish_via: PublishVia::Api,
        in_flight: 8,
        watcher: false,
    };
    let result = broadcast::run(args).await.expect("cluster runs");
    assert_eq!(result["scenario"], "cluster");
    assert_eq!(result["nodes"], 2);
    let step = &result["steps"][0];
    let published = step["publications"].as_u64().unwrap_or(0);
    assert_eq!(step["deliveries"].as_u64(), Some(published * 5), "{result}");
    first.shutdown().await;
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_map_decodes_persists_and_delivers_positions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = format!("sqlite:{}", dir.path().join("positions.db").display());
    let server = Server::start(config(&dir, Some(&store)))
        .await
        .expect("server with devices");
    let gt06 = server.device_addrs.gt06.expect("gt06 listener");
    let args = LiveMapArgs {
        common: common(vec![server.addr]),
        gt06,
        devices: 10,
        interval: Duration::from_millis(250).into(),
        viewers: 2,
        fleet_channel: "devices:fleet".into(),
        first_imei: 861_000_000_000_000,
        duration: Duration::from_secs(2).into(),
        persist_wait: Duration::from_secs(10).into(),
    };
    let result = livemap::run(args).await.expect("livemap runs");
    assert_eq!(result["devices_logged_in"], 10, "{result}");
    let acked = result["positions_acknowledged"].as_u64().unwrap_or(0);
    assert!(acked >= 40, "{result}");
    assert_eq!(
        result["positions_persisted"].as_u64(),
        Some(acked),
        "{result}"
    );
    assert!(
        result["steps"][0]["deliveries"].as_u64().unwrap_or(0) > 0,
        "{result}"
    );
    server.shutdown().await;
}

/// Production defaults plus what the hostile soak needs (bench/run.sh hostile): history on the
/// honest namespace, a big-history namespace, and device listeners (GT06 and OsmAnd).
fn hostile_config(dir: &tempfile::TempDir) -> Config {
    let text = format!(
        r#"
[http]
listen = "127.0.0.1:0"
[client.token]
hmac_secret = "bench-secret"
[api]
key = "bench-key"
[[channel.namespaces]]
name = "live"
allow_subscribe_for_client = true
history_size = 100
history_ttl = "5m"
[[channel.namespaces]]
name = "big"
allow_subscribe_for_client = true
allow_history_for_client = true
history_size = 1000
history_ttl = "10m"
[devices]
enabled = true
spool_dir = {spool:?}
store = {store:?}
[devices.listen]
gt06 = "127.0.0.1:0"
h02 = ""
teltonika = ""
osmand = "127.0.0.1:0"
jsonl = ""
"#,
        spool = dir.path().join("spool").display().to_string(),
        store = format!("sqlite:{}", dir.path().join("positions.db").display()),
    );
    let path = dir.path().join("hostile.toml");
    std::fs::write(&path, text).expect("write config");
    Config::load(Some(&path), Vec::new(), &[]).expect("hostile config loads")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_soak_runs_every_attack_and_accounts_for_every_honest_publication() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(hostile_config(&dir)).await.expect("server");
    let args = HostileArgs {
        common: common(vec![server.addr]),
        subscribers: 40,
        busy_subscribers: 5,
        namespace: "live".into(),
        channels: 2,
        rate: 100,
        payload: 100,
        busy_rate: 20,
        busy_payload: 4096,
        batch: 10,
        duration: Duration::from_secs(3).into(),
        drain: Duration::from_secs(5).into(),
        big_channel: "big:amplify".into(),
        history_fill: 100,
        history_entry_bytes: 1000,
        hostile_scale: 0.05,
        amplifier_burst: 20,
        bomb_commands: 2000,
        oversize_bytes: 100_000,
        victims: 2,
        device_tcp: vec![server.device_addrs.gt06.expect("gt06 listener")],
        osmand: server.device_addrs.osmand,
        skip: vec![],
    };
    let result = hostile::run(args).await.expect("hostile runs");
    let honest = &result["honest"];
    assert_eq!(result["passed"], true, "{result:#}");
    assert_eq!(honest["connected"], 40, "{honest}");
    assert_eq!(honest["lost"], 0, "{honest}");
    let expected = honest["expected_deliveries"].as_u64().unwrap_or(0);
    assert!(expected >= 35 * 100, "{honest}");
    assert_eq!(
        honest["received_deliveries"].as_u64(),
        Some(expected),
        "{honest}"
    );
    assert!(f(&honest["latency_ms"]["p99"]) > 0.0, "{honest}");
    assert!(f(&result["server"]["server_fds_peak"]) > 0.0, "{result}");
    assert!(
        f(&result["server"]["server_rss_peak_mib"]) > 0.0,
        "{result}"
    );
    let kinds = [
        "ping_flood_anonymous",
        "ping_flood_authenticated",
        "history_amplifier",
        "slowloris",
        "idle_tcp",
        "huge_frame",
        "bad_frame",
        "stalled_subscriber",
        "new_channel_names",
        "device_silent",
        "osmand_unknown_ids",
        "connection_churn",
        "batch_bomb",
        "oversized_publication",
    ];
    for kind in kinds {
        let k = &result["hostile"][kind];
        let opened = k["opened"].as_u64().unwrap_or(0);
        assert!(opened >= 1, "{kind} never opened: {k}");
        // Every connection is accounted for: it ended in some way, or was still open at the end.
        let ended: u64 = k["outcomes"]
            .as_object()
            .map(|o| o.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        assert_eq!(ended, opened, "{kind}: {k}");
    }
    // Every invalid frame variant was tried; the server's answers are reported, not asserted here
    // (crates/herald/tests assert them).
    assert!(result["hostile"]["bad_frame"]["opened"].as_u64() >= Some(12));
    server.shutdown().await;
}
