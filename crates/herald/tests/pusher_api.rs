//! The Pusher HTTP API against hostile and careless callers, through real HTTP: forged, stale
//! and tampered requests, oversized events and bodies, wrong methods, and a node without apps.
//! Every refusal has the status Pusher answers and names the field at fault, is counted, and
//! publishes nothing. (The official Node SDK drives the same API in tests/sdk/js.)

mod support;

use herald_pusher::http_auth::sign_request;
use std::time::{SystemTime, UNIX_EPOCH};
use support::brokers::Broker;
use support::*;

const APP_ID: &str = "42";
const KEY: &str = "app-key";
const SECRET: &str = "app-secret";

/// The app `42` in namespace `shop` (open, with presence), events of at most 1 KiB.
fn pusher_app(c: &mut herald::config::Config) {
    c.channel.namespaces.push(open_namespace("shop"));
    c.pusher.max_event_bytes = 1024;
    c.pusher.apps.push(herald::config::PusherApp {
        id: APP_ID.into(),
        key: KEY.into(),
        secret: SECRET.into(),
        namespace: "shop".into(),
        ..Default::default()
    });
}

async fn pusher_server() -> TestServer {
    TestServer::with(pusher_app).await
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `path?<signed query>` for a request signed at `timestamp`.
fn signed(method: &str, path: &str, params: &[(&str, &str)], body: &str, timestamp: u64) -> String {
    let query = sign_request(
        KEY,
        SECRET,
        method,
        path,
        params,
        body.as_bytes(),
        timestamp,
    );
    format!("{path}?{query}")
}

async fn get(server: &TestServer, path: &str, params: &[(&str, &str)]) -> serde_json::Value {
    let (status, reply) = http_raw(
        server.addr,
        "GET",
        &signed("GET", path, params, "", now()),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200, "{path}: {reply}");
    serde_json::from_str(&reply).expect("JSON answer")
}

async fn post(server: &TestServer, target: &str, body: &str) -> (u16, String) {
    http_raw(
        server.addr,
        "POST",
        target,
        &[("Content-Type", "application/json")],
        body,
    )
    .await
}

fn trigger_body(channel: &str, data: &str) -> String {
    serde_json::json!({"name": "e", "channel": channel, "data": data}).to_string()
}

#[tokio::test]
async fn forged_stale_and_tampered_requests_are_refused_naming_the_parameter() {
    let server = pusher_server().await;
    let mut client = server.client("watcher").await;
    client.subscribe("shop:orders").await;
    let path = "/apps/42/events";
    let body = trigger_body("orders", "{\"n\":1}");

    // Signed now: accepted and delivered.
    let (status, reply) = post(&server, &signed("POST", path, &[], &body, now()), &body).await;
    assert_eq!((status, reply.as_str()), (200, "{}"));
    let publication = client.publication("shop:orders").await;
    assert_eq!(publication["data"]["n"], 1);
    assert_eq!(publication["tags"]["event"], "e");

    // Eleven minutes old: outside the ten-minute window.
    let stale = signed("POST", path, &[], &body, now() - 660);
    let (status, reply) = post(&server, &stale, &body).await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply.contains("auth_timestamp"), "{reply}");

    // The body changed after signing.
    let target = signed("POST", path, &[], &body, now());
    let (status, reply) = post(&server, &target, &trigger_body("orders", "{\"n\":666}")).await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply.contains("body_md5"), "{reply}");

    // The signature of another request (another path) does not carry over.
    let other = signed("POST", "/apps/42/batch_events", &[], &body, now());
    let moved = other.replacen("/apps/42/batch_events", path, 1);
    let (status, reply) = post(&server, &moved, &body).await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply.contains("auth_signature"), "{reply}");

    // No signature at all.
    let (status, reply) = post(&server, path, &body).await;
    assert_eq!(status, 401, "{reply}");
    assert!(reply.contains("missing"), "{reply}");

    // The next publication is the next honest one: nothing refused was published.
    let body = trigger_body("orders", "{\"n\":2}");
    let (status, _) = post(&server, &signed("POST", path, &[], &body, now()), &body).await;
    assert_eq!(status, 200);
    assert_eq!(client.publication("shop:orders").await["data"]["n"], 2);
    let metrics = server.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "herald_api_refused_total{reason=\"pusher signature\"}"
        ),
        4.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn oversized_events_and_bodies_are_refused_and_publish_nothing() {
    let server = pusher_server().await;
    let mut client = server.client("watcher").await;
    client.subscribe("shop:orders").await;
    let path = "/apps/42/events";

    // One byte over pusher.max_event_bytes (1 KiB here): 413 naming the field.
    let body = trigger_body("orders", &"x".repeat(1025));
    let (status, reply) = post(&server, &signed("POST", path, &[], &body, now()), &body).await;
    assert_eq!(status, 413, "{reply}");
    assert!(reply.contains("data"), "{reply}");

    // A body over what a full batch may hold (10 events of 1 KiB, escaped, with their names
    // and channels: 348 KiB here) is refused; it fits the socket buffers, so the answer is read.
    let huge = format!("{{\"pad\":\"{}\"}}", "y".repeat(400 << 10));
    let (status, reply) = post(&server, &signed("POST", path, &[], &huge, now()), &huge).await;
    assert_eq!(status, 413, "{reply}");
    assert!(reply.contains("request body larger than"), "{reply}");

    // Not JSON, and a channel name Pusher does not allow.
    let body = "name=e&channel=orders";
    let (status, reply) = post(&server, &signed("POST", path, &[], body, now()), body).await;
    assert_eq!(status, 400, "{reply}");
    let body = trigger_body("orders!", "1");
    let (status, reply) = post(&server, &signed("POST", path, &[], &body, now()), &body).await;
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains("channel"), "{reply}");

    // Honest requests still pass, and theirs is the next publication: nothing refused leaked.
    let body = trigger_body("orders", "\"fine\"");
    let (status, _) = post(&server, &signed("POST", path, &[], &body, now()), &body).await;
    assert_eq!(status, 200);
    assert_eq!(client.publication("shop:orders").await["data"], "fine");
}

