//! Storm control through real sockets: per-channel windows and conflation (frames counted), max
//! rate, snapshot on subscribe, conflated recovery, slow consumers, the node-wide outbox budget,
//! and inbound connection limits.

mod support;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;
use tokio_websockets::Message;

/// A namespace for storm tests: history (needed by conflation), client subscribe, no join/leave noise.
fn storm_namespace(name: &str) -> herald::config::NamespaceOptions {
    herald::config::NamespaceOptions {
        name: name.into(),
        history_size: 1000,
        history_ttl: Duration::from_secs(300),
        allow_subscribe_for_client: true,
        ..Default::default()
    }
}

async fn quiet_server(change: impl FnOnce(&mut herald::config::Config)) -> TestServer {
    TestServer::with(|c| {
        c.channel.without_namespace.join_leave = false;
        c.channel.without_namespace.force_push_join_leave = false;
        change(c);
    })
    .await
}

/// Reads one WebSocket frame and returns the messages it carries (answers pings on the way).
async fn next_frame(client: &mut Client, wait: Duration) -> Option<Vec<Value>> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let message = tokio::time::timeout_at(deadline, client.ws.next())
            .await
            .ok()??
            .ok()?;
        let text = message.as_text()?.to_string();
        if text == "{}" {
            client.ws.send(Message::text("{}")).await.ok()?;
            continue;
        }
        return Some(
            text.split('\n')
                .map(|l| serde_json::from_str(l).expect("JSON line"))
                .collect(),
        );
    }
}

async fn publish(server: &TestServer, channel: &str, data: Value) {
    let raw = serde_json::value::RawValue::from_string(data.to_string()).unwrap();
    server
        .node()
        .publish(channel, raw, None, Default::default(), "test")
        .await
        .unwrap();
}

