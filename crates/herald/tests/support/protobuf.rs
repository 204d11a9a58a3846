//! A real WebSocket client speaking the Protobuf client protocol, as the mobile SDKs and
//! centrifuge-js's protobuf build do: binary frames of varint-length-delimited `Command`s out and
//! `Reply`s in. Messages are built from herald-protocol's `wire` structs (field numbers of the
//! public client.proto).

use super::{Closed, TestServer, WAIT};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
pub use herald_protocol::protobuf::wire::{self, Command, Reply};
use prost::Message as _;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};

/// How the client asks for Protobuf.
#[derive(Clone, Copy, Debug)]
pub enum Ask {
    /// `Sec-WebSocket-Protocol: centrifuge-protobuf` (what SDKs send).
    Subprotocol,
    /// `?format=protobuf` in the URL.
    Query,
}

pub struct PbClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    inbox: VecDeque<Reply>,
    next_id: u32,
    pub client_id: String,
    pub auto_pong: bool,
    /// The `Sec-WebSocket-Protocol` the server answered with.
    pub subprotocol: Option<String>,
}

/// Frames length-delimited commands into one binary payload.
pub fn frame(commands: &[Command]) -> Vec<u8> {
    let mut out = Vec::new();
    for command in commands {
        command
            .encode_length_delimited(&mut out)
            .expect("a Vec grows");
    }
    out
}

/// Splits a binary frame into its length-delimited replies.
pub fn replies(mut payload: &[u8]) -> Vec<Reply> {
    let mut out = Vec::new();
    while !payload.is_empty() {
        out.push(Reply::decode_length_delimited(&mut payload).expect("server sends valid replies"));
    }
    out
}

pub fn connect(token: &str) -> Command {
    Command {
        connect: Some(wire::ConnectRequest {
            token: token.into(),
            name: "herald-test-protobuf".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn subscribe(channel: &str) -> Command {
    Command {
        subscribe: Some(wire::SubscribeRequest {
            channel: channel.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn publish(channel: &str, data: &[u8]) -> Command {
    Command {
        publish: Some(wire::PublishRequest {
            channel: channel.into(),
            data: data.to_vec(),
        }),
        ..Default::default()
    }
}

pub fn ping() -> Command {
    Command {
        ping: Some(wire::Empty {}),
        ..Default::default()
    }
}

impl PbClient {
    pub async fn open(server: &TestServer, ask: Ask) -> PbClient {
        let url = match ask {
            Ask::Subprotocol => server.ws_url(),
            Ask::Query => format!("{}?format=protobuf", server.ws_url()),
        };
        let mut builder = ClientBuilder::from_uri(http::Uri::try_from(url).expect("url"));
        if let Ask::Subprotocol = ask {
            builder = builder
                .add_header(
                    http::header::SEC_WEBSOCKET_PROTOCOL,
                    http::HeaderValue::from_static("centrifuge-protobuf"),
                )
                .expect("allowed header");
        }
        let (ws, response) = builder.connect().await.expect("websocket connects");
        let subprotocol = response
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        PbClient {
            ws,
            inbox: VecDeque::new(),
            next_id: 1,
            client_id: String::new(),
            auto_pong: true,
            subprotocol,
        }
    }

    /// A Protobuf client connected as `user`.
    pub async fn connected(server: &TestServer, user: &str) -> PbClient {
        let mut client = PbClient::open(server, Ask::Subprotocol).await;
        let reply = client.call(connect(&super::token(user))).await;
        let result = reply
            .connect
            .unwrap_or_else(|| panic!("connect failed: {:?}", reply.error));
        client.client_id = result.client;
        client
    }

    pub async fn send_binary(&mut self, payload: Vec<u8>) {
        self.ws
            .send(Message::binary(Bytes::from(payload)))
            .await
            .expect("send");
    }

    /// Sends commands in one frame (ids as given).
    pub async fn send(&mut self, commands: &[Command]) {
        self.send_binary(frame(commands)).await;
    }

    /// Sends a command with a fresh id and waits for its reply.
    pub async fn call(&mut self, mut command: Command) -> Reply {
        command.id = self.next_id;
        self.next_id += 1;
        let id = command.id;
        self.send(&[command]).await;
        self.reply(id).await
    }

    /// Subscribes and returns the result, panicking on an error reply.
    pub async fn subscribe(&mut self, channel: &str) -> wire::SubscribeResult {
        let reply = self.call(subscribe(channel)).await;
        reply
            .subscribe
            .unwrap_or_else(|| panic!("subscribe {channel} failed: {:?}", reply.error))
    }

    /// The next reply or push (pings answered and skipped while `auto_pong`), within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Reply> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(reply) = self.inbox.pop_front() {
                if self.auto_pong && reply == Reply::default() {
                    // The pong: an empty command.
                    self.send_binary(vec![0]).await;
                    continue;
                }
                return Some(reply);
            }
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??
                .ok()?;
            if message.is_binary() {
                self.inbox.extend(replies(message.as_payload()));
            } else if message.is_text() {
                panic!("a Protobuf connection got a text frame");
            } else if message.is_close() {
                return None;
            }
        }
    }

    pub async fn next(&mut self) -> Reply {
        self.next_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("no message within {WAIT:?}"))
    }

    /// Waits for the reply with `id`, keeping pushes that arrive first.
    pub async fn reply(&mut self, id: u32) -> Reply {
        let mut skipped = Vec::new();
        loop {
            let reply = self.next().await;
            if reply.id == id {
                for s in skipped.into_iter().rev() {
                    self.inbox.push_front(s);
                }
                return reply;
            }
            skipped.push(reply);
        }
    }

    /// The next push (skips replies).
    pub async fn push(&mut self) -> wire::Push {
        loop {
            if let Some(push) = self.next().await.push {
                return push;
            }
        }
    }

    /// The next publication on `channel`.
    pub async fn publication(&mut self, channel: &str) -> wire::Publication {
        loop {
            let push = self.push().await;
            if push.channel == channel {
                if let Some(publication) = push.r#pub {
                    return publication;
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

    /// Reads until the connection ends; returns the close code and reason.
    pub async fn closed(&mut self) -> Closed {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("connection not closed within {WAIT:?}"),
                Ok(None) | Ok(Some(Err(_))) => return Closed::Abrupt,
                Ok(Some(Ok(message))) => {
                    if let Some((code, reason)) = message.as_close() {
                        return Closed::Code(u16::from(code), reason.to_string());
                    }
                    if message.is_close() {
                        return Closed::Code(1005, String::new());
                    }
                }
            }
        }
    }
}
