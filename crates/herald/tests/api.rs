//! The server HTTP API through real HTTP: every method's success path, batch, the internal listener,
//! health, readiness and metrics.

mod support;

use serde_json::{json, Value};
use support::*;

#[tokio::test]
async fn broadcast_reaches_every_channel_and_reports_each_position() {
    let server = TestServer::start().await;
    let mut a = server.client("alice").await;
    let mut b = server.client("bob").await;
    a.subscribe("chat:one").await;
    b.subscribe("chat:two").await;
    let result = server
        .api_ok(
            "broadcast",
            json!({"channels": ["chat:one", "chat:two", "nope:x"], "data": {"all": true}}),
        )
        .await;
    let responses = result["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 3);
    assert_eq!(responses[0]["result"]["offset"], 1);
    assert_eq!(responses[1]["result"]["offset"], 1);
    assert_eq!(
        responses[2]["error"]["code"], 102,
        "unknown namespace reported per channel"
    );
    assert_eq!(
        a.publication("chat:one").await["data"],
        json!({"all": true})
    );
    assert_eq!(
        b.publication("chat:two").await["data"],
        json!({"all": true})
    );
}

#[tokio::test]
async fn presence_history_and_history_remove() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice").await;
    alice.subscribe("chat:room").await;
    let presence = server
        .api_ok("presence", json!({"channel": "chat:room"}))
        .await;
    let entry = &presence["presence"][alice.client_id.as_str()];
    assert_eq!(entry["user"], "alice");
    assert_eq!(entry["client"], alice.client_id.as_str());
    for n in 1..=3 {
        server
            .api_ok(
                "publish",
                json!({"channel": "chat:room", "data": n, "tags": {"k": "v"}}),
            )
            .await;
    }
    let history = server
        .api_ok("history", json!({"channel": "chat:room", "limit": -1}))
        .await;
    let pubs = history["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 3);
    assert_eq!(pubs[0]["tags"], json!({"k": "v"}));
    let epoch = history["epoch"].as_str().unwrap().to_string();
    server
        .api_ok("history_remove", json!({"channel": "chat:room"}))
        .await;
    let after = server
        .api_ok("history", json!({"channel": "chat:room", "limit": -1}))
        .await;
    assert_eq!(after["publications"], json!([]));
    assert_ne!(
        after["epoch"].as_str().unwrap(),
        epoch,
        "a removed stream restarts under a new epoch"
    );
}

#[tokio::test]
async fn channels_lists_active_channels_with_pattern() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice").await;
    let mut bob = server.client("bob").await;
    alice.subscribe("chat:x1").await;
    bob.subscribe("chat:x1").await;
    bob.subscribe("news").await;
    let all = server.api_ok("channels", json!({})).await;
    assert_eq!(all["channels"]["chat:x1"]["num_clients"], 2);
    assert_eq!(all["channels"]["news"]["num_clients"], 1);
    assert!(
        all["channels"].get("#alice").is_some(),
        "personal channels are active channels too"
    );
    let filtered = server
        .api_ok("channels", json!({"pattern": "chat:*"}))
        .await;
    assert_eq!(filtered["channels"].as_object().unwrap().len(), 1);
}

