//! Limits through real sockets: connection cap, connect timeout, pings and pongs, half-open peers,
//! channel and command-rate limits, slow consumers, graceful shutdown, connection churn and running
//! out of file descriptors.

mod support;

use futures_util::SinkExt;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::procs::serve_logged;
use support::proxy::Proxy;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::RwLock;
use tokio_websockets::{CloseCode, Message};

/// Tests share the process: the churn test measures process-wide descriptors and memory, so it runs
/// alone (write lock) while the others may run side by side (read lock).
static PROCESS: RwLock<()> = RwLock::const_new(());

const PING: Duration = Duration::from_millis(300);
const PONG: Duration = Duration::from_millis(300);
const CONNECT: Duration = Duration::from_millis(300);
/// Scheduling slack on top of configured intervals, generous for loaded CI machines.
const SLACK: Duration = Duration::from_millis(1500);

fn fast_timers(c: &mut herald::config::Config) {
    c.client.ping_interval = PING;
    c.client.pong_timeout = PONG;
    c.client.connect_timeout = CONNECT;
}

fn is_ping(v: &Value) -> bool {
    v.as_object().is_some_and(|o| o.is_empty())
}

fn is_push(v: &Value) -> bool {
    v.get("push").is_some()
}

/// Keeps `client` read (so it answers pings, as a live SDK does) until `check` holds or `wait`
/// passes; returns whether it held and what the client received meanwhile.
async fn serve_until(
    client: &mut Client,
    wait: Duration,
    mut check: impl FnMut() -> bool,
) -> (bool, Vec<Value>) {
    let deadline = Instant::now() + wait;
    let mut received = Vec::new();
    loop {
        if check() {
            return (true, received);
        }
        if Instant::now() >= deadline {
            return (false, received);
        }
        if let Some(message) = client.next_within(Duration::from_millis(10)).await {
            received.push(message);
        }
    }
}

#[tokio::test]
async fn max_connections_refuses_the_next_handshake_with_503_until_one_leaves() {
    let _shared = PROCESS.read().await;
    let server = TestServer::with(|c| c.client.max_connections = 3).await;
    let node = server.node().clone();
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(server.client(&format!("user{i}")).await);
    }
    assert_eq!(node.open_connections(), 3);

    let (status, _) = ws_handshake(server.addr).await;
    assert_eq!(status, 503, "the 4th handshake is refused");
    // A real client library sees the refusal as a failed handshake.
    let uri = http::Uri::try_from(server.ws_url()).unwrap();
    assert!(tokio_websockets::ClientBuilder::from_uri(uri)
        .connect()
        .await
        .is_err());
    assert_eq!(
        node.open_connections(),
        3,
        "refused handshakes hold no slot"
    );
    let metrics = server.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "herald_connections_refused_total{reason=\"max connections\"}"
        ),
        2.0,
        "{metrics}"
    );
    // The connected clients are unaffected.
    for client in &mut clients {
        client.assert_alive().await;
    }

    // One leaves; its slot is given back and the next handshake succeeds.
    let mut leaving = clients.pop().unwrap();
    leaving
        .ws
        .send(Message::close(Some(CloseCode::NORMAL_CLOSURE), "bye"))
        .await
        .unwrap();
    leaving.closed().await;
    assert!(eventually(WAIT, || node.open_connections() == 2).await);
    let (status, upgraded) = ws_handshake(server.addr).await;
    assert_eq!(status, 101);
    assert_eq!(node.open_connections(), 3);
    let (status, _) = ws_handshake(server.addr).await;
    assert_eq!(status, 503, "full again");
    drop(upgraded);
    assert!(eventually(WAIT, || node.open_connections() == 2).await);
    let mut again = server.client("again").await;
    again.assert_alive().await;
}

#[tokio::test]
async fn a_socket_that_never_connects_is_closed_as_stale() {
    let _shared = PROCESS.read().await;
    let server = TestServer::with(fast_timers).await;
    let node = server.node().clone();
    let started = Instant::now();
    let mut idle = Client::open(&server.ws_url()).await;
    let closed = idle.closed_within(CONNECT + SLACK).await;
    let elapsed = started.elapsed();
    assert_eq!(closed, Some(Closed::Code(3502, "stale".into())));
    assert!(
        elapsed >= CONNECT - Duration::from_millis(50),
        "closed too early: {elapsed:?}"
    );
    assert!(eventually(WAIT, || node.open_connections() == 0).await);
    // A client that does connect in time is not affected by the timer.
    let mut client = server.client("alice").await;
    let (_, received) = serve_until(&mut client, CONNECT * 3, || false).await;
    assert!(received.iter().all(is_push), "{received:?}");
    client.assert_alive().await;
}

