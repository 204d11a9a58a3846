//! Malformed input through real sockets: every bad frame, token, channel or API request gets a clear
//! error reply or the right close code — never a panic (a panicking session task would end the TCP
//! connection without a close frame, which `Closed::Abrupt` would show) — and a healthy client on the
//! same node keeps working.

mod support;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::SinkExt;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use support::*;
use tokio_websockets::Message;

const BAD_REQUEST: (u16, &str) = (3501, "bad request");
const INVALID_TOKEN: (u16, &str) = (3500, "invalid token");

fn code((code, reason): (u16, &str)) -> Closed {
    Closed::Code(code, reason.into())
}

/// A connected client subscribed to `chat:bystander`, to prove other clients are unaffected.
async fn bystander(server: &TestServer) -> Client {
    let mut client = server.client("bystander").await;
    client.subscribe("chat:bystander").await;
    client
}

/// The bystander still answers commands and still receives publications.
async fn assert_unaffected(server: &TestServer, bystander: &mut Client) {
    static CHECK: AtomicU64 = AtomicU64::new(1);
    let n = CHECK.fetch_add(1, Ordering::Relaxed);
    bystander.assert_alive().await;
    server
        .api_ok(
            "publish",
            json!({"channel": "chat:bystander", "data": {"check": n}}),
        )
        .await;
    assert_eq!(
        bystander.publication("chat:bystander").await["data"]["check"],
        n
    );
}

/// Sends `frame` on a fresh connection (connected first when `connected`) and returns how it closed.
async fn close_after(server: &TestServer, connected: bool, frame: Message) -> Closed {
    let mut client = Client::open(&server.ws_url()).await;
    if connected {
        client.connect(&token("mallory")).await;
    }
    client.ws.send(frame).await.expect("send");
    client.closed().await
}

