//! Test support: an in-process server on port 0, a real WebSocket client, a raw HTTP client for the
//! server API, token minting, and a fault-injecting TCP proxy.
#![allow(dead_code)]

pub mod backend;
pub mod binary;
pub mod fleet;
pub mod hostile;
pub mod pg;
pub mod procs;
pub mod proxy;
pub mod redis_cluster;
pub mod upstream;

use futures_util::{SinkExt, StreamExt};
use herald::app::server::Server;
use herald::config::{BrokerKind, Config, NamespaceOptions, StoreSetting};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

pub const SECRET: &str = "test-secret-test-secret-test-secret";
pub const API_KEY: &str = "test-api-key";
pub const WAIT: Duration = Duration::from_secs(5);

/// Namespace options used by most tests: everything on.
pub fn open_namespace(name: &str) -> NamespaceOptions {
    NamespaceOptions {
        name: name.into(),
        presence: true,
        join_leave: true,
        force_push_join_leave: true,
        history_size: 100,
        history_ttl: Duration::from_secs(300),
        force_recovery: true,
        allow_subscribe_for_client: true,
        allow_publish_for_subscriber: true,
        allow_presence_for_subscriber: true,
        allow_history_for_subscriber: true,
        ..Default::default()
    }
}

/// A config for tests: loopback port 0, known secrets, a `chat` namespace with everything on, and a
/// `locked` namespace where clients may do nothing without tokens.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".into();
    config.http.shutdown_timeout = Duration::from_secs(3);
    config.client.token.hmac_secret = SECRET.into();
    config.api.key = API_KEY.into();
    config.channel.without_namespace = NamespaceOptions {
        name: String::new(),
        ..open_namespace("")
    };
    config.channel.namespaces.push(open_namespace("chat"));
    config.channel.namespaces.push(NamespaceOptions {
        name: "locked".into(),
        ..Default::default()
    });
    config
}

pub struct TestServer {
    pub server: Option<Server>,
    pub addr: SocketAddr,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::with(|_| {}).await
    }

    pub async fn with(change: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = test_config();
        change(&mut config);
        config.validate().expect("test config is valid");
        let server = Server::start(config).await.expect("server starts");
        let addr = server.addr;
        TestServer {
            server: Some(server),
            addr,
        }
    }

    pub fn node(&self) -> &std::sync::Arc<herald::node::Node> {
        &self.server.as_ref().expect("server running").node
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/connection/websocket", self.addr)
    }

    pub async fn shutdown(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }

    /// Calls a server API method with the API key; returns (HTTP status, JSON body).
    pub async fn api(&self, method: &str, body: Value) -> (u16, Value) {
        http_request(
            self.addr,
            "POST",
            &format!("/api/{method}"),
            &[("X-API-Key", API_KEY)],
            &body.to_string(),
        )
        .await
    }

    /// Calls the API and returns `result`, panicking on an error reply.
    pub async fn api_ok(&self, method: &str, body: Value) -> Value {
        let (status, reply) = self.api(method, body).await;
        assert_eq!(status, 200, "{method}: {reply}");
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    }

    pub async fn client(&self, user: &str) -> Client {
        let mut client = Client::open(&self.ws_url()).await;
        client.connect(&token(user)).await;
        client
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.node.shutdown.cancel();
        }
    }
}

/// A connection token for `user`, valid for an hour.
pub fn token(user: &str) -> String {
    token_with(json!({"sub": user, "exp": now() + 3600}))
}

pub fn token_with(claims: Value) -> String {
    herald_auth::sign_hs256(&claims, SECRET).expect("sign")
}

pub fn now() -> i64 {
    herald::core::clock::unix_secs()
}

/// Minimal HTTP/1.1 client (one request per connection) so API tests see real status codes.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let (status, text) = http_raw(addr, method, path, headers, body).await;
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect http");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write http");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("http response in time")
        .expect("read http");
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A real WebSocket client speaking the JSON protocol, like an SDK does.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Messages received but not yet consumed (a frame may carry several).
    inbox: VecDeque<Value>,
    next_id: u32,
    pub client_id: String,
    /// Reply to a server ping automatically.
    pub auto_pong: bool,
}

/// How a connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    Code(u16, String),
    /// The TCP connection ended without a close frame.
    Abrupt,
}