/// (symbol tag, price) of each publication, in order.
fn symbol_prices(publications: &[Value]) -> Vec<(String, i64)> {
    publications
        .iter()
        .map(|p| {
            (
                p["tags"]["symbol"].as_str().unwrap().to_string(),
                p["data"]["px"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// (data[key], data[value]) of each publication push in a frame, in order.
fn key_values(frame: &[Value], key: &str, value: &str) -> Vec<(String, i64)> {
    frame
        .iter()
        .map(|m| {
            (
                pub_data(m)[key].as_str().unwrap().to_string(),
                pub_data(m)[value].as_i64().unwrap(),
            )
        })
        .collect()
}

fn pub_data(message: &Value) -> &Value {
    &message["push"]["pub"]["data"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_map_100_devices_to_100_viewers_costs_one_frame_per_window() {
    let server = quiet_server(|c| {
        c.channel.namespaces.push(herald::config::NamespaceOptions {
            batch_window: Duration::from_secs(1),
            conflation_key: "/device".into(),
            ..storm_namespace("fleet")
        })
    })
    .await;
    let mut viewers = Vec::new();
    for i in 0..100 {
        let mut viewer = server.client(&format!("viewer{i}")).await;
        viewer.subscribe("fleet:positions").await;
        viewers.push(viewer);
    }
    let frames_before = metric(&server.metrics().await, "herald_frames_out_total");
    // 100 devices at 1 Hz for 3 seconds, spread evenly over each second.
    let node_server = &server;
    let rounds = 3;
    let started = Instant::now();
    for round in 0..rounds {
        for device in 0..100 {
            publish(
                node_server,
                "fleet:positions",
                json!({"device": format!("d{device}"), "lat": round, "lon": device}),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let publishing = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let frames = metric(&server.metrics().await, "herald_frames_out_total") - frames_before;
    // Without windows: 300 publications x 100 viewers = 30,000 frames. With a 1 s window: about one
    // frame per viewer per second of publishing (plus the first, sent at once, and the last).
    let windows = publishing.ceil() + 2.0;
    assert!(
        frames <= 100.0 * windows,
        "{frames} frames for 100 viewers over {publishing:.1} s of publishing"
    );
    assert!(
        frames >= 100.0 * 3.0,
        "{frames} frames: every viewer got every window"
    );
    // Every viewer ends with the last position of every device.
    for viewer in viewers.iter_mut().take(5) {
        let mut last = std::collections::HashMap::new();
        while let Some(frame) = next_frame(viewer, Duration::from_millis(200)).await {
            for message in frame {
                let data = pub_data(&message);
                last.insert(
                    data["device"].as_str().unwrap().to_string(),
                    data["lat"].as_i64().unwrap(),
                );
            }
        }
        assert_eq!(last.len(), 100);
        assert!(
            last.values().all(|lat| *lat == rounds - 1),
            "latest round for every device"
        );
    }
}

#[tokio::test]
async fn conflation_delivers_only_the_latest_value_per_key_in_a_window() {
    let server = quiet_server(|c| {
        c.channel.namespaces.push(herald::config::NamespaceOptions {
            batch_window: Duration::from_millis(300),
            conflation_key: "/sym".into(),
            ..storm_namespace("quotes")
        })
    })
    .await;
    let mut client = server.client("alice").await;
    client.subscribe("quotes:all").await;
    publish(&server, "quotes:all", json!({"sym": "W", "px": 0})).await;
    let first = next_frame(&mut client, WAIT).await.unwrap();
    assert_eq!(
        first.len(),
        1,
        "the first publication after a quiet period goes out at once"
    );
    for (sym, px) in [("A", 1), ("B", 1), ("A", 2), ("A", 3), ("B", 2)] {
        publish(&server, "quotes:all", json!({"sym": sym, "px": px})).await;
    }
    let frame = next_frame(&mut client, WAIT).await.unwrap();
    let values = key_values(&frame, "sym", "px");
    assert_eq!(
        values,
        vec![("A".to_string(), 3), ("B".to_string(), 2)],
        "one frame, latest per key, in offset order"
    );
    assert!(next_frame(&mut client, Duration::from_millis(500))
        .await
        .is_none());
}

#[tokio::test]
async fn windows_of_one_interval_end_together_so_a_follower_of_many_gets_one_frame() {
    let server = quiet_server(|c| {
        c.channel.namespaces.push(herald::config::NamespaceOptions {
            batch_window: Duration::from_millis(300),
            conflation_key: "/sym".into(),
            ..storm_namespace("md")
        })
    })
    .await;
    let mut client = server.client("alice").await;
    let symbols = ["md:A", "md:B", "md:C", "md:D"];
    for channel in symbols {
        client.subscribe(channel).await;
    }
    // Open each channel's window at a different moment: each first publication goes out at once.
    for channel in symbols {
        publish(&server, channel, json!({"sym": channel, "px": 0})).await;
        assert_eq!(next_frame(&mut client, WAIT).await.unwrap().len(), 1);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // A tick on every channel, while all four windows are open: they end on one grid point.
    for channel in symbols {
        publish(&server, channel, json!({"sym": channel, "px": 1})).await;
    }
    let frame = next_frame(&mut client, WAIT).await.unwrap();
    let mut values = key_values(&frame, "sym", "px");
    values.sort();
    let expected: Vec<(String, i64)> = symbols.iter().map(|c| (c.to_string(), 1)).collect();
    assert_eq!(values, expected, "all four windows in one frame");
    assert!(next_frame(&mut client, Duration::from_millis(500))
        .await
        .is_none());
}

#[tokio::test]
async fn a_steady_stream_is_delivered_once_per_interval_not_less() {
    let server = quiet_server(|c| {
        c.channel.namespaces.push(herald::config::NamespaceOptions {
            batch_window: Duration::from_millis(200),
            ..storm_namespace("ticks")
        })
    })
    .await;
    let mut client = server.client("alice").await;
    client.subscribe("ticks:x").await;
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(2) {
        n += 1;
        publish(&server, "ticks:x", json!({"n": n})).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut frames = 0;
    let mut received = 0;
    while received < n {
        let frame = next_frame(&mut client, WAIT)
            .await
            .expect("every publication");
        frames += 1;
        received += frame.len();
    }
    // 2 s of 200 ms windows: about 10 deliveries. A window that ended one interval late each
    // time would give about 5.
    assert!(
        (8..=14).contains(&frames),
        "{frames} frames for {n} publications over 2 s with a 200 ms window"
    );
}

#[tokio::test]
async fn max_rate_defers_without_losing_in_order() {
    let server = quiet_server(|c| {
        c.channel.namespaces.push(herald::config::NamespaceOptions {
            max_rate: 5,
            ..storm_namespace("feed")
        })
    })
    .await;
    let mut client = server.client("alice").await;
    client.subscribe("feed:x").await;
    let started = Instant::now();
    for n in 0..50 {
        publish(&server, "feed:x", json!({"n": n})).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut seen = Vec::new();
    let mut frames = 0;
    while seen.len() < 50 {
        let frame = next_frame(&mut client, WAIT)
            .await
            .expect("all publications arrive");
        frames += 1;
        seen.extend(frame.iter().map(|m| pub_data(m)["n"].as_i64().unwrap()));
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(
        seen,
        (0..50).collect::<Vec<_>>(),
        "deferred in order, nothing lost"
    );
    assert!(
        f64::from(frames) <= elapsed * 5.0 + 2.0,
        "{frames} frames in {elapsed:.2}s at max_rate 5"
    );
}

#[tokio::test]
async fn subscribe_snapshot_then_conflated_recovery() {
    let server = quiet_server(|c| {
        c.channel.namespaces.push(herald::config::NamespaceOptions {
            conflation_key: "tag:symbol".into(),
            force_recovery: true,
            history_size: 5,
            ..storm_namespace("md")
        })
    })
    .await;
    let tagged = |symbol: &str, px: i64| json!({"channel": "md:ticks", "data": {"px": px}, "tags": {"symbol": symbol}});
    for (symbol, px) in [("AAPL", 1), ("MSFT", 1), ("AAPL", 2), ("GOOG", 1)] {
        server.api_ok("publish", tagged(symbol, px)).await;
    }
    let mut client = server.client("alice").await;
    let sub = client.subscribe("md:ticks").await;
    let snapshot: Vec<(String, i64)> = sub["publications"]
        .as_array()
        .map(|pubs| symbol_prices(pubs))
        .expect("publications in the subscribe reply");
    assert_eq!(
        snapshot,
        vec![("MSFT".into(), 1), ("AAPL".into(), 2), ("GOOG".into(), 1)]
    );
    let (offset, epoch) = (
        sub["offset"].as_u64().unwrap(),
        sub["epoch"].as_str().unwrap().to_string(),
    );
    assert_eq!(offset, 4);
    drop(client);

    // Missed while away: only the latest value of each changed key comes back.
    for (symbol, px) in [("AAPL", 3), ("AAPL", 4), ("MSFT", 2)] {
        server.api_ok("publish", tagged(symbol, px)).await;
    }
    let mut client = server.client("alice").await;
    let reply = client
        .call(
            "subscribe",
            json!({"channel": "md:ticks", "recover": true, "offset": offset, "epoch": epoch}),
        )
        .await;
    let sub = &reply["subscribe"];
    assert_eq!(sub["recovered"], true, "{reply}");
    let recovered: Vec<i64> = sub["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["data"]["px"].as_i64().unwrap())
        .collect();
    assert_eq!(recovered, vec![4, 2], "AAPL 4 and MSFT 2, not AAPL 3");
    let offset = sub["offset"].as_u64().unwrap();
    drop(client);

    // A gap larger than history (5): the whole snapshot instead, still a complete state.
    for px in 10..20 {
        server.api_ok("publish", tagged("GOOG", px)).await;
    }
    let mut client = server.client("alice").await;
    let reply = client
        .call(
            "subscribe",
            json!({"channel": "md:ticks", "recover": true, "offset": offset, "epoch": epoch}),
        )
        .await;
    assert_eq!(reply["subscribe"]["recovered"], true, "{reply}");
    let state: Vec<(String, i64)> = reply["subscribe"]["publications"]
        .as_array()
        .map(|pubs| symbol_prices(pubs))
        .expect("publications in the subscribe reply");
    assert_eq!(
        state,
        vec![("AAPL".into(), 4), ("MSFT".into(), 2), ("GOOG".into(), 19)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_of_a_conflated_channel_is_resynced_not_disconnected() {
    let server = quiet_server(|c| {
        c.client.max_outbox_bytes = 64 * 1024;
        c.client.send_buffer = 16 * 1024;
        c.client.pong_timeout = Duration::from_secs(30);
        // The client reads nothing while the values are published (seconds in a debug build).
        c.client.write_timeout = Duration::from_secs(30);
        c.channel.namespaces.push(herald::config::NamespaceOptions {
            conflation_key: "/key".into(),
            ..storm_namespace("state")
        })
    })
    .await;
    let mut slow = server.client("slow").await;
    slow.subscribe("state:big").await;
    // The client reads nothing while 2,000 values of 10 KB (20 MB) are published over 5 keys.
    let padding = "x".repeat(10_000);
    for n in 0..2000 {
        publish(
            &server,
            "state:big",
            json!({"key": n % 5, "n": n, "pad": padding}),
        )
        .await;
        if n % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let metrics = server.metrics().await;
    assert!(
        metric(&metrics, "herald_outbox_drops_total") > 0.0,
        "superseded values were dropped"
    );
    // Now it reads: it must end with the latest value of every key, connected.
    let mut last = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !(0..5).all(|k| last.get(&k) == Some(&(1995 + k))) {
        let Some(frame) = next_frame(&mut slow, Duration::from_secs(2)).await else {
            break;
        };
        for message in frame {
            let data = pub_data(&message);
            last.insert(data["key"].as_i64().unwrap(), data["n"].as_i64().unwrap());
        }
    }
    assert!(
        (0..5).all(|k| last.get(&k) == Some(&(1995 + k))),
        "latest value of every key: {last:?}"
    );
    slow.assert_alive().await;
    let metrics = server.metrics().await;
    assert_eq!(
        metric(&metrics, "herald_disconnects_total{reason=\"slow\"}"),
        0.0
    );
}

/// Tests that measure the process's RSS run one at a time, so they do not count each other.
static MEMORY_MEASURED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_stalled_clients_stay_within_the_node_budget() {
    let _serial = MEMORY_MEASURED.lock().await;
    const CLIENTS: usize = 1000;
    const BUDGET: usize = 16 << 20;
    const SIZE: usize = 10_000;
    let server = quiet_server(|c| {
        c.client.max_outbox_bytes = 1 << 20;
        c.client.outbox_budget = BUDGET;
        c.client.send_buffer = 16 * 1024;
        c.client.pong_timeout = Duration::from_secs(30);
        c.channel.namespaces.push(storm_namespace("busy"));
    })
    .await;
    let mut stalled = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let mut client = server.client(&format!("u{i}")).await;
        client.subscribe("busy:room").await;
        stalled.push(client);
    }
    let node = server.node().clone();
    let padding = "x".repeat(SIZE);
    let mut peak = 0i64;
    // Unbounded, this would queue 1,000 x 3 MB of outbox.
    for n in 0..300 {
        publish(&server, "busy:room", json!({"n": n, "pad": padding})).await;
        peak = peak.max(node.metrics.outbox_bytes.get());
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let bound = 2 * BUDGET + CLIENTS * (SIZE + 200);
    assert!(
        peak as usize <= bound,
        "peak outbox bytes {peak} above {bound}"
    );
    assert!(
        node.metrics.outbox_bytes.get() as usize <= BUDGET,
        "after a sweep the node is within its budget"
    );
    let shed = metric(
        &server.metrics().await,
        "herald_disconnects_total{reason=\"slow\"}",
    );
    assert!(shed > 0.0, "the slowest connections were shed");
    drop(stalled);
}

#[tokio::test]
async fn connection_rate_per_ip_and_connections_per_user() {
    let server = quiet_server(|c| {
        c.client.connection_rate_per_ip = 1;
        c.client.connection_burst_per_ip = 3;
        c.client.connections_per_user = 2;
    })
    .await;
    let mut alice1 = server.client("alice").await;
    let mut alice2 = server.client("alice").await;
    let mut alice3 = Client::open(&server.ws_url()).await;
    alice3
        .send(json!({"id": 1, "connect": {"token": token("alice")}}))
        .await;
    assert_eq!(
        alice3.closed().await,
        Closed::Code(3504, "connection limit".into())
    );
    alice1.assert_alive().await;
    alice2.assert_alive().await;
    let (status, _) = ws_handshake(server.addr).await;
    assert_eq!(
        status, 429,
        "the fourth new connection within a second from one address"
    );
    let text = server.metrics().await;
    assert_eq!(
        metric(
            &text,
            "herald_connections_refused_total{reason=\"ip rate\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_reader_on_a_busy_channel_is_closed_and_memory_stays_flat() {
    let _serial = MEMORY_MEASURED.lock().await;
    let server = quiet_server(|c| {
        c.client.max_outbox_bytes = 1 << 20;
        c.client.send_buffer = 16 * 1024;
        c.channel.namespaces.push(herald::config::NamespaceOptions {
            history_size: 10,
            ..storm_namespace("busy")
        })
    })
    .await;
    let mut stuck = server.client("stuck").await;
    stuck.subscribe("busy:feed").await;
    let mut reader = server.client("reader").await;
    reader.subscribe("busy:feed").await;
    let padding = "x".repeat(20_000);
    let rss_before = vm_rss_kib();
    let mut rss_peak = rss_before;
    // 60 MB through the channel while `stuck` reads nothing and `reader` keeps up: an unbounded
    // queue would keep most of it.
    for n in 0..3000 {
        publish(&server, "busy:feed", json!({"n": n, "pad": padding})).await;
        let publication = reader.publication("busy:feed").await;
        assert_eq!(publication["data"]["n"], n);
        if n % 250 == 0 {
            rss_peak = rss_peak.max(vm_rss_kib());
        }
    }
    let grown = rss_peak.saturating_sub(rss_before);
    eprintln!("stuck reader: RSS before {rss_before} KiB, peak {rss_peak} KiB (+{grown} KiB)");
    // Measured here, alone: +0.7 to +2.6 MB (outbox bound 1 MiB, history 10 x 20 KB, slack).
    assert!(
        grown < 24 * 1024,
        "RSS grew {grown} KiB while 60 MB passed a stuck client"
    );
    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "herald_disconnects_total{reason=\"slow\"}"),
        1.0,
        "the stuck client was closed as slow"
    );
    assert_eq!(
        server.node().hub.num_clients(),
        1,
        "only the reader is left"
    );
    drop(stuck);
}

#[tokio::test]
async fn a_window_bigger_than_one_frame_reaches_a_reading_client_whole() {
    let server = quiet_server(|c| {
        c.client.max_outbox_bytes = 256 * 1024;
        c.channel.namespaces.push(herald::config::NamespaceOptions {
            batch_window: Duration::from_millis(500),
            window_max_bytes: 128 * 1024,
            ..storm_namespace("bulk")
        })
    })
    .await;
    let mut client = server.client("alice").await;
    client
        .subscribe("bulk:a-rather-long-channel-name-for-the-size-estimate")
        .await;
    let padding = "x".repeat(10_000);
    // The first goes out at once; the next 20 (200 KB) fill one window beyond a 64 KiB frame.
    for n in 0..21 {
        publish(
            &server,
            "bulk:a-rather-long-channel-name-for-the-size-estimate",
            json!({"n": n, "pad": padding}),
        )
        .await;
    }
    let mut seen = Vec::new();
    while seen.len() < 21 {
        let frame = next_frame(&mut client, WAIT)
            .await
            .expect("the whole window arrives");
        seen.extend(frame.iter().map(|m| pub_data(m)["n"].as_i64().unwrap()));
    }
    assert_eq!(seen, (0..21).collect::<Vec<_>>());
    client.assert_alive().await;
    let e = herald::config::Config::load(
        None,
        std::iter::empty(),
        &[
            "client.max_outbox_bytes=100000".into(),
            "channel.without_namespace.batch_window=\"1s\"".into(),
        ],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("channel.without_namespace.window_max_bytes:"),
        "{e}"
    );
}

#[tokio::test]
async fn a_subscriber_joining_mid_window_gets_only_what_its_reply_lacked() {
    let server = quiet_server(|c| {
        c.channel.namespaces.push(herald::config::NamespaceOptions {
            batch_window: Duration::from_millis(400),
            force_recovery: true,
            ..storm_namespace("win")
        })
    })
    .await;
    let mut early = server.client("early").await;
    early.subscribe("win:c").await;
    publish(&server, "win:c", json!({"n": 1})).await; // goes out at once
    publish(&server, "win:c", json!({"n": 2})).await; // waits in the window
    publish(&server, "win:c", json!({"n": 3})).await;
    let mut late = server.client("late").await;
    let sub = late.subscribe("win:c").await;
    assert_eq!(
        sub["offset"], 3,
        "the reply's position already covers 2 and 3"
    );
    publish(&server, "win:c", json!({"n": 4})).await; // same window as 2 and 3
    let frame = next_frame(&mut late, WAIT).await.unwrap();
    let got: Vec<i64> = frame
        .iter()
        .map(|m| pub_data(m)["n"].as_i64().unwrap())
        .collect();
    assert_eq!(got, vec![4], "no duplicates of 2 and 3");
    let mut all = Vec::new();
    while all.len() < 4 {
        let frame = next_frame(&mut early, WAIT).await.unwrap();
        all.extend(frame.iter().map(|m| pub_data(m)["n"].as_i64().unwrap()));
    }
    assert_eq!(all, vec![1, 2, 3, 4]);
}

#[tokio::test(flavor = "current_thread")]
async fn an_overflowing_client_is_told_3008_slow() {
    let server = quiet_server(|c| {
        c.client.max_outbox_bytes = 8 * 1024;
        c.channel.namespaces.push(storm_namespace("burst"))
    })
    .await;
    let mut client = server.client("alice").await;
    client.subscribe("burst:x").await;
    // On one thread the whole burst is queued before the connection's task runs: 20 KB against
    // an 8 KiB outbox while the socket itself has room, so the close frame gets through.
    let padding = "x".repeat(1000);
    for n in 0..20 {
        publish(&server, "burst:x", json!({"n": n, "pad": padding})).await;
    }
    let (_, closed) = client.read_until_closed(WAIT).await;
    assert_eq!(closed, Some(Closed::Code(3008, "slow".into())));
}

#[tokio::test(flavor = "current_thread")]
async fn many_tiny_messages_overflow_the_item_bound() {
    let server = quiet_server(|c| {
        c.client.max_outbox_messages = 50;
        c.channel.namespaces.push(storm_namespace("tiny"))
    })
    .await;
    let mut client = server.client("alice").await;
    client.subscribe("tiny:x").await;
    for n in 0..60 {
        publish(&server, "tiny:x", json!(n)).await;
    }
    let (_, closed) = client.read_until_closed(WAIT).await;
    assert_eq!(
        closed,
        Some(Closed::Code(3008, "slow".into())),
        "60 tiny items against a bound of 50"
    );
    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "herald_disconnects_total{reason=\"slow\"}"),
        1.0
    );
}

#[tokio::test]
async fn max_rate_with_a_key_conflates_the_excess() {
    let server = quiet_server(|c| {
        c.channel.namespaces.push(herald::config::NamespaceOptions {
            max_rate: 2,
            conflation_key: "/k".into(),
            ..storm_namespace("slowfeed")
        })
    })
    .await;
    let mut client = server.client("alice").await;
    client.subscribe("slowfeed:x").await;
    publish(&server, "slowfeed:x", json!({"k": "a", "v": 0})).await;
    assert_eq!(
        next_frame(&mut client, WAIT).await.unwrap().len(),
        1,
        "the first goes out at once"
    );
    for v in 1..=20 {
        publish(
            &server,
            "slowfeed:x",
            json!({"k": if v % 2 == 0 { "a" } else { "b" }, "v": v}),
        )
        .await;
    }
    let frame = next_frame(&mut client, WAIT).await.unwrap();
    let values = key_values(&frame, "k", "v");
    assert_eq!(
        values,
        vec![("b".to_string(), 19), ("a".to_string(), 20)],
        "20 updates in one slot: latest per key"
    );
    assert!(next_frame(&mut client, Duration::from_millis(700))
        .await
        .is_none());
}

/// A channel that never goes quiet must not keep its subscribers' own commands unread: the
/// connection's task serves its socket and timers between outbox drains, however soon the next
/// publication is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_answered_while_a_channel_streams_without_pause() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let server = quiet_server(|c| c.client.max_outbox_bytes = 64 << 20).await;
    let mut client = server.client("reader").await;
    client.subscribe("stream").await;
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let publisher = {
        let node = server.node().clone();
        let (stop, published) = (stop.clone(), published.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..20 {
                    let n = published.fetch_add(1, Ordering::Relaxed);
                    let raw =
                        serde_json::value::RawValue::from_string(format!("{{\"n\":{n}}}")).unwrap();
                    node.publish("stream", raw, None, Default::default(), "test")
                        .await
                        .unwrap();
                }
                tokio::task::yield_now().await;
            }
        })
    };
    // The stream reaches the client before the commands start.
    assert_eq!(client.publication("stream").await["data"]["n"], 0);
    let mut slowest = Duration::ZERO;
    for i in 0..20u32 {
        let id = 10_000 + i;
        let sent = Instant::now();
        client
            .send(json!({"id": id, "subscribe": {"channel": format!("side-{i}")}}))
            .await;
        loop {
            let message = client
                .next_within(Duration::from_secs(10))
                .await
                .expect("the connection stays open");
            if message["id"].as_u64() == Some(u64::from(id)) {
                assert!(message.get("error").is_none(), "{message}");
                break;
            }
        }
        slowest = slowest.max(sent.elapsed());
        // Reading on meanwhile, so the stream runs at full speed between commands.
        let until = Instant::now() + Duration::from_millis(50);
        while Instant::now() < until {
            client
                .next_within(Duration::from_secs(10))
                .await
                .expect("stream");
        }
    }
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    eprintln!(
        "{} publications streamed; slowest command reply {slowest:?}",
        published.load(Ordering::Relaxed)
    );
    assert!(
        slowest < Duration::from_secs(2),
        "a command waited {slowest:?} behind the stream"
    );
}

/// Many connections of one user at once, on two worker threads: never more than
/// `connections_per_user` get in (the count and the registration are one step), the others are
/// closed with 3504, and a place freed is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connections_of_one_user_stay_within_the_limit() {
    let server = quiet_server(|c| c.client.connections_per_user = 3).await;
    let url = server.ws_url();
    let mut opened = Vec::new();
    for _ in 0..40 {
        opened.push(Client::open(&url).await);
    }
    // Every connect is on the wire before any reply is read.
    for client in &mut opened {
        client
            .send(json!({"id": 1, "connect": {"token": token("bob")}}))
            .await;
    }
    // Each answer is a connect reply or a close frame.
    let attempts = opened.into_iter().map(|mut client| {
        tokio::spawn(async move {
            let first = tokio::time::timeout(WAIT, client.ws.next())
                .await
                .expect("an answer in time")
                .expect("a frame")
                .expect("a valid frame");
            let refusal = first
                .as_close()
                .map(|(code, reason)| (u16::from(code), reason.to_string()));
            (refusal, client)
        })
    });
    let mut admitted = Vec::new();
    let mut refused = 0;
    for attempt in attempts.collect::<Vec<_>>() {
        match attempt.await.unwrap() {
            (None, client) => admitted.push(client),
            (Some(refusal), _) => {
                assert_eq!(refusal, (3504, "connection limit".to_string()));
                refused += 1;
            }
        }
    }
    assert_eq!((admitted.len(), refused), (3, 37));
    assert_eq!(server.node().hub.num_clients(), 3);
    drop(admitted.pop());
    assert!(
        eventually(WAIT, || server.node().hub.num_clients() == 2).await,
        "the closed connection left"
    );
    let mut again = server.client("bob").await;
    again.assert_alive().await;
}
