//! Backend hooks through real WebSocket clients: proxy calls to a scripted Rust backend (connect,
//! subscribe, publish, rpc, send, refresh), their failures (down, slow, garbage, busy), and webhooks
//! (signature, every event, retries, the bounded queue).

mod support;

use herald::config::{Config, NamespaceOptions};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::backend::{down_url, Backend, Recorded, Reply};
use support::*;

/// The sum of the samples whose line starts with `prefix` (e.g. some of a metric's labels).
fn metric_prefix(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Every proxy endpoint at `base`, a short timeout, and a `hooked` namespace decided by the backend.
fn with_proxy(config: &mut Config, base: &str) {
    let p = &mut config.proxy;
    p.connect_endpoint = format!("{base}/connect");
    p.refresh_endpoint = format!("{base}/refresh");
    p.subscribe_endpoint = format!("{base}/subscribe");
    p.publish_endpoint = format!("{base}/publish");
    p.rpc_endpoint = format!("{base}/rpc");
    p.send_endpoint = format!("{base}/send");
    p.timeout = Duration::from_millis(500);
    // Cookies are forwarded: the page origins must be listed (apps without Origin still connect).
    config.http.allowed_origins = vec!["https://im.example".into()];
    config.channel.namespaces.push(NamespaceOptions {
        proxy_subscribe: true,
        proxy_publish: true,
        allow_subscribe_for_client: false,
        allow_publish_for_subscriber: false,
        ..open_namespace("hooked")
    });
}

/// The IM backend of these tests: a cookie names the user; the backend guards one channel,
/// moderates publications and answers two rpc methods.
fn im_backend(r: &Recorded) -> Reply {
    let body = r.json();
    match r.path.as_str() {
        "/connect" => {
            let cookie = r.header("cookie").unwrap_or_default();
            if body["data"]["deny"] == true {
                return Reply::Json(json!({"disconnect": {"code": 4501, "reason": "go away"}}));
            }
            if body["data"]["error"] == true {
                return Reply::Json(json!({"error": {"code": 1001, "message": "try later"}}));
            }
            match cookie.strip_prefix("session=") {
                Some(user) => Reply::Json(json!({"result": {
                    "user": user,
                    "info": {"name": format!("User {user}")},
                    "data": {"welcome": true},
                    "channels": ["news"],
                    "subs": {"hooked:lobby": {"info": {"seat": 1}}},
                    "meta": {"tenant": "t1"}
                }})),
                None => Reply::Json(json!({"disconnect": {"code": 4500, "reason": "no session"}})),
            }
        }
        "/subscribe" => {
            if body["channel"] == "hooked:secret" {
                Reply::Json(json!({"error": {"code": 103, "message": "permission denied"}}))
            } else {
                Reply::Json(json!({"result": {"info": {"role": "member"}, "data": {"motd": "hi"}}}))
            }
        }
        "/publish" => {
            let text = body["data"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if text.contains("spam") {
                Reply::Json(json!({"error": {"code": 1002, "message": "moderated"}}))
            } else if text.contains("darn") {
                Reply::Json(
                    json!({"result": {"data": {"text": text.replace("darn", "****"), "moderated": true}}}),
                )
            } else {
                Reply::Json(json!({"result": {}}))
            }
        }
        "/rpc" => match body["method"].as_str() {
            Some("echo") => Reply::Json(
                json!({"result": {"data": {"echo": body["data"], "user": body["user"]}}}),
            ),
            Some("kick") => Reply::Json(json!({"disconnect": {"code": 4000, "reason": "kicked"}})),
            _ => Reply::Json(json!({"error": {"code": 1003, "message": "unknown method"}})),
        },
        _ => Reply::Json(json!({"result": {}})),
    }
}

async fn im_server() -> (Backend, TestServer) {
    let backend = Backend::start(im_backend).await;
    let base = backend.url("");
    let server = TestServer::with(|c| with_proxy(c, &base)).await;
    (backend, server)
}

/// Opens a connection with the backend's session cookie and connects without a token.
async fn connect_as(server: &TestServer, user: &str) -> (Client, Value) {
    let cookie = format!("session={user}");
    let mut client = Client::open_with_headers(&server.ws_url(), &[("Cookie", &cookie)]).await;
    let reply = client
        .call("connect", json!({"name": "js", "version": "5"}))
        .await;
    let result = reply
        .get("connect")
        .unwrap_or_else(|| panic!("connect failed: {reply}"))
        .clone();
    client.client_id = result["client"].as_str().unwrap_or_default().to_string();
    (client, result)
}

#[tokio::test]
async fn connect_hook_sets_user_info_and_server_side_channels() {
    let (backend, server) = im_server().await;
    let (mut alice, result) = connect_as(&server, "alice").await;
    assert_eq!(result["data"], json!({"welcome": true}));
    let subs = result["subs"].as_object().expect("subs");
    for channel in ["#alice", "news", "hooked:lobby"] {
        assert!(subs.contains_key(channel), "{channel} in {result}");
    }
    let request = &backend.requests("/connect")[0];
    let body = request.json();
    assert_eq!(body["client"], alice.client_id.as_str());
    assert_eq!(body["transport"], "websocket");
    assert_eq!(body["protocol"], "json");
    assert_eq!(body["name"], "js");
    assert_eq!(request.header("cookie").as_deref(), Some("session=alice"));

    // Server-side subscriptions from the backend deliver.
    server
        .api_ok("publish", json!({"channel": "news", "data": {"n": 1}}))
        .await;
    assert_eq!(alice.publication("news").await["data"], json!({"n": 1}));
    // Presence carries the backend's connection info and the connect result's channel info.
    let presence = server
        .api_ok("presence", json!({"channel": "hooked:lobby"}))
        .await;
    let entry = &presence["presence"][alice.client_id.as_str()];
    assert_eq!(entry["user"], "alice");
    assert_eq!(entry["conn_info"], json!({"name": "User alice"}));
    assert_eq!(entry["chan_info"], json!({"seat": 1}));

    // Later hooks carry the user and the connect result's meta.
    let reply = alice
        .call("rpc", json!({"method": "echo", "data": {"q": 1}}))
        .await;
    assert_eq!(
        reply["rpc"]["data"],
        json!({"echo": {"q": 1}, "user": "alice"})
    );
    let rpc = &backend.requests("/rpc")[0].json();
    assert_eq!(rpc["meta"], json!({"tenant": "t1"}));
    assert_eq!(rpc["user"], "alice");
}

#[tokio::test]
async fn connect_hook_can_refuse() {
    let (_backend, server) = im_server().await;
    // No cookie: the backend disconnects with its own code.
    let mut anonymous = Client::open(&server.ws_url()).await;
    anonymous.send(json!({"id": 1, "connect": {}})).await;
    assert_eq!(
        anonymous.closed().await,
        Closed::Code(4500, "no session".into())
    );
    let mut denied =
        Client::open_with_headers(&server.ws_url(), &[("Cookie", "session=bob")]).await;
    denied
        .send(json!({"id": 1, "connect": {"data": {"deny": true}}}))
        .await;
    assert_eq!(denied.closed().await, Closed::Code(4501, "go away".into()));
    // An error answer is the connect command's error reply; the socket stays usable.
    let mut err = Client::open_with_headers(&server.ws_url(), &[("Cookie", "session=bob")]).await;
    let reply = err.call("connect", json!({"data": {"error": true}})).await;
    assert_eq!(reply["error"]["code"], 1001);
    assert_eq!(reply["error"]["message"], "try later");
    // A token still works without asking the backend.
    let mut with_token = server.client("carol").await;
    with_token.assert_alive().await;
}

#[tokio::test]
async fn subscribe_hook_allows_and_denies() {
    let (backend, server) = im_server().await;
    let (mut alice, _) = connect_as(&server, "alice").await;
    let reply = alice
        .call(
            "subscribe",
            json!({"channel": "hooked:room", "data": {"want": "in"}}),
        )
        .await;
    assert_eq!(reply["subscribe"]["data"], json!({"motd": "hi"}), "{reply}");
    let request = backend.requests("/subscribe")[0].json();
    assert_eq!(request["channel"], "hooked:room");
    assert_eq!(request["user"], "alice");
    assert_eq!(request["data"], json!({"want": "in"}));
    let presence = server
        .api_ok("presence", json!({"channel": "hooked:room"}))
        .await;
    assert_eq!(
        presence["presence"][alice.client_id.as_str()]["chan_info"],
        json!({"role": "member"})
    );
    let reply = alice
        .call("subscribe", json!({"channel": "hooked:secret"}))
        .await;
    assert_eq!(reply["error"]["code"], 103, "{reply}");
    // Namespaces without proxy_subscribe keep their own rules and do not ask the backend.
    let before = backend.requests("/subscribe").len();
    alice.subscribe("chat:plain").await;
    assert_eq!(backend.requests("/subscribe").len(), before);
}

#[tokio::test]
async fn publish_hook_allows_denies_and_rewrites() {
    let (backend, server) = im_server().await;
    let (mut alice, _) = connect_as(&server, "alice").await;
    let (mut bob, _) = connect_as(&server, "bob").await;
    bob.subscribe("hooked:room").await;
    alice.subscribe("hooked:room").await;

    let reply = alice
        .call(
            "publish",
            json!({"channel": "hooked:room", "data": {"text": "hello"}}),
        )
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    assert_eq!(
        bob.publication("hooked:room").await["data"],
        json!({"text": "hello"})
    );

    let reply = alice
        .call(
            "publish",
            json!({"channel": "hooked:room", "data": {"text": "oh darn"}}),
        )
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    let rewritten = bob.publication("hooked:room").await;
    assert_eq!(
        rewritten["data"],
        json!({"text": "oh ****", "moderated": true})
    );
    assert_eq!(rewritten["info"]["user"], "alice");

    let reply = alice
        .call(
            "publish",
            json!({"channel": "hooked:room", "data": {"text": "buy spam"}}),
        )
        .await;
    assert_eq!(reply["error"]["code"], 1002);
    assert_eq!(reply["error"]["message"], "moderated");
    bob.expect_silence(Duration::from_millis(300)).await;

    let requests = backend.requests("/publish");
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].json()["channel"], "hooked:room");
    assert_eq!(requests[0].json()["data"], json!({"text": "hello"}));
    // History holds what subscribers saw: the rewritten text, never the refused one.
    let history = server
        .api_ok("history", json!({"channel": "hooked:room", "limit": -1}))
        .await;
    let texts: Vec<&Value> = history["publications"]
        .as_array()
        .expect("publications")
        .iter()
        .map(|p| &p["data"]["text"])
        .collect();
    assert_eq!(texts, vec![&json!("hello"), &json!("oh ****")]);
}

