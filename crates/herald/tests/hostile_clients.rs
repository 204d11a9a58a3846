//! Hostile clients against one node, through real sockets, with honest clients alongside: ping
//! floods from clients that never read, pipelined reply amplification, slow consumers, stalled
//! writes and invalid close frames. Every test asserts the bound (time to close, RSS growth, the
//! kernel's socket memory) and that the honest clients received everything meanwhile.
//!
//! The tests run one at a time: they measure the process's RSS and kernel socket state.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::hostile::*;
use support::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: u64 = 1024;

async fn publish(server: &TestServer, channel: &str, data: serde_json::Value) {
    let raw = serde_json::value::RawValue::from_string(data.to_string()).unwrap();
    server
        .node()
        .publish(channel, raw, None, Default::default(), "test")
        .await
        .unwrap();
}

/// An honest subscriber of `channel` reading in its own task (answering pings on the way) until it
/// has `count` publications; returns their `data.n` in order of arrival (and the client, still
/// connected).
async fn honest_reader(
    server: &TestServer,
    user: &str,
    channel: &str,
    count: usize,
) -> tokio::task::JoinHandle<(Vec<i64>, Client)> {
    let mut client = server.client(user).await;
    client.subscribe(channel).await;
    let channel = channel.to_string();
    tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < count {
            let publication = client.publication(&channel).await;
            got.push(publication["data"]["n"].as_i64().unwrap());
        }
        client.assert_alive().await;
        (got, client)
    })
}

fn open_connections(server: &TestServer) -> i64 {
    server.node().metrics.connections.get()
}