#[tokio::test]
async fn info_describes_the_node() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice").await;
    alice.subscribe("chat:i").await;
    let info = server.api_ok("info", json!({})).await;
    let node = &info["nodes"][0];
    assert_eq!(node["num_clients"], 1);
    assert_eq!(node["num_users"], 1);
    assert_eq!(node["num_subs"], 2, "personal channel + chat:i");
    assert_eq!(node["version"], env!("CARGO_PKG_VERSION"));
    assert!(!node["uid"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn session_and_whitelist_are_refused_not_ignored() {
    // Centrifugo's `session` and `whitelist` narrow whom a call acts on; ignored, they would let
    // the call act on every connection of the user.
    let server = TestServer::start().await;
    let mut alice = server.client("alice").await;
    let keep = alice.client_id.clone();
    let refused = [
        ("disconnect", json!({"user": "alice", "whitelist": [keep]})),
        ("disconnect", json!({"user": "alice", "session": "s1"})),
        (
            "subscribe",
            json!({"user": "alice", "channel": "chat:x", "session": "s1"}),
        ),
        (
            "unsubscribe",
            json!({"user": "alice", "channel": "chat:x", "session": "s1"}),
        ),
    ];
    for (method, body) in refused {
        let (status, reply) = server.api(method, body.clone()).await;
        assert_eq!(status, 200, "{method} {body}: {reply}");
        assert_eq!(reply["error"]["code"], 107, "{method} {body}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("\"session\"") || message.contains("\"whitelist\""),
            "the message names the field: {reply}"
        );
    }
    // Nothing happened to the connection; empty values (as some clients send) mean "not set".
    assert!(alice.call("ping", json!({})).await.get("ping").is_some());
    server
        .api_ok(
            "disconnect",
            json!({"user": "alice", "whitelist": [], "session": ""}),
        )
        .await;
    assert!(alice
        .closed_within(std::time::Duration::from_secs(5))
        .await
        .is_some());
}

#[tokio::test]
async fn batch_runs_commands_in_order_with_per_command_errors() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice").await;
    alice.subscribe("chat:b").await;
    let result = server
        .api_ok(
            "batch",
            json!({"commands": [
                {"publish": {"channel": "chat:b", "data": 1}},
                {"publish": {"channel": "chat:b"}},
                {"teleport": {}},
                {"publish": {"channel": "chat:b", "data": 2}},
                {"presence_stats": {"channel": "chat:b"}}
            ]}),
        )
        .await;
    let replies = result["replies"].as_array().unwrap();
    assert_eq!(replies[0]["publish"]["offset"], 1);
    assert_eq!(replies[1]["error"]["code"], 107);
    assert!(
        replies[1]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("data"),
        "{}",
        replies[1]
    );
    assert_eq!(replies[2]["error"]["code"], 104);
    assert_eq!(replies[3]["publish"]["offset"], 2);
    assert_eq!(replies[4]["presence_stats"]["num_clients"], 1);
    assert_eq!(alice.publication("chat:b").await["data"], 1);
    assert_eq!(alice.publication("chat:b").await["data"], 2);
}