#[tokio::test]
async fn publish_hook_can_skip_history() {
    let backend = Backend::start(|_| Reply::Json(json!({"result": {"skip_history": true}}))).await;
    let base = backend.url("");
    let server = TestServer::with(|c| with_proxy(c, &base)).await;
    let mut alice = server.client("alice").await;
    alice.subscribe("hooked:room").await;
    let reply = alice
        .call(
            "publish",
            json!({"channel": "hooked:room", "data": {"n": 1}}),
        )
        .await;
    assert!(reply.get("publish").is_some(), "{reply}");
    assert_eq!(
        alice.publication("hooked:room").await["data"],
        json!({"n": 1})
    );
    let history = server
        .api_ok("history", json!({"channel": "hooked:room", "limit": -1}))
        .await;
    let kept = history["publications"].as_array().map_or(0, Vec::len);
    assert_eq!(kept, 0, "{history}");
}

#[tokio::test]
async fn rpc_hook_replies_errors_and_disconnects() {
    let (_backend, server) = im_server().await;
    let (mut alice, _) = connect_as(&server, "alice").await;
    let reply = alice
        .call("rpc", json!({"method": "echo", "data": [1, 2]}))
        .await;
    assert_eq!(
        reply["rpc"]["data"],
        json!({"echo": [1, 2], "user": "alice"})
    );
    let reply = alice.call("rpc", json!({"method": "nope"})).await;
    assert_eq!(reply["error"]["code"], 1003);
    assert_eq!(reply["error"]["message"], "unknown method");
    alice
        .send(json!({"id": 99, "rpc": {"method": "kick"}}))
        .await;
    assert_eq!(alice.closed().await, Closed::Code(4000, "kicked".into()));
}

