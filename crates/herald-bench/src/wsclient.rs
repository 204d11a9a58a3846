//! One subscriber connection: Herald's client protocol (v2, JSON or Protobuf), a raw WebSocket that
//! receives plain text frames (the Node.js `ws` peer), the Engine.IO/Socket.IO websocket transport,
//! or the Pusher Channels protocol (Herald's Pusher edge, Sockudo).

use crate::net::{connect_from, now_micros, source_ip};
use crate::pusher::PusherArgs;
use crate::stats::{scan, Stamp, Stats};
use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit};
use tokio_websockets::{ClientBuilder, Message, WebSocketStream};

pub type Ws = WebSocketStream<TcpStream>;

/// The kind of server on the other end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// Herald (Centrifugo client protocol).
    Herald,
    /// A plain WebSocket broadcast server (bench/peers/ws): text frames, no protocol.
    Ws,
    /// A socket.io server (bench/peers/socketio), Engine.IO v4 over WebSocket only.
    Socketio,
    /// The floor (`herald-floor`): the cheapest broadcast server, same contract as `ws`.
    Floor,
    /// A Pusher Channels server, protocol 7 at `/app/<key>`: Herald's Pusher edge or Sockudo.
    Pusher,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Herald => "herald",
            Target::Ws => "ws",
            Target::Floor => "floor",
            Target::Socketio => "socketio",
            Target::Pusher => "pusher",
        }
    }

    fn path(self, pusher: Option<&PusherArgs>) -> String {
        match self {
            Target::Herald => "/connection/websocket".into(),
            Target::Ws | Target::Floor => "/".into(),
            Target::Socketio => "/socket.io/?EIO=4&transport=websocket".into(),
            Target::Pusher => crate::pusher::path(pusher.map_or("", |app| app.key.as_str())),
        }
    }
}

/// Herald's wire format for the subscribers (the publisher always uses the JSON API).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Wire {
    #[default]
    Json,
    /// Binary frames of length-delimited Protobuf messages (`centrifuge-protobuf`).
    Protobuf,
}

/// What a subscriber connects to and listens for.
pub struct Spec {
    pub target: Target,
    pub server: SocketAddr,
    /// Connection token (Herald only).
    pub token: String,
    /// Channels to subscribe to (Herald only; the peers broadcast to everyone).
    pub channels: Vec<String>,
    pub stamp: Stamp,
    /// Herald only: publish into `channels[0]` through the client protocol every `interval`
    /// (chat members), with this much padding.
    pub talk: Option<(Duration, usize)>,
    /// Longest wait for the connection and its subscribe replies.
    pub handshake_timeout: Duration,
    /// Herald only, receives nothing but heartbeats: the minimal client of [`crate::lite`].
    pub lite: bool,
    /// Herald only: the client protocol's wire format.
    pub wire: Wire,
    /// Pusher only: the app (key, and the secret that signs `private-` subscriptions).
    pub pusher: Option<Arc<PusherArgs>>,
}

/// Opens a WebSocket from source address number `i` and performs the target's handshake.
pub async fn open(i: usize, spec: &Spec) -> anyhow::Result<Ws> {
    let stream = connect_from(spec.server, source_ip(i)).await?;
    let path = spec.target.path(spec.pusher.as_deref());
    let uri: http::Uri = format!("ws://{}{path}", spec.server).parse()?;
    let mut builder = ClientBuilder::from_uri(uri);
    if spec.wire == Wire::Protobuf {
        builder = builder.add_header(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static("centrifuge-protobuf"),
        )?;
    }
    let (mut ws, _) = builder.connect_on(stream).await?;
    match (spec.target, spec.wire) {
        (Target::Herald, Wire::Json) => {
            herald_handshake(&mut ws, &spec.token, &spec.channels).await?
        }
        (Target::Herald, Wire::Protobuf) => {
            protobuf_handshake(&mut ws, &spec.token, &spec.channels).await?
        }
        (Target::Ws | Target::Floor, _) => {}
        (Target::Socketio, _) => socketio_handshake(&mut ws).await?,
        (Target::Pusher, _) => {
            let app = spec
                .pusher
                .as_deref()
                .context("a Pusher target needs its app")?;
            crate::pusher::handshake(&mut ws, app, &spec.channels).await?;
        }
    }
    Ok(ws)
}