#[tokio::test]
async fn server_pings_and_closes_a_client_that_stops_answering() {
    let _shared = PROCESS.read().await;
    let server = TestServer::with(fast_timers).await;

    // A client that answers every ping stays connected over many intervals.
    let mut polite = server.client("polite").await;
    polite.auto_pong = false;
    let mut pings = 0;
    let until = Instant::now() + PING * 5;
    while Instant::now() < until {
        if let Some(message) = polite.next_within(until - Instant::now()).await {
            if is_ping(&message) {
                pings += 1;
                polite.send_text("{}").await;
            } else {
                assert!(
                    is_push(&message),
                    "only pings and pushes expected: {message}"
                );
            }
        }
    }
    assert!(
        (3..=6).contains(&pings),
        "a ping every {PING:?} for {:?}: got {pings}",
        PING * 5
    );
    polite.assert_alive().await;

    // A client that stops answering gets a ping, then `no pong`.
    let mut mute = Client::open(&server.ws_url()).await;
    mute.auto_pong = false;
    mute.connect(&token("mute")).await;
    let connected = Instant::now();
    let (received, closed) = mute.read_until_closed(PING + PONG + SLACK).await;
    let elapsed = connected.elapsed();
    assert_eq!(
        received.iter().filter(|m| is_ping(m)).count(),
        1,
        "one ping, then the close: {received:?}"
    );
    assert!(
        received.iter().all(|m| is_ping(m) || is_push(m)),
        "{received:?}"
    );
    assert_eq!(closed, Some(Closed::Code(3012, "no pong".into())));
    assert!(
        elapsed >= PING + PONG - Duration::from_millis(50),
        "closed too early: {elapsed:?}"
    );
    assert!(
        elapsed <= PING + PONG + SLACK,
        "closed too late: {elapsed:?}"
    );
}

#[tokio::test]
async fn a_half_open_peer_is_dropped_and_leaves_presence() {
    let _shared = PROCESS.read().await;
    let server = TestServer::with(fast_timers).await;
    let node = server.node().clone();
    let mut watcher = server.client("watcher").await;
    watcher.subscribe("chat:half").await;
    let connections_before = node.open_connections();
    let clients_before = node.hub.num_clients();

    let proxy = Proxy::start(server.addr).await;
    let mut ghost = Client::open(&format!("ws://{}/connection/websocket", proxy.addr)).await;
    ghost.connect(&token("ghost")).await;
    ghost.subscribe("chat:half").await;
    assert_eq!(node.open_connections(), connections_before + 1);
    assert_eq!(node.hub.num_clients(), clients_before + 1);
    let presence = server
        .api_ok("presence", json!({"channel": "chat:half"}))
        .await;
    assert!(
        presence["presence"].get(&ghost.client_id).is_some(),
        "{presence}"
    );

    proxy.blackhole();
    let started = Instant::now();
    // The ghost's socket is not read any more either: nothing of it reaches anyone. The watcher
    // keeps answering pings meanwhile.
    let (gone, received) = serve_until(
        &mut watcher,
        PING + PONG + SLACK + Duration::from_secs(1),
        || {
            node.open_connections() == connections_before
                && node.hub.num_clients() == clients_before
        },
    )
    .await;
    assert!(
        gone,
        "half-open connection still counted after {:?}",
        started.elapsed()
    );
    eprintln!("half-open peer dropped after {:?}", started.elapsed());
    let presence = server
        .api_ok("presence", json!({"channel": "chat:half"}))
        .await;
    let present: Vec<&String> = presence["presence"].as_object().unwrap().keys().collect();
    assert_eq!(
        present,
        vec![&watcher.client_id],
        "only the watcher is left: {presence}"
    );
    let stats = server
        .api_ok("presence_stats", json!({"channel": "chat:half"}))
        .await;
    assert_eq!(stats, json!({"num_clients": 1, "num_users": 1}));
    // The watcher saw the ghost leave and is still fine.
    let leave = received
        .iter()
        .find(|m| m["push"].get("leave").is_some())
        .expect("leave push");
    assert_eq!(leave["push"]["channel"], "chat:half");
    assert_eq!(
        leave["push"]["leave"]["info"]["client"],
        ghost.client_id.as_str()
    );
    watcher.assert_alive().await;
}

