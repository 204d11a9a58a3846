//! One client connection: a single task that reads commands, answers them, drains the connection's
//! outbox into batched frames, pings the client and enforces every per-connection limit.

use crate::brokers::Control;
use crate::config::NamespaceOptions;
use crate::core::channel::{is_private, personal_channel};
use crate::core::history::{client_history_limit, history_limit, HistoryQuery};

mod backend;
use crate::core::clock::unix_secs;
use crate::core::metrics::MethodLabel;
use crate::core::outbox::{OutItem, Outbox};
use crate::core::rate::TokenBucket;
use crate::core::session_handle::SessionHandle;
use crate::edges::ws::{Incoming, WsConn, WsError};
use crate::hooks::proxy::Hook;
use crate::hooks::HookCtx;
use crate::node::{broker_error, Node};
use bytes::Bytes;
use herald_auth::TokenError;
use herald_protocol::command::{
    ChannelRequest, ConnectRequest, HistoryRequest, PublishRequest, RefreshRequest,
    SubRefreshRequest, SubscribeRequest,
};
use herald_protocol::{
    decode_frame, encode_push, encode_reply, single_line, ClientInfo, ConnectResult, Disconnect,
    ErrorCode, HistoryResult, Method, PresenceResult, PresenceStatsResult, PushBody, RefreshResult,
    ReplyBody, ReplyError, SubRefreshResult, SubscribeResult, UnsubscribeCode, PING,
};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::time::sleep_until;

/// Largest frame the server builds when it merges several messages into one.
const MAX_BATCH_BYTES: usize = 64 * 1024;
/// A client that rejects this many commands in a row for rate is disconnected.
const MAX_RATE_REJECTIONS: u32 = 100;

/// How a session's connection is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Pending replies, then a close frame, then a short wait for the peer's close.
    Polite,
    /// The same without waiting for the peer: it was silent or hostile, and is not given more
    /// time than its timeout.
    Brief,
    /// The socket is unusable or the peer is gone: nothing more is written.
    Silent,
    /// The peer does not read (slow consumer, stalled write): a reset at once, dropping what the
    /// kernel still holds for it, so neither the client nor kernel memory waits behind stale data.
    Abort,
}

/// Why the session ends, sent as the WebSocket close code and reason.
#[derive(Debug, Clone)]
pub struct Close {
    pub code: u16,
    pub reason: String,
    pub ending: Ending,
    pub label: &'static str,
}

impl From<Disconnect> for Close {
    fn from(d: Disconnect) -> Self {
        // A slow consumer is not waited for, whichever way it was detected.
        let ending = if d == Disconnect::SLOW {
            Ending::Abort
        } else {
            Ending::Polite
        };
        Close {
            code: d.code,
            reason: d.reason.to_string(),
            ending,
            label: d.label(),
        }
    }
}

impl Close {
    /// The backend asked for this connection to be closed.
    fn backend(code: u16, reason: String) -> Close {
        Close {
            code,
            reason,
            ending: Ending::Polite,
            label: "backend disconnect",
        }
    }

    fn gone(label: &'static str) -> Close {
        Close {
            code: 3000,
            reason: String::new(),
            ending: Ending::Silent,
            label,
        }
    }

    /// A write made no progress for `client.write_timeout`: the peer does not read.
    fn write_timeout() -> Close {
        Close {
            label: "write timeout",
            ..Disconnect::SLOW.into()
        }
    }

    /// More WebSocket pings than `client.max_ping_rate` allows.
    fn ping_flood() -> Close {
        Close {
            code: CLOSE_POLICY_VIOLATION,
            reason: "too many pings (client.max_ping_rate)".to_string(),
            ending: Ending::Brief,
            label: "ping flood",
        }
    }
}

/// RFC 6455's code for a peer that broke the server's policy.
const CLOSE_POLICY_VIOLATION: u16 = 1008;

/// Input read from the socket and not yet answered: the session stops reading more while its
/// output is over the bound, and answers the rest when the output has drained.
#[derive(Default)]
struct Backlog {
    messages: VecDeque<Incoming>,
    commands: VecDeque<(u32, Method)>,
}

/// Where a new subscriber starts: publications for its reply, the stream position, and whether
/// a requested recovery succeeded.
type StartPoint = (
    Vec<Arc<herald_protocol::Publication>>,
    herald_protocol::StreamPosition,
    bool,
);

struct Subscription {
    slot: u32,
    ns: Arc<NamespaceOptions>,
    info: ClientInfo,
    expires_at: Option<Instant>,
}

/// Recovery and positioning wishes of a subscribe, from the client or from the server.
#[derive(Default)]
struct SubscribeParams {
    recover: bool,
    recoverable: bool,
    positioned: bool,
    join_leave: bool,
    offset: u64,
    epoch: String,
    chan_info: Option<Box<RawValue>>,
    data: Option<Box<RawValue>>,
    expires_at: Option<i64>,
}

impl From<&SubscribeRequest> for SubscribeParams {
    fn from(r: &SubscribeRequest) -> Self {
        SubscribeParams {
            recover: r.recover,
            recoverable: r.recoverable || r.recover,
            positioned: r.positioned,
            join_leave: r.join_leave,
            offset: r.offset,
            epoch: r.epoch.clone(),
            ..Default::default()
        }
    }
}

