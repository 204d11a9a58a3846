//! Test support: an in-process server on port 0, a real WebSocket client, a raw HTTP client for the
//! server API, token minting, and a fault-injecting TCP proxy.
#![allow(dead_code)]

pub mod backend;
pub mod binary;
pub mod brokers;
mod cluster;
pub mod fleet;
pub mod hostile;
pub mod pg;
pub mod procs;
pub mod protobuf;
pub mod proxy;
pub mod redis_cluster;
pub mod upstream;

pub use cluster::*;

use futures_util::{SinkExt, StreamExt};
use herald::app::server::Server;
use herald::config::{Config, NamespaceOptions};
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
        api(self.addr, method, body).await
    }

    /// Calls the API and returns `result`, panicking on an error reply.
    pub async fn api_ok(&self, method: &str, body: Value) -> Value {
        api_ok(self.addr, method, body).await
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
            server.node.stop();
        }
    }
}

/// Calls the server API at `addr` with the API key; returns (HTTP status, JSON body).
pub async fn api(addr: SocketAddr, method: &str, body: Value) -> (u16, Value) {
    http_request(
        addr,
        "POST",
        &format!("/api/{method}"),
        &[("X-API-Key", API_KEY)],
        &body.to_string(),
    )
    .await
}

/// Calls the server API at `addr` and returns `result`, panicking on an error reply.
pub async fn api_ok(addr: SocketAddr, method: &str, body: Value) -> Value {
    let (status, reply) = api(addr, method, body).await;
    assert_eq!(status, 200, "{method}: {reply}");
    assert!(reply.get("error").is_none(), "{method}: {reply}");
    if method == "batch" {
        // Like Centrifugo, a batch's `replies` are not wrapped in `result`.
        assert!(reply.get("result").is_none(), "{method}: {reply}");
        return reply;
    }
    reply["result"].clone()
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
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let (status, _, body) = http_exchange(addr, &request, WAIT).await;
    (status, body)
}

/// Sends `request` (which asks the server to close the connection after it) on a connection of
/// its own; returns the status, the response head and the body, read within `wait`.
pub async fn http_exchange(
    addr: SocketAddr,
    request: &str,
    wait: Duration,
) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect http");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write http");
    let mut response = Vec::new();
    tokio::time::timeout(wait, stream.read_to_end(&mut response))
        .await
        .expect("http response in time")
        .expect("read http");
    let text = String::from_utf8_lossy(&response).to_string();
    let status = status_of(&text);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_string(), body.to_string())
}

/// The status code of a response's status line (`HTTP/1.1 200 OK`).
pub fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {response:?}"))
}

/// Waits until something accepts connections at `addr` (a server a test started), within
/// [`WAIT`]; `what` names it in the failure.
pub async fn wait_listening(addr: impl tokio::net::ToSocketAddrs + Clone, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while TcpStream::connect(addr.clone()).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} does not listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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

    /// Like `call`, waiting at most `wait` for the reply (`None`: none came, or the connection
    /// ended).
    pub async fn call_within(
        &mut self,
        method: &str,
        params: Value,
        wait: Duration,
    ) -> Option<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"id": id, method: params})).await;
        let deadline = tokio::time::Instant::now() + wait;
        let mut skipped = Vec::new();
        loop {
            let v = self
                .next_within(deadline - tokio::time::Instant::now())
                .await?;
            if v["id"].as_u64() == Some(u64::from(id)) {
                for s in skipped.into_iter().rev() {
                    self.inbox.push_front(s);
                }
                return Some(v);
            }
            skipped.push(v);
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
        Client::on(ws)
    }

    /// Like `open` (a `wss://` url) with a TLS connector, e.g. one trusting a test CA.
    pub async fn open_tls(url: &str, connector: &tokio_websockets::Connector) -> Client {
        let uri = http::Uri::try_from(url).expect("url");
        let (ws, _) = ClientBuilder::from_uri(uri)
            .connector(connector)
            .connect()
            .await
            .expect("wss connects");
        Client::on(ws)
    }

    /// Like `open`, returning a refused or failed handshake instead of panicking.
    pub async fn try_open(url: &str) -> Result<Client, String> {
        let uri = http::Uri::try_from(url).map_err(|e| e.to_string())?;
        let (ws, _) = ClientBuilder::from_uri(uri)
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(Client::on(ws))
    }

    /// Like `open_tls`, over a TCP connection the caller opened (e.g. with a small receive buffer).
    pub async fn open_tls_on(
        url: &str,
        connector: &tokio_websockets::Connector,
        tcp: TcpStream,
    ) -> Client {
        let uri = http::Uri::try_from(url).expect("url");
        let host = uri.host().expect("url names a host").to_string();
        let stream = connector.wrap(&host, tcp).await.expect("tls handshake");
        let (ws, _) = ClientBuilder::from_uri(uri)
            .connect_on(stream)
            .await
            .expect("wss connects");
        Client::on(ws)
    }

    /// A client on an open WebSocket, nothing received yet.
    fn on(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
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
        Client::on(ws)
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
    let status = status_of(&text);
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
    c.devices.store =
        herald::config::StoreSetting::Sqlite(dir.join("herald.db").display().to_string());
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

/// A key prefix no other test (or run) shares.
pub fn unique_prefix(test: &str) -> String {
    format!("herald-test.{test}.{}", uuid::Uuid::new_v4().simple())
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

/// The NATS the NATS tests use: `HERALD_TEST_NATS` or nats://127.0.0.1:4222 (JetStream on).
pub fn test_nats() -> String {
    std::env::var("HERALD_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}