#[tokio::test]
async fn subscribing_beyond_max_channels_is_error_106() {
    let _shared = PROCESS.read().await;
    let server = TestServer::with(|c| {
        c.client.max_channels = 3;
        c.client.allow_anonymous = true;
        c.channel.without_namespace.allow_subscribe_for_anonymous = true;
    })
    .await;
    // Anonymous: no personal channel, so the count is exact.
    let mut anonymous = Client::open(&server.ws_url()).await;
    let reply = anonymous.call("connect", json!({})).await;
    assert!(reply.get("connect").is_some(), "{reply}");
    for i in 0..3 {
        anonymous.subscribe(&format!("room-{i}")).await;
    }
    let reply = anonymous
        .call("subscribe", json!({"channel": "room-3"}))
        .await;
    assert_eq!(reply["error"]["code"], 106, "{reply}");
    // Freeing one makes room again.
    anonymous
        .call("unsubscribe", json!({"channel": "room-0"}))
        .await;
    anonymous.subscribe("room-3").await;
    let reply = anonymous
        .call("subscribe", json!({"channel": "room-4"}))
        .await;
    assert_eq!(reply["error"]["code"], 106, "{reply}");

    // A user's personal channel (subscribed by the server at connect) counts towards the limit, as
    // Centrifugo counts server-side subscriptions.
    let mut alice = server.client("alice").await;
    alice.subscribe("chat:a").await;
    alice.subscribe("chat:b").await;
    let reply = alice.call("subscribe", json!({"channel": "chat:c"})).await;
    assert_eq!(reply["error"]["code"], 106, "{reply}");
    // The limit is per connection.
    let mut bob = server.client("bob").await;
    bob.subscribe("chat:a").await;
    alice.assert_alive().await;
}

#[tokio::test]
async fn command_rate_limit_rejects_then_disconnects() {
    let _shared = PROCESS.read().await;
    let server = TestServer::with(|c| {
        c.client.command_rate = 5;
        c.client.command_burst = 5;
    })
    .await;
    let mut client = server.client("alice").await; // connect takes one token
    let burst: Vec<String> = (1000..1020)
        .map(|id| json!({"id": id, "ping": {}}).to_string())
        .collect();
    client.send_text(&burst.join("\n")).await;
    let mut ok = 0;
    let mut limited = 0;
    for id in 1000..1020 {
        let reply = client.reply(id).await;
        if reply.get("ping").is_some() {
            ok += 1;
        } else {
            assert_eq!(
                reply["error"],
                json!({"code": 111, "message": "too many requests", "temporary": true})
            );
            limited += 1;
        }
    }
    assert!(
        (4..=6).contains(&ok),
        "about the burst left after connect passes: {ok} ok, {limited} limited"
    );
    assert_eq!(ok + limited, 20);
    // Rejections below the disconnect threshold keep the connection; tokens come back at the rate.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client.assert_alive().await;

    // Keep hammering, one command at a time: 99 consecutive rejections are answered and keep the
    // connection; the 100th closes it with 3013. (A token refilled meanwhile answers a command and
    // restarts the count, as it should.)
    let mut consecutive = 0;
    for id in 2000..3000u32 {
        client.send(json!({"id": id, "ping": {}})).await;
        if consecutive == 99 {
            let (replies, closed) = client.read_until_closed(Duration::from_secs(2)).await;
            match closed {
                Some(Closed::Code(3013, reason)) => {
                    assert_eq!(reason, "too many requests");
                    assert!(
                        replies.iter().all(|r| r["id"] != id),
                        "the 100th rejection is not answered: {replies:?}"
                    );
                    return;
                }
                // Refilled just in time: the command was answered and the connection is open.
                None if replies
                    .iter()
                    .any(|r| r["id"] == id && r.get("ping").is_some()) =>
                {
                    consecutive = 0;
                    continue;
                }
                other => panic!(
                    "expected close 3013 at the 100th rejection, got {other:?} after {replies:?}"
                ),
            }
        }
        let reply = client.reply(id).await;
        if reply.get("ping").is_some() {
            consecutive = 0;
        } else {
            assert_eq!(reply["error"]["code"], 111, "{reply}");
            consecutive += 1;
        }
    }
    panic!("never disconnected for rate");
}