/// Sends pings (125-byte payloads) as fast as the socket takes them, or one every `every`, until
/// the server ends the connection or `stop` passes. Never reads.
async fn ping_until_closed(mut ws: RawWs, every: Option<Duration>, stop: Duration) {
    let deadline = tokio::time::Instant::now() + stop;
    let burst: Vec<u8> = (0..64)
        .flat_map(|_| client_frame(OP_PING, &[b'p'; 125]))
        .collect();
    loop {
        let sent = match every {
            None => {
                tokio::time::timeout_at(
                    deadline,
                    tokio::io::AsyncWriteExt::write_all(&mut ws.tcp, &burst),
                )
                .await
            }
            Some(every) => {
                tokio::time::sleep(every).await;
                tokio::time::timeout_at(deadline, ws.send(OP_PING, b"still here")).await
            }
        };
        match sent {
            Ok(Ok(())) if tokio::time::Instant::now() < deadline => continue,
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_floods_from_clients_that_never_read_are_closed_within_the_timeouts() {
    let _serial = SERIAL.lock().await;
    const MAX_CONNECTIONS: usize = 30;
    let server = TestServer::with(|c| {
        c.client.connect_timeout = Duration::from_secs(1);
        c.client.ping_interval = Duration::from_secs(1);
        c.client.pong_timeout = Duration::from_secs(1);
        c.client.write_timeout = Duration::from_secs(1);
        c.client.max_connections = MAX_CONNECTIONS;
    })
    .await;
    assert_eq!(
        server.node().config().client.max_ping_rate,
        2,
        "the default"
    );
    let honest = honest_reader(&server, "honest", "chat:news", 40).await;
    let rss_before = rss_kib();
    let started = Instant::now();
    // 9 unauthenticated clients flooding pings as fast as they can: closed for the ping rate.
    // 10 unauthenticated and 10 authenticated clients pinging under the rate: pings do not count
    // as being alive, so the connect timeout and the pong timeout close them.
    let mut sockets = Vec::new();
    for i in 0..29 {
        let mut ws = RawWs::open(server.addr, Some(4096)).await;
        let every = (i >= 9).then_some(Duration::from_millis(600));
        if i >= 9 && i % 2 == 0 {
            ws.connect(&token(&format!("pinger{i}"))).await;
        }
        sockets.push((ws, every));
    }
    assert_eq!(open_connections(&server), 30, "every slot is taken");
    let (status, _) = ws_handshake(server.addr).await;
    assert_eq!(
        status, 503,
        "a newcomer is refused while they hold the slots"
    );
    let attackers: Vec<_> = sockets
        .into_iter()
        .map(|(ws, every)| tokio::spawn(ping_until_closed(ws, every, Duration::from_secs(8))))
        .collect();

    // The honest subscriber receives everything meanwhile.
    let mut rss_peak = rss_before;
    for n in 0..40 {
        publish(&server, "chat:news", json!({"n": n})).await;
        rss_peak = rss_peak.max(rss_kib());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // connect timeout 1 s; ping after 1 s + pong timeout 1 s; a little slack for the loaded box.
    assert!(
        eventually(Duration::from_secs(6), || open_connections(&server) == 1).await,
        "{} connections still open after {:?}",
        open_connections(&server),
        started.elapsed()
    );
    let gone_after = started.elapsed();
    eprintln!("ping floods: all attackers gone after {gone_after:?}");
    assert!(gone_after < Duration::from_millis(3000), "{gone_after:?}");
    let (received, _honest) = honest.await.unwrap();
    assert_eq!(
        received,
        (0..40).collect::<Vec<_>>(),
        "honest got everything"
    );
    let grown = rss_peak.saturating_sub(rss_before);
    eprintln!("ping floods: RSS +{grown} KiB");
    assert!(grown < 16 * MIB, "RSS grew {grown} KiB");

    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "herald_disconnects_total{reason=\"ping flood\"}"),
        9.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "herald_disconnects_total{reason=\"stale\"}"),
        10.0
    );
    assert_eq!(
        metric(&text, "herald_disconnects_total{reason=\"no pong\"}"),
        10.0
    );
    for attacker in attackers {
        attacker.await.unwrap();
    }
    // Later honest handshakes get every slot back.
    let mut later = Vec::new();
    for i in 0..MAX_CONNECTIONS - 1 {
        let mut client = server.client(&format!("later{i}")).await;
        client.subscribe("chat:later").await;
        later.push(client);
    }
    publish(&server, "chat:later", json!({"n": 1})).await;
    for client in &mut later {
        assert_eq!(client.publication("chat:later").await["data"]["n"], 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_ping_rate_off_owed_pongs_are_still_bounded_and_the_write_times_out() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::with(|c| {
        c.client.max_ping_rate = 0;
        c.client.max_outbox_bytes = 256 * 1024;
        c.client.write_timeout = Duration::from_secs(1);
        c.client.connect_timeout = Duration::from_secs(5);
    })
    .await;
    let honest = honest_reader(&server, "honest", "chat:news", 20).await;
    let rss_before = rss_kib();
    let started = Instant::now();
    let mut attackers = Vec::new();
    for i in 0..10 {
        let mut ws = RawWs::open(server.addr, Some(4096)).await;
        if i % 2 == 0 {
            ws.connect(&token(&format!("flooder{i}"))).await;
        }
        attackers.push(tokio::spawn(ping_until_closed(
            ws,
            None,
            Duration::from_secs(8),
        )));
    }
    let mut rss_peak = rss_before;
    for n in 0..20 {
        publish(&server, "chat:news", json!({"n": n})).await;
        rss_peak = rss_peak.max(rss_kib());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Well before the 5 s connect timeout: the stalled writes time out.
    assert!(
        eventually(Duration::from_secs(4), || {
            rss_peak = rss_peak.max(rss_kib());
            open_connections(&server) == 1
        })
        .await,
        "{} connections still open",
        open_connections(&server)
    );
    let gone_after = started.elapsed();
    let grown = rss_peak.saturating_sub(rss_before);
    eprintln!("unlimited pings: gone after {gone_after:?}, RSS +{grown} KiB");
    assert!(gone_after < Duration::from_millis(3500), "{gone_after:?}");
    // Per flooder: at most the 256 KiB bound plus one read burst of pongs.
    assert!(grown < 16 * MIB, "RSS grew {grown} KiB");
    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "herald_disconnects_total{reason=\"write timeout\"}"),
        10.0,
        "{text}"
    );
    assert_eq!(
        honest.await.unwrap().0,
        (0..20).collect::<Vec<_>>(),
        "honest got everything"
    );
    for attacker in attackers {
        attacker.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_history_calls_cannot_make_the_server_hold_more_than_the_outbox() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::with(|c| {
        c.client.write_timeout = Duration::from_secs(2);
        c.channel.namespaces.push(herald::config::NamespaceOptions {
            name: "archive".into(),
            history_size: 1000,
            history_ttl: Duration::from_secs(300),
            allow_history_for_client: true,
            // As high as the stream: the outbox bound alone must hold the amplification.
            client_history_max_limit: 1000,
            ..Default::default()
        });
    })
    .await;
    let max_outbox = server.node().config().client.max_outbox_bytes as u64;
    let kilobyte = "k".repeat(1000);
    for n in 0..1000 {
        publish(&server, "archive:big", json!({"n": n, "pad": kilobyte})).await;
    }
    let honest = honest_reader(&server, "honest", "chat:news", 100).await;
    let rss_before = rss_kib();
    let mut attackers = Vec::new();
    for i in 0..2 {
        let mut ws = RawWs::open(server.addr, Some(4096)).await;
        ws.connect(&token(&format!("amplifier{i}"))).await;
        // 200 calls for the whole stream (about 1.1 MB each), 10 per frame, never read.
        for frame in 0..20 {
            let commands: Vec<String> = (0..10)
                .map(|k| {
                    json!({"id": 2 + frame * 10 + k, "history": {"channel": "archive:big", "limit": -1}})
                        .to_string()
                })
                .collect();
            ws.send_text(&commands.join("\n")).await.unwrap();
        }
        attackers.push(ws);
    }
    let mut rss_peak = rss_before;
    for n in 0..100 {
        publish(&server, "chat:news", json!({"n": n})).await;
        rss_peak = rss_peak.max(rss_kib());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        eventually(Duration::from_secs(6), || {
            rss_peak = rss_peak.max(rss_kib());
            open_connections(&server) == 1
        })
        .await,
        "the amplifiers are closed by the write timeout"
    );
    let grown = rss_peak.saturating_sub(rss_before);
    eprintln!("history amplification: RSS +{grown} KiB (outbox bound {max_outbox} bytes)");
    // Per connection: the outbox bound plus one reply (~1.1 MB); unbounded, this was ~600 MB.
    assert!(grown < 16 * MIB, "RSS grew {grown} KiB");
    let text = server.metrics().await;
    assert!(
        metric(&text, "herald_client_reads_paused_total") >= 2.0,
        "{text}"
    );
    assert!(
        metric(&text, "herald_commands_total{method=\"history\"}") < 20.0,
        "the rest was never read: {text}"
    );
    assert_eq!(
        metric(&text, "herald_disconnects_total{reason=\"write timeout\"}"),
        2.0
    );
    assert_eq!(
        honest.await.unwrap().0,
        (0..100).collect::<Vec<_>>(),
        "honest got everything"
    );
    for mut ws in attackers {
        // What the kernel held is dropped: the client sees a reset, not a polite close.
        assert_eq!(ws.read_end(Duration::from_secs(5)).await, RawEnd::Reset);
    }
}

#[tokio::test]
async fn client_history_is_capped_at_the_namespace_limit_and_the_api_is_not() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::with(|c| {
        c.channel.namespaces.push(herald::config::NamespaceOptions {
            name: "capped".into(),
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            allow_history_for_client: true,
            client_history_max_limit: 5,
            ..Default::default()
        });
    })
    .await;
    assert_eq!(
        herald::config::NamespaceOptions::default().client_history_max_limit,
        300,
        "Centrifugo's default"
    );
    for n in 0..20 {
        publish(&server, "capped:x", json!({"n": n})).await;
    }
    let mut client = server.client("reader").await;
    let count = |reply: &serde_json::Value| {
        reply["history"]["publications"]
            .as_array()
            .map_or(0, Vec::len)
    };
    for (limit, expected) in [(-1, 5), (100, 5), (5, 5), (3, 3), (0, 0)] {
        let reply = client
            .call("history", json!({"channel": "capped:x", "limit": limit}))
            .await;
        assert_eq!(count(&reply), expected, "limit {limit}: {reply}");
        assert_eq!(
            reply["history"]["offset"], 20,
            "the position is the stream's"
        );
    }
    let api = server
        .api_ok("history", json!({"channel": "capped:x", "limit": -1}))
        .await;
    assert_eq!(api["publications"].as_array().map(Vec::len), Some(20));
    let text = server.metrics().await;
    assert_eq!(metric(&text, "herald_client_history_capped_total"), 2.0);
}

/// Subscribes a raw client that never reads to `channel`.
async fn stalled_subscriber(server: &TestServer, user: &str, channel: &str) -> RawWs {
    let mut ws = RawWs::open(server.addr, Some(4096)).await;
    ws.connect(&token(user)).await;
    let subscribe = json!({"id": 2, "subscribe": {"channel": channel}});
    ws.send_text(&subscribe.to_string()).await.unwrap();
    // The subscription is in place once the server counts it.
    let node = server.node().clone();
    assert!(eventually(WAIT, || node.metrics.subscriptions.get() >= 1).await);
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_reset_at_once_and_its_kernel_memory_is_bounded() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::with(|c| {
        c.client.max_outbox_bytes = 256 * 1024;
        c.client.write_timeout = Duration::from_secs(30);
    })
    .await;
    let send_buffer = server.node().config().client.send_buffer as u64;
    assert_eq!(send_buffer, 256 * 1024, "bounded by default");
    let mut slow = stalled_subscriber(&server, "slow", "chat:firehose").await;
    let slow_port = slow.local_port();
    const TOTAL: usize = 300;
    let honest = honest_reader(&server, "honest", "chat:firehose", TOTAL).await;
    let padding = "x".repeat(10_000);
    let mut most_queued = None::<KernelSocket>;
    let mut n = 0;
    while server.node().metrics.outbox_drops.get() == 0 {
        assert!(n < TOTAL, "the stalled subscriber never overflowed");
        publish(&server, "chat:firehose", json!({"n": n, "pad": padding})).await;
        n += 1;
        if let Some(socket) = server_socket(&server, slow_port) {
            if most_queued.is_none_or(|m| socket.send_q > m.send_q) {
                most_queued = Some(socket);
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Reset, not drained: the server's socket is gone at once, stale data and all.
    let gone = socket_gone_within(&server, slow_port, Duration::from_secs(3))
        .await
        .expect("the server's socket is gone");
    eprintln!("slow consumer: overflow after {n} publications, server socket gone {gone:?} later");
    assert!(gone < Duration::from_millis(500), "{gone:?}");
    let most_queued = most_queued.expect("the server's socket was seen");
    eprintln!("slow consumer: most queued in the kernel {most_queued:?}");
    // Linux accounts twice SO_SNDBUF (overhead included): the kernel never held much more.
    assert!(
        most_queued.sndbuf <= 2 * send_buffer + 4096,
        "{most_queued:?}"
    );
    assert!(
        most_queued.send_q <= 2 * send_buffer + 64 * 1024,
        "{most_queued:?}"
    );
    assert!(
        most_queued.wmem_queued <= 2 * send_buffer + 64 * 1024,
        "{most_queued:?}"
    );
    for n in n..TOTAL {
        publish(&server, "chat:firehose", json!({"n": n, "pad": padding})).await;
    }
    assert_eq!(slow.read_end(Duration::from_secs(5)).await, RawEnd::Reset);
    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "herald_disconnects_total{reason=\"slow\"}"),
        1.0
    );
    assert_eq!(
        honest.await.unwrap().0,
        (0..TOTAL as i64).collect::<Vec<_>>(),
        "honest got everything"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_progress_for_the_write_timeout_resets_the_connection() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::with(|c| {
        c.client.max_outbox_bytes = 4 << 20;
        c.client.write_timeout = Duration::from_secs(1);
        c.client.ping_interval = Duration::from_secs(25);
    })
    .await;
    let mut stalled = stalled_subscriber(&server, "stalled", "chat:bulk").await;
    let port = stalled.local_port();
    const TOTAL: usize = 100;
    let honest = honest_reader(&server, "honest", "chat:bulk", TOTAL).await;
    // 1 MB: more than the kernel buffers take, less than the outbox bound, so only the write
    // timeout can end it.
    // The server's Send-Q towards the stalled client: when it last changed is when the write last
    // made progress.
    let mut last_send_q = None;
    let mut last_progress = Instant::now();
    let mut gone_at = None;
    let mut watch = |server: &TestServer| match server_socket(server, port) {
        Some(socket) => {
            if last_send_q != Some(socket.send_q) {
                last_send_q = Some(socket.send_q);
                last_progress = Instant::now();
            }
            true
        }
        None => {
            gone_at.get_or_insert_with(Instant::now);
            false
        }
    };
    let padding = "x".repeat(10_000);
    for n in 0..TOTAL {
        publish(&server, "chat:bulk", json!({"n": n, "pad": padding})).await;
        // Publishing (and running `ss`) is slow here: the stalled write may time out meanwhile.
        watch(&server);
    }
    assert_eq!(
        honest.await.unwrap().0,
        (0..TOTAL as i64).collect::<Vec<_>>(),
        "honest got everything"
    );
    let deadline = Instant::now() + Duration::from_secs(4);
    while watch(&server) {
        assert!(
            Instant::now() < deadline,
            "never closed by the write timeout"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = gone_at.expect("gone") - last_progress;
    eprintln!("write timeout: gone {after:?} after the last progress (Send-Q {last_send_q:?})");
    assert!(
        after >= Duration::from_millis(800),
        "{after:?}: not before the timeout"
    );
    assert!(after < Duration::from_millis(2000), "{after:?}");
    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "herald_disconnects_total{reason=\"write timeout\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "herald_outbox_drops_total"),
        0.0,
        "not an overflow"
    );
    assert_eq!(
        stalled.read_end(Duration::from_secs(5)).await,
        RawEnd::Reset
    );
}

#[tokio::test]
async fn close_frames_are_checked_per_rfc_6455() {
    let _serial = SERIAL.lock().await;
    let server = TestServer::start().await;
    let with_code = |code: u16, reason: &[u8]| {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        payload
    };
    let mut cases: Vec<(String, Vec<u8>, u16)> = vec![
        ("1-byte payload".into(), vec![0x03], 1002),
        (
            "non-UTF-8 reason".into(),
            with_code(1000, &[0xce, 0xba, 0xff]),
            1007,
        ),
        ("empty payload".into(), Vec::new(), 1000),
        (
            "1000 with a reason".into(),
            with_code(1000, "bye ✓".as_bytes()),
            1000,
        ),
    ];
    for code in [
        0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        cases.push((format!("code {code}"), with_code(code, b""), 1002));
    }
    for code in [
        1001, 1002, 1003, 1007, 1008, 1011, 1012, 1014, 3000, 3999, 4000, 4999,
    ] {
        cases.push((format!("code {code}"), with_code(code, b"ok"), 1000));
    }
    let invalid = cases.iter().filter(|c| c.2 != 1000).count();
    let runs = cases.into_iter().map(|(name, payload, expected)| {
        let addr = server.addr;
        tokio::spawn(async move {
            let mut ws = RawWs::open(addr, None).await;
            ws.send(OP_CLOSE, &payload).await.unwrap();
            let end = ws.read_end(WAIT).await;
            match end {
                RawEnd::Close(code, _) => assert_eq!(code, expected, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        })
    });
    for run in runs.collect::<Vec<_>>() {
        run.await.unwrap();
    }
    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "herald_disconnects_total{reason=\"protocol error\"}"),
        invalid as f64,
        "{text}"
    );
    // The node still serves honest clients.
    let mut client = server.client("honest").await;
    client.assert_alive().await;
}