fn error_code(reply: &Value) -> u64 {
    reply["error"]["code"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an error reply, got {reply}"))
}

#[tokio::test]
async fn malformed_frames_close_with_bad_request() {
    let server = TestServer::start().await;
    let mut healthy = bystander(&server).await;
    let frames = [
        "{not json",
        "{\"id\":1,\"ping\":{}",
        "[1,2]",
        "[]",
        "null",
        "42",
        "\"connect\"",
        "   ",
        // Wrong field types.
        r#"{"id":"1","ping":{}}"#,
        r#"{"id":-1,"ping":{}}"#,
        r#"{"id":1,"subscribe":{"channel":5}}"#,
        r#"{"id":1,"subscribe":"chat:x"}"#,
        r#"{"id":1,"publish":{"channel":["chat:x"],"data":1}}"#,
        r#"{"id":1,"history":{"channel":"chat:x","limit":"all"}}"#,
        // Two requests in one command.
        r#"{"id":1,"ping":{},"presence":{"channel":"chat:x"}}"#,
        // A good command followed by garbage in the same frame.
        "{\"id\":1,\"ping\":{}}\n{oops",
    ];
    for frame in frames {
        for connected in [true, false] {
            let closed = close_after(&server, connected, Message::text(frame.to_string())).await;
            assert_eq!(
                closed,
                code(BAD_REQUEST),
                "frame {frame:?} (connected: {connected})"
            );
        }
    }
    // A JSON connection speaks text frames: a binary one is refused with 1003 (unsupported data).
    let closed = close_after(
        &server,
        true,
        Message::binary(Bytes::from_static(b"\x00\x01garbage")),
    )
    .await;
    assert!(
        matches!(&closed, Closed::Code(1003, reason) if reason.contains("binary")),
        "{closed:?}"
    );
    assert_unaffected(&server, &mut healthy).await;
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let server = TestServer::start().await;
    let mut healthy = bystander(&server).await;
    for connected in [true, false] {
        let frame = Message::text(Bytes::from_static(b"{\"id\":1,\"ping\":{}}\xff\xfe"));
        match close_after(&server, connected, frame).await {
            Closed::Code(1007, _) => {}
            other => panic!("expected close 1007 (invalid frame payload data), got {other:?}"),
        }
    }
    assert_unaffected(&server, &mut healthy).await;
}

#[tokio::test]
async fn message_larger_than_max_message_size_closes_with_1009() {
    let server = TestServer::with(|c| c.client.max_message_size = 1024).await;
    let mut healthy = bystander(&server).await;
    // Just below the limit is fine.
    let mut client = server.client("alice").await;
    client.subscribe("chat:big").await;
    let small = "x".repeat(900);
    let reply = client
        .call("publish", json!({"channel": "chat:big", "data": small}))
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    // Above it: 1009.
    let big =
        json!({"id": 99, "publish": {"channel": "chat:big", "data": "x".repeat(4096)}}).to_string();
    client.send_text(&big).await;
    match client.closed().await {
        Closed::Code(1009, _) => {}
        other => panic!("expected close 1009 (message too big), got {other:?}"),
    }
    // Also before connect, and for a message far above the limit.
    let huge = format!(
        "{{\"id\":1,\"connect\":{{\"token\":\"{}\"}}}}",
        "y".repeat(256 * 1024)
    );
    match close_after(&server, false, Message::text(huge)).await {
        Closed::Code(1009, _) => {}
        other => panic!("expected close 1009 (message too big), got {other:?}"),
    }
    // A message sent in many small frames whose total exceeds the limit: 1009 as well.
    let mut fragmented = Client::open_with(
        &server.ws_url(),
        tokio_websockets::Config::default().frame_size(256),
    )
    .await;
    fragmented.connect(&token("alice")).await;
    fragmented.subscribe("chat:big").await;
    let reply = fragmented
        .call(
            "publish",
            json!({"channel": "chat:big", "data": "z".repeat(600)}),
        )
        .await;
    assert!(
        reply.get("publish").is_some(),
        "fragmented but under the limit: {reply}"
    );
    fragmented.send_text(&big).await;
    match fragmented.closed().await {
        Closed::Code(1009, _) => {}
        other => panic!("expected close 1009 for a fragmented message, got {other:?}"),
    }
    assert_unaffected(&server, &mut healthy).await;
}

#[tokio::test]
async fn commands_before_connect_and_a_second_connect_are_bad_requests() {
    let server = TestServer::start().await;
    let mut healthy = bystander(&server).await;
    for command in [
        json!({"id": 1, "ping": {}}),
        json!({"id": 1, "subscribe": {"channel": "chat:x"}}),
        json!({"id": 1, "publish": {"channel": "chat:x", "data": 1}}),
        json!({"id": 1, "teleport": {}}),
    ] {
        let closed = close_after(&server, false, Message::text(command.to_string())).await;
        assert_eq!(closed, code(BAD_REQUEST), "{command} before connect");
    }
    let mut client = server.client("alice").await;
    client
        .send(json!({"id": 50, "connect": {"token": token("alice")}}))
        .await;
    assert_eq!(client.closed().await, code(BAD_REQUEST), "second connect");
    assert_unaffected(&server, &mut healthy).await;
}

/// An unsigned token (`alg: none`) with claims that would otherwise be valid.
fn alg_none_token(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

#[tokio::test]
async fn bad_connection_tokens_close_with_invalid_token() {
    let server = TestServer::start().await;
    let mut healthy = bystander(&server).await;
    let claims = json!({"sub": "mallory", "exp": now() + 3600});
    let forged =
        herald_auth::sign_hs256(&claims, "not-the-server-secret-not-the-server").expect("sign");
    let good = token("mallory");
    let (head, rest) = good.split_once('.').unwrap();
    let (_, signature) = rest.rsplit_once('.').unwrap();
    let admin_payload =
        URL_SAFE_NO_PAD.encode(json!({"sub": "admin", "exp": now() + 3600}).to_string());
    let tampered = format!("{head}.{admin_payload}.{signature}");
    let cases = [
        ("wrong secret", forged),
        ("garbage", "not-a-token".to_string()),
        ("three garbage parts", "a.b.c".to_string()),
        ("alg none", alg_none_token(&claims)),
        (
            "alg none without signature part",
            alg_none_token(&claims).trim_end_matches('.').to_string(),
        ),
        ("payload swapped under a valid signature", tampered),
    ];
    for (what, bad) in cases {
        let mut client = Client::open(&server.ws_url()).await;
        client
            .send(json!({"id": 1, "connect": {"token": bad}}))
            .await;
        assert_eq!(client.closed().await, code(INVALID_TOKEN), "{what}");
    }
    // No token at all while anonymous connections are not allowed.
    for connect in [json!({}), json!({"token": ""})] {
        let mut client = Client::open(&server.ws_url()).await;
        client.send(json!({"id": 1, "connect": connect})).await;
        assert_eq!(
            client.closed().await,
            code(INVALID_TOKEN),
            "no token: {connect}"
        );
    }
    assert_unaffected(&server, &mut healthy).await;
}

#[tokio::test]
async fn expired_connection_token_is_an_error_reply_and_the_connection_stays_open() {
    let server = TestServer::start().await;
    let mut healthy = bystander(&server).await;
    let mut client = Client::open(&server.ws_url()).await;
    let expired = token_with(json!({"sub": "alice", "exp": now() - 10}));
    let reply = client.call("connect", json!({"token": expired})).await;
    assert_eq!(error_code(&reply), 109, "{reply}");
    assert_eq!(reply["error"]["message"], "token expired");
    // Same socket: the SDK refreshes its token and connects again.
    let result = client.connect(&token("alice")).await;
    assert!(!result["client"].as_str().unwrap().is_empty());
    client.assert_alive().await;
    assert_unaffected(&server, &mut healthy).await;
}

#[tokio::test]
async fn bad_subscription_tokens() {
    let server = TestServer::start().await;
    let mut healthy = bystander(&server).await;
    let exp = now() + 600;
    let cases = [
        (
            "another user",
            token_with(json!({"sub": "bob", "channel": "locked:vip", "exp": exp})),
        ),
        (
            "another channel",
            token_with(json!({"sub": "alice", "channel": "locked:other", "exp": exp})),
        ),
        (
            "wrong secret",
            herald_auth::sign_hs256(
                &json!({"sub": "alice", "channel": "locked:vip", "exp": exp}),
                "wrong-secret-wrong-secret-wrong",
            )
            .unwrap(),
        ),
        (
            "alg none",
            alg_none_token(&json!({"sub": "alice", "channel": "locked:vip", "exp": exp})),
        ),
        ("garbage", "garbage".to_string()),
    ];
    for (what, sub_token) in cases {
        let mut client = server.client("alice").await;
        client
            .send(json!({"id": 7, "subscribe": {"channel": "locked:vip", "token": sub_token}}))
            .await;
        assert_eq!(client.closed().await, code(INVALID_TOKEN), "{what}");
    }
    let mut client = server.client("alice").await;
    let expired = token_with(json!({"sub": "alice", "channel": "locked:vip", "exp": now() - 10}));
    let reply = client
        .call(
            "subscribe",
            json!({"channel": "locked:vip", "token": expired}),
        )
        .await;
    assert_eq!(error_code(&reply), 109, "{reply}");
    client.assert_alive().await;
    // A fresh token still works on the same connection.
    let fresh = token_with(json!({"sub": "alice", "channel": "locked:vip", "exp": exp}));
    let reply = client
        .call(
            "subscribe",
            json!({"channel": "locked:vip", "token": fresh}),
        )
        .await;
    assert!(reply.get("subscribe").is_some(), "{reply}");
    assert_unaffected(&server, &mut healthy).await;
}

#[tokio::test]
async fn bad_channels_get_error_replies() {
    let server = TestServer::start().await;
    let mut healthy = bystander(&server).await;
    let mut client = server.client("alice").await;
    let cases = [
        ("locked:room", 103),
        ("nope:x", 102),
        ("", 107),
        ("chat:a\u{0007}b", 107),
        ("chat:line\nbreak", 107),
        ("tab\there", 107),
        ("$secret", 103),
        ("$chat:secret", 103),
    ];
    for (channel, expected) in cases {
        let reply = client.call("subscribe", json!({"channel": channel})).await;
        assert_eq!(
            error_code(&reply),
            expected,
            "subscribe {channel:?}: {reply}"
        );
    }
    let too_long = "x".repeat(256);
    let reply = client.call("subscribe", json!({"channel": too_long})).await;
    assert_eq!(
        error_code(&reply),
        107,
        "256 bytes is over channel.max_length"
    );
    // Exactly max_length is fine.
    client.subscribe(&"x".repeat(255)).await;
    client.subscribe("chat:dup").await;
    let reply = client
        .call("subscribe", json!({"channel": "chat:dup"}))
        .await;
    assert_eq!(error_code(&reply), 105, "{reply}");
    // A missing channel field is an empty channel.
    let reply = client.call("subscribe", json!({})).await;
    assert_eq!(error_code(&reply), 107, "{reply}");
    client.assert_alive().await;
    assert_unaffected(&server, &mut healthy).await;
}

#[tokio::test]
async fn forbidden_or_unavailable_methods_get_error_replies() {
    let server = TestServer::start().await;
    let mut healthy = bystander(&server).await;
    let mut client = server.client("alice").await;
    client.subscribe("chat:m").await;
    let cases = [
        ("publish", json!({"channel": "chat:m"}), 107),
        ("publish", json!({"channel": "chat:m", "data": null}), 107),
        ("publish", json!({"channel": "locked:m", "data": 1}), 103),
        ("publish", json!({"channel": "$chat:m", "data": 1}), 103),
        ("publish", json!({"channel": "nope:m", "data": 1}), 102),
        ("publish", json!({"channel": "", "data": 1}), 107),
        ("presence", json!({"channel": "locked:m"}), 108),
        ("presence_stats", json!({"channel": "locked:m"}), 108),
        ("history", json!({"channel": "locked:m"}), 108),
        ("presence", json!({"channel": "nope:m"}), 102),
        ("history", json!({"channel": ""}), 107),
        (
            "sub_refresh",
            json!({"channel": "chat:not-subscribed", "token": "x"}),
            103,
        ),
        ("teleport", json!({}), 104),
        ("teleport", json!({"channel": "chat:m"}), 104),
    ];
    for (method, params, expected) in cases {
        let reply = client.call(method, params.clone()).await;
        assert_eq!(error_code(&reply), expected, "{method} {params}: {reply}");
    }
    // The connection is still fully usable.
    client.assert_alive().await;
    let reply = client
        .call(
            "publish",
            json!({"channel": "chat:m", "data": {"ok": true}}),
        )
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    assert_eq!(
        client.publication("chat:m").await["data"],
        json!({"ok": true})
    );
    assert_unaffected(&server, &mut healthy).await;
}

#[tokio::test]
async fn too_many_commands_in_one_frame_closes_with_bad_request() {
    let server = TestServer::with(|c| c.client.max_commands_per_frame = 5).await;
    let mut healthy = bystander(&server).await;
    let mut client = server.client("alice").await;
    let frame = |first: u32, n: u32| {
        (first..first + n)
            .map(|id| json!({"id": id, "ping": {}}).to_string())
            .collect::<Vec<_>>()
            .join("\n")
    };
    client.send_text(&frame(100, 5)).await;
    for id in 100..105 {
        assert!(client.reply(id).await.get("ping").is_some());
    }
    client.send_text(&frame(200, 6)).await;
    assert_eq!(client.closed().await, code(BAD_REQUEST));
    assert_unaffected(&server, &mut healthy).await;
}

#[tokio::test]
async fn api_requires_the_key() {
    let server = TestServer::start().await;
    let mut healthy = bystander(&server).await;
    let body = json!({"channel": "chat:k", "data": 1}).to_string();
    for headers in [
        vec![],
        vec![("X-API-Key", "wrong")],
        vec![("X-API-Key", "")],
        vec![("X-API-Key", &API_KEY[..API_KEY.len() - 1])],
        vec![("Authorization", "apikey wrong")],
        vec![("Authorization", "Bearer test-api-key")],
        vec![("Authorization", API_KEY)],
    ] {
        let (status, reply) =
            http_request(server.addr, "POST", "/api/publish", &headers, &body).await;
        assert_eq!(status, 401, "{headers:?}: {reply}");
        assert_eq!(reply["error"]["code"], 101, "{headers:?}: {reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{reply}"
        );
    }
    // Refused requests published nothing.
    let history = server.api_ok("history", json!({"channel": "chat:k"})).await;
    assert_eq!(history["offset"], 0, "{history}");
    let authorization = format!("apikey {API_KEY}");
    let (status, reply) = http_request(
        server.addr,
        "POST",
        "/api/publish",
        &[("Authorization", &authorization)],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["result"]["offset"], 1, "{reply}");
    assert_unaffected(&server, &mut healthy).await;
}

#[tokio::test]
async fn api_rejects_bad_requests_with_clear_statuses() {
    let server = TestServer::start().await;
    let mut healthy = bystander(&server).await;
    let key = [("X-API-Key", API_KEY)];
    let post = |path: &'static str, body: String| {
        let addr = server.addr;
        async move { http_request(addr, "POST", path, &key, &body).await }
    };

    let (status, reply) = post("/api/teleport", "{}".into()).await;
    assert_eq!(status, 404, "{reply}");
    assert_eq!(reply["error"]["code"], 104, "{reply}");

    for body in ["{not json", "{\"channel\":", "\u{1}"] {
        let (status, reply) = post("/api/publish", body.into()).await;
        assert_eq!(status, 400, "{body:?}: {reply}");
        assert_eq!(reply["error"]["code"], 107, "{reply}");
    }
    for body in ["[1,2]", "42", "\"publish\"", "null", "true"] {
        let (status, reply) = post("/api/publish", body.into()).await;
        assert_eq!(status, 400, "{body:?}: {reply}");
        assert_eq!(reply["error"]["code"], 107, "{reply}");
    }

    let (status, reply) = post("/api/publish", json!({"data": {"x": 1}}).to_string()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["error"]["code"], 107, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("channel"),
        "the message names the field: {message}"
    );

    let (status, reply) = post("/api/publish", json!({"channel": 5, "data": 1}).to_string()).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["error"]["code"], 107, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("channel"),
        "{reply}"
    );

    let (status, reply) = post("/api/publish", json!({"channel": "chat:api"}).to_string()).await;
    assert_eq!(
        (status, reply["error"]["code"].clone()),
        (200, json!(107)),
        "{reply}"
    );
    assert!(
        reply["error"]["message"].as_str().unwrap().contains("data"),
        "{reply}"
    );

    // One byte over 4 MiB (exactly, so the server has read the whole body when it refuses it and
    // closing does not reset the connection under the response). Exactly 4 MiB is accepted.
    let sized = |len: usize| {
        let frame = json!({"channel": "chat:api", "data": ""}).to_string();
        let body =
            json!({"channel": "chat:api", "data": "x".repeat(len - frame.len())}).to_string();
        assert_eq!(body.len(), len);
        body
    };
    let (status, reply) = post("/api/publish", sized(4 << 20)).await;
    assert_eq!(status, 200, "exactly 4 MiB is read");
    // ... and answered: such a publication is over channel.max_publication_bytes (64 KiB).
    assert_eq!(reply["error"]["code"], 106, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("channel.max_publication_bytes")),
        "{reply}"
    );
    let (status, reply) = post("/api/publish", sized((4 << 20) + 1)).await;
    assert_eq!(status, 413, "{reply}");
    assert_eq!(reply["error"]["code"], 107, "{reply}");

    let (status, reply) = http_request(server.addr, "GET", "/api/publish", &key, "").await;
    assert_eq!(status, 405, "{reply}");
    assert!(reply["error"]["code"].is_u64(), "{reply}");

    // The API still works, and so do the clients.
    server
        .api_ok("publish", json!({"channel": "chat:api", "data": 1}))
        .await;
    assert_unaffected(&server, &mut healthy).await;
}

#[tokio::test]
async fn api_without_a_key_answers_loopback_callers() {
    let server = TestServer::with(|c| c.api.key.clear()).await;
    let mut client = server.client("alice").await;
    client.subscribe("chat:loop").await;
    let (status, reply) = http_request(
        server.addr,
        "POST",
        "/api/publish",
        &[("Content-Type", "application/json")],
        &json!({"channel": "chat:loop", "data": 7}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["result"]["offset"], 1, "{reply}");
    assert_eq!(client.publication("chat:loop").await["data"], 7);
    // A presented (meaningless) key does not hurt either.
    let (status, reply) = http_request(
        server.addr,
        "POST",
        "/api/info",
        &[
            ("X-API-Key", "whatever"),
            ("Content-Type", "application/json"),
        ],
        "{}",
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["result"]["nodes"][0]["num_clients"], 1, "{reply}");
}