impl Client {
    pub async fn open(url: &str) -> Client {
        Client::open_with(url, tokio_websockets::Config::default()).await
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_string()))
            .await
            .expect("send");
    }

    pub async fn send(&mut self, command: Value) {
        self.send_text(&command.to_string()).await;
    }

    /// Sends a command with a fresh id and waits for its reply.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"id": id, method: params})).await;
        self.reply(id).await
    }

    pub async fn connect(&mut self, token: &str) -> Value {
        let reply = self
            .call("connect", json!({"token": token, "name": "herald-test"}))
            .await;
        let result = reply
            .get("connect")
            .unwrap_or_else(|| panic!("connect failed: {reply}"))
            .clone();
        self.client_id = result["client"].as_str().unwrap_or_default().to_string();
        result
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let reply = self.call("subscribe", json!({"channel": channel})).await;
        reply
            .get("subscribe")
            .unwrap_or_else(|| panic!("subscribe {channel} failed: {reply}"))
            .clone()
    }

    /// The next message from the server (skipping pings if auto_pong), within WAIT.
    pub async fn next(&mut self) -> Value {
        self.next_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("no message within {WAIT:?}"))
    }

    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(v) = self.inbox.pop_front() {
                if self.auto_pong && v.as_object().is_some_and(|o| o.is_empty()) {
                    self.send_text("{}").await;
                    continue;
                }
                return Some(v);
            }
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            let message = message.ok()?;
            if let Some(text) = message.as_text() {
                for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
                    self.inbox
                        .push_back(serde_json::from_str(line).expect("server sends JSON"));
                }
            } else if message.is_close() {
                return None;
            }
        }
    }

    /// Waits for the reply with `id`, keeping pushes that arrive first.
    pub async fn reply(&mut self, id: u32) -> Value {
        let mut skipped = Vec::new();
        loop {
            let v = self.next().await;
            if v["id"].as_u64() == Some(u64::from(id)) {
                for s in skipped.into_iter().rev() {
                    self.inbox.push_front(s);
                }
                return v;
            }
            skipped.push(v);
        }
    }

    /// The next push (ignores replies).
    pub async fn push(&mut self) -> Value {
        loop {
            let v = self.next().await;
            if let Some(push) = v.get("push") {
                return push.clone();
            }
        }
    }

    /// Next publication push on `channel`: returns the `pub` object.
    pub async fn publication(&mut self, channel: &str) -> Value {
        loop {
            let push = self.push().await;
            if push["channel"] == channel && push.get("pub").is_some() {
                return push["pub"].clone();
            }
        }
    }

    /// Asserts that no push arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(v) = self.next_within(wait).await {
            panic!("expected nothing, got {v}");
        }
    }

    /// Reads until the connection ends; returns the close code and reason.
    pub async fn closed(&mut self) -> Closed {
        self.closed_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("connection not closed within {WAIT:?}"))
    }

    pub async fn closed_within(&mut self, wait: Duration) -> Option<Closed> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => return Some(Closed::Abrupt),
                Ok(Some(Ok(message))) => {
                    if let Some((code, reason)) = message.as_close() {
                        return Some(Closed::Code(u16::from(code), reason.to_string()));
                    }
                    if message.is_close() {
                        return Some(Closed::Code(1005, String::new()));
                    }
                }
            }
        }
    }
}

impl Client {
    /// Like `open`, with a client-side tokio-websockets configuration (e.g. a small frame size, so
    /// large messages go out fragmented).
    pub async fn open_with(url: &str, config: tokio_websockets::Config) -> Client {
        let uri = http::Uri::try_from(url).expect("url");
        let (ws, _) = ClientBuilder::from_uri(uri)
            .config(config)
            .connect()
            .await
            .expect("websocket connects");
        Client {
            ws,
            inbox: VecDeque::new(),
            next_id: 1,
            client_id: String::new(),
            auto_pong: true,
        }
    }

    /// Like `open`, with extra handshake headers (e.g. a Cookie for the connect hook).
    pub async fn open_with_headers(url: &str, headers: &[(&str, &str)]) -> Client {
        let uri = http::Uri::try_from(url).expect("url");
        let mut builder = ClientBuilder::from_uri(uri);
        for (name, value) in headers {
            builder = builder
                .add_header(
                    http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                    http::HeaderValue::from_str(value).expect("header value"),
                )
                .expect("allowed header");
        }
        let (ws, _) = builder.connect().await.expect("websocket connects");
        Client {
            ws,
            inbox: VecDeque::new(),
            next_id: 1,
            client_id: String::new(),
            auto_pong: true,
        }
    }

