//! One Pusher Channels WebSocket connection (protocol 7, `/app/<key>`): pusher-js and Laravel
//! Echo clients on the same hub, brokers and limits as Centrifugo clients.
//!
//! The work is split by job: `run` (the loop, its clocks and closing), `input` (frames in, each
//! message to its handler), `subscribe` (channels, their signatures, presence members and cache
//! replay), `client` (client events and user sign-in) and `output` (the outbox into messages,
//! members told apart from connections). What the protocol says is `herald_pusher`, which does no
//! I/O; the hub encodes publications for Pusher connections once per fan-out (`core::wire`).

mod client;
mod input;
mod output;
mod run;
mod subscribe;

use crate::config::PusherApp;
use crate::core::rate::TokenBucket;
use crate::core::session_handle::SessionHandle;
use crate::edges::ws::WsConn;
use crate::node::Node;
use bytes::Bytes;
use herald_pusher::codes::ErrorCode;
use rustc_hash::FxHashMap;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// The transport name in metrics and the `connections` API.
pub const TRANSPORT: &str = "pusher";

/// One channel this connection is subscribed to, by its Pusher name.
struct Subscription {
    slot: u32,
    /// Its Herald name (`<namespace>:<pusher name>`).
    herald: String,
    /// On a presence channel: this connection's member and the channel's members.
    presence: Option<subscribe::Presence>,
}

pub struct PusherSession {
    node: Arc<Node>,
    ws: WsConn,
    /// The app the key named; `None` when refused (`refusal` says why).
    app: Option<Arc<PusherApp>>,
    refusal: Option<ErrorCode>,
    handle: Option<Arc<SessionHandle>>,
    /// The user this connection signed in as (`pusher:signin`).
    user: Option<String>,
    subs: HashMap<String, Subscription>,
    /// Live subscription slots → the channel's Pusher name.
    slots: FxHashMap<u32, String>,
    next_slot: u32,
    /// Messages waiting to be written, each its own WebSocket message.
    pending: Vec<Bytes>,
    pending_bytes: usize,
    drained: VecDeque<crate::core::outbox::OutItem>,
    /// Every message a client sends (`client.command_rate`).
    bucket: TokenBucket,
    /// Client events (`pusher.client_event_rate`).
    events: TokenBucket,
    /// WebSocket pings (`client.max_ping_rate`).
    ping_bucket: TokenBucket,
    /// Messages refused for rate in a row; a client that keeps on is closed.
    rate_rejections: u32,
    last_heard: Instant,
    /// A `pusher:ping` was sent and waits for any message back.
    pong_deadline: Option<Instant>,
}

impl PusherSession {
    pub fn new(node: Arc<Node>, ws: WsConn, app: Result<Arc<PusherApp>, ErrorCode>) -> Self {
        let now = Instant::now();
        let config = node.config();
        let c = &config.client;
        let (app, refusal) = match app {
            Ok(app) => (Some(app), None),
            Err(code) => (None, Some(code)),
        };
        let event_rate = config.pusher.client_event_rate;
        PusherSession {
            bucket: TokenBucket::new(c.command_rate, c.command_burst, now),
            events: TokenBucket::new(event_rate, event_rate, now),
            ping_bucket: TokenBucket::new(c.max_ping_rate, c.ping_burst, now),
            node: node.clone(),
            ws,
            app,
            refusal,
            handle: None,
            user: None,
            subs: HashMap::new(),
            slots: FxHashMap::default(),
            next_slot: 1,
            pending: Vec::new(),
            pending_bytes: 0,
            drained: VecDeque::new(),
            rate_rejections: 0,
            last_heard: now,
            pong_deadline: None,
        }
    }

    /// The socket id (the client id on the hub); empty before registration.
    fn socket_id(&self) -> &str {
        self.handle.as_ref().map_or("", |h| h.client.as_str())
    }

    /// Adds a message to what the next write sends.
    fn queue(&mut self, message: impl Into<Bytes>) {
        let message = message.into();
        self.pending_bytes += message.len();
        self.pending.push(message);
    }

    /// Counts a refusal in `herald_pusher_refused_total{reason}`.
    fn count_refusal(&self, reason: &'static str) {
        self.node
            .metrics
            .pusher_refused
            .get_or_create(&crate::core::metrics::ReasonLabel { reason })
            .inc();
    }

    /// A `pusher:error` on a connection that stays open.
    fn queue_error(&mut self, code: Option<ErrorCode>, message: &str) {
        self.queue(herald_pusher::outgoing::error(code, message));
    }

    /// Whether the output owed to the client has reached `client.max_outbox_bytes`: reading
    /// waits until it drains, so what a client makes the server hold stays bounded.
    fn output_full(&self) -> bool {
        self.pending_bytes + self.ws.queued_out() >= self.node.config().client.max_outbox_bytes
    }
}