#[tokio::test]
async fn rpc_without_a_hook_is_not_available() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice").await;
    let reply = alice.call("rpc", json!({"method": "x"})).await;
    assert_eq!(reply["error"]["code"], 108);
}

#[tokio::test]
async fn send_hook_is_fire_and_forget() {
    let (backend, server) = im_server().await;
    let (mut alice, _) = connect_as(&server, "alice").await;
    alice
        .send(json!({"send": {"data": {"typing": true}}}))
        .await;
    let sent = backend.wait_for("/send", 1).await;
    let body = sent[0].json();
    assert_eq!(body["data"], json!({"typing": true}));
    assert_eq!(body["user"], "alice");
    alice.assert_alive().await;
}

#[tokio::test]
async fn refresh_hook_extends_then_expires_a_backend_session() {
    let expire_in = Arc::new(AtomicUsize::new(1));
    let refreshes = expire_in.clone();
    let backend = Backend::start(move |r| match r.path.as_str() {
        "/connect" => Reply::Json(json!({"result": {"user": "alice", "expire_at": now() + 2}})),
        "/refresh" => {
            // First refresh: a little longer (whole seconds: +2 so it is never already past); then
            // expired.
            if refreshes.fetch_add(1, Ordering::SeqCst) == 1 {
                Reply::Json(json!({"result": {"expire_at": now() + 2}}))
            } else {
                Reply::Json(json!({"result": {"expired": true}}))
            }
        }
        _ => Reply::Json(json!({"result": {}})),
    })
    .await;
    let base = backend.url("");
    let server = TestServer::with(|c| with_proxy(c, &base)).await;
    let mut client = Client::open(&server.ws_url()).await;
    let reply = client.call("connect", json!({})).await;
    assert_eq!(reply["connect"]["expires"], true, "{reply}");
    let (_, closed) = client.read_until_closed(Duration::from_secs(8)).await;
    assert_eq!(
        closed,
        Some(Closed::Code(3005, "connection expired".into()))
    );
    let refreshes = backend.requests("/refresh");
    assert_eq!(refreshes.len(), 2, "one extension, then expired");
    assert_eq!(refreshes[0].json()["user"], "alice");
}