async fn next_text(ws: &mut Ws) -> anyhow::Result<String> {
    loop {
        let Some(message) = ws.next().await else {
            bail!("closed during the handshake")
        };
        let message = message?;
        if let Some(text) = message.as_text() {
            return Ok(text.to_string());
        }
    }
}

/// `connect` then one `subscribe` per channel in one frame; waits for every reply.
async fn herald_handshake(ws: &mut Ws, token: &str, channels: &[String]) -> anyhow::Result<()> {
    let mut frame = json!({"id": 1, "connect": {"token": token}}).to_string();
    for (n, channel) in channels.iter().enumerate() {
        frame.push('\n');
        frame.push_str(&json!({"id": n + 2, "subscribe": {"channel": channel}}).to_string());
    }
    ws.send(Message::text(frame)).await?;
    let mut replies = 0;
    while replies < 1 + channels.len() {
        let text = next_text(ws).await?;
        for line in text.split('\n') {
            if line.contains("\"error\"") {
                bail!("connect/subscribe failed: {line}");
            }
            if line.starts_with("{\"id\":") {
                replies += 1;
            }
        }
    }
    Ok(())
}

/// The same handshake in Protobuf: length-delimited Commands in one binary frame, every Reply
/// awaited.
async fn protobuf_handshake(ws: &mut Ws, token: &str, channels: &[String]) -> anyhow::Result<()> {
    use herald_protocol::protobuf::wire::{Command, ConnectRequest, Reply, SubscribeRequest};
    use prost::Message as _;
    let mut frame = Vec::new();
    let connect = Command {
        id: 1,
        connect: Some(ConnectRequest {
            token: token.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    };
    connect.encode_length_delimited(&mut frame)?;
    for (n, channel) in channels.iter().enumerate() {
        let subscribe = Command {
            id: n as u32 + 2,
            subscribe: Some(SubscribeRequest {
                channel: channel.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        subscribe.encode_length_delimited(&mut frame)?;
    }
    ws.send(Message::binary(frame)).await?;
    let mut replies = 0;
    while replies < 1 + channels.len() {
        let Some(message) = ws.next().await else {
            bail!("closed during the handshake");
        };
        let mut payload: &[u8] = &message?.into_payload();
        while !payload.is_empty() {
            let reply = Reply::decode_length_delimited(&mut payload)?;
            if let Some(error) = reply.error {
                bail!("connect/subscribe failed: {} {}", error.code, error.message);
            }
            if reply.id > 0 {
                replies += 1;
            }
        }
    }
    Ok(())
}

/// Engine.IO open packet (`0{...}`), then Socket.IO connect to the main namespace (`40`).
async fn socketio_handshake(ws: &mut Ws) -> anyhow::Result<()> {
    let open = next_text(ws).await?;
    if !open.starts_with('0') {
        bail!("expected an Engine.IO open packet, got {open:.40}");
    }
    ws.send(Message::text("40")).await?;
    loop {
        let text = next_text(ws).await?;
        if text.starts_with("40") {
            return Ok(());
        }
        if text.starts_with("44") {
            bail!("socket.io refused the connection: {text:.80}");
        }
    }
}

/// A heartbeat the server expects an answer to, and the answer.
fn heartbeat_reply(target: Target, wire: Wire, payload: &[u8]) -> Option<Message> {
    match (target, wire, payload) {
        (Target::Herald, Wire::Json, b"{}") => Some(Message::text("{}")),
        // An empty Reply (the ping) is answered by an empty Command: both are one length byte 0.
        (Target::Herald, Wire::Protobuf, [0]) => Some(Message::binary(vec![0u8])),
        (Target::Socketio, _, b"2") => Some(Message::text("3")),
        (Target::Pusher, _, payload) => crate::pusher::heartbeat_reply(payload),
        _ => None,
    }
}

/// Runs subscriber `i`: opens it (holding `permit` only while connecting, which bounds concurrent
/// handshakes), reports readiness, then counts publications until `stop`.
pub async fn subscriber(
    i: usize,
    spec: Arc<Spec>,
    stats: Arc<Stats>,
    permit: OwnedSemaphorePermit,
    ready: oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
) {
    if spec.lite {
        return lite_subscriber(i, &spec, &stats, permit, ready, stop).await;
    }
    let opened = tokio::time::timeout(spec.handshake_timeout, open(i, &spec)).await;
    drop(permit);
    let mut ws = match opened {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            stats.error();
            report_first_error(i, &e);
            return;
        }
        Err(_) => {
            stats.error();
            report_first_error(i, &anyhow::anyhow!("handshake timed out"));
            return;
        }
    };
    stats
        .connected
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _ = ready.send(());
    if let Err(e) = read_loop(i, &spec, &stats, &mut ws, &mut stop).await {
        if !*stop.borrow() {
            stats.error();
            report_first_error(i, &e);
        }
    }
}

async fn lite_subscriber(
    i: usize,
    spec: &Spec,
    stats: &Stats,
    permit: OwnedSemaphorePermit,
    ready: oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
) {
    let key = (i as u32).wrapping_mul(2_654_435_761).to_be_bytes();
    let channel = spec.channels.first().map(String::as_str).unwrap_or("");
    let opened = tokio::time::timeout(spec.handshake_timeout, async {
        let mut stream = connect_from(spec.server, source_ip(i)).await?;
        crate::lite::open(&mut stream, spec.server, &spec.token, channel, key).await?;
        anyhow::Ok(stream)
    })
    .await;
    drop(permit);
    let mut stream = match opened {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            stats.error();
            return report_first_error(i, &e);
        }
        Err(_) => {
            stats.error();
            return report_first_error(i, &anyhow::anyhow!("handshake timed out"));
        }
    };
    stats
        .connected
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _ = ready.send(());
    if let Err(e) = crate::lite::hold(&mut stream, key, &mut stop).await {
        if !*stop.borrow() {
            stats.error();
            report_first_error(i, &e);
        }
    }
}

/// Only the first few failures are printed: a refused ramp would otherwise flood the terminal.
fn report_first_error(i: usize, e: &anyhow::Error) {
    static PRINTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if PRINTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 5 {
        eprintln!("connection {i}: {e:#}");
    }
}

async fn read_loop(
    i: usize,
    spec: &Spec,
    stats: &Stats,
    ws: &mut Ws,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut ages = Vec::with_capacity(64);
    let (talk_every, padding) = match spec.talk {
        Some((every, size)) => (every, "x".repeat(size.saturating_sub(30))),
        None => (Duration::from_secs(3600), String::new()),
    };
    // Members start talking at different phases so a room's load is spread over the interval.
    let phase = talk_every.mul_f64((i % 97) as f64 / 97.0);
    let mut talk = tokio::time::interval_at(tokio::time::Instant::now() + phase, talk_every);
    talk.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut command_id = 100u64;
    loop {
        let message = tokio::select! {
            _ = stop.changed() => return Ok(()),
            _ = talk.tick(), if spec.talk.is_some() => {
                command_id += 1;
                let channel = spec.channels.first().context("a talking member needs a channel")?;
                let publish = json!({"id": command_id, "publish": {"channel": channel,
                    "data": {"t": now_micros(), "p": padding}}});
                ws.send(Message::text(publish.to_string())).await?;
                continue;
            }
            message = ws.next() => match message {
                Some(m) => m?,
                None => bail!("closed by the server"),
            },
        };
        let payload = message.as_payload();
        if let Some(reply) = heartbeat_reply(spec.target, spec.wire, payload) {
            ws.send(reply).await?;
            continue;
        }
        ages.clear();
        let count = scan(payload, spec.stamp, now_micros(), &mut ages);
        stats.delivered(count);
        stats.record(i, &ages);
    }
}
