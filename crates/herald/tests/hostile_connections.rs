//! Hostile clients at the HTTP layer, before any WebSocket exists: sockets that never send a byte,
//! slowloris request heads, oversized and too many headers, and WebSocket frames announcing more
//! than `client.max_message_size`. Each attack runs with an honest subscriber alongside, which
//! must receive every publication in order, and the descriptors the attack held must come back.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::hostile::{client_frame_header, OP_TEXT};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// hyper's `header_read_timeout` as the transport configures it.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The tests of this file run one at a time: the first counts the process's descriptors, which
/// the others' sockets would move under it.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Publishes `count` numbered messages to `channel` through the API, one every `every`.
fn publisher(
    server: &TestServer,
    channel: &'static str,
    count: u64,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    let addr = server.addr;
    tokio::spawn(async move {
        for seq in 0..count {
            let (status, reply) = http_request(
                addr,
                "POST",
                "/api/publish",
                &[("X-API-Key", API_KEY), ("Content-Type", "application/json")],
                &json!({"channel": channel, "data": {"seq": seq}}).to_string(),
            )
            .await;
            assert_eq!(status, 200, "publish {seq}: {reply}");
            assert!(reply.get("error").is_none(), "publish {seq}: {reply}");
            tokio::time::sleep(every).await;
        }
    })
}

/// Reads `count` publications of `channel` and checks they are 0..count in order.
async fn receives_in_order(client: &mut Client, channel: &str, count: u64) {
    for expected in 0..count {
        let publication = client.publication(channel).await;
        assert_eq!(
            publication["data"]["seq"].as_u64(),
            Some(expected),
            "honest subscriber: {publication}"
        );
    }
}

/// Waits until the server closes `stream` (EOF or reset); returns how long that took.
async fn closed_by_server(mut stream: TcpStream, started: Instant, within: Duration) -> Duration {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((started + within).into(), stream.read(&mut buf)).await {
            Err(_) => panic!("socket still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_and_slowloris_heads_are_cut_at_the_header_timeout() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start().await;
    let mut honest = server.client("honest").await;
    honest.subscribe("chat:honest").await;
    let baseline = open_fds();

    // 150 sockets that never send anything, 150 that trickle a request head one byte a second.
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..150 {
        silent.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    let mut trickles = Vec::new();
    for _ in 0..150 {
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        stream
            .write_all(b"GET /connection/websocket HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        trickles.push(tokio::spawn(async move {
            let started = Instant::now();
            let mut buf = [0u8; 64];
            loop {
                // One more header byte a second, as long as the server keeps the socket.
                if stream.write_all(b"X").await.is_err() {
                    return started.elapsed();
                }
                match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                    Ok(Ok(_)) => {}
                    Err(_) => {}
                }
                assert!(
                    started.elapsed() < HEADER_TIMEOUT * 2,
                    "slowloris still served"
                );
            }
        }));
    }
    // The server accepts from its backlog at its own pace; a connect returns before that.
    assert!(
        eventually(WAIT, || open_fds() >= baseline + 600).await,
        "both ends of 300 sockets are open: {} open, {baseline} before",
        open_fds()
    );

    let publishing = publisher(&server, "chat:honest", 60, Duration::from_millis(200));
    receives_in_order(&mut honest, "chat:honest", 60).await;
    publishing.await.expect("publisher");

    for stream in silent {
        let took = closed_by_server(stream, started, HEADER_TIMEOUT * 2).await;
        assert!(
            took >= HEADER_TIMEOUT - Duration::from_millis(500),
            "{took:?}"
        );
    }
    for trickle in trickles {
        let took = trickle.await.expect("trickle task");
        assert!(took < HEADER_TIMEOUT + Duration::from_secs(3), "{took:?}");
    }
    assert!(
        eventually(WAIT, || open_fds() <= baseline + 5).await,
        "descriptors come back: {} open, {baseline} before",
        open_fds()
    );
    honest.assert_alive().await;
    let metrics = server.metrics().await;
    assert!(
        metric(
            &metrics,
            "herald_http_closed_total{reason=\"header timeout\"}"
        ) >= 300.0,
        "every cut counted: {}",
        metric(&metrics, "herald_http_closed_total")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_numerous_headers_get_431_and_hold_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start().await;
    let mut honest = server.client("honest").await;
    honest.subscribe("chat:honest").await;
    let publishing = publisher(&server, "chat:honest", 40, Duration::from_millis(50));

    let many: String = (0..200)
        .map(|i| format!("X-Filler-{i}: {}\r\n", "a".repeat(100)))
        .collect();
    let huge = format!("X-Huge: {}\r\n", "a".repeat(1 << 20));
    for headers in [many, huge] {
        for _ in 0..20 {
            let mut stream = TcpStream::connect(server.addr).await.expect("connect");
            let head = format!("GET /connection/websocket HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
            // The server may answer and close before it has read everything we send.
            let _ = stream.write_all(head.as_bytes()).await;
            let mut response = Vec::new();
            let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
            let text = String::from_utf8_lossy(&response);
            assert!(
                text.starts_with("HTTP/1.1 431"),
                "headers of {} bytes: {:?}",
                head.len(),
                &text[..text.len().min(80)]
            );
        }
    }
    receives_in_order(&mut honest, "chat:honest", 40).await;
    publishing.await.expect("publisher");
    let metrics = server.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "herald_http_closed_total{reason=\"head too large\"}"
        ),
        40.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_announcing_huge_payloads_close_with_1009_before_any_is_buffered() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = TestServer::with(|c| c.client.max_message_size = 4096).await;
    let mut honest = server.client("honest").await;
    honest.subscribe("chat:honest").await;
    let publishing = publisher(&server, "chat:honest", 30, Duration::from_millis(50));

    let before = server.node().open_connections();
    for len in [4097u64, 1 << 30, u64::MAX >> 1] {
        for _ in 0..20 {
            let (status, mut stream) = ws_handshake(server.addr).await;
            assert_eq!(status, 101);
            stream
                .write_all(&client_frame_header(OP_TEXT, len))
                .await
                .expect("write");
            let mut response = Vec::new();
            tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
                .await
                .expect("closed in time")
                .ok();
            // A close frame with code 1009 (0x03F1).
            assert!(
                response.len() >= 4 && response[0] == 0x88 && response[2..4] == [0x03, 0xF1],
                "announced {len}: {response:?}"
            );
        }
    }
    receives_in_order(&mut honest, "chat:honest", 30).await;
    publishing.await.expect("publisher");
    assert!(
        eventually(WAIT, || server.node().open_connections() == before).await,
        "every attacking connection is gone"
    );
}