/// A refresh hook that fails must not close sessions: it is asked again later.
#[tokio::test]
async fn a_failing_refresh_hook_keeps_the_connection() {
    async fn case(failure: Failure) {
        let slow = matches!(failure, Failure::Slow);
        let backend = Backend::start(move |r| match r.path.as_str() {
            "/connect" => Reply::Json(json!({"result": {"user": "alice", "expire_at": now() + 2}})),
            _ if slow => Reply::Slow(Duration::from_secs(2), Box::new(Reply::Json(json!({})))),
            _ => Reply::Raw("not json"),
        })
        .await;
        let base = backend.url("");
        let down = down_url("/refresh").await;
        let server = TestServer::with(|c| {
            with_proxy(c, &base);
            c.proxy.timeout = Duration::from_millis(300);
            if matches!(failure, Failure::Down) {
                c.proxy.refresh_endpoint = down;
            }
        })
        .await;
        let mut client = Client::open(&server.ws_url()).await;
        let reply = client.call("connect", json!({})).await;
        assert_eq!(reply["connect"]["expires"], true, "{reply}");
        // Past the expiry (at most 2 s away) and the failed refresh, well before its 10 s retry.
        tokio::time::sleep(Duration::from_millis(3200)).await;
        client.assert_alive().await;
        let metrics = server.metrics().await;
        assert!(
            metric_prefix(&metrics, "herald_proxy_errors_total{hook=\"refresh\"") >= 1.0,
            "{metrics}"
        );
    }
    tokio::join!(
        case(Failure::Down),
        case(Failure::Slow),
        case(Failure::Garbage)
    );
}

/// A backend in one of the ways backends fail.
enum Failure {
    Down,
    Slow,
    Garbage,
    Status500,
}

