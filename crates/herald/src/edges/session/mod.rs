//! One client connection: a single task that reads commands, answers them, drains the connection's
//! outbox into batched frames, pings the client and enforces every per-connection limit.
//!
//! The work is split by job: `run` (the loop and closing), `input` (reading frames), `timers`
//! (pings, timeouts, expiry), `output` (the outbox and writing), `dispatch` (command → handler),
//! `connect`, `subscribe`, `commands` (the other commands), `backend` (proxy hooks), `delta`
//! (delta compression) and `transport` (the connection it is served over: every transport shares
//! all of the above). The
//! decisions are pure functions with their own tests: `permissions`, `positioning`, `tokens`.

mod backend;
mod close;
mod commands;
mod connect;
mod delta;
mod dispatch;
mod input;
mod output;
mod permissions;
mod positioning;
mod run;
mod subscribe;
mod timers;
mod tokens;
mod transport;

pub use close::{Close, Ending};
pub use transport::Transport;

use crate::core::outbox::OutItem;
use crate::core::rate::TokenBucket;
use crate::core::session_handle::SessionHandle;
use crate::hooks::HookCtx;
use crate::node::Node;
use bytes::Bytes;
use herald_protocol::{ClientInfo, Disconnect, ErrorCode, Format, ReplyBody, ReplyError};
use rustc_hash::FxHashMap;
use serde_json::value::RawValue;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

/// What a command handler comes to: its reply body, or a refusal.
type Handled<T = ReplyBody> = Result<T, Refusal>;

/// A command that gets no reply body: an error reply for the command alone, or the end of the
/// connection.
#[derive(Debug)]
enum Refusal {
    Reply(ReplyError),
    Close(Close),
}

impl From<ReplyError> for Refusal {
    fn from(error: ReplyError) -> Self {
        Refusal::Reply(error)
    }
}

impl From<ErrorCode> for Refusal {
    fn from(code: ErrorCode) -> Self {
        Refusal::Reply(code.into())
    }
}

impl From<Close> for Refusal {
    fn from(close: Close) -> Self {
        Refusal::Close(close)
    }
}

impl From<Disconnect> for Refusal {
    fn from(disconnect: Disconnect) -> Self {
        Refusal::Close(disconnect.into())
    }
}

pub struct Session {
    node: Arc<Node>,
    conn: Transport,
    /// The wire format chosen at the handshake: every command is decoded and every reply and
    /// push encoded through it.
    format: Format,
    handle: Option<Arc<SessionHandle>>,
    user: String,
    conn_info: Option<Box<RawValue>>,
    subs: HashMap<String, subscribe::Subscription>,
    /// Live subscription slots → highest offset already delivered in a subscribe reply. Looked
    /// up once per delivered item: a fast hash (slots are numbers the session assigns itself).
    slots: FxHashMap<u32, u64>,
    /// Subscriptions with delta compression, and the publication each client holds.
    deltas: delta::DeltaBases,
    next_slot: u32,
    bucket: TokenBucket,
    /// WebSocket pings allowed (`client.max_ping_rate`).
    ping_bucket: TokenBucket,
    rate_rejections: u32,
    connect_deadline: Instant,
    expires_at: Option<Instant>,
    next_ping: Instant,
    pong_deadline: Option<Instant>,
    /// Messages waiting to be written, merged into frames by `write_some`.
    pending: Vec<Bytes>,
    pending_bytes: usize,
    /// Input not yet answered (none while idle).
    backlog: Option<Box<input::Backlog>>,
    drained: VecDeque<OutItem>,
    /// Handshake headers forwarded to proxy hooks (only those in `proxy.forward_headers`).
    forwarded: Vec<(http::HeaderName, http::HeaderValue)>,
    /// `meta` from the connect hook: sent back to the backend with every later hook call.
    meta: Option<Box<RawValue>>,
    /// Authenticated by the connect hook: its expiry is extended by the refresh hook.
    backend_auth: bool,
}

impl Session {
    pub fn new(
        node: Arc<Node>,
        conn: Transport,
        format: Format,
        forwarded: Vec<(http::HeaderName, http::HeaderValue)>,
    ) -> Session {
        let now = Instant::now();
        let c = &node.config().client;
        Session {
            bucket: TokenBucket::new(c.command_rate, c.command_burst, now),
            ping_bucket: TokenBucket::new(c.max_ping_rate, c.ping_burst, now),
            connect_deadline: now + c.connect_timeout,
            next_ping: now + c.ping_interval,
            node,
            conn,
            format,
            handle: None,
            user: String::new(),
            conn_info: None,
            subs: HashMap::new(),
            slots: FxHashMap::default(),
            deltas: Default::default(),
            next_slot: 1,
            rate_rejections: 0,
            expires_at: None,
            pong_deadline: None,
            pending: Vec::new(),
            pending_bytes: 0,
            backlog: None,
            drained: VecDeque::new(),
            forwarded,
            meta: None,
            backend_auth: false,
        }
    }

    /// This connection's identity as the backend hooks see it.
    fn hook_ctx(&self) -> HookCtx<'_> {
        HookCtx {
            client: self.client_id(),
            user: &self.user,
            meta: self.meta.as_deref(),
            headers: &self.forwarded,
        }
    }

    /// The client id given at connect (empty before).
    fn client_id(&self) -> &str {
        self.handle.as_ref().map_or("", |h| h.client.as_str())
    }

    /// This connection as publications, presence and join/leave events show it.
    fn info(&self, chan_info: Option<Box<RawValue>>) -> ClientInfo {
        ClientInfo {
            user: self.user.clone(),
            client: self.client_id().to_string(),
            conn_info: self.conn_info.clone(),
            chan_info,
        }
    }
}