#[tokio::test]
async fn parallel_batch_answers_in_command_order_and_delivers_everything() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice").await;
    alice.subscribe("chat:p").await;
    let mut commands: Vec<Value> = (1..=20)
        .map(|n| json!({"publish": {"channel": "chat:p", "data": n}}))
        .collect();
    commands.insert(5, json!({"publish": {"channel": "chat:p"}}));
    let result = server
        .api_ok("batch", json!({"commands": commands, "parallel": true}))
        .await;
    let replies = result["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 21);
    assert_eq!(replies[5]["error"]["code"], 107, "{}", replies[5]);
    let mut offsets: Vec<u64> = replies
        .iter()
        .filter_map(|r| r["publish"]["offset"].as_u64())
        .collect();
    offsets.sort();
    assert_eq!(offsets, (1..=20).collect::<Vec<u64>>());
    let mut data = Vec::new();
    for _ in 0..20 {
        data.push(alice.publication("chat:p").await["data"].as_i64().unwrap());
    }
    data.sort();
    assert_eq!(data, (1..=20).collect::<Vec<i64>>());
    // A malformed command fails the whole batch before anything runs.
    let (status, body) = server
        .api(
            "batch",
            json!({"parallel": true, "commands": [
                {"publish": {"channel": "chat:p", "data": 21}},
                {"publish": {}, "info": {}}
            ]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["error"]["code"], 107, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("commands[1]"));
    let info = server
        .api_ok("history", json!({"channel": "chat:p", "limit": 0}))
        .await;
    assert_eq!(
        info["offset"], 20,
        "the valid command of the refused batch did not run"
    );
}

#[tokio::test]
async fn internal_listener_takes_the_api_and_metrics_away_from_the_public_port() {
    let server = TestServer::with(|c| c.http.internal_listen = "127.0.0.1:0".into()).await;
    let internal = server
        .server
        .as_ref()
        .unwrap()
        .internal_addr
        .expect("internal listener bound");
    let (status, _) = http_request(
        server.addr,
        "POST",
        "/api/info",
        &[("X-API-Key", API_KEY)],
        "{}",
    )
    .await;
    assert_eq!(status, 404, "no API on the public port");
    let (status, _) = http_raw(server.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 404, "no metrics on the public port");
    let (status, body) = http_request(
        internal,
        "POST",
        "/api/info",
        &[("X-API-Key", API_KEY)],
        "{}",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, text) = http_raw(internal, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    assert!(text.contains("herald_connections"), "{text}");
    let mut client = Client::open(&server.ws_url()).await;
    client.connect(&token("alice")).await;
}

#[tokio::test]
async fn health_ready_and_metrics_count_what_happened() {
    let server = TestServer::start().await;
    let (status, _) = http_raw(server.addr, "GET", "/health", &[], "").await;
    assert_eq!(status, 200);
    let (status, _) = http_raw(server.addr, "GET", "/ready", &[], "").await;
    assert_eq!(status, 200);
    let mut alice = server.client("alice").await;
    alice.subscribe("chat:m").await;
    server
        .api_ok("publish", json!({"channel": "chat:m", "data": "x"}))
        .await;
    alice.publication("chat:m").await;
    let (_, text) = http_raw(server.addr, "GET", "/metrics", &[], "").await;
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
    };
    assert_eq!(value("herald_connections "), 1.0);
    assert_eq!(value("herald_subscriptions "), 2.0);
    assert!(value("herald_deliveries_total ") >= 1.0);
    assert_eq!(value("herald_publications_total{source=\"api\"} "), 1.0);
    assert_eq!(value("herald_commands_total{method=\"subscribe\"} "), 1.0);
    assert!(value("herald_bytes_out_total ") > 0.0);
}

#[tokio::test]
async fn without_a_key_the_api_refuses_callers_behind_a_local_proxy() {
    let server = TestServer::with(|c| c.api.key.clear()).await;
    let json = ("Content-Type", "application/json");
    let (status, _) = http_request(server.addr, "POST", "/api/info", &[json], "{}").await;
    assert_eq!(status, 200, "direct loopback caller");
    let (status, body) = http_request(
        server.addr,
        "POST",
        "/api/info",
        &[json, ("X-Forwarded-For", "203.0.113.9")],
        "{}",
    )
    .await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn allowed_origins_stop_foreign_pages_but_not_apps() {
    let server =
        TestServer::with(|c| c.http.allowed_origins = vec!["https://app.example".into()]).await;
    let upgrade = |origin: Option<&'static str>| {
        let mut headers = vec![
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ];
        if let Some(origin) = origin {
            headers.push(("Origin", origin));
        }
        headers
    };
    let status = |headers: Vec<(&'static str, &'static str)>| async move {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let mut request = format!(
            "GET /connection/websocket HTTP/1.1\r\nHost: {}\r\n",
            server.addr
        );
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n])
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(status(upgrade(Some("https://evil.example"))).await, "403");
    assert_eq!(status(upgrade(Some("https://app.example"))).await, "101");
    assert_eq!(
        status(upgrade(None)).await,
        "101",
        "non-browser clients send no Origin"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_moves_a_connections_expiry_or_ends_it_as_expired() {
    use std::time::Duration;
    let server = TestServer::with(|c| c.client.expired_close_delay = Duration::ZERO).await;
    // Tokens that expire in 2 s, which the clients never refresh themselves.
    let short = token_with(json!({"sub": "alice", "exp": now() + 2}));
    let mut kept = Client::open(&server.ws_url()).await;
    kept.connect(&short).await;
    let mut other = Client::open(&server.ws_url()).await;
    other.connect(&short).await;

    // The backend extends one connection by an hour: the client is told with a refresh push.
    let later = now() + 3600;
    server
        .api_ok(
            "refresh",
            json!({"user": "alice", "client": kept.client_id, "expire_at": later}),
        )
        .await;
    // (The personal channel's join events come first.)
    let mut push = kept.push().await;
    while push.get("refresh").is_none() {
        push = kept.push().await;
    }
    let ttl = push["refresh"]["ttl"].as_u64().unwrap_or_default();
    assert_eq!(push["refresh"]["expires"], true, "{push}");
    assert!((3590..=3600).contains(&ttl), "{push}");
    // The other connection keeps its token's expiry and goes at it; the extended one stays.
    match other.closed_within(Duration::from_secs(6)).await {
        Some(Closed::Code(code, _)) => assert_eq!(code, 3005),
        closed => panic!("the unrefreshed connection expires: {closed:?}"),
    }
    kept.assert_alive().await;

    // `expired` ends it as expired: the SDK gets a new token and reconnects.
    server
        .api_ok("refresh", json!({"user": "alice", "expired": true}))
        .await;
    match kept.closed_within(Duration::from_secs(5)).await {
        Some(Closed::Code(code, _)) => assert_eq!(code, 3005),
        closed => panic!("expired by the backend: {closed:?}"),
    }

    // Bad input names the field.
    for (body, field) in [
        (json!({"expire_at": later}), "\"user\""),
        (json!({"user": "alice", "expire_at": -5}), "\"expire_at\""),
        (json!({"user": "alice", "session": "s1"}), "\"session\""),
        (json!({"user": "alice", "expired": "yes"}), "expired"),
    ] {
        let (status, reply) = server.api("refresh", body.clone()).await;
        assert_eq!(status, 200, "{body}: {reply}");
        assert_eq!(reply["error"]["code"], 107, "{body}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "{body}: {reply}");
    }
}