#[tokio::test]
async fn wrong_methods_unknown_routes_and_a_node_without_apps() {
    let server = pusher_server().await;
    let (status, reply) = http_raw(
        server.addr,
        "GET",
        &signed("GET", "/apps/42/events", &[], "", now()),
        &[],
        "",
    )
    .await;
    assert_eq!(status, 405, "{reply}");
    let (status, reply) = http_raw(server.addr, "GET", "/apps/42/nothing", &[], "").await;
    assert_eq!(status, 404, "{reply}");

    // Without [[pusher.apps]] the paths are not served at all.
    let plain = TestServer::start().await;
    let (status, _) = http_raw(plain.addr, "POST", "/apps/42/events", &[], "{}").await;
    assert_eq!(status, 404);
}

/// Two nodes linked by Redis: an event triggered on one reaches subscribers on the other, presence
/// users are counted across both, and terminating a user closes its connections on both.
#[tokio::test]
async fn across_two_nodes_triggers_presence_and_termination_reach_every_node() {
    let share = Broker::Redis.share("pusher_api_cluster");
    let cluster = share.cluster_with(2, pusher_app).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut alice_a = a.client("alice").await;
    let mut alice_b = b.client("alice").await;
    let mut bob_b = b.client("bob").await;
    for client in [&mut alice_a, &mut alice_b, &mut bob_b] {
        client.subscribe("shop:presence-room").await;
    }

    let body =
        serde_json::json!({"name": "hello", "channel": "presence-room", "data": "{\"n\":1}"})
            .to_string();
    let (status, _) = post(
        a,
        &signed("POST", "/apps/42/events", &[], &body, now()),
        &body,
    )
    .await;
    assert_eq!(status, 200);
    for client in [&mut alice_a, &mut alice_b, &mut bob_b] {
        let publication = client.publication("shop:presence-room").await;
        assert_eq!(publication["data"]["n"], 1);
        assert_eq!(publication["tags"]["event"], "hello");
    }

    // Users from the presence store, whichever node answers.
    for node in [a, b] {
        let users = get(node, "/apps/42/channels/presence-room/users", &[]).await;
        let mut ids: Vec<&str> = users["users"]
            .as_array()
            .expect("users")
            .iter()
            .filter_map(|u| u["id"].as_str())
            .collect();
        ids.sort();
        assert_eq!(ids, ["alice", "bob"]);
        let info = get(
            node,
            "/apps/42/channels/presence-room",
            &[("info", "user_count")],
        )
        .await;
        assert_eq!(info["user_count"], 2, "{info}");
    }

    // Terminated from node a: alice's connections on both nodes close, bob's stays.
    let (status, _) = post(
        a,
        &signed(
            "POST",
            "/apps/42/users/alice/terminate_connections",
            &[],
            "{}",
            now(),
        ),
        "{}",
    )
    .await;
    assert_eq!(status, 200);
    for alice in [&mut alice_a, &mut alice_b] {
        assert!(
            matches!(alice.closed().await, Closed::Code(..)),
            "alice is closed"
        );
    }
    bob_b.assert_alive().await;
}

/// An unsigned request is refused on its query alone: the node answers 401 before reading a byte
/// of the body it announces, so a caller without the secret cannot make it hold one.
#[tokio::test]
async fn an_unsigned_request_is_refused_before_its_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = pusher_server().await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /apps/{APP_ID}/events?auth_key={KEY}&auth_timestamp={}&auth_version=1.0&body_md5=0123456789abcdef0123456789abcdef&auth_signature=00 HTTP/1.1\r\n\
         Host: x\r\nContent-Type: application/json\r\nContent-Length: 300000\r\n\r\n{{\"name\":",
        now()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The rest of the body never comes; the answer must not wait for it.
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("answered without the body")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert_eq!(status_of(&text), 401, "{text}");
    assert!(text.contains("auth_signature"), "{text}");
}