#[tokio::test]
async fn a_slow_consumer_is_disconnected_and_others_get_everything() {
    let _shared = PROCESS.read().await;
    /// At most 30 MB in 10 KB publications; in practice the slow client overflows after ~6 MB.
    const MAX_PUBLICATIONS: u64 = 3000;
    const SIZE: usize = 10_000;
    let server = TestServer::with(|c| {
        c.client.max_outbox_bytes = 64 * 1024;
        // Short pings; the outbox bound (not `client.write_timeout`) is what closes the client.
        c.client.pong_timeout = Duration::from_millis(500);
    })
    .await;
    let node = server.node().clone();

    let mut slow = server.client("slow").await;
    slow.subscribe("chat:firehose").await;
    // Shrink the slow client's receive buffer so the kernel holds less for it; the server's send
    // buffer (up to net.ipv4.tcp_wmem's max, 4 MB by default) still has to fill before writes block.
    socket2::SockRef::from(slow.tcp())
        .set_recv_buffer_size(4096)
        .unwrap();
    let mut healthy = server.client("healthy").await;
    healthy.subscribe("chat:firehose").await;

    // The healthy client reads along, at most 4 publications (40 KB) behind, so that only the client
    // that does not read at all can fill its 64 KB outbox. Publishing stops a little after the first
    // overflow.
    let payload =
        serde_json::value::RawValue::from_string(format!("\"{}\"", "x".repeat(SIZE))).unwrap();
    let mut published = 0u64;
    let mut received = 0u64;
    let mut overflowed_at = None;
    while published < MAX_PUBLICATIONS && overflowed_at.is_none_or(|at| published < at + 40) {
        for _ in 0..4 {
            node.publish(
                "chat:firehose",
                payload.clone(),
                None,
                Default::default(),
                "test",
            )
            .await
            .unwrap();
            published += 1;
        }
        while received < published {
            let publication = healthy.publication("chat:firehose").await;
            let offset = publication["offset"].as_u64().unwrap();
            assert_eq!(offset, received + 1, "gap or duplicate after {received}");
            assert_eq!(publication["data"].as_str().map(str::len), Some(SIZE));
            received = offset;
        }
        if overflowed_at.is_none() && node.metrics.outbox_drops.get() > 0 {
            overflowed_at = Some(published);
        }
    }
    let overflowed_at =
        overflowed_at.unwrap_or_else(|| panic!("no overflow after {published} publications"));
    eprintln!("slow consumer overflowed after {overflowed_at} publications of {SIZE} bytes");
    assert_eq!(
        received, published,
        "the healthy subscriber got every publication"
    );

    assert!(
        eventually(WAIT, || node.hub.num_clients() == 1).await,
        "the slow client is gone"
    );
    let metrics = server.metrics().await;
    assert_eq!(
        metric(&metrics, "herald_disconnects_total{reason=\"slow\"}"),
        1.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "herald_outbox_drops_total") > 0.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "herald_outbox_bytes"),
        0.0,
        "a closed outbox gives its bytes back: {metrics}"
    );
    let presence = server
        .api_ok("presence_stats", json!({"channel": "chat:firehose"}))
        .await;
    assert_eq!(presence["num_clients"], 1);
    healthy.assert_alive().await;
    drop(slow);
}

/// One HTTP/1.1 keep-alive connection, to talk to a node whose listener is already closed.
struct KeepAlive(TcpStream);

impl KeepAlive {
    async fn get(&mut self, path: &str, headers: &str) -> (u16, String) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: herald\r\n{headers}\r\n");
        self.0.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(
                tokio::time::timeout(WAIT, self.0.read(&mut byte))
                    .await
                    .unwrap()
                    .unwrap(),
                1,
                "closed"
            );
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        self.0.read_exact(&mut body).await.unwrap();
        (status, String::from_utf8(body).unwrap())
    }
}