async fn failing_server(failure: &Failure) -> (Option<Backend>, TestServer) {
    let backend = match failure {
        Failure::Down => None,
        Failure::Slow => Some(
            Backend::start(|_| {
                Reply::Slow(
                    Duration::from_secs(3),
                    Box::new(Reply::Json(json!({"result": {}}))),
                )
            })
            .await,
        ),
        Failure::Garbage => Some(Backend::start(|_| Reply::Raw("<html>oops")).await),
        Failure::Status500 => Some(Backend::start(|_| Reply::Status(500)).await),
    };
    let base = match &backend {
        Some(b) => b.url(""),
        None => down_url("").await,
    };
    let server = TestServer::with(|c| with_proxy(c, &base)).await;
    (backend, server)
}

#[tokio::test]
async fn a_failing_backend_gives_clear_errors_and_the_node_stays_fine() {
    for (failure, message) in [
        (Failure::Down, "backend unavailable"),
        (Failure::Slow, "backend timeout"),
        (Failure::Garbage, "bad backend response"),
        (Failure::Status500, "backend unavailable"),
    ] {
        let (_backend, server) = failing_server(&failure).await;
        // connect: closed with 3004 (the SDK reconnects with backoff), never left hanging.
        let mut client = Client::open(&server.ws_url()).await;
        let started = std::time::Instant::now();
        client.send(json!({"id": 1, "connect": {}})).await;
        assert_eq!(client.closed().await, Closed::Code(3004, message.into()));
        assert!(started.elapsed() < Duration::from_secs(2));

        // subscribe, publish, rpc: error 100 (temporary) with the reason; the connection stays.
        let mut alice = server.client("alice").await;
        alice.subscribe("chat:ok").await;
        for (method, params) in [
            ("subscribe", json!({"channel": "hooked:room"})),
            ("publish", json!({"channel": "hooked:room", "data": {}})),
            ("rpc", json!({"method": "echo"})),
        ] {
            let reply = alice.call(method, params).await;
            assert_eq!(reply["error"]["code"], 100, "{method}: {reply}");
            assert_eq!(reply["error"]["message"], message, "{method}: {reply}");
            assert_eq!(reply["error"]["temporary"], true, "{method}: {reply}");
        }
        // send: nobody to tell, but the failure is counted.
        alice.send(json!({"send": {"data": 1}})).await;
        let mut send_errors = 0.0;
        for _ in 0..200 {
            let metrics = server.metrics().await;
            send_errors = metric_prefix(&metrics, "herald_proxy_errors_total{hook=\"send\"");
            if send_errors >= 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(send_errors, 1.0, "send failure counted");
        alice.assert_alive().await;
        server
            .api_ok("publish", json!({"channel": "chat:ok", "data": 1}))
            .await;
        assert_eq!(alice.publication("chat:ok").await["data"], 1);
        let metrics = server.metrics().await;
        assert!(
            metric(&metrics, "herald_proxy_errors_total") >= 4.0,
            "{metrics}"
        );
        assert!(metric(&metrics, "herald_proxy_calls_total") >= 4.0);
        assert!(metric(&metrics, "herald_proxy_duration_seconds_count") >= 4.0);
    }
}

#[tokio::test]
async fn calls_over_the_concurrency_limit_fail_at_once() {
    let backend = Backend::start(|r| match r.path.as_str() {
        "/rpc" => Reply::Slow(
            Duration::from_millis(800),
            Box::new(Reply::Json(json!({"result": {"data": "slow"}}))),
        ),
        _ => Reply::Json(json!({"result": {}})),
    })
    .await;
    let base = backend.url("");
    let server = TestServer::with(|c| {
        with_proxy(c, &base);
        c.proxy.max_concurrent = 1;
        c.proxy.timeout = Duration::from_secs(2);
    })
    .await;
    let mut first = server.client("alice").await;
    let mut second = server.client("bob").await;
    first
        .send(json!({"id": 50, "rpc": {"method": "slow"}}))
        .await;
    backend.wait_for("/rpc", 1).await;
    let started = std::time::Instant::now();
    let reply = second.call("rpc", json!({"method": "other"})).await;
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    assert_eq!(reply["error"]["message"], "backend busy");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(first.reply(50).await["rpc"]["data"], "slow");
    // The permit is back: the next call goes through.
    let reply = second.call("rpc", json!({"method": "again"})).await;
    assert_eq!(reply["rpc"]["data"], "slow");
    let metrics = server.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "herald_proxy_errors_total{hook=\"rpc\",reason=\"busy\"}"
        ),
        1.0,
        "{metrics}"
    );
}