    /// Asserts that the connection still answers commands.
    pub async fn assert_alive(&mut self) {
        let reply = self.call("ping", json!({})).await;
        assert!(
            reply.get("ping").is_some(),
            "connection should still answer: {reply}"
        );
    }

    /// Reads everything until the connection ends: the JSON messages received (pings included) and
    /// how it closed (`None` if it did not close within `wait`).
    pub async fn read_until_closed(&mut self, wait: Duration) -> (Vec<Value>, Option<Closed>) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut messages: Vec<Value> = self.inbox.drain(..).collect();
        loop {
            let message = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return (messages, None),
                Ok(None) | Ok(Some(Err(_))) => return (messages, Some(Closed::Abrupt)),
                Ok(Some(Ok(message))) => message,
            };
            if let Some((code, reason)) = message.as_close() {
                return (
                    messages,
                    Some(Closed::Code(u16::from(code), reason.to_string())),
                );
            }
            if let Some(text) = message.as_text() {
                for line in text.split('\n').filter(|l| !l.trim().is_empty()) {
                    messages.push(serde_json::from_str(line).expect("server sends JSON"));
                }
            }
        }
    }

    /// The underlying TCP socket (plain ws:// only), e.g. to shrink its kernel buffers.
    pub fn tcp(&self) -> &TcpStream {
        match self.ws.get_ref() {
            MaybeTlsStream::Plain(stream) => stream,
            #[allow(unreachable_patterns)]
            _ => panic!("tests use plain ws://"),
        }
    }
}

/// Sends a WebSocket upgrade request by hand and reads the response head; returns the HTTP status and
/// the socket (still open when the upgrade succeeded).
pub async fn ws_handshake(addr: SocketAddr) -> (u16, TcpStream) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /connection/websocket HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write handshake");
    let text = read_head(&mut stream).await;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {text:?}"));
    (status, stream)
}

/// Turns on device ingest with every listener on a free loopback port, the spool and a SQLite store
/// in `dir`, the given `devices.fsync`, and an open `devices` namespace.
pub fn enable_devices(c: &mut Config, dir: &std::path::Path, fsync: &str) {
    c.devices.enabled = true;
    let l = &mut c.devices.listen;
    for a in [
        &mut l.gt06,
        &mut l.h02,
        &mut l.teltonika,
        &mut l.osmand,
        &mut l.jsonl,
    ] {
        *a = "127.0.0.1:0".into();
    }
    c.devices.spool_dir = dir.join("spool").display().to_string();
    c.devices.store = StoreSetting::Sqlite(dir.join("herald.db").display().to_string());
    c.devices.fsync = fsync.parse().expect("a devices.fsync setting");
    c.channel.namespaces.push(open_namespace("devices"));
}

/// A test server with device ingest on ([`enable_devices`]), then `change` applied.
pub async fn start_with_devices(
    dir: &std::path::Path,
    fsync: &str,
    change: impl FnOnce(&mut Config),
) -> TestServer {
    TestServer::with(|c| {
        enable_devices(c, dir, fsync);
        change(c);
    })
    .await
}

/// The bound device listener addresses of a test server.
pub fn addrs(ts: &TestServer) -> herald::edges::devices::DeviceAddrs {
    ts.server.as_ref().expect("server running").device_addrs
}

/// Reads a response head byte by byte (nothing past it, so the socket can go on as a WebSocket),
/// up to and including the blank line, or until the server closes.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, stream.read(&mut byte))
            .await
            .expect("handshake reply in time")
            .expect("read");
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).to_string()
}

/// The sum of every sample of a Prometheus metric (`name` or `name{labels}` prefix) in `/metrics` text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            line.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

impl TestServer {
    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        http_raw(self.addr, "GET", "/metrics", &[], "").await.1
    }
}

