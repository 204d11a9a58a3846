//! The transports besides WebSocket through real sockets: HTTP streaming and SSE with their
//! `/emulation` commands, the unidirectional HTTP streaming, SSE and WebSocket endpoints, and the
//! limits on each (bad requests, unknown sessions, oversized bodies, connection limits, clients
//! that do not read).

mod support;

use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::Duration;
use support::protobuf::{self as pb, wire};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_websockets::{ClientBuilder, Message};

/// A streaming response read from a raw socket: the head, then the chunked body as text lines.
struct Stream {
    tcp: TcpStream,
    head: String,
    /// Decoded body not yet returned as lines.
    text: Vec<u8>,
    /// Raw bytes not yet decoded.
    raw: Vec<u8>,
}

impl Stream {
    async fn open(addr: SocketAddr, method: &str, path: &str, body: &str) -> Stream {
        Stream::open_as(addr, method, path, "application/json", body.as_bytes()).await
    }

    async fn open_as(
        addr: SocketAddr,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Stream {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        tcp.write_all(&request).await.expect("write");
        let mut raw = Vec::new();
        let head = loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_string();
                raw.drain(..end + 4);
                break head;
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
                .await
                .expect("head in time")
                .expect("read head");
            assert!(
                n > 0,
                "closed before the head: {:?}",
                String::from_utf8_lossy(&raw)
            );
            raw.extend_from_slice(&buf[..n]);
        };
        Stream {
            tcp,
            head,
            text: Vec::new(),
            raw,
        }
    }

    fn status(&self) -> u16 {
        status_of(&self.head)
    }

    /// Moves complete chunks from `raw` to `text`; `false` at the last chunk.
    fn decode(&mut self) -> bool {
        loop {
            let Some(eol) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return true;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&self.raw[..eol]).unwrap().trim(), 16)
                    .expect("chunk size");
            if size == 0 {
                return false;
            }
            if self.raw.len() < eol + 2 + size + 2 {
                return true;
            }
            self.text
                .extend_from_slice(&self.raw[eol + 2..eol + 2 + size]);
            self.raw.drain(..eol + 2 + size + 2);
        }
    }

    /// The next non-empty line of the body, or `None` when the body ended.
    async fn line_within(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let open = self.decode();
            while let Some(nl) = self.text.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.text.drain(..=nl).collect();
                let line = String::from_utf8(line).unwrap();
                let line = line.trim_end_matches(['\n', '\r']);
                if !line.is_empty() {
                    return Some(line.to_string());
                }
            }
            if !open {
                return None;
            }
            let mut buf = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.tcp.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => self.raw.extend_from_slice(&buf[..n]),
                Err(_) => panic!("no line within {wait:?}"),
            }
        }
    }

    /// The next length-delimited Protobuf reply of the body, or `None` when the body ended.
    async fn reply_within(&mut self, wait: Duration) -> Option<pb::Reply> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let open = self.decode();
            let mut buf = &self.text[..];
            if let Ok(len) = prost::encoding::decode_varint(&mut buf) {
                let header = self.text.len() - buf.len();
                if buf.len() as u64 >= len {
                    let end = header + len as usize;
                    let reply = pb::Reply::decode(&self.text[header..end]).expect("a valid reply");
                    self.text.drain(..end);
                    return Some(reply);
                }
            }
            if !open {
                return None;
            }
            let mut buf = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.tcp.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => self.raw.extend_from_slice(&buf[..n]),
                Err(_) => panic!("no reply within {wait:?}"),
            }
        }
    }

    /// The next Protobuf reply that is not a ping, nor a join or leave.
    async fn next_reply(&mut self) -> pb::Reply {
        loop {
            let reply = self.reply_within(WAIT).await.expect("stream ended");
            if let Some(push) = &reply.push {
                if push.join.is_some() || push.leave.is_some() {
                    continue;
                }
            }
            if reply != pb::Reply::default() {
                return reply;
            }
        }
    }

    /// The next message: a line (HTTP streaming) or an event's data (SSE), as JSON.
    async fn next(&mut self) -> Value {
        let line = self.line_within(WAIT).await.expect("stream ended");
        let json = line.strip_prefix("data: ").unwrap_or(&line);
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// The next message that is not a ping, nor a join or leave (the personal channel's).
    async fn next_message(&mut self) -> Value {
        loop {
            let v = self.next().await;
            let push = v.get("push").unwrap_or(&v);
            if push.get("join").is_some() || push.get("leave").is_some() {
                continue;
            }
            if v.as_object().is_some_and(|o| !o.is_empty()) {
                return v;
            }
        }
    }
}