#[tokio::test]
async fn graceful_shutdown_closes_clients_with_3001_and_flips_readiness() {
    let _shared = PROCESS.read().await;
    let mut server = TestServer::start().await;
    let node = server.node().clone();
    let addr = server.addr;
    let mut clients = Vec::new();
    for user in ["alice", "bob"] {
        let mut client = server.client(user).await;
        client.subscribe("chat:bye").await;
        clients.push(client);
    }
    let mut http = KeepAlive(TcpStream::connect(addr).await.unwrap());
    assert_eq!(http.get("/ready", "").await.0, 200);

    let started = Instant::now();
    let shutdown = tokio::spawn(async move {
        server.shutdown().await;
        server
    });
    assert!(eventually(WAIT, || node.shutdown.is_cancelled()).await);
    assert!(!node.is_ready());
    // Clients have not left yet (they have not read their close frames), so the node is still
    // draining: readiness says 503 and new WebSocket handshakes are refused.
    assert!(!shutdown.is_finished());
    let (status, body) = http.get("/ready", "").await;
    assert_eq!(status, 503, "{body}");
    let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Version: 13\r\n";
    let (status, body) = http.get("/connection/websocket", upgrade).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );

    for client in &mut clients {
        assert_eq!(client.closed().await, Closed::Code(3001, "shutdown".into()));
    }
    let server = tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown finishes")
        .unwrap();
    assert!(
        started.elapsed() < server_shutdown_timeout(),
        "clients left, no need to wait for the timeout"
    );
    assert_eq!(node.open_connections(), 0);
    assert_eq!(node.hub.num_clients(), 0);
    assert_eq!(node.hub.num_channels(), 0);
    drop(server);
}

fn server_shutdown_timeout() -> Duration {
    test_config().http.shutdown_timeout
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_of_2000_connections_leaves_nothing_behind() {
    let _alone = PROCESS.write().await;
    const TOTAL: usize = 2000;
    const BATCH: usize = 200;
    let server = TestServer::start().await;
    let node = server.node().clone();
    let url = server.ws_url();
    // Warm up (allocator arenas, lazy statics) so the baseline is not the cold process.
    for i in 0..20 {
        let mut client = Client::open(&url).await;
        client.connect(&token(&format!("warmup{i}"))).await;
        drop(client);
    }
    assert!(eventually(WAIT, || node.open_connections() == 0).await);
    let fds_before = open_fds();
    let rss_before = rss_kib();
    let started = Instant::now();

    for batch in 0..TOTAL / BATCH {
        let mut tasks = Vec::with_capacity(BATCH);
        for i in batch * BATCH..(batch + 1) * BATCH {
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = Client::open(&url).await;
                // connect and two subscribes in one frame, as SDKs batch them.
                let frame = [
                    json!({"id": 1, "connect": {"token": token(&format!("churn{i}"))}}),
                    json!({"id": 2, "subscribe": {"channel": format!("chat:churn-{i}")}}),
                    json!({"id": 3, "subscribe": {"channel": "chat:churn-shared"}}),
                ];
                client
                    .send_text(&frame.map(|c| c.to_string()).join("\n"))
                    .await;
                assert!(client.reply(1).await.get("connect").is_some());
                assert!(client.reply(2).await.get("subscribe").is_some());
                assert!(client.reply(3).await.get("subscribe").is_some());
                client
                    .ws
                    .send(Message::close(Some(CloseCode::NORMAL_CLOSURE), "bye"))
                    .await
                    .unwrap();
                client.closed().await
            }));
        }
        for task in tasks {
            let closed = task.await.unwrap();
            // The server answers a client's close frame with its own (RFC 6455 §5.5.1): browsers
            // report anything else as an unclean close (1006).
            assert_eq!(
                closed,
                Closed::Code(1000, "".into()),
                "close handshake completed"
            );
        }
    }
    let churn_time = started.elapsed();

    assert!(
        eventually(WAIT, || node.open_connections() == 0).await,
        "connections left: {}",
        node.open_connections()
    );
    assert_eq!(node.hub.num_clients(), 0);
    assert_eq!(node.hub.num_users(), 0);
    assert_eq!(node.hub.num_channels(), 0);
    assert_eq!(node.hub.num_subscriptions(), 0);
    let presence = server
        .api_ok("presence_stats", json!({"channel": "chat:churn-shared"}))
        .await;
    assert_eq!(presence, json!({"num_clients": 0, "num_users": 0}));
    let metrics = server.metrics().await;
    assert_eq!(metric(&metrics, "herald_connections"), 0.0, "{metrics}");
    assert_eq!(metric(&metrics, "herald_subscriptions"), 0.0, "{metrics}");
    assert_eq!(metric(&metrics, "herald_outbox_bytes"), 0.0, "{metrics}");

    // Descriptors: both ends of every connection live in this process; all must be closed again.
    let mut fds_after = open_fds();
    let settle = Instant::now() + WAIT;
    while fds_after > fds_before + 8 && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
        fds_after = open_fds();
    }
    assert!(
        fds_after <= fds_before + 8,
        "descriptors leaked: {fds_before} before, {fds_after} after"
    );
    // Memory: seen here +7.3 to +9.2 MiB of VmRSS (x86_64, debug build, 12 MiB -> 20-22 MiB). That
    // is allocator caches plus the history stream positions of the ~4000 channels touched (each
    // connection's personal and own channel, both with history), which the memory broker keeps by
    // design for channel.history_meta_ttl. A leak of 25 KB per connection would show as +50 MB.
    let rss_after = rss_kib();
    let grown_mib = rss_after.saturating_sub(rss_before) as f64 / 1024.0;
    eprintln!(
        "churn: {TOTAL} connections in {churn_time:?}; fds {fds_before} -> {fds_after}; \
         VmRSS {rss_before} KiB -> {rss_after} KiB (+{grown_mib:.1} MiB)"
    );
    assert!(grown_mib < 50.0, "VmRSS grew by {grown_mib:.1} MiB");
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may contain spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    ticks as f64 / per_second as f64
}