/// Polls `check` every 10 ms until it holds or `wait` passes; returns whether it held.
pub async fn eventually(wait: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if check() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The Redis the cluster tests use: `HERALD_TEST_REDIS` or 127.0.0.1:6379. Tests never stop it;
/// faults go through [`proxy::Proxy`].
pub fn test_redis() -> String {
    std::env::var("HERALD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The socket address of the test Redis (for a proxy in front of it).
pub fn test_redis_addr() -> SocketAddr {
    let url = test_redis();
    let host = url
        .trim_start_matches("redis://")
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    use std::net::ToSocketAddrs;
    host.to_socket_addrs()
        .expect("HERALD_TEST_REDIS host:port")
        .next()
        .expect("an address")
}

/// A key prefix no other test (or run) shares.
pub fn unique_prefix(test: &str) -> String {
    format!("herald-test.{test}.{}", uuid::Uuid::new_v4().simple())
}

/// Configures `config` to join the Redis cluster at `address` under `prefix`, with short timers.
pub fn redis_broker(config: &mut Config, address: &str, prefix: &str) {
    config.broker.kind = BrokerKind::Redis;
    config.broker.redis_addresses = vec![address.to_string()];
    config.broker.prefix = prefix.to_string();
    config.broker.command_timeout = Duration::from_millis(500);
    config.broker.connect_timeout = Duration::from_millis(500);
    config.broker.presence_ttl = Duration::from_secs(2);
    config.broker.node_announce_interval = Duration::from_millis(300);
    config.broker.max_reconnect_delay = Duration::from_millis(300);
    // Stream positions outlive a test run only briefly in the shared Redis.
    config.channel.history_meta_ttl = Duration::from_secs(600);
}

/// N in-process nodes sharing one broker config (one Redis, one prefix).
pub struct Cluster {
    pub nodes: Vec<TestServer>,
    pub prefix: String,
}

impl Cluster {
    pub async fn start(n: usize, test: &str) -> Cluster {
        Self::start_via(n, test, &test_redis()).await
    }

    /// Nodes reaching Redis at `address` (e.g. through a proxy).
    pub async fn start_via(n: usize, test: &str, address: &str) -> Cluster {
        Self::start_with(n, test, address, |_| {}).await
    }

    /// Nodes with a config change applied to each (after the broker settings).
    pub async fn start_with(
        n: usize,
        test: &str,
        address: &str,
        change: impl Fn(&mut Config),
    ) -> Cluster {
        let prefix = unique_prefix(test);
        let mut nodes = Vec::new();
        for i in 0..n {
            let node = TestServer::with(|c| {
                redis_broker(c, address, &prefix);
                c.node.name = format!("node{i}");
                change(c);
            })
            .await;
            nodes.push(node);
        }
        for node in &nodes {
            assert!(node.wait_ready(WAIT).await, "node ready");
        }
        Cluster { nodes, prefix }
    }

    /// N nodes named `node0`… configured by `configure` (broker settings included).
    pub async fn start_configured(
        n: usize,
        prefix: &str,
        configure: impl Fn(&mut Config),
    ) -> Cluster {
        let mut nodes = Vec::new();
        for i in 0..n {
            let node = TestServer::with(|c| {
                configure(c);
                c.node.name = format!("node{i}");
            })
            .await;
            nodes.push(node);
        }
        for node in &nodes {
            assert!(node.wait_ready(WAIT).await, "node ready");
        }
        Cluster {
            nodes,
            prefix: prefix.to_string(),
        }
    }

    /// Adds a node configured by `configure` (e.g. a restarted one).
    pub async fn add_with(&mut self, name: &str, configure: impl Fn(&mut Config)) -> &TestServer {
        let node = TestServer::with(|c| {
            configure(c);
            c.node.name = name.to_string();
        })
        .await;
        assert!(node.wait_ready(WAIT).await, "node ready");
        self.nodes.push(node);
        self.nodes.last().expect("just added")
    }

    /// Adds a node to the cluster (e.g. a restarted one).
    pub async fn add(&mut self, name: &str, address: &str) -> &TestServer {
        let prefix = self.prefix.clone();
        let node = TestServer::with(|c| {
            redis_broker(c, address, &prefix);
            c.node.name = name.to_string();
        })
        .await;
        assert!(node.wait_ready(WAIT).await, "node ready");
        self.nodes.push(node);
        self.nodes.last().expect("just added")
    }
}

impl TestServer {
    pub async fn is_ready(&self) -> bool {
        http_raw(self.addr, "GET", "/ready", &[], "").await.0 == 200
    }

    pub async fn wait_ready(&self, wait: Duration) -> bool {
        self.wait_readiness(true, wait).await
    }

    /// Polls `/ready` until it reports `ready`; returns whether it did within `wait`.
    pub async fn wait_readiness(&self, ready: bool, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if self.is_ready().await == ready {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the node like a killed process: no cleanup in the broker.
    pub async fn crash(&mut self) {
        if let Some(server) = self.server.take() {
            server.crash().await;
        }
    }
}

/// Publication offsets received on `channel` until `quiet` passes without any.
pub async fn offsets_until_quiet(client: &mut Client, channel: &str, quiet: Duration) -> Vec<u64> {
    let mut offsets = Vec::new();
    while let Some(message) = client.next_within(quiet).await {
        let push = &message["push"];
        if push["channel"] == channel {
            if let Some(offset) = push["pub"]["offset"].as_u64() {
                offsets.push(offset);
            }
        }
    }
    offsets
}

/// Subscribes with recovery from `offset`/`epoch` and returns (recovered, offsets of the
/// recovered publications).
pub async fn resubscribe(
    client: &mut Client,
    channel: &str,
    offset: u64,
    epoch: &str,
) -> (bool, Vec<u64>) {
    let reply = client
        .call(
            "subscribe",
            json!({"channel": channel, "recover": true, "offset": offset, "epoch": epoch}),
        )
        .await;
    let sub = &reply["subscribe"];
    assert!(sub.is_object(), "resubscribe failed: {reply}");
    let offsets = sub["publications"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["offset"].as_u64()).collect())
        .unwrap_or_default();
    (sub["recovered"] == true, offsets)
}

/// Waits for the unsubscribe push of `channel`; returns its code. Publications before it are
/// returned too.
pub async fn unsubscribe_push(client: &mut Client, channel: &str) -> (u64, Vec<u64>) {
    let mut offsets = Vec::new();
    loop {
        let push = client.push().await;
        if push["channel"] != channel {
            continue;
        }
        if let Some(offset) = push["pub"]["offset"].as_u64() {
            offsets.push(offset);
        }
        if let Some(unsub) = push.get("unsubscribe") {
            return (unsub["code"].as_u64().unwrap_or(0), offsets);
        }
    }
}

/// The NATS the NATS tests use: `HERALD_TEST_NATS` or nats://127.0.0.1:4222 (JetStream on).
pub fn test_nats() -> String {
    std::env::var("HERALD_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Deletes KV buckets and streams a test created in NATS, also when it failed: on a thread of
/// its own, since the test's runtime may be gone (called from `Drop`). Missing ones are fine.
pub fn delete_nats_state(buckets: Vec<String>, streams: Vec<String>) {
    let cleanup = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            let Ok(client) = async_nats::connect(test_nats()).await else {
                return;
            };
            let js = async_nats::jetstream::new(client);
            for bucket in &buckets {
                let _ = js.delete_key_value(bucket).await;
            }
            for stream in &streams {
                let _ = js.delete_stream(stream).await;
            }
        });
    });
    let _ = cleanup.join();
}

/// Publishes `{"n": n}` to `channel` through `node`'s API.
pub async fn publish_n(node: &TestServer, channel: &str, n: u64) -> Value {
    node.api_ok("publish", json!({"channel": channel, "data": {"n": n}}))
        .await
}

/// A broker outage for a cluster whose nodes 0 and 1 reach the broker through `proxy` and node 2
/// directly: the fault on, nodes 0 and 1 report not ready, refuse publications through the API
/// and from their clients (error 100) and keep their clients; `while_down` runs on node 0; then
/// offsets 4..=6 of `chat:busy` are published through node 2, the fault is lifted and nodes 0 and
/// 1 are ready again within `ready_within`.
pub async fn broker_outage(
    proxy: &proxy::Proxy,
    fault: &proxy::Fault,
    cluster: &Cluster,
    alice: &mut Client,
    bob: &mut Client,
    ready_within: Duration,
    while_down: impl AsyncFnOnce(&TestServer),
) {
    let (a, b, direct) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    proxy.inject(fault);
    assert!(a.wait_readiness(false, WAIT).await, "node a not ready");
    assert!(b.wait_readiness(false, WAIT).await, "node b not ready");
    // A node that cannot reach the broker stores nothing and says so, to the API and to clients.
    let (status, reply) = a
        .api("publish", json!({"channel": "chat:busy", "data": {}}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    let reply = bob
        .call("publish", json!({"channel": "chat:busy", "data": {}}))
        .await;
    assert_eq!(reply["error"]["code"], 100, "{reply}");
    alice.assert_alive().await;
    while_down(a).await;
    for n in 4..=6 {
        publish_n(direct, "chat:busy", n).await;
    }
    proxy.lift(fault);
    assert!(a.wait_ready(ready_within).await, "node a ready again");
    assert!(b.wait_ready(ready_within).await, "node b ready again");
}