async fn emulate(addr: SocketAddr, node: &str, session: &str, commands: &[Value]) -> (u16, String) {
    let data: Vec<String> = commands.iter().map(|c| c.to_string()).collect();
    let body = json!({"node": node, "session": session, "data": data.join("\n")}).to_string();
    http_raw(
        addr,
        "POST",
        "/emulation",
        &[("Content-Type", "application/json")],
        &body,
    )
    .await
}

fn connect_command(user: &str) -> String {
    json!({"id": 1, "connect": {"token": token(user)}}).to_string()
}

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Connects a bidirectional stream; returns it with its (node, session).
async fn connected(ts: &TestServer, sse: bool, user: &str) -> (Stream, String, String) {
    let mut stream = if sse {
        let path = format!(
            "/connection/sse?cf_connect={}",
            query_escape(&connect_command(user))
        );
        Stream::open(ts.addr, "GET", &path, "").await
    } else {
        Stream::open(
            ts.addr,
            "POST",
            "/connection/http_stream",
            &connect_command(user),
        )
        .await
    };
    assert_eq!(stream.status(), 200, "{}", stream.head);
    let reply = stream.next_message().await;
    let connect = &reply["connect"];
    assert_eq!(reply["id"], 1, "{reply}");
    let node = connect["node"].as_str().expect("node").to_string();
    let session = connect["session"].as_str().expect("session").to_string();
    assert_eq!(node, ts.node().uid);
    (stream, node, session)
}