#[tokio::test]
async fn descriptor_exhaustion_pauses_accepting_without_spinning_and_recovers() {
    let _shared = PROCESS.read().await;
    const FD_LIMIT: u64 = 64;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = format!(
        "[http]\nlisten = \"{addr}\"\n\n[log]\nlevel = \"warn\"\n\n[client.token]\nhmac_secret = \"{SECRET}\"\n\n\
         [api]\nkey = \"{API_KEY}\"\n\n[channel.without_namespace]\nallow_subscribe_for_client = true\n"
    );
    let config_path = dir.path().join("herald.toml");
    std::fs::write(&config_path, config).unwrap();
    let log_path = dir.path().join("stderr.log");
    // The real binary in a child process, killed when dropped (also when the test panics).
    let child = serve_logged(&config_path, &log_path, Some(FD_LIMIT));
    let pid = child.0.id();

    // Wait until it serves.
    let up = Instant::now() + WAIT;
    loop {
        if let Ok(mut stream) = TcpStream::connect(addr).await {
            stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut response = String::new();
            let _ = stream.read_to_string(&mut response).await;
            if response.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(
            Instant::now() < up,
            "herald did not start: {}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Far more connections than the child has descriptors: the kernel completes them all into the
    // listen backlog; the child holds its listener's descriptor share and resets the rest at
    // accept (herald::edges::descriptors), so it never reaches EMFILE.
    let mut hogs = Vec::new();
    for _ in 0..100 {
        // A reset at accept can arrive before connect returns.
        if let Ok(hog) = TcpStream::connect(addr).await {
            hogs.push(hog);
        }
    }
    let child_fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0) as u64
    };
    let warned = eventually(WAIT, || {
        std::fs::read_to_string(&log_path).is_ok_and(|log| log.contains("listener at its share"))
    })
    .await;
    assert!(
        warned,
        "no warning of the listener at its descriptor share: {}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    assert!(
        child_fds() < FD_LIMIT,
        "descriptors exhausted: {}",
        child_fds()
    );

    // While exhausted the accept loop must sleep, not spin on EMFILE.
    let cpu_before = cpu_seconds(pid);
    let window = Duration::from_secs(2);
    tokio::time::sleep(window).await;
    let cpu = (cpu_seconds(pid) - cpu_before) / window.as_secs_f64();
    eprintln!(
        "herald used {:.1}% of a core while out of descriptors",
        cpu * 100.0
    );
    assert!(
        cpu < 0.2,
        "herald used {:.0}% of a core while out of descriptors",
        cpu * 100.0
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.matches("accept failed").count() <= 2,
        "warning is rate limited:\n{log}"
    );

    // Descriptors come back: new clients are served again.
    let flooded = child_fds();
    drop(hogs);
    // Connections beyond the share are reset at accept, so wait until the child let go.
    assert!(
        eventually(WAIT, || child_fds() + 16 < flooded).await,
        "descriptors not freed: {} of {flooded}",
        child_fds()
    );
    let recovered = tokio::time::timeout(WAIT, async {
        let mut client = Client::open(&format!("ws://{addr}/connection/websocket")).await;
        client.connect(&token("after")).await;
        client.subscribe("recovered").await;
        client.assert_alive().await;
    })
    .await;
    assert!(
        recovered.is_ok(),
        "no WebSocket service after descriptors were freed"
    );
    let (status, reply) =
        http_request(addr, "POST", "/api/info", &[("X-API-Key", API_KEY)], "{}").await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["result"]["nodes"][0]["version"],
        env!("CARGO_PKG_VERSION"),
        "{reply}"
    );
    drop(child);
}
