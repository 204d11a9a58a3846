//! The Pusher Channels WebSocket protocol (`/app/<key>`) through real WebSockets: what a pusher-js
//! client sees on public, private, presence and cache channels, client events, sign-in and
//! termination, one fan-out shared with Centrifugo clients, a two-node cluster, and hostile
//! clients (forged signatures, floods, silence, not reading) refused with the protocol's codes
//! while honest clients keep working. (pusher-js and Laravel Echo themselves run in tests/sdk/js.)

mod support;

use futures_util::{SinkExt, StreamExt};
use herald_pusher::auth::{channel_auth, user_auth};
use herald_pusher::http_auth::sign_request;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::brokers::Broker;
use support::*;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

const APP_ID: &str = "42";
const KEY: &str = "app-key";
const SECRET: &str = "app-secret";
/// An app whose clients may not send client events.
const QUIET_KEY: &str = "quiet-key";
const QUIET_SECRET: &str = "quiet-secret";

fn pusher_apps(c: &mut herald::config::Config) {
    c.channel.namespaces.push(open_namespace("shop"));
    c.pusher.apps.push(herald::config::PusherApp {
        id: APP_ID.into(),
        key: KEY.into(),
        secret: SECRET.into(),
        namespace: "shop".into(),
        client_events: true,
        ..Default::default()
    });
    c.pusher.apps.push(herald::config::PusherApp {
        id: "43".into(),
        key: QUIET_KEY.into(),
        secret: QUIET_SECRET.into(),
        namespace: "shop".into(),
        ..Default::default()
    });
}

async fn pusher_server(change: impl FnOnce(&mut herald::config::Config)) -> TestServer {
    TestServer::with(|c| {
        pusher_apps(c);
        change(c);
    })
    .await
}

/// A Pusher protocol client, speaking it as pusher-js does.
struct Pusher {
    ws: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
    socket_id: String,
    /// The app's secret, for the signatures its app server would make.
    secret: &'static str,
    /// Messages read while looking for another.
    stash: std::collections::VecDeque<Value>,
}

fn url(addr: SocketAddr, key: &str) -> String {
    format!("ws://{addr}/app/{key}?protocol=7&client=js&version=8.6.0&flash=false")
}

impl Pusher {
    async fn raw(url: &str) -> Pusher {
        let uri = http::Uri::try_from(url).expect("url");
        let (ws, _) = ClientBuilder::from_uri(uri)
            .connect()
            .await
            .expect("websocket connects");
        Pusher {
            ws,
            socket_id: String::new(),
            secret: SECRET,
            stash: Default::default(),
        }
    }

    /// Connected to app `key`: the greeting carries the socket id and the activity timeout.
    async fn open(addr: SocketAddr, key: &str) -> Pusher {
        let mut client = Pusher::raw(&url(addr, key)).await;
        if key == QUIET_KEY {
            client.secret = QUIET_SECRET;
        }
        let hello = client.next().await;
        assert_eq!(hello["event"], "pusher:connection_established", "{hello}");
        let data: Value = serde_json::from_str(hello["data"].as_str().expect("data string"))
            .expect("data is JSON");
        client.socket_id = data["socket_id"].as_str().expect("socket_id").to_string();
        let (a, b) = client.socket_id.split_once('.').expect("two numbers");
        assert!(a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok());
        client
    }

    async fn send(&mut self, message: Value) {
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .expect("send");
    }