// ---- webhooks ----

const WEBHOOK_SECRET: &str = "webhook-secret";

async fn webhook_server(receiver: &Backend, change: impl FnOnce(&mut Config)) -> TestServer {
    let url = receiver.url("/events");
    TestServer::with(|c| {
        c.webhooks.url = url;
        c.webhooks.secret = WEBHOOK_SECRET.into();
        c.webhooks.retry_backoff = Duration::from_millis(50);
        c.webhooks.timeout = Duration::from_secs(1);
        change(c);
    })
    .await
}

fn events(receiver: &Backend) -> Vec<Value> {
    receiver
        .requests("/events")
        .iter()
        .map(Recorded::json)
        .collect()
}

/// Waits for an event of this kind on this channel.
async fn wait_channel_event(receiver: &Backend, event: &str, channel: &str) -> Value {
    let found = || {
        events(receiver)
            .into_iter()
            .find(|e| e["event"] == event && e["channel"] == channel)
    };
    eventually(WAIT, || found().is_some()).await;
    found().unwrap_or_else(|| panic!("no {event} on {channel}: {:?}", events(receiver)))
}

async fn wait_event(receiver: &Backend, event: &str, n: usize) -> Vec<Value> {
    let ok = eventually(WAIT, || {
        events(receiver)
            .iter()
            .filter(|e| e["event"] == event)
            .count()
            >= n
    })
    .await;
    let all = events(receiver);
    assert!(ok, "expected {n} {event} events, got {all:?}");
    all.into_iter().filter(|e| e["event"] == event).collect()
}

#[tokio::test]
async fn webhooks_are_signed_and_every_event_fires_with_its_fields() {
    let receiver = Backend::start(|_| Reply::Status(204)).await;
    let server = webhook_server(&receiver, |_| {}).await;
    let mut alice = server.client("alice").await;
    let alice_id = alice.client_id.clone();
    alice.subscribe("chat:room").await;
    // The personal channel #alice, subscribed at connect, is occupied too.
    wait_channel_event(&receiver, "channel_occupied", "#alice").await;
    wait_channel_event(&receiver, "channel_occupied", "chat:room").await;
    let join = wait_channel_event(&receiver, "join", "chat:room").await;
    assert_eq!(join["user"], "alice");
    assert_eq!(join["client"], alice_id.as_str());
    assert!(join["time"].as_i64().unwrap_or(0) > 1_700_000_000_000);
    assert!(join["node"].is_string());

    alice
        .call("unsubscribe", json!({"channel": "chat:room"}))
        .await;
    let leave = wait_channel_event(&receiver, "leave", "chat:room").await;
    assert_eq!(leave["user"], "alice");
    assert_eq!(leave["client"], alice_id.as_str());
    wait_channel_event(&receiver, "channel_vacated", "chat:room").await;

    server
        .api_ok(
            "disconnect",
            json!({"user": "alice", "disconnect": {"code": 4321, "reason": "bye"}}),
        )
        .await;
    let disconnects = wait_event(&receiver, "disconnect", 1).await;
    assert_eq!(disconnects[0]["client"], alice_id.as_str());
    assert_eq!(disconnects[0]["user"], "alice");
    assert_eq!(disconnects[0]["code"], 4321);
    assert_eq!(disconnects[0]["reason"], "bye");

    for request in receiver.requests("/events") {
        let signature = request
            .header("x-herald-signature")
            .expect("signature header");
        assert!(
            herald::hooks::sign::verify(WEBHOOK_SECRET.as_bytes(), &request.body, &signature),
            "bad signature on {:?}",
            request.body
        );
        assert!(!herald::hooks::sign::verify(
            b"other secret",
            &request.body,
            &signature
        ));
        let timestamp: i64 = request
            .header("x-herald-timestamp")
            .and_then(|t| t.parse().ok())
            .expect("timestamp header");
        assert_eq!(
            timestamp,
            request.json()["time"].as_i64().unwrap_or(0) / 1000
        );
        assert_eq!(
            request.header("x-herald-event").as_deref(),
            request.json()["event"].as_str()
        );
    }
    let metrics = server.metrics().await;
    assert!(
        metric(&metrics, "herald_webhooks_delivered_total") >= 5.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "herald_webhook_queue_length"), 0.0);
}