async fn bidirectional(sse: bool) {
    let ts = TestServer::start().await;
    let (mut stream, node, session) = connected(&ts, sse, "alice").await;
    if sse {
        assert!(stream.head.contains("text/event-stream"), "{}", stream.head);
    }
    let (status, _) = emulate(
        ts.addr,
        &node,
        &session,
        &[json!({"id": 2, "subscribe": {"channel": "chat:room", "recover": true}})],
    )
    .await;
    assert_eq!(status, 204);
    let reply = stream.next_message().await;
    assert_eq!(reply["id"], 2, "{reply}");
    assert!(reply.get("subscribe").is_some(), "{reply}");
    ts.api_ok("publish", json!({"channel": "chat:room", "data": {"n": 1}}))
        .await;
    let push = stream.next_message().await;
    assert_eq!(push["push"]["pub"]["data"]["n"], 1, "{push}");
    // A client publication, presence and history, each in its own request.
    for (id, command) in [
        (
            3,
            json!({"publish": {"channel": "chat:room", "data": {"n": 2}}}),
        ),
        (4, json!({"presence": {"channel": "chat:room"}})),
        (5, json!({"history": {"channel": "chat:room", "limit": 10}})),
    ] {
        let mut command = command;
        command["id"] = json!(id);
        let (status, _) = emulate(ts.addr, &node, &session, &[command]).await;
        assert_eq!(status, 204);
    }
    let mut replies = Vec::new();
    while replies.len() < 4 {
        replies.push(stream.next_message().await);
    }
    let text = Value::Array(replies).to_string();
    assert!(text.contains("\"n\":2"), "{text}");
    assert!(text.contains("\"presence\""), "{text}");
    assert!(text.contains("\"history\""), "{text}");
    // Pongs arrive the same way: `{}`.
    let (status, _) = emulate(ts.addr, &node, &session, &[json!({})]).await;
    assert_eq!(status, 204);
    // The server ends the session: a disconnect push, then the end of the response.
    ts.api_ok("disconnect", json!({"user": "alice"})).await;
    let mut last = Value::Null;
    while let Some(line) = stream.line_within(WAIT).await {
        let json = line.strip_prefix("data: ").unwrap_or(&line).to_string();
        last = serde_json::from_str(&json).unwrap();
    }
    assert!(last["push"]["disconnect"]["code"].is_u64(), "{last}");
    // The session is gone: its emulation requests are refused.
    let (status, body) = emulate(ts.addr, &node, &session, &[json!({"id": 9, "ping": {}})]).await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn http_stream_serves_every_command_through_emulation() {
    bidirectional(false).await;
}

#[tokio::test]
async fn sse_serves_every_command_through_emulation() {
    bidirectional(true).await;
}

#[tokio::test]
async fn emulation_refuses_what_it_cannot_deliver() {
    let ts = TestServer::with(|c| c.client.max_message_size = 4096).await;
    let uid = ts.node().uid.clone();
    let (status, body) = emulate(ts.addr, &uid, "no-such-session", &[json!({})]).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = emulate(ts.addr, "no-such-node", "s", &[json!({})]).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("node"), "{body}");
    let json_ct = [("Content-Type", "application/json")];
    let (status, body) = http_raw(
        ts.addr,
        "POST",
        "/emulation",
        &json_ct,
        r#"{"node":"n","session":5,"data":""}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("session"), "{body}");
    let big = json!({"node": uid, "session": "s", "data": "x".repeat(5000)}).to_string();
    let (status, body) = http_raw(ts.addr, "POST", "/emulation", &json_ct, &big).await;
    assert_eq!(status, 413, "{body}");
    let (status, _) = http_raw(ts.addr, "GET", "/emulation", &[], "").await;
    assert_eq!(status, 405);
    let text = ts.metrics().await;
    assert!(
        metric(&text, "herald_emulation_refused_total") >= 4.0,
        "{text}"
    );
    // An honest stream still works meanwhile.
    let (mut stream, node, session) = connected(&ts, false, "bob").await;
    emulate(ts.addr, &node, &session, &[json!({"id": 2, "ping": {}})]).await;
    assert_eq!(stream.next_message().await["id"], 2);
}

#[tokio::test]
async fn bad_connect_requests_are_refused_naming_the_field() {
    let ts = TestServer::start().await;
    let (status, body) = http_raw(
        ts.addr,
        "POST",
        "/connection/uni_http_stream",
        &[],
        r#"{"token": 5}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("token"), "{body}");
    let (status, body) = http_raw(ts.addr, "GET", "/connection/sse", &[], "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("cf_connect"), "{body}");
    let (status, _) = http_raw(ts.addr, "GET", "/connection/http_stream", &[], "").await;
    assert_eq!(status, 405);
    let (status, body) = http_raw(
        ts.addr,
        "POST",
        "/connection/sse",
        &[("Content-Type", "application/octet-stream")],
        "x",
    )
    .await;
    assert_eq!(status, 415, "{body}");
    // A bad connect command on a bidirectional stream: the disconnect push names bad request.
    let mut stream = Stream::open(ts.addr, "POST", "/connection/http_stream", "{nope").await;
    let v = stream.next_message().await;
    assert_eq!(v["push"]["disconnect"]["code"], 3501, "{v}");
}

#[tokio::test]
async fn uni_http_stream_pushes_connect_then_publications() {
    let ts = TestServer::start().await;
    let token = token_with(json!({"sub": "carol", "exp": now() + 3600, "channels": ["news"]}));
    let body = json!({"token": token}).to_string();
    let mut stream = Stream::open(ts.addr, "POST", "/connection/uni_http_stream", &body).await;
    assert_eq!(stream.status(), 200);
    let connect = stream.next_message().await;
    assert!(connect["connect"]["client"].is_string(), "{connect}");
    assert!(
        connect["connect"]["subs"].get("news").is_some(),
        "{connect}"
    );
    assert!(connect["connect"].get("pong").is_none(), "{connect}");
    ts.api_ok("publish", json!({"channel": "news", "data": {"x": 1}}))
        .await;
    let publication = stream.next_message().await;
    assert_eq!(publication["channel"], "news", "{publication}");
    assert_eq!(publication["pub"]["data"]["x"], 1, "{publication}");
    let text = ts.metrics().await;
    assert_eq!(
        metric(
            &text,
            "herald_transport_connections{transport=\"uni_http_stream\"}"
        ),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn uni_sse_recovers_from_the_position_in_connect() {
    let ts = TestServer::start().await;
    let token = token_with(json!({"sub": "dan", "exp": now() + 3600, "channels": ["chat:feed"]}));
    let first = ts
        .api_ok("publish", json!({"channel": "chat:feed", "data": {"i": 1}}))
        .await;
    let epoch = first.get("result").unwrap_or(&first)["epoch"]
        .as_str()
        .expect("epoch")
        .to_string();
    ts.api_ok("publish", json!({"channel": "chat:feed", "data": {"i": 2}}))
        .await;
    let request = json!({"token": token, "subs": {"chat:feed": {"recover": true, "offset": 1, "epoch": epoch}}});
    let path = format!(
        "/connection/uni_sse?cf_connect={}",
        query_escape(&request.to_string())
    );
    let mut stream = Stream::open(ts.addr, "GET", &path, "").await;
    assert_eq!(stream.status(), 200);
    let connect = stream.next_message().await;
    let sub = &connect["connect"]["subs"]["chat:feed"];
    assert_eq!(sub["recovered"], true, "{connect}");
    assert_eq!(sub["publications"][0]["data"]["i"], 2, "{connect}");
}

#[tokio::test]
async fn uni_streams_get_pings_and_no_pong_deadline() {
    let ts = TestServer::with(|c| {
        c.client.ping_interval = Duration::from_millis(200);
        c.client.pong_timeout = Duration::from_millis(100);
    })
    .await;
    let body = json!({"token": token("erin")}).to_string();
    let mut stream = Stream::open(ts.addr, "POST", "/connection/uni_http_stream", &body).await;
    stream.next_message().await;
    // Several pings, and still open long past the pong timeout.
    let mut pings = 0;
    while pings < 4 {
        let v = stream.next().await;
        if v == json!({}) {
            pings += 1;
        }
    }
}

#[tokio::test]
async fn uni_websocket_takes_the_connect_request_first() {
    let ts = TestServer::start().await;
    let url = format!("ws://{}/connection/uni_websocket", ts.addr);
    let uri = http::Uri::try_from(url).unwrap();
    let (mut ws, _) = ClientBuilder::from_uri(uri).connect().await.expect("ws");
    let token = token_with(json!({"sub": "fay", "exp": now() + 3600, "channels": ["news"]}));
    ws.send(Message::text(json!({"token": token}).to_string()))
        .await
        .unwrap();
    let message = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let connect: Value = serde_json::from_str(message.as_text().unwrap()).unwrap();
    assert!(
        connect["connect"]["subs"].get("news").is_some(),
        "{connect}"
    );
    // Later messages are ignored, as Centrifugo does.
    ws.send(Message::text(r#"{"id":2,"subscribe":{"channel":"x"}}"#))
        .await
        .unwrap();
    ts.api_ok("publish", json!({"channel": "news", "data": 7}))
        .await;
    loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let push: Value = serde_json::from_str(message.as_text().unwrap()).unwrap();
        assert!(
            push.get("id").is_none(),
            "a reply to an ignored command: {push}"
        );
        if push["channel"] == "news" && push.get("pub").is_some() {
            assert_eq!(push["pub"]["data"], 7, "{push}");
            break;
        }
    }
}

#[tokio::test]
async fn streams_share_the_connection_limit_with_websocket() {
    let ts = TestServer::with(|c| c.client.max_connections = 1).await;
    let body = json!({"token": token("gus")}).to_string();
    let mut first = Stream::open(ts.addr, "POST", "/connection/uni_http_stream", &body).await;
    first.next_message().await;
    let (status, body) = http_raw(
        ts.addr,
        "POST",
        "/connection/uni_http_stream",
        &[],
        &json!({"token": token("gus")}).to_string(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let (status, _) = ws_handshake(ts.addr).await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn a_stream_that_is_not_read_is_closed_as_slow() {
    let ts = TestServer::with(|c| {
        c.client.max_outbox_bytes = 64 * 1024;
        c.client.write_timeout = Duration::from_millis(500);
    })
    .await;
    let token = token_with(json!({"sub": "hal", "exp": now() + 3600, "channels": ["flood"]}));
    let body = json!({"token": token}).to_string();
    // Never read past the head.
    let stalled = Stream::open(ts.addr, "POST", "/connection/uni_http_stream", &body).await;
    let honest_body = json!({"token": token_with(json!({"sub": "ida", "exp": now() + 3600, "channels": ["flood"]}))}).to_string();
    let mut honest =
        Stream::open(ts.addr, "POST", "/connection/uni_http_stream", &honest_body).await;
    honest.next_message().await;
    let data = "y".repeat(8000);
    let mut closed = false;
    for i in 0..2000 {
        ts.api_ok(
            "publish",
            json!({"channel": "flood", "data": {"i": i, "pad": data}}),
        )
        .await;
        assert_eq!(honest.next_message().await["pub"]["data"]["i"], i);
        let text = ts.metrics().await;
        if metric(
            &text,
            "herald_transport_connections{transport=\"uni_http_stream\"}",
        ) == 1.0
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "the stalled stream was never closed");
    drop(stalled);
}

/// The stream on one node, its commands POSTed to another: the broker carries them to the node
/// that holds the session.
async fn emulation_reaches_the_node_of_the_session(broker: support::brokers::Broker) {
    let share = broker.share("emulation_cross_node");
    let cluster = share.cluster(2).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    // Both nodes know each other before the stream starts.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info = b.api_ok("info", json!({})).await;
        let nodes = info.get("result").unwrap_or(&info)["nodes"].clone();
        if nodes.as_array().is_some_and(|n| n.len() == 2) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes never met: {info}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut stream, node, session) = connected(a, false, "ivy").await;
    let (status, body) = emulate(
        b.addr,
        &node,
        &session,
        &[json!({"id": 2, "subscribe": {"channel": "chat:x"}})],
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let reply = stream.next_message().await;
    assert_eq!(reply["id"], 2, "{reply}");
    b.api_ok("publish", json!({"channel": "chat:x", "data": "across"}))
        .await;
    let push = stream.next_message().await;
    assert_eq!(push["push"]["pub"]["data"], "across", "{push}");
    // A node that is not in the cluster is refused at once.
    let (status, _) = emulate(b.addr, "gone-node", &session, &[json!({})]).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn emulation_crosses_nodes_on_redis() {
    emulation_reaches_the_node_of_the_session(support::brokers::Broker::Redis).await;
}

#[tokio::test]
async fn emulation_crosses_nodes_on_nats() {
    emulation_reaches_the_node_of_the_session(support::brokers::Broker::Nats).await;
}

#[tokio::test]
async fn emulation_answers_429_while_the_connection_has_too_many_waiting() {
    // An RPC hook that never answers holds the session in one command: the requests that follow
    // wait in its inbox, up to its bound (32 requests).
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_addr = hook.local_addr().unwrap();
    let (called_tx, called) = tokio::sync::oneshot::channel();
    let holder = tokio::spawn(async move {
        let (held, _) = hook.accept().await.unwrap();
        let _ = called_tx.send(());
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(held);
    });
    let ts = TestServer::with(move |c| {
        c.proxy.rpc_endpoint = format!("http://{hook_addr}/rpc");
        c.proxy.timeout = Duration::from_secs(2);
        c.proxy.forward_headers = Vec::new();
        c.client.command_burst = 100;
    })
    .await;
    let (mut stream, node, session) = connected(&ts, false, "jay").await;
    let rpc = json!({"id": 2, "rpc": {"method": "slow", "data": {}}});
    assert_eq!(emulate(ts.addr, &node, &session, &[rpc]).await.0, 204);
    tokio::time::timeout(WAIT, called)
        .await
        .expect("the hook is called")
        .unwrap();
    let mut refused = None;
    for i in 0..40u32 {
        let ping = json!({"id": 10 + i, "ping": {}});
        let (status, body) = emulate(ts.addr, &node, &session, &[ping]).await;
        if status == 429 {
            refused = Some((i, body));
            break;
        }
        assert_eq!(status, 204, "{body}");
    }
    let (accepted, body) = refused.expect("never refused with 429");
    assert_eq!(accepted, 32, "the inbox holds 32 requests");
    assert!(body.contains("too many"), "{body}");
    let text = ts.metrics().await;
    assert_eq!(
        metric(
            &text,
            "herald_emulation_refused_total{reason=\"inbox full\"}"
        ),
        1.0,
        "{text}"
    );
    // Once the hook times out the session answers the rpc and every waiting request, and takes
    // new ones again.
    let mut ids = Vec::new();
    while ids.len() < 33 {
        let reply = stream.next_message().await;
        ids.push(reply["id"].as_u64().expect("a reply"));
    }
    assert_eq!(ids[0], 2);
    assert_eq!(ids[1..], (10..42).collect::<Vec<u64>>()[..]);
    let ping = json!({"id": 50, "ping": {}});
    assert_eq!(emulate(ts.addr, &node, &session, &[ping]).await.0, 204);
    assert_eq!(stream.next_message().await["id"], 50);
    holder.abort();
}

#[tokio::test]
async fn a_refused_unidirectional_connect_ends_at_once_with_its_disconnect() {
    let ts = TestServer::with(|c| c.client.connect_timeout = Duration::from_secs(30)).await;
    let expired = token_with(json!({"sub": "kim", "exp": now() - 10}));
    let cases = [
        (json!({"token": "not-a-token"}), 3500),
        (json!({"token": expired}), 3005),
    ];
    for (request, code) in cases {
        let body = request.to_string();
        let get = format!("/connection/uni_sse?cf_connect={}", query_escape(&body));
        for (method, path, body) in [
            ("POST", "/connection/uni_http_stream", body.as_str()),
            ("GET", get.as_str(), ""),
            ("POST", "/connection/uni_sse", body.as_str()),
        ] {
            let started = std::time::Instant::now();
            let mut stream = Stream::open(ts.addr, method, path, body).await;
            assert_eq!(stream.status(), 200, "{}", stream.head);
            let push = stream.next_message().await;
            assert_eq!(push["disconnect"]["code"], code, "{path}: {push}");
            assert_eq!(push["disconnect"]["reconnect"], code < 3500, "{push}");
            assert_eq!(
                stream.line_within(WAIT).await,
                None,
                "{path}: the response ends after the disconnect"
            );
            assert!(started.elapsed() < Duration::from_secs(5), "{path}");
        }
    }
}

#[tokio::test]
async fn a_bad_uni_websocket_connect_names_the_field_in_the_close_reason() {
    let ts = TestServer::start().await;
    let url = format!("ws://{}/connection/uni_websocket", ts.addr);
    let uri = http::Uri::try_from(url).unwrap();
    let (mut ws, _) = ClientBuilder::from_uri(uri).connect().await.expect("ws");
    ws.send(Message::text(r#"{"token": 5}"#)).await.unwrap();
    let close = loop {
        let message = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("closed in time")
            .expect("a close frame")
            .expect("no error");
        if let Some(close) = message.as_close() {
            break (u16::from(close.0), close.1.to_string());
        }
    };
    assert_eq!(close.0, 3501, "{close:?}");
    assert!(close.1.contains("\"token\""), "{close:?}");
}

/// The request's response head (the server closes after it).
async fn head_of(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    http_exchange(addr, &request, WAIT)
        .await
        .1
        .to_ascii_lowercase()
}

#[tokio::test]
async fn streaming_endpoints_answer_cors_for_allowed_origins() {
    let ts =
        TestServer::with(|c| c.http.allowed_origins = vec!["https://app.example".into()]).await;
    let preflight = [
        ("Origin", "https://app.example"),
        ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "content-type"),
    ];
    for path in [
        "/emulation",
        "/connection/http_stream",
        "/connection/sse",
        "/connection/uni_http_stream",
        "/connection/uni_sse",
    ] {
        let head = head_of(ts.addr, "OPTIONS", path, &preflight).await;
        assert_eq!(status_of(&head), 204, "{path}: {head}");
        assert!(
            head.contains("access-control-allow-origin: https://app.example"),
            "{path}: {head}"
        );
        assert!(
            head.contains("access-control-allow-credentials: true"),
            "{head}"
        );
        assert!(
            head.contains("access-control-allow-headers: content-type"),
            "{head}"
        );
    }
    // The answer itself carries them too (the browser checks it), errors included.
    let origin = [("Origin", "https://app.example")];
    let head = head_of(ts.addr, "GET", "/connection/sse", &origin).await;
    assert_eq!(status_of(&head), 400, "{head}");
    assert!(
        head.contains("access-control-allow-origin: https://app.example"),
        "{head}"
    );
    // Another origin gets no CORS answer, and neither a stream nor emulation.
    let evil = [
        ("Origin", "https://evil.example"),
        ("Access-Control-Request-Method", "POST"),
    ];
    let head = head_of(ts.addr, "OPTIONS", "/emulation", &evil).await;
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    let head = head_of(ts.addr, "POST", "/emulation", &evil[..1]).await;
    assert_eq!(status_of(&head), 403, "{head}");
    let head = head_of(ts.addr, "POST", "/connection/uni_http_stream", &evil[..1]).await;
    assert_eq!(status_of(&head), 403, "{head}");
}

// --- Protobuf over HTTP streaming: a length-delimited connect command as the body, length-
// delimited replies streamed back, commands POSTed to /emulation as a Protobuf EmulationRequest.

const OCTETS: &str = "application/octet-stream";

/// POSTs `body` with `content_type` on a connection of its own: (status, body as text).
async fn post_bytes(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    // The server may answer (413) before reading it all.
    let _ = tcp.write_all(&request).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).to_string();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status_of(&text), body)
}

async fn emulate_pb(
    addr: SocketAddr,
    node: &str,
    session: &str,
    commands: &[pb::Command],
) -> (u16, String) {
    let request = wire::EmulationRequest {
        node: node.into(),
        session: session.into(),
        data: pb::frame(commands),
    };
    post_bytes(addr, "/emulation", OCTETS, &request.encode_to_vec()).await
}

fn with_id(id: u32, mut command: pb::Command) -> pb::Command {
    command.id = id;
    command
}

/// A Protobuf http_stream connected as `user`: the stream, (node, session).
async fn connected_pb(ts: &TestServer, user: &str) -> (Stream, String, String) {
    let connect = pb::frame(&[with_id(1, pb::connect(&token(user)))]);
    let mut stream =
        Stream::open_as(ts.addr, "POST", "/connection/http_stream", OCTETS, &connect).await;
    assert_eq!(stream.status(), 200, "{}", stream.head);
    assert!(
        stream.head.contains("application/octet-stream"),
        "{}",
        stream.head
    );
    let reply = stream.next_reply().await;
    assert_eq!(reply.id, 1, "{reply:?}");
    let connect = reply.connect.expect("a connect reply");
    assert_eq!(connect.node, ts.node().uid);
    assert!(!connect.session.is_empty());
    (stream, connect.node, connect.session)
}

#[tokio::test]
async fn protobuf_http_stream_serves_every_command_through_emulation() {
    let ts = TestServer::start().await;
    let (mut stream, node, session) = connected_pb(&ts, "alice").await;
    let (status, body) = emulate_pb(
        ts.addr,
        &node,
        &session,
        &[with_id(2, pb::subscribe("chat:room"))],
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let reply = stream.next_reply().await;
    assert_eq!(reply.id, 2, "{reply:?}");
    assert!(reply.subscribe.is_some(), "{reply:?}");
    ts.api_ok("publish", json!({"channel": "chat:room", "data": {"n": 1}}))
        .await;
    let push = stream.next_reply().await.push.expect("a push");
    assert_eq!(push.channel, "chat:room");
    assert_eq!(push.r#pub.expect("a publication").data, br#"{"n":1}"#);
    // A publish and a history in one request (two length-delimited commands), a ping in another.
    let history = pb::Command {
        history: Some(wire::HistoryRequest {
            channel: "chat:room".into(),
            limit: 10,
            ..Default::default()
        }),
        ..Default::default()
    };
    let (status, _) = emulate_pb(
        ts.addr,
        &node,
        &session,
        &[
            with_id(3, pb::publish("chat:room", br#"{"n":2}"#)),
            with_id(4, history),
        ],
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(
        emulate_pb(ts.addr, &node, &session, &[with_id(5, pb::ping())])
            .await
            .0,
        204
    );
    let mut seen = Vec::new();
    while seen.len() < 4 {
        seen.push(stream.next_reply().await);
    }
    let history = seen
        .iter()
        .find_map(|r| r.history.clone())
        .expect("a history reply");
    let data: Vec<&[u8]> = history.publications.iter().map(|p| &p.data[..]).collect();
    assert_eq!(data, [&br#"{"n":1}"#[..], &br#"{"n":2}"#[..]]);
    assert!(
        seen.iter().any(|r| r.id == 3 && r.publish.is_some()),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|r| r.id == 5 && r.ping.is_some()),
        "{seen:?}"
    );
    // A pong (an empty command) is taken too.
    assert_eq!(
        emulate_pb(ts.addr, &node, &session, &[pb::Command::default()])
            .await
            .0,
        204
    );
    // The server ends the session: a Protobuf disconnect push, then the end of the body.
    ts.api_ok("disconnect", json!({"user": "alice"})).await;
    let mut last = None;
    while let Some(reply) = stream.reply_within(WAIT).await {
        last = Some(reply);
    }
    let last = last.expect("a last reply");
    assert!(
        last.id == 0 && last.push.is_some(),
        "the disconnect push: {last:?}"
    );
    assert_eq!(
        emulate_pb(ts.addr, &node, &session, &[with_id(9, pb::ping())])
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn protobuf_emulation_refuses_garbage_and_oversized_bodies() {
    let ts = TestServer::with(|c| c.client.max_message_size = 4096).await;
    let (mut stream, node, session) = connected_pb(&ts, "bob").await;
    let uid = ts.node().uid.clone();
    // Not Protobuf at all.
    let (status, body) = post_bytes(ts.addr, "/emulation", OCTETS, b"\xff\xff\xff\xff\xff").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Protobuf"), "{body}");
    // Valid Protobuf without a session: named.
    let no_session = wire::EmulationRequest {
        node: uid.clone(),
        ..Default::default()
    };
    let (status, body) =
        post_bytes(ts.addr, "/emulation", OCTETS, &no_session.encode_to_vec()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"session\""), "{body}");
    // Larger than client.max_message_size.
    let big = wire::EmulationRequest {
        node: uid.clone(),
        session: session.clone(),
        data: vec![0; 5000],
    };
    let (status, body) = post_bytes(ts.addr, "/emulation", OCTETS, &big.encode_to_vec()).await;
    assert_eq!(status, 413, "{body}");
    // Unknown session and node.
    assert_eq!(
        emulate_pb(ts.addr, &uid, "no-such-session", &[pb::ping()])
            .await
            .0,
        404
    );
    let (status, body) = emulate_pb(ts.addr, "no-such-node", "s", &[pb::ping()]).await;
    assert_eq!(status, 404, "{body}");
    // The honest stream still works.
    assert_eq!(
        emulate_pb(ts.addr, &node, &session, &[with_id(2, pb::ping())])
            .await
            .0,
        204
    );
    assert_eq!(stream.next_reply().await.id, 2);
    // Commands that are not Protobuf reach the session, which ends the connection with a
    // disconnect push (bad request), as over a WebSocket.
    let garbage = wire::EmulationRequest {
        node: node.clone(),
        session: session.clone(),
        data: b"\xff\xff\xff".to_vec(),
    };
    assert_eq!(
        post_bytes(ts.addr, "/emulation", OCTETS, &garbage.encode_to_vec())
            .await
            .0,
        204
    );
    let mut last = None;
    while let Some(reply) = stream.reply_within(WAIT).await {
        last = Some(reply);
    }
    assert!(
        last.and_then(|r| r.push).is_some(),
        "ends with the disconnect push"
    );
    let text = ts.metrics().await;
    assert!(
        metric(&text, "herald_emulation_refused_total") >= 5.0,
        "{text}"
    );
    // Another connection is unaffected.
    let (mut other, node, session) = connected_pb(&ts, "carol").await;
    assert_eq!(
        emulate_pb(ts.addr, &node, &session, &[with_id(2, pb::ping())])
            .await
            .0,
        204
    );
    assert_eq!(other.next_reply().await.id, 2);
}

#[tokio::test]
async fn protobuf_is_refused_where_centrifugo_streams_text() {
    let ts = TestServer::start().await;
    let connect = pb::frame(&[with_id(1, pb::connect(&token("dan")))]);
    for path in [
        "/connection/sse",
        "/connection/uni_http_stream",
        "/connection/uni_sse",
    ] {
        let (status, body) = post_bytes(ts.addr, path, OCTETS, &connect).await;
        assert_eq!(status, 415, "{path}: {body}");
        assert!(body.contains("http_stream"), "{path}: {body}");
    }
    // An empty Protobuf connect body is a bad request, not a session.
    let (status, body) = post_bytes(ts.addr, "/connection/http_stream", OCTETS, b"").await;
    assert_eq!(status, 400, "{body}");
    // A connect body that is not Protobuf opens a stream that ends at once with the disconnect
    // push (bad request), as a WebSocket closes with 3501.
    let mut stream =
        Stream::open_as(ts.addr, "POST", "/connection/http_stream", OCTETS, b"x").await;
    assert_eq!(stream.status(), 200, "{}", stream.head);
    let reply = stream
        .reply_within(WAIT)
        .await
        .expect("the disconnect push");
    assert!(reply.id == 0 && reply.push.is_some(), "{reply:?}");
    assert!(
        stream.reply_within(WAIT).await.is_none(),
        "then the end of the body"
    );
}

/// A Protobuf stream on one node, its commands POSTed to the other: the broker carries the bytes
/// (base64 in the control) to the node that holds the session.
#[tokio::test]
async fn protobuf_emulation_crosses_nodes_on_redis() {
    let share = support::brokers::Broker::Redis.share("emulation_pb_cross_node");
    let cluster = share.cluster(2).await;
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info = b.api_ok("info", json!({})).await;
        let nodes = info.get("result").unwrap_or(&info)["nodes"].clone();
        if nodes.as_array().is_some_and(|n| n.len() == 2) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes never met: {info}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut stream, node, session) = connected_pb(a, "ivy").await;
    let (status, body) = emulate_pb(
        b.addr,
        &node,
        &session,
        &[with_id(2, pb::subscribe("chat:x"))],
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let reply = stream.next_reply().await;
    assert_eq!(reply.id, 2, "{reply:?}");
    assert!(reply.subscribe.is_some(), "{reply:?}");
    let (status, _) = emulate_pb(
        b.addr,
        &node,
        &session,
        &[with_id(3, pb::publish("chat:x", br#""across""#))],
    )
    .await;
    assert_eq!(status, 204);
    let mut seen = Vec::new();
    while seen.len() < 2 {
        seen.push(stream.next_reply().await);
    }
    assert!(
        seen.iter().any(|r| r.id == 3 && r.publish.is_some()),
        "{seen:?}"
    );
    let publication = seen
        .iter()
        .find_map(|r| r.push.as_ref()?.r#pub.clone())
        .expect("the publication");
    assert_eq!(publication.data, br#""across""#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulated_commands_obey_the_command_rate_and_the_commands_per_frame_bound() {
    let ts = TestServer::with(|c| {
        c.client.command_rate = 1;
        c.client.command_burst = 5;
        c.client.max_commands_per_frame = 10;
    })
    .await;
    let mut honest = ts.client("bob").await;
    let (mut stream, node, session) = connected(&ts, false, "alice").await;
    // The connect took one token of the burst of 5: of 8 pings, 4 are answered and 4 refused
    // with 111 (too many requests), as on a WebSocket.
    let pings: Vec<Value> = (10..18).map(|id| json!({"id": id, "ping": {}})).collect();
    let (status, _) = emulate(ts.addr, &node, &session, &pings).await;
    assert_eq!(status, 204);
    let mut answered = 0;
    let mut refused = 0;
    for _ in 0..8 {
        let reply = stream.next_message().await;
        match reply["error"]["code"].as_u64() {
            Some(111) => refused += 1,
            None if reply.get("ping").is_some() || reply["id"].as_u64().is_some() => answered += 1,
            _ => panic!("unexpected {reply}"),
        }
    }
    assert_eq!((answered, refused), (4, 4));
    // More commands in one request than client.max_commands_per_frame ends the connection as a
    // bad request (3501), as a WebSocket frame would.
    let many: Vec<Value> = (20..31).map(|id| json!({"id": id, "ping": {}})).collect();
    let (status, _) = emulate(ts.addr, &node, &session, &many).await;
    assert_eq!(status, 204);
    let mut last = Value::Null;
    while let Some(line) = stream.line_within(WAIT).await {
        last = serde_json::from_str(&line).unwrap_or(Value::Null);
    }
    assert_eq!(last["push"]["disconnect"]["code"], 3501, "{last}");
    honest.assert_alive().await;
}