    async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        if let Some(v) = self.stash.pop_front() {
            return Some(v);
        }
        loop {
            let message = tokio::time::timeout(wait, self.ws.next())
                .await
                .ok()??
                .ok()?;
            if let Some(text) = message.as_text() {
                return Some(serde_json::from_str(text).expect("one JSON event per message"));
            }
            if message.is_close() {
                return None;
            }
        }
    }

    async fn next(&mut self) -> Value {
        self.next_within(WAIT).await.expect("a message within WAIT")
    }

    /// The next message with this event name (others are kept for later).
    async fn event(&mut self, event: &str) -> Value {
        let mut skipped = Vec::new();
        loop {
            let v = self.next().await;
            if v["event"] == event {
                for s in skipped.into_iter().rev() {
                    self.stash.push_front(s);
                }
                return v;
            }
            skipped.push(v);
        }
    }

    async fn expect_silence(&mut self, wait: Duration) {
        if let Some(v) = self.next_within(wait).await {
            panic!("expected nothing, got {v}");
        }
    }

    async fn subscribe(&mut self, channel: &str, auth: Option<String>, data: Option<&str>) {
        let mut body = json!({"channel": channel, "auth": auth.unwrap_or_default()});
        if let Some(data) = data {
            body["channel_data"] = data.into();
        }
        self.send(json!({"event": "pusher:subscribe", "data": body}))
            .await;
    }

    /// Subscribes with the signature the app server would give, and waits for success.
    async fn join(&mut self, channel: &str, channel_data: Option<&str>) -> Value {
        let auth =
            (channel.starts_with("private-") || channel.starts_with("presence-")).then(|| {
                let key = if self.secret == SECRET {
                    KEY
                } else {
                    QUIET_KEY
                };
                channel_auth(key, self.secret, &self.socket_id, channel, channel_data)
            });
        self.subscribe(channel, auth, channel_data).await;
        // The answer about this channel (events of other channels may come first).
        let mut skipped = Vec::new();
        let reply = loop {
            let v = self.next().await;
            if v["channel"] == channel {
                break v;
            }
            skipped.push(v);
        };
        for v in skipped.into_iter().rev() {
            self.stash.push_front(v);
        }
        assert_eq!(
            reply["event"], "pusher_internal:subscription_succeeded",
            "{channel}: {reply}"
        );
        assert_eq!(reply["channel"], channel);
        reply
    }

    /// The close code (and reason) the server ended the connection with.
    async fn closed(&mut self) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("not closed within {WAIT:?}"),
                Ok(None) | Ok(Some(Err(_))) => panic!("closed without a close frame"),
                Ok(Some(Ok(message))) => {
                    if let Some((code, reason)) = message.as_close() {
                        return (u16::from(code), reason.to_string());
                    }
                    if let Some(text) = message.as_text() {
                        self.stash
                            .push_back(serde_json::from_str(text).expect("JSON"));
                    }
                }
            }
        }
    }

    /// The `pusher:error` the server sent before closing, and the close code.
    async fn refused(&mut self) -> (Value, u16) {
        let (code, _) = self.closed().await;
        let error = self
            .stash
            .iter()
            .find(|v| v["event"] == "pusher:error")
            .cloned()
            .unwrap_or(Value::Null);
        (error, code)
    }
}