pub struct Session {
    node: Arc<Node>,
    ws: WsConn,
    handle: Option<Arc<SessionHandle>>,
    user: String,
    conn_info: Option<Box<RawValue>>,
    subs: HashMap<String, Subscription>,
    /// Live subscription slots → highest offset already delivered in a subscribe reply.
    slots: HashMap<u32, u64>,
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
    backlog: Option<Box<Backlog>>,
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
        ws: WsConn,
        forwarded: Vec<(http::HeaderName, http::HeaderValue)>,
    ) -> Session {
        let now = Instant::now();
        let c = &node.config.client;
        Session {
            bucket: TokenBucket::new(c.command_rate, c.command_burst, now),
            ping_bucket: TokenBucket::new(c.max_ping_rate, c.ping_burst, now),
            connect_deadline: now + c.connect_timeout,
            next_ping: now + c.ping_interval,
            node,
            ws,
            handle: None,
            user: String::new(),
            conn_info: None,
            subs: HashMap::new(),
            slots: HashMap::new(),
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

    fn hook_ctx(&self) -> HookCtx<'_> {
        HookCtx {
            client: self.handle.as_ref().map_or("", |h| h.client.as_str()),
            user: &self.user,
            meta: self.meta.as_deref(),
            headers: &self.forwarded,
        }
    }

    pub async fn run(mut self) {
        let close = self.serve().await;
        self.node.metrics.disconnect(close.label);
        if let Some(handle) = &self.handle {
            // A peer that vanished has no close reason: the label says what happened instead.
            let reason = if close.reason.is_empty() {
                close.label
            } else {
                &close.reason
            };
            let hooks = &self.node.hooks;
            hooks.disconnect(&handle.client, &self.user, close.code, reason);
        }
        match close.ending {
            Ending::Abort => {
                self.pending.clear();
                self.ws.abort(Some((close.code, &close.reason)));
            }
            Ending::Silent => {}
            Ending::Polite | Ending::Brief => Box::pin(self.close_politely(&close)).await,
        }
        self.cleanup().await;
    }

    /// Replies to the commands before the one that ended the session go out first, then the close
    /// frame, as long as the peer keeps reading (a write without progress for `write_timeout`
    /// ends in a reset). Boxed: only closing connections pay for its state.
    async fn close_politely(&mut self, close: &Close) {
        let stall = self.node.config.client.write_timeout;
        let messages = std::mem::take(&mut self.pending);
        let mut written = self.ws.write_queued(stall).await;
        if written.is_ok() && !messages.is_empty() {
            self.ws.queue_text(&messages, MAX_BATCH_BYTES);
            written = self.ws.write_queued(stall).await;
        }
        drop(messages);
        if written.is_ok() {
            self.ws.queue_close(close.code, &close.reason);
            written = self.ws.write_queued(stall).await;
        }
        match (written, close.ending) {
            // Give the peer a moment to acknowledge so the close frame is not lost in a reset.
            (Ok(()), Ending::Polite) => self.ws.drain_until_closed(Duration::from_secs(1)).await,
            (Ok(()), _) => self.ws.shutdown().await,
            (Err(_), _) => self.ws.abort(None),
        }
    }

    /// The connection's loop. The idle state is small on purpose (one task per connection, many
    /// thousands idle): the work done on each wake-up runs in boxed futures.
    async fn serve(&mut self) -> Close {
        if self.ws.has_buffered() {
            if let Err(close) = Box::pin(self.read_input()).await {
                return close;
            }
        }
        loop {
            if self.backlog.is_some() && !self.output_full() {
                if let Err(close) = Box::pin(self.process_input()).await {
                    return close;
                }
            }
            if let Err(close) = self.write_some() {
                return close;
            }
            let writing = self.ws.is_writing();
            // Reading waits while the output is over the bound or input is still unanswered, so
            // what a connection makes the server hold is bounded whatever it sends.
            let reading = self.backlog.is_none() && !self.output_full();
            let deadline = self.next_deadline();
            let wake = if writing {
                // Boxed: only connections with a write pending pay for this state.
                match Box::pin(self.wait_writing(deadline, reading)).await {
                    Ok(wake) => wake,
                    Err(close) => return close,
                }
            } else {
                let node = self.node.clone();
                let outbox = self.handle.as_deref().map(|h| &h.outbox);
                tokio::select! {
                    biased;
                    _ = node.shutdown.cancelled() => return Disconnect::SHUTDOWN.into(),
                    _ = wait_outbox(outbox) => Wake::Outbox,
                    readable = self.ws.readable(), if reading => match readable {
                        Ok(()) => Wake::Readable,
                        Err(_) => return Close::gone("read error"),
                    },
                    _ = sleep_until(deadline.into()) => Wake::Timer,
                }
            };
            let result = match wake {
                Wake::Outbox => Box::pin(self.drain_outbox()).await,
                Wake::Writable => Ok(()),
                Wake::Readable => Box::pin(self.read_input()).await,
                Wake::Timer => match Box::pin(self.refresh_by_backend())
                    .await
                    .and_then(|()| self.on_timer())
                {
                    Ok(()) => Box::pin(self.expire_subscriptions()).await,
                    Err(close) => Err(close),
                },
            };
            if let Err(close) = result {
                return close;
            }
        }
    }

    /// Waits while a write is pending. The outbox is not drained meanwhile: a client that does not
    /// read lets its outbox fill and overflow (slow consumer) instead of growing `pending`.
    async fn wait_writing(&self, deadline: Instant, reading: bool) -> Result<Wake, Close> {
        let handle = self.handle.as_deref();
        tokio::select! {
            biased;
            _ = self.node.shutdown.cancelled() => Err(Disconnect::SHUTDOWN.into()),
            // Marked slow while the write waits on a full socket: give up now.
            _ = wait_slowed(handle) => Err(Disconnect::SLOW.into()),
            writable = self.ws.writable() => match writable {
                Ok(()) => Ok(Wake::Writable),
                Err(_) => Err(Close::gone("write error")),
            },
            readable = self.ws.readable(), if reading => match readable {
                Ok(()) => Ok(Wake::Readable),
                Err(_) => Err(Close::gone("read error")),
            },
            _ = sleep_until(deadline.into()) => Ok(Wake::Timer),
        }
    }

    /// Whether the output owed to the client (replies, pushes, pongs not yet handed to the
    /// kernel) has reached `client.max_outbox_bytes`.
    fn output_full(&self) -> bool {
        self.pending_bytes + self.ws.queued_out() >= self.node.config.client.max_outbox_bytes
    }

    /// Reads what the socket has into the backlog, then answers it as far as the output bound
    /// allows.
    async fn read_input(&mut self) -> Result<(), Close> {
        let mut incoming = Vec::new();
        let read = match self.ws.read_available(&mut incoming) {
            Ok(read) => read,
            Err(WsError::Eof) => return Err(Close::gone("connection closed")),
            Err(WsError::Io(e)) => {
                tracing::debug!(error = %e, "websocket read failed");
                return Err(Close::gone("read error"));
            }
            Err(WsError::Violation(v)) => {
                let label = if v.code == crate::edges::ws::CLOSE_TOO_BIG {
                    "message too big"
                } else {
                    "protocol error"
                };
                return Err(Close {
                    code: v.code,
                    reason: v.reason.to_string(),
                    ending: Ending::Polite,
                    label,
                });
            }
        };
        if read > 0 {
            self.node.metrics.bytes_in.inc_by(read as u64);
        }
        let pings = self.ws.take_pings();
        if pings > 0 {
            let now = Instant::now();
            if !(0..pings).all(|_| self.ping_bucket.take(now)) {
                return Err(Close::ping_flood());
            }
        }
        // Messages prove the peer is alive; WebSocket pings do not (a client that only pings and
        // never reads must not outlive the pong timeout).
        if incoming.iter().any(|i| matches!(i, Incoming::Message(_))) {
            self.pong_deadline = None;
        }
        if !incoming.is_empty() {
            self.backlog
                .get_or_insert_with(Box::default)
                .messages
                .extend(incoming);
        }
        self.process_input().await
    }

    /// Answers backlogged input until it is all answered or the output is over the bound.
    async fn process_input(&mut self) -> Result<(), Close> {
        while !self.output_full() {
            let Some(backlog) = self.backlog.as_mut() else {
                return Ok(());
            };
            if let Some((id, method)) = backlog.commands.pop_front() {
                self.handle_command(id, method).await?;
                continue;
            }
            match backlog.messages.pop_front() {
                Some(Incoming::Message(payload)) => {
                    let max = self.node.config.client.max_commands_per_frame;
                    let commands = match decode_frame(&payload, max) {
                        Ok(commands) => commands,
                        Err(e) => {
                            tracing::debug!(error = %e, "bad client frame");
                            return Err(Disconnect::BAD_REQUEST.into());
                        }
                    };
                    backlog.commands.extend(commands);
                }
                Some(Incoming::Close(_)) => {
                    return Err(Close {
                        code: 1000,
                        reason: String::new(),
                        ending: Ending::Polite,
                        label: "connection closed",
                    })
                }
                None => self.backlog = None,
            }
        }
        if self.backlog.is_some() {
            // The rest waits, unread, until the client has taken its output.
            self.node.metrics.client_reads_paused.inc();
        }
        Ok(())
    }

    fn next_deadline(&self) -> Instant {
        let mut deadline = if self.handle.is_none() {
            self.connect_deadline
        } else {
            self.next_ping
        };
        let write_stall = self
            .ws
            .stalled_since()
            .map(|since| since + self.node.config.client.write_timeout);
        for candidate in [self.pong_deadline, self.expires_at, write_stall]
            .into_iter()
            .flatten()
        {
            deadline = deadline.min(candidate);
        }
        for sub in self.subs.values() {
            if let Some(at) = sub.expires_at {
                deadline = deadline.min(at);
            }
        }
        deadline
    }

    fn on_timer(&mut self) -> Result<(), Close> {
        let now = Instant::now();
        let write_timeout = self.node.config.client.write_timeout;
        if self
            .ws
            .stalled_since()
            .is_some_and(|since| now >= since + write_timeout)
        {
            return Err(Close::write_timeout());
        }
        // A client closed for silence that has not taken what it is owed either is not waited
        // for: it is gone by the timeout, not by the timeout plus a write timeout.
        let unresponsive = |disconnect: Disconnect, writing: bool| Close {
            ending: if writing {
                Ending::Abort
            } else {
                Ending::Brief
            },
            ..disconnect.into()
        };
        if self.handle.is_none() {
            if now >= self.connect_deadline {
                return Err(unresponsive(Disconnect::STALE, self.ws.is_writing()));
            }
            return Ok(());
        }
        if self.pong_deadline.is_some_and(|d| now >= d) {
            return Err(unresponsive(Disconnect::NO_PONG, self.ws.is_writing()));
        }
        if self.expires_at.is_some_and(|at| now >= at) {
            return Err(Disconnect::EXPIRED.into());
        }
        if now >= self.next_ping {
            self.queue(Bytes::from_static(PING));
            self.next_ping = now + self.node.config.client.ping_interval;
            self.pong_deadline = Some(now + self.node.config.client.pong_timeout);
        }
        Ok(())
    }

    /// Ends subscriptions whose token expired without a `sub_refresh`: the client gets an unsubscribe
    /// push with code 2501, on which SDKs fetch a new subscription token and resubscribe.
    async fn expire_subscriptions(&mut self) -> Result<(), Close> {
        let now = Instant::now();
        let expired: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, s)| s.expires_at.is_some_and(|at| now >= at))
            .map(|(c, _)| c.clone())
            .collect();
        for channel in expired {
            self.unsubscribe_channel(&channel).await;
            self.queue_unsubscribe(&channel, UnsubscribeCode::EXPIRED);
        }
        Ok(())
    }

    /// Tells the client the server ended its subscription to `channel`.
    fn queue_unsubscribe(&mut self, channel: &str, code: UnsubscribeCode) {
        let mut out = Vec::new();
        let body = PushBody::Unsubscribe {
            code: code.code,
            reason: code.reason,
        };
        encode_push(channel, &body, &mut out);
        self.queue(Bytes::from(out));
    }

    fn queue(&mut self, message: Bytes) {
        self.pending_bytes += message.len();
        self.pending.push(message);
    }

    /// Starts writing pending messages (merged with newlines into as few frames as possible) once
    /// the previous write is done, and hands the kernel what it takes without waiting.
    fn write_some(&mut self) -> Result<(), Close> {
        if !self.pending.is_empty() && !self.ws.is_writing() {
            let messages = std::mem::take(&mut self.pending);
            self.pending_bytes = 0;
            let (bytes, frames) = self.ws.queue_text(&messages, MAX_BATCH_BYTES);
            self.node.metrics.bytes_out.inc_by(bytes as u64);
            self.node.metrics.frames_out.inc_by(frames as u64);
        }
        match self.ws.try_write() {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "websocket write failed");
                Err(Close::gone("write error"))
            }
        }
    }

    async fn drain_outbox(&mut self) -> Result<(), Close> {
        let Some(handle) = self.handle.clone() else {
            return Ok(());
        };
        let mut items = std::mem::take(&mut self.drained);
        let drained = handle.outbox.drain(&mut items);
        if drained.overflowed {
            return Err(Disconnect::SLOW.into());
        }
        let mut result = Ok(());
        while let Some(item) = items.pop_front() {
            match item {
                OutItem::Publication {
                    slot,
                    offset,
                    bytes,
                    segments,
                    ..
                } => match self.slots.get(&slot) {
                    Some(&seen) if offset == 0 || offset > seen => match segments {
                        // A window item that straddles what the subscribe reply already carried:
                        // only the newer publications (zero-copy slices of the shared bytes).
                        Some(segments)
                            if segments
                                .first()
                                .is_some_and(|s| s.offset != 0 && s.offset <= seen) =>
                        {
                            for segment in segments.iter().filter(|s| s.offset > seen) {
                                self.queue(
                                    bytes.slice(segment.start as usize..segment.end as usize),
                                );
                            }
                        }
                        _ => self.queue(bytes),
                    },
                    _ => {}
                },
                OutItem::Push { slot, bytes } => {
                    if self.slots.contains_key(&slot) {
                        self.queue(bytes);
                    }
                }
                OutItem::Gap { slot } => {
                    let channel = self
                        .subs
                        .iter()
                        .find(|(_, s)| s.slot == slot)
                        .map(|(c, _)| c.clone());
                    if let Some(channel) = channel {
                        self.unsubscribe_channel(&channel).await;
                        self.queue_unsubscribe(&channel, UnsubscribeCode::INSUFFICIENT);
                    }
                }
                OutItem::Control(control) => {
                    if let Err(close) = self.handle_control(control).await {
                        result = Err(close);
                        break;
                    }
                }
            }
        }
        items.clear();
        self.drained = items;
        if result.is_ok() {
            // After what was still queued: the snapshot is newer than any of it.
            for slot in drained.resync {
                self.resync(slot).await;
            }
        }
        result
    }

    /// A conflated subscription lost superseded values to its full outbox: send the latest value of
    /// every key instead, so the client ends up with the current state.
    async fn resync(&mut self, slot: u32) {
        let Some(channel) = self
            .subs
            .iter()
            .find(|(_, s)| s.slot == slot)
            .map(|(c, _)| c.clone())
        else {
            return;
        };
        match self.node.broker.latest(&channel).await {
            Ok((latest, position)) => {
                // Window items queued before this snapshot are older than it: skip them.
                if let Some(seen) = self.slots.get_mut(&slot) {
                    *seen = (*seen).max(position.offset);
                }
                for publication in latest {
                    self.queue(herald_protocol::encode_publication_push(
                        &channel,
                        &publication,
                    ));
                }
            }
            Err(e) => {
                tracing::warn!(%channel, error = %e, "resync of a conflated subscription failed")
            }
        }
    }

    async fn handle_control(&mut self, control: Control) -> Result<(), Close> {
        match control {
            Control::Disconnect { code, reason, .. } => Err(Close {
                code,
                reason,
                ending: Ending::Polite,
                label: "server disconnect",
            }),
            Control::Subscribe { channel, .. } => {
                if self.subs.contains_key(&channel) {
                    return Ok(());
                }
                match self
                    .subscribe_channel(&channel, SubscribeParams::default(), true)
                    .await
                {
                    Ok(result) => {
                        let mut out = Vec::new();
                        encode_push(&channel, &PushBody::Subscribe(&result), &mut out);
                        self.queue(Bytes::from(out));
                    }
                    Err(code) => tracing::debug!(%channel, %code, "server-side subscribe refused"),
                }
                Ok(())
            }
            Control::Unsubscribe { channel, .. } => {
                if self.unsubscribe_channel(&channel).await {
                    self.queue_unsubscribe(&channel, UnsubscribeCode::SERVER);
                }
                Ok(())
            }
        }
    }

    async fn handle_command(&mut self, id: u32, method: Method) -> Result<(), Close> {
        let name = method.name();
        if matches!(method, Method::Pong) {
            return Ok(());
        }
        self.node.metrics.command(name);
        if self.handle.is_none() && !matches!(method, Method::Connect(_)) {
            return Err(Disconnect::BAD_REQUEST.into());
        }
        if !self.bucket.take(Instant::now()) {
            self.rate_rejections += 1;
            if self.rate_rejections >= MAX_RATE_REJECTIONS {
                return Err(Disconnect::TOO_MANY_REQUESTS.into());
            }
            self.reply_error(id, name, ErrorCode::TooManyRequests.into());
            return Ok(());
        }
        self.rate_rejections = 0;
        let body: Result<ReplyBody, ReplyError> = match method {
            Method::Pong => return Ok(()),
            Method::Connect(req) => self.connect(req).await?,
            Method::Subscribe(req) => self.subscribe(req).await?,
            Method::Unsubscribe(req) => self.unsubscribe(req).await.map_err(Into::into),
            Method::Publish(req) => self.publish(req).await?,
            Method::Presence(req) => self.presence(req).await.map_err(Into::into),
            Method::PresenceStats(req) => self.presence_stats(req).await.map_err(Into::into),
            Method::History(req) => self.history(req).await.map_err(Into::into),
            Method::Ping => Ok(ReplyBody::Ping),
            Method::Send(req) => {
                self.send(req);
                return Ok(());
            }
            Method::Rpc(req) => self.rpc(req).await?,
            Method::Refresh(req) => self.refresh(req)?.map_err(Into::into),
            Method::SubRefresh(req) => self.sub_refresh(req)?.map_err(Into::into),
            Method::Unknown => Err(ErrorCode::MethodNotFound.into()),
        };
        match body {
            Ok(body) => self.reply(id, &body),
            Err(code) => self.reply_error(id, name, code),
        }
        Ok(())
    }

    fn reply(&mut self, id: u32, body: &ReplyBody) {
        if id == 0 {
            return;
        }
        let mut out = Vec::new();
        encode_reply(id, body, &mut out);
        self.queue(Bytes::from(out));
    }

    fn reply_error(&mut self, id: u32, method: &'static str, error: ReplyError) {
        self.node
            .metrics
            .command_errors
            .get_or_create(&MethodLabel { method })
            .inc();
        self.reply(id, &ReplyBody::Error(error));
    }

    fn info(&self, chan_info: Option<Box<RawValue>>) -> ClientInfo {
        ClientInfo {
            user: self.user.clone(),
            client: self
                .handle
                .as_ref()
                .map(|h| h.client.clone())
                .unwrap_or_default(),
            conn_info: self.conn_info.clone(),
            chan_info,
        }
    }

    async fn connect(
        &mut self,
        req: ConnectRequest,
    ) -> Result<Result<ReplyBody, ReplyError>, Close> {
        if self.handle.is_some() {
            return Err(Disconnect::BAD_REQUEST.into());
        }
        let node = self.node.clone();
        let client_config = &node.config.client;
        let mut server_channels: Vec<(String, SubscribeParams)> = Vec::new();
        let mut expires_at = None;
        let mut connect_data = None;
        let client_id = uuid::Uuid::new_v4().to_string();
        let connect_proxy = node.hooks.proxy_for(Hook::Connect);
        if let (true, Some(proxy)) = (req.token.is_empty(), connect_proxy) {
            let identity = match self.connect_by_backend(&proxy, &req, &client_id).await? {
                Ok(identity) => identity,
                Err(error) => return Ok(Err(error)),
            };
            self.user = identity.user;
            self.conn_info = identity.info;
            self.meta = identity.meta;
            expires_at = identity.expire_at;
            connect_data = identity.data;
            for (channel, chan_info, data) in identity.channels {
                let params = SubscribeParams {
                    chan_info,
                    data,
                    ..Default::default()
                };
                server_channels.push((channel, params));
            }
        } else if req.token.is_empty() {
            if !client_config.allow_anonymous {
                return Err(Disconnect::INVALID_TOKEN.into());
            }
        } else {
            let claims = match node.verifier.verify_connect(&req.token) {
                Ok(claims) => claims,
                Err(TokenError::Expired) => return Ok(Err(ErrorCode::TokenExpired.into())),
                Err(e) => {
                    tracing::debug!(error = %e, "connection token refused");
                    return Err(Disconnect::INVALID_TOKEN.into());
                }
            };
            self.user = claims.sub.clone();
            self.conn_info = claims.info.clone().map(single_line);
            expires_at = claims.connection_expires_at();
            if claims.subs.is_empty() {
                for channel in &claims.channels {
                    server_channels.push((channel.clone(), SubscribeParams::default()));
                }
            } else {
                for (channel, options) in &claims.subs {
                    let params = SubscribeParams {
                        chan_info: options.info.clone().map(single_line),
                        data: options.data.clone().map(single_line),
                        ..Default::default()
                    };
                    server_channels.push((channel.clone(), params));
                }
            }
        }
        let now_secs = unix_secs();
        let ttl = match expires_at {
            Some(at) if at <= now_secs => return Ok(Err(ErrorCode::TokenExpired.into())),
            Some(at) => Some((at - now_secs) as u64),
            None => None,
        };
        self.expires_at = ttl.map(|secs| Instant::now() + Duration::from_secs(secs));
        if !self.user.is_empty() {
            server_channels.insert(
                0,
                (personal_channel(&self.user), SubscribeParams::default()),
            );
        }
        let per_user = client_config.connections_per_user;
        if per_user > 0
            && !self.user.is_empty()
            && node.hub.user_connection_count(&self.user) >= per_user
        {
            return Err(Disconnect::CONNECTION_LIMIT.into());
        }
        let handle = Arc::new(SessionHandle {
            seq: node.next_seq(),
            client: client_id,
            user: self.user.clone(),
            outbox: Outbox::new(
                client_config.max_outbox_bytes,
                client_config.max_outbox_messages,
                node.metrics.outbox_bytes.clone(),
                client_config.outbox_budget,
            ),
        });
        node.hub.add_session(handle.clone());
        self.handle = Some(handle.clone());
        self.next_ping = Instant::now() + client_config.ping_interval;

        let mut subs = BTreeMap::new();
        for (channel, mut params) in server_channels {
            // A reconnecting SDK sends the positions of its server-side subscriptions.
            if let Some(previous) = req.subs.get(&channel) {
                params.recover = previous.recover;
                params.recoverable = previous.recover;
                params.offset = previous.offset;
                params.epoch = previous.epoch.clone();
            }
            match self.subscribe_channel(&channel, params, true).await {
                Ok(result) => {
                    subs.insert(channel, result);
                }
                // The broker is unreachable: a connection without its server-side channels
                // would miss their publications silently, so it is told to come back later
                // (SDKs reconnect after 3010, possibly to another node).
                Err(ErrorCode::Internal) if !node.broker.is_ready() => {
                    return Err(Disconnect::INSUFFICIENT_STATE.into());
                }
                Err(code) => {
                    tracing::warn!(%channel, %code, user = %self.user, "server-side subscription refused")
                }
            }
        }
        Ok(Ok(ReplyBody::Connect(ConnectResult {
            client: handle.client.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            expires: ttl.is_some(),
            ttl: ttl.unwrap_or(0).min(u64::from(u32::MAX)) as u32,
            data: connect_data,
            subs,
            ping: node.config.client.ping_interval.as_secs().max(1) as u32,
            pong: true,
            node: node.name.clone(),
            time: 0,
        })))
    }

    /// Client-side permission for publish, presence and history: open to every client, or to
    /// subscribers of the channel; anonymous clients need the namespace's `_for_anonymous` as well.
    /// Private (`$`) channels are open to their subscribers only.
    fn may(
        &self,
        for_anonymous: bool,
        for_client: bool,
        for_subscriber: bool,
        channel: &str,
    ) -> bool {
        let subscribed = self.subs.contains_key(channel);
        if self.user.is_empty() && !for_anonymous {
            return false;
        }
        if is_private(channel) {
            return subscribed && (for_client || for_subscriber);
        }
        for_client || (for_subscriber && subscribed)
    }

    fn may_subscribe(&self, ns: &NamespaceOptions, channel: &str) -> bool {
        crate::core::channel::may_subscribe_without_token(ns, channel, &self.user)
    }

    async fn subscribe(
        &mut self,
        req: SubscribeRequest,
    ) -> Result<Result<ReplyBody, ReplyError>, Close> {
        let ns = match self.node.namespaces.resolve(&req.channel) {
            Ok(ns) => ns.clone(),
            Err(code) => return Ok(Err(code.into())),
        };
        let mut params = SubscribeParams::from(&req);
        if !req.token.is_empty() {
            let claims = match self.node.verifier.verify_subscribe(&req.token) {
                Ok(claims) => claims,
                Err(TokenError::Expired) => return Ok(Err(ErrorCode::TokenExpired.into())),
                Err(e) => {
                    tracing::debug!(error = %e, "subscription token refused");
                    return Err(Disconnect::INVALID_TOKEN.into());
                }
            };
            if claims.channel != req.channel || claims.sub != self.user {
                return Err(Disconnect::INVALID_TOKEN.into());
            }
            if let Some(at) = claims.subscription_expires_at() {
                if at <= unix_secs() {
                    return Ok(Err(ErrorCode::TokenExpired.into()));
                }
                params.expires_at = Some(at);
            }
            params.chan_info = claims.info.map(single_line);
            params.data = claims.data.map(single_line);
        } else if let Some(proxy) = self.node.hooks.proxy.clone().filter(|_| ns.proxy_subscribe) {
            if let Err(error) = self.subscribe_by_backend(&proxy, &req, &mut params).await? {
                return Ok(Err(error));
            }
        } else if !self.may_subscribe(&ns, &req.channel) {
            return Ok(Err(ErrorCode::PermissionDenied.into()));
        }
        Ok(self
            .subscribe_channel(&req.channel, params, false)
            .await
            .map(ReplyBody::Subscribe)
            .map_err(Into::into))
    }

    /// Subscribes this connection; shared by client, token and server-side subscriptions.
    async fn subscribe_channel(
        &mut self,
        channel: &str,
        params: SubscribeParams,
        server_side: bool,
    ) -> Result<SubscribeResult, ErrorCode> {
        let node = self.node.clone();
        let ns = node.namespaces.resolve(channel)?.clone();
        let Some(handle) = self.handle.clone() else {
            return Err(ErrorCode::Internal);
        };
        if self.subs.contains_key(channel) {
            return Err(ErrorCode::AlreadySubscribed);
        }
        if self.subs.len() >= node.config.client.max_channels {
            return Err(ErrorCode::LimitExceeded);
        }
        let slot = self.next_slot;
        self.next_slot = self.next_slot.wrapping_add(1);
        self.slots.insert(slot, 0);
        let join_leave =
            ns.join_leave && (ns.force_push_join_leave || params.join_leave || server_side);
        // Register before reading history: whatever is published meanwhile arrives through the outbox,
        // and what the reply already carries is skipped there by offset.
        let first = node.hub.add_subscriber(channel, &handle, slot, join_leave);
        // Listening to the channel (across nodes) must hold before the history read below.
        if let Err(e) = node.broker.subscribe(channel).await {
            // Not yet announced as occupied, so no vacated event either.
            self.rollback_subscribe(channel, slot).await;
            return Err(broker_error(e));
        }
        if first {
            node.hooks.channel_occupied(channel);
        }
        let mut result = SubscribeResult {
            data: params.data,
            ..Default::default()
        };
        if let Some(history) = node.history_options(&ns) {
            let recoverable = ns.force_recovery || params.recoverable;
            let positioned = recoverable || params.positioned || ns.conflated();
            if positioned {
                let since =
                    (params.recover && recoverable).then(|| herald_protocol::StreamPosition {
                        offset: params.offset,
                        epoch: params.epoch.clone(),
                    });
                let read = if ns.conflated() {
                    self.conflated_start(channel, &ns, since.clone(), history)
                        .await
                } else {
                    self.history_start(channel, since.clone(), history).await
                };
                let (publications, position, recovered) = match read {
                    Ok(read) => read,
                    Err(e) => {
                        self.rollback_subscribe(channel, slot).await;
                        return Err(broker_error(e));
                    }
                };
                self.slots.insert(slot, position.offset);
                result.recovered = recovered;
                result.was_recovering = since.is_some();
                result.recoverable = recoverable;
                result.positioned = positioned;
                result.offset = position.offset;
                result.epoch = position.epoch;
                result.publications = publications;
            }
        }
        let info = self.info(params.chan_info);
        if ns.presence {
            if let Err(e) = node.presence.add(channel, info.clone()).await {
                self.rollback_subscribe(channel, slot).await;
                return Err(broker_error(e));
            }
        }
        if ns.join_leave {
            if let Err(e) = node.broker.publish_join(channel, &info).await {
                tracing::warn!(%channel, error = %e, "join event not published");
            }
        }
        if ns.presence || ns.join_leave {
            node.hooks.join(channel, &info);
        }
        let expires_at = params
            .expires_at
            .map(|at| Instant::now() + Duration::from_secs((at - unix_secs()).max(0) as u64));
        if let Some(at) = params.expires_at {
            result.expires = true;
            result.ttl = (at - unix_secs()).clamp(0, i64::from(u32::MAX)) as u32;
        }
        self.subs.insert(
            channel.to_string(),
            Subscription {
                slot,
                ns,
                info,
                expires_at,
            },
        );
        Ok(result)
    }

    /// Where a subscriber of a plain channel starts: the publications after `since` (recovery) or
    /// just the stream position. Returns (publications, position, recovered).
    async fn history_start(
        &self,
        channel: &str,
        since: Option<herald_protocol::StreamPosition>,
        history: crate::core::history::HistoryOptions,
    ) -> Result<StartPoint, crate::brokers::BrokerError> {
        let broker = &self.node.broker;
        let recovering = since.is_some();
        let query = HistoryQuery {
            limit: if recovering { None } else { Some(0) },
            since,
            reverse: false,
        };
        match broker.history(channel, &query, history).await {
            Ok(page) => Ok((page.publications, page.position, recovering)),
            Err(crate::brokers::BrokerError::Unrecoverable) => {
                let query = HistoryQuery {
                    limit: Some(0),
                    ..Default::default()
                };
                let page = broker.history(channel, &query, history).await?;
                Ok((Vec::new(), page.position, false))
            }
            Err(e) => Err(e),
        }
    }

    /// Where a subscriber of a conflated channel starts: the latest value of every key — on a fresh
    /// subscribe, and on recovery when history no longer covers the gap — or, when it does, only the
    /// latest value of each key changed since `since`. Superseded values are never replayed, and the
    /// state the client ends with is complete either way (so `recovered` is true when recovering
    /// within the same epoch).
    async fn conflated_start(
        &self,
        channel: &str,
        ns: &NamespaceOptions,
        since: Option<herald_protocol::StreamPosition>,
        history: crate::core::history::HistoryOptions,
    ) -> Result<StartPoint, crate::brokers::BrokerError> {
        let broker = &self.node.broker;
        let recovering = since.is_some();
        let since_epoch = since.as_ref().map(|s| s.epoch.clone());
        if recovering {
            let query = HistoryQuery {
                since,
                limit: None,
                reverse: false,
            };
            match broker.history(channel, &query, history).await {
                Ok(page) => {
                    let mut latest: indexmap::IndexMap<String, Arc<herald_protocol::Publication>> =
                        indexmap::IndexMap::new();
                    let mut unkeyed = Vec::new();
                    for publication in page.publications {
                        match crate::node::conflation_key(ns, &publication) {
                            Some(key) => {
                                latest.shift_remove(&key);
                                latest.insert(key, publication);
                            }
                            None => unkeyed.push(publication),
                        }
                    }
                    let mut publications: Vec<_> = latest.into_values().chain(unkeyed).collect();
                    publications.sort_by_key(|p| p.offset);
                    return Ok((publications, page.position, true));
                }
                Err(crate::brokers::BrokerError::Unrecoverable) => {}
                Err(e) => return Err(e),
            }
        }
        let (latest, position) = broker.latest(channel).await?;
        // The snapshot is a complete state of this stream; across an epoch change (history removed,
        // streams restarted) the client's state may hold keys the stream no longer knows.
        let same_stream = since_epoch.is_some_and(|epoch| epoch == position.epoch);
        Ok((latest, position, recovering && same_stream))
    }

    async fn rollback_subscribe(&mut self, channel: &str, slot: u32) {
        self.slots.remove(&slot);
        if let Some(handle) = &self.handle {
            if self.node.hub.remove_subscriber(channel, handle.seq) {
                self.node.broker.unsubscribe(channel).await;
            }
        }
    }

    /// Removes a subscription; returns false when there was none.
    async fn unsubscribe_channel(&mut self, channel: &str) -> bool {
        let Some(sub) = self.subs.remove(channel) else {
            return false;
        };
        self.slots.remove(&sub.slot);
        let node = self.node.clone();
        if let Some(handle) = &self.handle {
            if node.hub.remove_subscriber(channel, handle.seq) {
                node.hooks.channel_vacated(channel);
                node.broker.unsubscribe(channel).await;
            }
        }
        if sub.ns.presence || sub.ns.join_leave {
            node.hooks.leave(channel, &sub.info);
        }
        if sub.ns.presence {
            if let Err(e) = node.presence.remove(channel, &sub.info.client).await {
                tracing::warn!(%channel, error = %e, "presence not removed");
            }
        }
        if sub.ns.join_leave {
            if let Err(e) = node.broker.publish_leave(channel, &sub.info).await {
                tracing::warn!(%channel, error = %e, "leave event not published");
            }
        }
        true
    }

    async fn unsubscribe(&mut self, req: ChannelRequest) -> Result<ReplyBody, ErrorCode> {
        // Unsubscribing from a channel one is not subscribed to is not an error (idempotent, as in Centrifugo).
        self.unsubscribe_channel(&req.channel).await;
        Ok(ReplyBody::Unsubscribe)
    }

    async fn publish(
        &mut self,
        req: PublishRequest,
    ) -> Result<Result<ReplyBody, ReplyError>, Close> {
        let ns = match self.node.namespaces.resolve(&req.channel) {
            Ok(ns) => ns.clone(),
            Err(code) => return Ok(Err(code.into())),
        };
        let Some(mut data) = req.data else {
            return Ok(Err(ErrorCode::BadRequest.into()));
        };
        let mut skip_history = false;
        if let Some(proxy) = self.node.hooks.proxy.clone().filter(|_| ns.proxy_publish) {
            // The backend decides instead of the namespace's allow_publish_* rules.
            match self
                .publish_by_backend(&proxy, &req.channel, &mut data)
                .await?
            {
                Ok(skip) => skip_history = skip,
                Err(error) => return Ok(Err(error)),
            }
        } else if !self.may(
            ns.allow_publish_for_anonymous,
            ns.allow_publish_for_client,
            ns.allow_publish_for_subscriber,
            &req.channel,
        ) {
            return Ok(Err(ErrorCode::PermissionDenied.into()));
        }
        let chan_info = self
            .subs
            .get(&req.channel)
            .and_then(|s| s.info.chan_info.clone());
        let info = self.info(chan_info);
        let published = self
            .node
            .publish_with(
                &req.channel,
                data,
                Some(info),
                BTreeMap::new(),
                "client",
                skip_history,
            )
            .await;
        Ok(published.map(|_| ReplyBody::Publish).map_err(Into::into))
    }

    fn check_presence(&self, channel: &str) -> Result<(), ErrorCode> {
        let ns = self.node.namespaces.resolve(channel)?;
        if !ns.presence {
            return Err(ErrorCode::NotAvailable);
        }
        if !self.may(
            ns.allow_presence_for_anonymous,
            ns.allow_presence_for_client,
            ns.allow_presence_for_subscriber,
            channel,
        ) {
            return Err(ErrorCode::PermissionDenied);
        }
        Ok(())
    }

    async fn presence(&mut self, req: ChannelRequest) -> Result<ReplyBody, ErrorCode> {
        self.check_presence(&req.channel)?;
        let presence = self
            .node
            .presence
            .get(&req.channel)
            .await
            .map_err(broker_error)?;
        Ok(ReplyBody::Presence(PresenceResult { presence }))
    }

    async fn presence_stats(&mut self, req: ChannelRequest) -> Result<ReplyBody, ErrorCode> {
        self.check_presence(&req.channel)?;
        let (num_clients, num_users) = self
            .node
            .presence
            .stats(&req.channel)
            .await
            .map_err(broker_error)?;
        Ok(ReplyBody::PresenceStats(PresenceStatsResult {
            num_clients,
            num_users,
        }))
    }

    async fn history(&mut self, req: HistoryRequest) -> Result<ReplyBody, ErrorCode> {
        let ns = self.node.namespaces.resolve(&req.channel)?.clone();
        let Some(options) = self.node.history_options(&ns) else {
            return Err(ErrorCode::NotAvailable);
        };
        if !self.may(
            ns.allow_history_for_anonymous,
            ns.allow_history_for_client,
            ns.allow_history_for_subscriber,
            &req.channel,
        ) {
            return Err(ErrorCode::PermissionDenied);
        }
        let limit = client_history_limit(req.limit, ns.client_history_max_limit);
        if limit != history_limit(req.limit) {
            self.node.metrics.client_history_capped.inc();
        }
        let query = HistoryQuery {
            since: req.since,
            limit,
            reverse: req.reverse,
        };
        let page = self
            .node
            .broker
            .history(&req.channel, &query, options)
            .await
            .map_err(broker_error)?;
        Ok(ReplyBody::History(HistoryResult {
            publications: page.publications,
            epoch: page.position.epoch,
            offset: page.position.offset,
        }))
    }

    fn refresh(&mut self, req: RefreshRequest) -> Result<Result<ReplyBody, ErrorCode>, Close> {
        let claims = match self.node.verifier.verify_connect(&req.token) {
            Ok(claims) => claims,
            Err(TokenError::Expired) => return Err(Disconnect::EXPIRED.into()),
            Err(_) => return Err(Disconnect::INVALID_TOKEN.into()),
        };
        if claims.sub != self.user {
            return Err(Disconnect::INVALID_TOKEN.into());
        }
        let now = unix_secs();
        let ttl = claims
            .connection_expires_at()
            .map(|at| (at - now).max(0) as u64);
        self.expires_at = ttl.map(|secs| Instant::now() + Duration::from_secs(secs));
        Ok(Ok(ReplyBody::Refresh(RefreshResult {
            client: self
                .handle
                .as_ref()
                .map(|h| h.client.clone())
                .unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            expires: ttl.is_some(),
            ttl: ttl.unwrap_or(0).min(u64::from(u32::MAX)) as u32,
        })))
    }

    fn sub_refresh(
        &mut self,
        req: SubRefreshRequest,
    ) -> Result<Result<ReplyBody, ErrorCode>, Close> {
        if !self.subs.contains_key(&req.channel) {
            return Ok(Err(ErrorCode::PermissionDenied));
        }
        let claims = match self.node.verifier.verify_subscribe(&req.token) {
            Ok(claims) => claims,
            Err(TokenError::Expired) => return Err(Disconnect::SUB_EXPIRED.into()),
            Err(_) => return Err(Disconnect::INVALID_TOKEN.into()),
        };
        if claims.channel != req.channel || claims.sub != self.user {
            return Err(Disconnect::INVALID_TOKEN.into());
        }
        let now = unix_secs();
        let ttl = claims
            .subscription_expires_at()
            .map(|at| (at - now).max(0) as u64);
        if let Some(sub) = self.subs.get_mut(&req.channel) {
            sub.expires_at = ttl.map(|secs| Instant::now() + Duration::from_secs(secs));
        }
        Ok(Ok(ReplyBody::SubRefresh(SubRefreshResult {
            expires: ttl.is_some(),
            ttl: ttl.unwrap_or(0).min(u64::from(u32::MAX)) as u32,
        })))
    }

    async fn cleanup(&mut self) {
        let Some(handle) = self.handle.clone() else {
            return;
        };
        handle.outbox.close();
        let channels: Vec<String> = self.subs.keys().cloned().collect();
        for channel in channels {
            self.unsubscribe_channel(&channel).await;
        }
        self.node.hub.remove_session(&handle);
    }
}

enum Wake {
    Outbox,
    Writable,
    Readable,
    Timer,
}

async fn wait_slowed(handle: Option<&SessionHandle>) {
    match handle {
        Some(handle) => handle.outbox.slowed().await,
        None => std::future::pending().await,
    }
}

async fn wait_outbox(outbox: Option<&Outbox>) {
    match outbox {
        Some(outbox) => outbox.wait().await,
        None => std::future::pending().await,
    }
}