#[tokio::test]
async fn webhooks_send_only_the_configured_events() {
    let receiver = Backend::start(|_| Reply::Status(200)).await;
    let server = webhook_server(&receiver, |c| c.webhooks.events = vec!["disconnect".into()]).await;
    let mut alice = server.client("alice").await;
    alice.subscribe("chat:room").await;
    drop(alice);
    wait_event(&receiver, "disconnect", 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(events(&receiver).iter().all(|e| e["event"] == "disconnect"));
}

#[tokio::test]
async fn webhooks_retry_after_server_errors() {
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let receiver = Backend::start(move |_| {
        if seen.fetch_add(1, Ordering::SeqCst) < 2 {
            Reply::Status(500)
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let server = webhook_server(&receiver, |c| {
        c.webhooks.events = vec!["channel_occupied".into()];
        c.webhooks.retries = 3;
    })
    .await;
    let mut alice = server.client("alice").await;
    alice.subscribe("chat:retry").await;
    // The first event (#alice occupied at connect) fails twice, then gets through; chat:retry follows.
    let attempts = receiver.wait_for("/events", 4).await;
    assert!(
        attempts[..3].iter().all(|a| a.body == attempts[0].body),
        "retries resend the same body"
    );
    assert_eq!(attempts[0].json()["channel"], "#alice");
    assert_eq!(attempts[3].json()["channel"], "chat:retry");
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    let mut delivered = false;
    for _ in 0..100 {
        let m = server.metrics().await;
        if metric(&m, "herald_webhooks_delivered_total") == 2.0 {
            assert_eq!(metric(&m, "herald_webhooks_retried_total"), 2.0, "{m}");
            delivered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(delivered);
}

#[tokio::test]
async fn a_hanging_receiver_fills_the_bounded_queue_and_drops_are_counted() {
    let receiver = Backend::start(|_| Reply::Hang).await;
    let server = webhook_server(&receiver, |c| {
        c.webhooks.events = vec!["channel_occupied".into()];
        c.webhooks.queue_size = 2;
        c.webhooks.retries = 0;
        c.webhooks.timeout = Duration::from_secs(30);
    })
    .await;
    let mut alice = server.client("alice").await;
    for i in 0..10 {
        alice.subscribe(&format!("chat:q{i}")).await;
    }
    // 11 events (#alice at connect and ten rooms): one is in delivery (hanging), two wait in the
    // queue, the rest are dropped.
    receiver.wait_for("/events", 1).await;
    let metrics = server.metrics().await;
    let queued = metric(&metrics, "herald_webhooks_queued_total");
    let dropped = metric(
        &metrics,
        "herald_webhooks_dropped_total{reason=\"queue_full\"}",
    );
    assert_eq!(queued + dropped, 11.0, "{metrics}");
    assert!(dropped >= 8.0, "{metrics}");
    assert_eq!(metric(&metrics, "herald_webhook_queue_length"), 2.0);
    assert_eq!(receiver.requests("/events").len(), 1);
    // Sessions were never held up by the stuck receiver.
    alice.assert_alive().await;
}

#[tokio::test]
async fn webhook_config_is_validated() {
    let mut config = test_config();
    config.webhooks.url = "https://x.example/hook".into();
    config.webhooks.secret = "s".into();
    let e = config.validate().unwrap_err().to_string();
    assert!(e.starts_with("webhooks.url:"), "{e}");
    config.webhooks.url = "http://127.0.0.1:1/hook".into();
    config.webhooks.secret = String::new();
    let e = config.validate().unwrap_err().to_string();
    assert!(e.starts_with("webhooks.secret:"), "{e}");
    config.webhooks.secret = "s".into();
    config.webhooks.events = vec!["joined".into()];
    let e = config.validate().unwrap_err().to_string();
    assert!(e.starts_with("webhooks.events[0]:"), "{e}");
    let mut config = test_config();
    config.proxy.rpc_endpoint = "not a url".into();
    let e = config.validate().unwrap_err().to_string();
    assert!(e.starts_with("proxy.rpc_endpoint:"), "{e}");
    let mut config = test_config();
    config.proxy.timeout = Duration::ZERO;
    let e = config.validate().unwrap_err().to_string();
    assert!(e.starts_with("proxy.timeout:"), "{e}");
    let mut config = test_config();
    config.channel.namespaces[0].proxy_publish = true;
    let e = config.validate().unwrap_err().to_string();
    assert!(e.starts_with("channel.namespaces[0].proxy_publish:"), "{e}");
}

/// The configuration snippets of docs/hooks.md and the PHP example's README load and validate.
#[test]
fn documented_hook_configs_are_valid() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut checked = 0;
    for doc in ["docs/hooks.md", "examples/php-backend/README.md"] {
        let text = std::fs::read_to_string(root.join(doc)).expect("read doc");
        for block in text.split("```toml\n").skip(1) {
            let toml = block.split("```").next().unwrap_or_default();
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("herald.toml");
            std::fs::write(&path, toml).expect("write");
            let config = Config::load(Some(&path), std::iter::empty(), &[])
                .unwrap_or_else(|e| panic!("{doc}: {e}\n{toml}"));
            assert!(!config.proxy.connect_endpoint.is_empty(), "{doc}");
            assert!(config.webhooks.enabled(), "{doc}");
            checked += 1;
        }
    }
    assert_eq!(checked, 2);
}

/// A shutdown closes every connection; their disconnect events, queued while the node stops, are
/// all delivered before the shutdown returns (within `http.shutdown_timeout`), even to a receiver
/// that takes its time.
#[tokio::test]
async fn disconnects_of_a_shutdown_are_delivered_before_the_node_ends() {
    let receiver =
        Backend::start(|_| Reply::Slow(Duration::from_millis(20), Box::new(Reply::Status(200))))
            .await;
    let mut server =
        webhook_server(&receiver, |c| c.webhooks.events = vec!["disconnect".into()]).await;
    let mut clients = Vec::new();
    for i in 0..20 {
        clients.push(server.client(&format!("user{i}")).await);
    }
    server.shutdown().await;
    let mut users: Vec<String> = events(&receiver)
        .iter()
        .filter(|e| e["event"] == "disconnect")
        .filter_map(|e| e["user"].as_str().map(str::to_string))
        .collect();
    users.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("user{i}")).collect();
    expected.sort();
    assert_eq!(users, expected, "every connection's disconnect arrived");
    drop(clients);
}

/// A receiver that never answers cannot hold a shutdown: the events left when the shutdown
/// budget runs out are dropped and counted, and the node ends in time.
#[tokio::test]
async fn a_hanging_receiver_holds_a_shutdown_no_longer_than_its_budget() {
    let receiver = Backend::start(|_| Reply::Hang).await;
    let mut server = webhook_server(&receiver, |c| {
        c.webhooks.events = vec!["disconnect".into()];
        c.webhooks.timeout = Duration::from_secs(30);
    })
    .await;
    let node = server.node().clone();
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(server.client(&format!("user{i}")).await);
    }
    let started = std::time::Instant::now();
    server.shutdown().await;
    let took = started.elapsed();
    // The test config's shutdown_timeout is 3 s: the connections' wait, then the webhooks'.
    assert!(took < Duration::from_secs(8), "shutdown took {took:?}");
    let text = node.metrics.render();
    assert_eq!(
        metric(&text, "herald_webhooks_dropped_total{reason=\"shutdown\"}"),
        5.0,
        "{text}"
    );
    drop(clients);
}