fn data_of(event: &Value) -> Value {
    match &event["data"] {
        Value::String(text) => serde_json::from_str(text).unwrap_or(Value::String(text.clone())),
        other => other.clone(),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Triggers through the Pusher HTTP API, signed as the server SDKs sign.
async fn trigger(addr: SocketAddr, channel: &str, name: &str, data: &str) {
    trigger_from(addr, channel, name, data, None).await;
}

/// A trigger leaving out the connection with `socket_id` (the one whose action caused it).
async fn trigger_from(
    addr: SocketAddr,
    channel: &str,
    name: &str,
    data: &str,
    socket_id: Option<&str>,
) {
    let mut body = json!({"name": name, "channel": channel, "data": data});
    if let Some(socket_id) = socket_id {
        body["socket_id"] = socket_id.into();
    }
    let body = body.to_string();
    let path = format!("/apps/{APP_ID}/events");
    let query = sign_request(KEY, SECRET, "POST", &path, &[], body.as_bytes(), now());
    let (status, reply) = http_raw(
        addr,
        "POST",
        &format!("{path}?{query}"),
        &[("Content-Type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{reply}");
}

#[tokio::test]
async fn public_and_private_channels_deliver_events_from_both_apis_and_refuse_forged_signatures() {
    let server = pusher_server(|_| {}).await;
    let mut client = Pusher::open(server.addr, KEY).await;
    client.join("orders", None).await;
    client.join("private-chat", None).await;

    // The Pusher HTTP API, then the Centrifugo API, then a Centrifugo client: one fan-out.
    trigger(server.addr, "orders", "order.created", r#"{"id":7}"#).await;
    let event = client.event("order.created").await;
    assert_eq!(event["channel"], "orders");
    assert_eq!(data_of(&event), json!({"id": 7}));
    server
        .api_ok(
            "publish",
            json!({"channel": "shop:orders", "data": {"id": 8}, "tags": {"event": "order.paid"}}),
        )
        .await;
    assert_eq!(data_of(&client.event("order.paid").await), json!({"id": 8}));
    server
        .api_ok(
            "publish",
            json!({"channel": "shop:orders", "data": "plain text"}),
        )
        .await;
    let untagged = client.event("message").await;
    assert_eq!(untagged["data"], "plain text", "a JSON string is its text");
    trigger(server.addr, "private-chat", "said", "hello").await;
    assert_eq!(client.event("said").await["data"], "hello");

    // Forged, missing and other-socket signatures: refused on the channel, the connection lives.
    let mut other = Pusher::open(server.addr, KEY).await;
    let forged = channel_auth(KEY, "wrong-secret", &client.socket_id, "private-x", None);
    let stolen = channel_auth(KEY, SECRET, &other.socket_id, "private-x", None);
    for auth in [Some(forged), None, Some(stolen), Some("no-colon".into())] {
        client.subscribe("private-x", auth, None).await;
        let refusal = client.event("pusher:subscription_error").await;
        assert_eq!(refusal["channel"], "private-x");
        assert_eq!(refusal["data"]["type"], "AuthError");
        assert_eq!(refusal["data"]["status"], 401, "{refusal}");
        assert!(refusal["data"]["error"].as_str().unwrap_or("").len() > 10);
    }
    trigger(server.addr, "private-x", "secret", "{}").await;
    trigger(server.addr, "orders", "after", "{}").await;
    assert_eq!(
        client.next().await["event"],
        "after",
        "nothing of private-x"
    );

    // Unsubscribed: no more events; a malformed message gets a pusher:error and changes nothing.
    client
        .send(json!({"event": "pusher:unsubscribe", "data": {"channel": "orders"}}))
        .await;
    client.send(json!({"event": "pusher:nonsense"})).await;
    let error = client.event("pusher:error").await;
    assert!(
        error["data"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("pusher:nonsense"),
        "{error}"
    );
    client
        .ws
        .send(Message::text("not json".to_string()))
        .await
        .unwrap();
    assert_eq!(
        client.event("pusher:error").await["data"]["code"],
        Value::Null
    );
    trigger(server.addr, "orders", "gone", "{}").await;
    client
        .send(json!({"event": "pusher:ping", "data": {}}))
        .await;
    assert_eq!(client.next().await["event"], "pusher:pong");
    other.join("orders", None).await;
    trigger(server.addr, "orders", "still", "{}").await;
    assert_eq!(other.event("still").await["channel"], "orders");
    client.expect_silence(Duration::from_millis(300)).await;
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("herald_pusher_refused_total{reason=\"subscribe auth\"} 4"),
        "{metrics}"
    );
    assert!(metrics.contains("herald_transport_connections{transport=\"pusher\"} 2"));
}

#[tokio::test]
async fn a_trigger_naming_a_socket_id_leaves_that_connection_out() {
    let server = pusher_server(|_| {}).await;
    let mut sender = Pusher::open(server.addr, KEY).await;
    let mut other = Pusher::open(server.addr, KEY).await;
    let mut centrifugo = server.client("watcher").await;
    centrifugo.subscribe("shop:orders").await;
    sender.join("orders", None).await;
    other.join("orders", None).await;
    let socket_id = sender.socket_id.clone();
    trigger_from(server.addr, "orders", "saved", "{}", Some(&socket_id)).await;
    assert_eq!(other.event("saved").await["channel"], "orders");
    let publication = centrifugo.publication("shop:orders").await;
    assert_eq!(publication["tags"]["event"], "saved");
    sender.expect_silence(Duration::from_millis(300)).await;
    trigger(server.addr, "orders", "for-all", "{}").await;
    assert_eq!(sender.next().await["event"], "for-all");
}

#[tokio::test]
async fn unknown_keys_and_protocols_are_refused_with_their_codes() {
    let server = pusher_server(|c| c.pusher.apps[0].max_connections = 1).await;
    let mut unknown = Pusher::raw(&url(server.addr, "nobody")).await;
    let (error, code) = unknown.refused().await;
    assert_eq!((error["data"]["code"].as_u64(), code), (Some(4001), 4001));
    for (query, expected) in [
        ("protocol=99", 4007),
        ("client=js", 4008),
        ("protocol=7&version=%00bad", 4006),
    ] {
        let mut client = Pusher::raw(&format!("ws://{}/app/{KEY}?{query}", server.addr)).await;
        assert_eq!(client.refused().await.1, expected, "{query}");
    }
    // The app's own connection limit: 4004, and the slot comes back when the first leaves.
    let first = Pusher::open(server.addr, KEY).await;
    let mut second = Pusher::raw(&url(server.addr, KEY)).await;
    assert_eq!(second.refused().await.1, 4004);
    let mut quiet = Pusher::open(server.addr, QUIET_KEY).await;
    quiet.join("orders", None).await;
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        let mut attempt = Pusher::raw(&url(server.addr, KEY)).await;
        let hello = attempt.next().await;
        if hello["event"] == "pusher:connection_established" {
            again = Some(attempt);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        again.is_some(),
        "the slot of a closed connection is free again"
    );
}

#[tokio::test]
async fn presence_members_are_users_and_centrifugo_subscribers_see_them_join() {
    let server = pusher_server(|_| {}).await;
    let mut centrifugo = server.client("watcher").await;
    centrifugo.subscribe("shop:presence-room").await;

    let alice_data = r#"{"user_id":"alice","user_info":{"name":"Alice"}}"#;
    let mut alice = Pusher::open(server.addr, KEY).await;
    let joined = alice.join("presence-room", Some(alice_data)).await;
    // The Centrifugo subscriber is a member too: one presence for both protocols.
    let members = data_of(&joined);
    assert_eq!(members["presence"]["count"], 2, "{members}");
    assert_eq!(members["presence"]["hash"]["alice"]["name"], "Alice");
    assert_eq!(members["presence"]["hash"]["watcher"], Value::Null);

    let mut bob = Pusher::open(server.addr, KEY).await;
    let bob_data = r#"{"user_id":"bob"}"#;
    let joined = bob.join("presence-room", Some(bob_data)).await;
    let members = data_of(&joined);
    assert_eq!(members["presence"]["count"], 3);
    let mut ids: Vec<String> = serde_json::from_value(members["presence"]["ids"].clone()).unwrap();
    ids.sort();
    assert_eq!(ids, ["alice", "bob", "watcher"]);
    let added = alice.event("pusher_internal:member_added").await;
    assert_eq!(data_of(&added), json!({"user_id": "bob"}));

    // Bob's second connection is not a new member; only his last leaving removes him.
    let mut bob_again = Pusher::open(server.addr, KEY).await;
    bob_again.join("presence-room", Some(bob_data)).await;
    alice.expect_silence(Duration::from_millis(300)).await;
    drop(bob_again);
    alice.expect_silence(Duration::from_millis(300)).await;
    bob.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "presence-room"}}))
        .await;
    let removed = alice.event("pusher_internal:member_removed").await;
    assert_eq!(data_of(&removed), json!({"user_id": "bob"}));

    // The Centrifugo subscriber saw the connections join, with the Pusher user as the user.
    let join = loop {
        let push = centrifugo.push().await;
        if push["join"]["info"]["user"] == "alice" {
            break push;
        }
    };
    assert_eq!(join["join"]["info"]["chan_info"]["name"], "Alice");
    let presence = server
        .api_ok("presence", json!({"channel": "shop:presence-room"}))
        .await;
    let users: Vec<&str> = presence["presence"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|i| i["user"].as_str())
        .collect();
    assert!(
        users.contains(&"alice") && users.contains(&"watcher"),
        "{presence}"
    );

    // Signed without channel_data (no member to join as), or over other data: refused.
    let mut mallory = Pusher::open(server.addr, KEY).await;
    let bare = channel_auth(KEY, SECRET, &mallory.socket_id, "presence-room", None);
    mallory.subscribe("presence-room", Some(bare), None).await;
    assert_eq!(
        mallory.event("pusher:subscription_error").await["data"]["status"],
        400
    );
    let auth = channel_auth(
        KEY,
        SECRET,
        &mallory.socket_id,
        "presence-room",
        Some(bob_data),
    );
    mallory
        .subscribe("presence-room", Some(auth), Some(r#"{"user_id":"admin"}"#))
        .await;
    assert_eq!(
        mallory.event("pusher:subscription_error").await["data"]["status"],
        401
    );
}

#[tokio::test]
async fn a_full_presence_channel_refuses_new_members_but_not_their_other_connections() {
    let server = pusher_server(|c| c.pusher.apps[0].max_presence_members = 2).await;
    let mut clients = Vec::new();
    for user in ["a", "b"] {
        let mut client = Pusher::open(server.addr, KEY).await;
        let data = format!(r#"{{"user_id":"{user}"}}"#);
        client.join("presence-full", Some(&data)).await;
        clients.push(client);
    }
    let mut third = Pusher::open(server.addr, KEY).await;
    let data = r#"{"user_id":"c"}"#;
    let auth = channel_auth(KEY, SECRET, &third.socket_id, "presence-full", Some(data));
    third
        .subscribe("presence-full", Some(auth), Some(data))
        .await;
    let refusal = third.event("pusher:subscription_error").await;
    assert_eq!(refusal["data"]["status"], 403);
    assert!(refusal["data"]["error"]
        .as_str()
        .unwrap()
        .contains("max_presence_members"));
    // A member's second connection still joins.
    let mut a_again = Pusher::open(server.addr, KEY).await;
    a_again
        .join("presence-full", Some(r#"{"user_id":"a"}"#))
        .await;
}

#[tokio::test]
async fn client_events_reach_the_others_not_the_sender_within_their_limits() {
    let server = pusher_server(|c| c.pusher.max_event_bytes = 100).await;
    let mut centrifugo = server.client("watcher").await;
    centrifugo.subscribe("shop:private-room").await;
    let mut alice = Pusher::open(server.addr, KEY).await;
    let mut bob = Pusher::open(server.addr, KEY).await;
    alice.join("private-room", None).await;
    bob.join("private-room", None).await;

    alice
        .send(json!({"event": "client-typing", "channel": "private-room", "data": {"on": true}}))
        .await;
    let typing = bob.event("client-typing").await;
    assert_eq!(data_of(&typing), json!({"on": true}));
    assert!(typing.get("user_id").is_none(), "user_id only on presence");
    let publication = centrifugo.publication("shop:private-room").await;
    assert_eq!(publication["tags"]["event"], "client-typing");
    assert_eq!(publication["data"], json!({"on": true}));
    alice.expect_silence(Duration::from_millis(300)).await;

    // On presence channels receivers learn the sender's user id.
    let (a, b) = (r#"{"user_id":"alice"}"#, r#"{"user_id":"bob"}"#);
    alice.join("presence-room", Some(a)).await;
    bob.join("presence-room", Some(b)).await;
    alice.event("pusher_internal:member_added").await;
    bob.send(json!({"event": "client-wave", "channel": "presence-room", "data": "hi"}))
        .await;
    let wave = alice.event("client-wave").await;
    assert_eq!(
        (wave["user_id"].as_str(), wave["data"].as_str()),
        (Some("bob"), Some("hi"))
    );

    // Refused: public channel, not subscribed, too large, too fast (4301), app without them.
    for (message, expected) in [
        (
            json!({"event": "client-x", "channel": "orders", "data": {}}),
            "private- and presence-",
        ),
        (
            json!({"event": "client-x", "channel": "private-other", "data": {}}),
            "subscribe to",
        ),
        (
            json!({"event": "client-x", "channel": "private-room", "data": "x".repeat(200)}),
            "max_event_bytes",
        ),
    ] {
        alice.send(message).await;
        let error = alice.event("pusher:error").await;
        let text = error["data"]["message"].as_str().unwrap_or("");
        assert!(text.contains(expected), "{expected}: {error}");
    }
    let mut limited = 0;
    for i in 0..30 {
        alice
            .send(json!({"event": "client-burst", "channel": "private-room", "data": {"i": i}}))
            .await;
    }
    let mut received = 0;
    while let Some(v) = bob.next_within(Duration::from_millis(500)).await {
        if v["event"] == "client-burst" {
            received += 1;
        }
    }
    while let Some(v) = alice.next_within(Duration::from_millis(200)).await {
        if v["event"] == "pusher:error" && v["data"]["code"] == 4301 {
            limited += 1;
        }
    }
    // About the bucket's burst of 10 passes (less what earlier events used), the rest is told.
    assert!((5..=12).contains(&received), "the burst passed: {received}");
    assert_eq!(received + limited, 30, "every refused event was told");
    // The connection survived its burst.
    alice.send(json!({"event": "pusher:ping"})).await;
    assert_eq!(alice.event("pusher:pong").await["event"], "pusher:pong");

    let mut quiet = Pusher::open(server.addr, QUIET_KEY).await;
    quiet.join("private-room", None).await;
    quiet
        .send(json!({"event": "client-x", "channel": "private-room", "data": {}}))
        .await;
    let error = quiet.event("pusher:error").await;
    assert!(error["data"]["message"]
        .as_str()
        .unwrap()
        .contains("client_events"));
    bob.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn cache_channels_replay_the_last_event_or_say_it_is_missing() {
    let server = pusher_server(|_| {}).await;
    let mut early = Pusher::open(server.addr, KEY).await;
    early.join("cache-prices", None).await;
    assert_eq!(early.next().await["event"], "pusher:cache_miss");
    trigger(server.addr, "cache-prices", "price", r#"{"v":1}"#).await;
    trigger(server.addr, "cache-prices", "price", r#"{"v":2}"#).await;
    assert_eq!(data_of(&early.event("price").await), json!({"v": 1}));
    assert_eq!(data_of(&early.event("price").await), json!({"v": 2}));

    let mut late = Pusher::open(server.addr, KEY).await;
    late.join("cache-prices", None).await;
    let replayed = late.next().await;
    assert_eq!(replayed["event"], "price");
    assert_eq!(data_of(&replayed), json!({"v": 2}), "only the last one");
    late.expect_silence(Duration::from_millis(200)).await;

    // The HTTP API tells what a cache channel holds, and for how long still.
    let path = format!("/apps/{APP_ID}/channels/cache-prices");
    let query = sign_request(KEY, SECRET, "GET", &path, &[("info", "cache")], b"", now());
    let (status, reply) = http_raw(server.addr, "GET", &format!("{path}?{query}"), &[], "").await;
    assert_eq!(status, 200, "{reply}");
    let info: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(info["cache"]["event"], "price", "{info}");
    assert_eq!(info["cache"]["data"], r#"{"v":2}"#);
    let ttl = info["cache"]["ttl"].as_u64().unwrap_or(0);
    assert!(
        (290..=300).contains(&ttl),
        "the namespace keeps history 300 s: {ttl}"
    );
    let path = format!("/apps/{APP_ID}/channels/cache-empty");
    let query = sign_request(KEY, SECRET, "GET", &path, &[("info", "cache")], b"", now());
    let (_, reply) = http_raw(server.addr, "GET", &format!("{path}?{query}"), &[], "").await;
    assert_eq!(
        serde_json::from_str::<Value>(&reply).unwrap(),
        json!({"occupied": false, "cache": null})
    );

    // Private cache channels need their signature like any private channel.
    let mut private = Pusher::open(server.addr, KEY).await;
    private.join("private-cache-state", None).await;
    assert_eq!(private.next().await["event"], "pusher:cache_miss");
}

#[tokio::test]
async fn signed_in_users_get_their_channel_and_are_terminated_by_the_api() {
    let server = pusher_server(|_| {}).await;
    let mut alice = Pusher::open(server.addr, KEY).await;
    let user_data = r#"{"id":"alice","user_info":{"name":"Alice"}}"#;

    // Before signing in, the user's channel is refused.
    alice.subscribe("#server-to-user-alice", None, None).await;
    assert_eq!(
        alice.event("pusher:subscription_error").await["data"]["status"],
        403
    );
    let auth = user_auth(KEY, SECRET, &alice.socket_id, user_data);
    alice
        .send(json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}))
        .await;
    let signed = alice.event("pusher:signin_success").await;
    assert_eq!(signed["data"]["user_data"], user_data);
    alice.join("#server-to-user-alice", None).await;
    trigger(server.addr, "#server-to-user-alice", "notice", r#"{"n":1}"#).await;
    assert_eq!(data_of(&alice.event("notice").await), json!({"n": 1}));
    // Another user's channel stays closed to her.
    alice.subscribe("#server-to-user-bob", None, None).await;
    assert_eq!(
        alice.event("pusher:subscription_error").await["data"]["status"],
        403
    );

    // One identity per connection: a second sign-in as someone else is refused, she stays alice.
    let bob_data = r#"{"id":"bob"}"#;
    let auth = user_auth(KEY, SECRET, &alice.socket_id, bob_data);
    alice
        .send(json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": bob_data}}))
        .await;
    let refused = alice.event("pusher:error").await;
    assert!(
        refused["data"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("already signed in as \"alice\""),
        "{refused}"
    );

    // The server API sees her among the user's connections.
    let connections = server.api_ok("connections", json!({"user": "alice"})).await;
    let list = connections["connections"].as_object().unwrap();
    assert_eq!(list.len(), 1, "{connections}");
    assert!(list.contains_key(&alice.socket_id));

    // Terminated through the Pusher HTTP API: 4009 (pusher-js does not reconnect).
    let bystander = Pusher::open(server.addr, KEY).await;
    let path = format!("/apps/{APP_ID}/users/alice/terminate_connections");
    let query = sign_request(KEY, SECRET, "POST", &path, &[], b"{}", now());
    let (status, _) = http_raw(server.addr, "POST", &format!("{path}?{query}"), &[], "{}").await;
    assert_eq!(status, 200);
    let (error, code) = alice.refused().await;
    assert_eq!(code, 4009, "{error}");
    assert_eq!(error["data"]["code"], 4009);
    drop(bystander);

    // A forged sign-in closes the connection with 4009 too.
    let mut mallory = Pusher::open(server.addr, KEY).await;
    let forged = user_auth(KEY, "guess", &mallory.socket_id, user_data);
    mallory
        .send(json!({"event": "pusher:signin", "data": {"auth": forged, "user_data": user_data}}))
        .await;
    assert_eq!(mallory.refused().await.1, 4009);
}

#[tokio::test]
async fn a_silent_client_is_pinged_then_closed_4201_and_one_that_answers_stays() {
    let server = pusher_server(|c| {
        c.pusher.activity_timeout = Duration::from_secs(1);
        c.client.pong_timeout = Duration::from_millis(700);
    })
    .await;
    let mut silent = Pusher::open(server.addr, KEY).await;
    let mut lively = Pusher::open(server.addr, KEY).await;
    assert_eq!(silent.next().await["event"], "pusher:ping");
    assert_eq!(lively.next().await["event"], "pusher:ping");
    lively
        .send(json!({"event": "pusher:pong", "data": {}}))
        .await;
    let (error, code) = silent.refused().await;
    assert_eq!((code, error["data"]["code"].as_u64()), (4201, Some(4201)));
    // Answered: pinged again after the next quiet second, still open.
    assert_eq!(lively.next().await["event"], "pusher:ping");
    lively
        .send(json!({"event": "pusher:pong", "data": {}}))
        .await;
    lively.join("orders", None).await;
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_while_honest_subscribers_keep_receiving() {
    let server = pusher_server(|c| {
        c.client.max_outbox_bytes = 64 * 1024;
        c.client.write_timeout = Duration::from_secs(2);
    })
    .await;
    // A client that subscribes and then never reads.
    let mut stalled = Pusher::open(server.addr, KEY).await;
    stalled.join("firehose", None).await;
    let mut honest = Pusher::open(server.addr, KEY).await;
    honest.join("firehose", None).await;
    let big = "x".repeat(8000);
    let publisher = tokio::spawn({
        let addr = server.addr;
        async move {
            for i in 0..600 {
                let data = json!({"i": i, "pad": big}).to_string();
                let _ = api(
                    addr,
                    "publish",
                    json!({"channel": "shop:firehose", "data": data, "tags": {"event": "e"}}),
                )
                .await;
            }
        }
    });
    let mut seen = 0;
    while seen < 600 {
        match honest.next_within(Duration::from_secs(10)).await {
            Some(v) if v["event"] == "e" => seen += 1,
            Some(_) => {}
            None => break,
        }
    }
    publisher.await.unwrap();
    assert_eq!(seen, 600, "the honest subscriber got everything");
    // The stalled one was cut off (reset or a 4100 it never read) and counted as slow.
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("herald_disconnects_total{reason=\"slow\"}")
            || metrics.contains("herald_disconnects_total{reason=\"write timeout\"}"),
        "{metrics}"
    );
    drop(stalled);
}

#[tokio::test]
async fn a_flood_of_messages_is_refused_then_closed_4100_and_others_are_served() {
    let server = pusher_server(|c| {
        c.client.command_rate = 10;
        c.client.command_burst = 10;
    })
    .await;
    let mut flooder = Pusher::open(server.addr, KEY).await;
    let mut honest = Pusher::open(server.addr, KEY).await;
    for _ in 0..200 {
        let text = json!({"event": "pusher:ping", "data": {}}).to_string();
        if flooder.ws.send(Message::text(text)).await.is_err() {
            break;
        }
    }
    let (error, code) = flooder.refused().await;
    assert_eq!(code, 4100, "{error}");
    let pongs = flooder
        .stash
        .iter()
        .filter(|v| v["event"] == "pusher:pong")
        .count();
    assert!(
        (10..=20).contains(&pongs),
        "the burst was answered: {pongs}"
    );
    honest.join("orders", None).await;
    trigger(server.addr, "orders", "ok", "{}").await;
    assert_eq!(honest.event("ok").await["channel"], "orders");
}

/// Two nodes linked by Redis: members, client events and publications from either protocol
/// cross between nodes.
#[tokio::test]
async fn across_two_nodes_members_client_events_and_publications_reach_every_node() {
    let share = Broker::Redis.share("pusher_ws_cluster");
    let cluster = share.cluster_with(2, pusher_apps).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut alice = Pusher::open(a.addr, KEY).await;
    let mut bob = Pusher::open(b.addr, KEY).await;
    alice
        .join("presence-room", Some(r#"{"user_id":"alice"}"#))
        .await;
    let joined = bob
        .join("presence-room", Some(r#"{"user_id":"bob"}"#))
        .await;
    assert_eq!(data_of(&joined)["presence"]["count"], 2, "{joined}");
    let added = alice.event("pusher_internal:member_added").await;
    assert_eq!(data_of(&added)["user_id"], "bob");

    bob.send(json!({"event": "client-hi", "channel": "presence-room", "data": {"x": 1}}))
        .await;
    let hi = alice.event("client-hi").await;
    assert_eq!(hi["user_id"], "bob");
    bob.expect_silence(Duration::from_millis(300)).await;

    let mut centrifugo = b.client("carol").await;
    centrifugo.subscribe("shop:presence-room").await;
    centrifugo
        .call(
            "publish",
            json!({"channel": "shop:presence-room", "data": {"from": "carol"}}),
        )
        .await;
    assert_eq!(
        data_of(&alice.event("message").await),
        json!({"from": "carol"})
    );
    trigger(a.addr, "presence-room", "api", "{}").await;
    assert_eq!(bob.event("api").await["channel"], "presence-room");
    let api_event = loop {
        let publication = centrifugo.publication("shop:presence-room").await;
        if publication["data"].get("from").is_none() {
            break publication;
        }
    };
    assert_eq!(api_event["tags"]["event"], "api");

    drop(bob);
    let removed = alice.event("pusher_internal:member_removed").await;
    assert_eq!(data_of(&removed)["user_id"], "bob");
}

/// Pusher webhooks of an app: every event kind, signed with the app's key and secret, from
/// Pusher and Centrifugo connections alike; members once per user.
#[tokio::test]
async fn webhooks_tell_the_app_of_channels_members_client_events_and_cache_misses() {
    use support::backend::{Backend, Recorded, Reply};
    let receiver = Backend::start(|_| Reply::Json(json!({}))).await;
    let url = receiver.url("/pusher");
    let server = pusher_server(|c| {
        c.pusher.apps[0].webhook_url = url;
        c.pusher.apps[0].webhook_events = herald::config::PUSHER_WEBHOOK_EVENTS
            .iter()
            .map(|e| e.to_string())
            .collect();
        c.webhooks.retry_backoff = Duration::from_millis(50);
    })
    .await;
    let events = || -> Vec<Value> {
        receiver
            .requests("/pusher")
            .iter()
            .flat_map(|r: &Recorded| {
                // Signed as Pusher signs: the app key, and the HMAC of the exact body.
                assert_eq!(r.header("x-pusher-key").as_deref(), Some(KEY));
                let signature = r.header("x-pusher-signature").unwrap_or_default();
                assert!(herald_pusher::webhook::verify(SECRET, &r.body, &signature));
                assert_eq!(
                    r.header("content-type").as_deref(),
                    Some("application/json")
                );
                let body = r.json();
                assert!(body["time_ms"].as_u64().unwrap_or(0) > 1_600_000_000_000);
                body["events"].as_array().cloned().unwrap_or_default()
            })
            .collect()
    };
    let wait_for = |name: &'static str, count: usize| async move {
        let found = eventually(WAIT, || {
            events().iter().filter(|e| e["name"] == name).count() >= count
        })
        .await;
        assert!(found, "{count} × {name}: {:?}", events());
        events()
            .into_iter()
            .filter(|e| e["name"] == name)
            .collect::<Vec<_>>()
    };

    let mut alice = Pusher::open(server.addr, KEY).await;
    alice
        .join("presence-room", Some(r#"{"user_id":"alice"}"#))
        .await;
    let occupied = wait_for("channel_occupied", 1).await;
    assert_eq!(occupied[0]["channel"], "presence-room");
    let added = wait_for("member_added", 1).await;
    assert_eq!(added[0]["user_id"], "alice");
    // Her second connection is no new member; a Centrifugo user is.
    let mut alice_again = Pusher::open(server.addr, KEY).await;
    alice_again
        .join("presence-room", Some(r#"{"user_id":"alice"}"#))
        .await;
    let mut carol = server.client("carol").await;
    carol.subscribe("shop:presence-room").await;
    let added = wait_for("member_added", 2).await;
    assert_eq!(added[1]["user_id"], "carol");

    alice
        .send(json!({"event": "client-typing", "channel": "presence-room", "data": {"on": 1}}))
        .await;
    let client_events = wait_for("client_event", 1).await;
    let event = &client_events[0];
    assert_eq!(
        (event["channel"].as_str(), event["event"].as_str()),
        (Some("presence-room"), Some("client-typing"))
    );
    assert_eq!(event["socket_id"], alice.socket_id.as_str());
    assert_eq!(event["user_id"], "alice");
    assert_eq!(data_of(&json!({"data": event["data"]})), json!({"on": 1}));

    alice.join("cache-news", None).await;
    assert_eq!(wait_for("cache_miss", 1).await[0]["channel"], "cache-news");

    // Members leave with their last connection; the channel is vacated with its last subscriber.
    drop(alice_again);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(events().iter().all(|e| e["name"] != "member_removed"));
    drop(alice);
    let removed = wait_for("member_removed", 1).await;
    assert_eq!(removed[0]["user_id"], "alice");
    drop(carol);
    let vacated = wait_for("channel_vacated", 2).await;
    let mut channels: Vec<&str> = vacated
        .iter()
        .filter_map(|e| e["channel"].as_str())
        .collect();
    channels.sort();
    assert_eq!(channels, ["cache-news", "presence-room"]);
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("herald_webhooks_delivered_total{event=\"member_added\"} 2"),
        "{metrics}"
    );
}

/// Storm control applies to Pusher channels: a window's publications, encoded once for every
/// subscriber, reach a Pusher client as one event per message, in order.
#[tokio::test]
async fn a_delivery_window_reaches_pusher_clients_event_by_event() {
    let server = pusher_server(|c| {
        c.channel.namespaces.push(herald::config::NamespaceOptions {
            batch_window: Duration::from_millis(200),
            ..open_namespace("ticks")
        });
        c.pusher.apps.push(herald::config::PusherApp {
            id: "44".into(),
            key: "ticks-key".into(),
            secret: "ticks-secret".into(),
            namespace: "ticks".into(),
            ..Default::default()
        });
    })
    .await;
    let mut client = Pusher::open(server.addr, "ticks-key").await;
    client.join("prices", None).await;
    let mut centrifugo = server.client("watcher").await;
    centrifugo.subscribe("ticks:prices").await;
    for i in 0..5 {
        server
            .api_ok(
                "publish",
                json!({"channel": "ticks:prices", "data": {"i": i}, "tags": {"event": "tick"}}),
            )
            .await;
    }
    for i in 0..5 {
        let tick = client.event("tick").await;
        assert_eq!(
            (tick["channel"].as_str(), data_of(&tick)),
            (Some("prices"), json!({"i": i}))
        );
    }
    for i in 0..5 {
        assert_eq!(centrifugo.publication("ticks:prices").await["data"]["i"], i);
    }
}
