//! The NATS broker: nodes sharing one NATS server or cluster (and one `broker.prefix`) are one
//! system.
//!
//! - Delivery: core NATS, one subject per channel (`<prefix>.ch.<base64url(channel)>`, so any
//!   channel name is one valid subject token), subscribed while the node has local subscribers of
//!   the channel, plus `<prefix>.control` for API commands that target users. Frames are
//!   [`wire`]'s, serialized once by the publishing node.
//! - History: one JetStream stream per prefix ([`nats_history`]): a publication on a channel with
//!   history is appended under the next offset (optimistic concurrency on the subject's last
//!   sequence), then its frame goes out on the core subject. Core frames of two publishers may
//!   cross, so each node puts them back in offset order per channel, waiting
//!   [`REORDER_WINDOW`] for a missing offset before telling the channel's subscribers of a gap
//!   (they recover from the stream). Conflation is refused by configuration.
//! - Presence and the node registry: JetStream KV buckets whose `max_age` is the entry TTL; the
//!   owning node rewrites its entries well within it, so a dead node's entries expire.
//! - Faults: async-nats reconnects (with our backoff) and resubscribes by itself. A probe (a
//!   message to ourselves through the server) runs every half second: readiness is "connected and
//!   the probe came back". When the node was ready and stops being so, publications may have been
//!   lost on the way; once ready again every local channel's subscribers are told
//!   ([`BrokerHandler::handle_gap`]).

mod history;
mod kv;
pub mod leases;

use crate::brokers::wire::{self, Message};
use crate::brokers::{
    unavailable, Broker, BrokerError, BrokerHandler, Control, NodeEntry, PresenceStore,
};
use crate::config::BrokerConfig;
use crate::core::history::{HistoryOptions, HistoryPage, HistoryQuery};
use crate::core::metrics::Metrics;
use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use herald_protocol::{ClientInfo, Publication, StreamPosition};
use history::{HistoryStore, Order, Verdict};
/// The lease store (`crate::brokers::nats::leases`) keeps its bucket the way the broker keeps its own.
pub(crate) use kv::open_bucket;
use kv::Buckets;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The history stream's name for a broker prefix (tests delete it), and the headers of a stored
/// publication (tests store one the way a publisher that crashed before its core publish would).
pub use history::{
    stream_name as history_stream_name, EPOCH_HEADER as HISTORY_EPOCH_HEADER,
    OFFSET_HEADER as HISTORY_OFFSET_HEADER,
};

/// How long a node holds a publication whose predecessors have not arrived (another publisher's
/// core frame may still be on its way) before reporting a gap.
pub const REORDER_WINDOW: Duration = Duration::from_millis(150);

/// Subject names. Channel names may hold `.`, `*`, `>`, spaces…: base64url makes each one a single
/// token of subject-safe characters.
pub(super) struct Subjects {
    prefix: String,
}

pub(super) fn encode_token(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s.as_bytes())
}

/// The core subject a channel's frames travel on, for a broker prefix.
pub fn delivery_subject(prefix: &str, channel: &str) -> String {
    format!("{prefix}.ch.{}", encode_token(channel))
}

/// The JetStream subject a channel's history is stored under, for a broker prefix.
pub fn history_subject(prefix: &str, channel: &str) -> String {
    format!("{prefix}.h.{}", encode_token(channel))
}

impl Subjects {
    fn channel(&self, channel: &str) -> String {
        delivery_subject(&self.prefix, channel)
    }
    fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }
    fn probe(&self, uid: &str) -> String {
        format!("{}.probe.{uid}", self.prefix)
    }
}

struct Inner {
    config: BrokerConfig,
    subjects: Subjects,
    /// Names this node's probe subject (a node restarted in the same process gets a new one).
    uid: String,
    client: OnceLock<async_nats::Client>,
    /// JetStream on `client` (history).
    js: OnceLock<async_nats::jetstream::Context>,
    history: HistoryStore,
    /// Per channel with local subscribers: offset order of delivered publications.
    orders: Mutex<HashMap<String, Order>>,
    /// The KV buckets, once found or created (JetStream on).
    buckets: Mutex<Option<Buckets>>,
    /// Channel → the task reading its subscription (aborting it unsubscribes).
    channels: Mutex<HashMap<String, JoinHandle<()>>>,
    /// Serializes subscribe/unsubscribe so an unsubscribe never overtakes a later subscribe.
    subscribe_ops: tokio::sync::Mutex<()>,
    /// Set by connection events: the TCP connection is up.
    connected: AtomicBool,
    ready: AtomicBool,
    /// Publications may have been lost since the node was last ready (outage, slow consumer).
    gap: AtomicBool,
    /// Wakes the supervisor on a connection event.
    wake: tokio::sync::Notify,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    metrics: OnceLock<Arc<Metrics>>,
    /// This node's presence entries (channel → client → info JSON), rewritten while it lives.
    local_presence: Mutex<HashMap<String, HashMap<String, Bytes>>>,
    /// This node's last registry entry, removed on close (and all `info` shows without JetStream).
    entry: Mutex<Option<NodeEntry>>,
    stop: CancellationToken,
    /// Set by [`NatsBroker::abandon`]: behave like a crashed process (no cleanup, no commands).
    dead: AtomicBool,
}

/// See the module documentation. Cloning shares the broker.
#[derive(Clone)]
pub struct NatsBroker {
    inner: Arc<Inner>,
}

impl NatsBroker {
    pub fn new(config: &BrokerConfig) -> Result<NatsBroker, BrokerError> {
        for url in &config.nats_urls {
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| unavailable(format!("broker.nats_urls: {url:?}: {e}")))?;
        }
        Ok(NatsBroker {
            inner: Arc::new(Inner {
                subjects: Subjects {
                    prefix: config.prefix.clone(),
                },
                uid: uuid::Uuid::new_v4().simple().to_string(),
                client: OnceLock::new(),
                js: OnceLock::new(),
                history: HistoryStore::new(&config.prefix, config.command_timeout),
                orders: Mutex::new(HashMap::new()),
                buckets: Mutex::new(None),
                channels: Mutex::new(HashMap::new()),
                subscribe_ops: tokio::sync::Mutex::new(()),
                connected: AtomicBool::new(false),
                ready: AtomicBool::new(false),
                gap: AtomicBool::new(false),
                wake: tokio::sync::Notify::new(),
                handler: OnceLock::new(),
                metrics: OnceLock::new(),
                local_presence: Mutex::new(HashMap::new()),
                entry: Mutex::new(None),
                stop: CancellationToken::new(),
                dead: AtomicBool::new(false),
                config: config.clone(),
            }),
        })
    }

    /// Connects in the background and starts the supervisor. Call after the handler is set.
    pub fn start(&self) {
        tokio::spawn(supervise(self.inner.clone()));
    }

    /// Test hook: stop like a killed process — subscriptions and connection dropped, nothing
    /// cleaned up, every later operation fails. What the node left in NATS must expire by itself.
    pub fn abandon(&self) {
        let inner = &self.inner;
        inner.dead.store(true, Ordering::SeqCst);
        inner.ready.store(false, Ordering::SeqCst);
        inner.stop.cancel();
        for (_, task) in inner.channels.lock().drain() {
            task.abort();
        }
        if let Some(client) = inner.client.get().cloned() {
            tokio::spawn(async move {
                let _ = client.drain().await;
            });
        }
    }
}

impl Inner {
    fn client(&self) -> Result<&async_nats::Client, BrokerError> {
        if self.dead.load(Ordering::Relaxed) {
            return Err(unavailable("node stopped"));
        }
        self.client
            .get()
            .ok_or_else(|| unavailable("not connected to NATS"))
    }

    fn ready_client(&self) -> Result<&async_nats::Client, BrokerError> {
        let client = self.client()?;
        if !self.ready.load(Ordering::SeqCst) {
            return Err(unavailable("not connected to NATS"));
        }
        Ok(client)
    }

    fn buckets(&self) -> Result<Buckets, BrokerError> {
        if self.dead.load(Ordering::Relaxed) {
            return Err(unavailable("node stopped"));
        }
        self.buckets
            .lock()
            .clone()
            .ok_or_else(|| unavailable("NATS JetStream buckets not available"))
    }

    /// Publishes with the command timeout (async-nats queues while disconnected; a node must not
    /// report success for a message that sits in a queue of a dead connection, hence the ready
    /// check before).
    async fn publish(&self, subject: String, payload: Bytes) -> Result<(), BrokerError> {
        let client = self.ready_client()?;
        match tokio::time::timeout(
            self.config.command_timeout,
            client.publish(subject, payload),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable("NATS publish timed out")),
        }
    }

    /// One round trip through the server on this connection: the server handles a connection's
    /// commands in order, so whatever was sent before (a SUB) is in effect when this returns.
    async fn barrier(&self, client: &async_nats::Client) -> Result<(), BrokerError> {
        let inbox = client.new_inbox();
        let round_trip = async {
            let mut sub = client.subscribe(inbox.clone()).await.map_err(unavailable)?;
            client
                .publish(inbox, Bytes::new())
                .await
                .map_err(unavailable)?;
            client.flush().await.map_err(unavailable)?;
            sub.next()
                .await
                .map(|_| ())
                .ok_or_else(|| unavailable("probe subscription closed"))
        };
        tokio::time::timeout(self.config.command_timeout, round_trip)
            .await
            .map_err(|_| unavailable("NATS round trip timed out"))?
    }

    fn on_message(&self, channel: &str, payload: &[u8]) {
        let Some(handler) = self.handler.get() else {
            return;
        };
        if !handler.has_subscribers(channel) {
            return;
        }
        match wire::decode(payload) {
            Ok(Message::Publication {
                offset,
                epoch,
                key,
                publication,
            }) if offset > 0 => {
                self.deliver_in_order(handler, channel, &epoch, offset, publication, key)
            }
            Ok(Message::Publication {
                key, publication, ..
            }) => handler.handle_publication(channel, Arc::new(publication), key.as_deref()),
            Ok(Message::Join(info)) => handler.handle_join(channel, &info),
            Ok(Message::Leave(info)) => handler.handle_leave(channel, &info),
            Err(e) => tracing::warn!(%channel, error = %e, "nats broker: malformed message"),
        }
    }

    /// A publication with history: delivered once, in offset order (see [`Order`]).
    fn deliver_in_order(
        &self,
        handler: &Arc<dyn BrokerHandler>,
        channel: &str,
        epoch: &str,
        offset: u64,
        publication: Publication,
        key: Option<String>,
    ) {
        let held = history::Held { publication, key };
        let verdict = self
            .orders
            .lock()
            .entry(channel.to_string())
            .or_default()
            .accept(epoch, offset, held, Instant::now());
        // Only this channel's reader task delivers, so releasing the lock keeps the order.
        let ready = match verdict {
            Verdict::Deliver(ready) => ready,
            Verdict::Wait => {
                tracing::trace!(%channel, offset, "nats broker: publication held or duplicate");
                return;
            }
            Verdict::NewEpoch => {
                tracing::info!(%channel, %epoch, "nats broker: stream restarted, telling subscribers");
                self.gap_reported(handler, channel);
                return;
            }
        };
        for held in ready {
            handler.handle_publication(channel, Arc::new(held.publication), held.key.as_deref());
        }
    }

    /// When the channel's oldest hole stops being waited for.
    fn hole_deadline(&self, channel: &str) -> Option<Instant> {
        self.orders
            .lock()
            .get(channel)
            .and_then(|o| o.deadline(REORDER_WINDOW))
    }

    /// Reports a gap if the channel's hole outlived the window.
    fn check_hole(&self, channel: &str) {
        let expired = self
            .orders
            .lock()
            .get_mut(channel)
            .is_some_and(|o| o.expired(REORDER_WINDOW, Instant::now()));
        if expired {
            tracing::info!(%channel, "nats broker: publication missing, telling subscribers");
            if let Some(handler) = self.handler.get() {
                self.gap_reported(handler, channel);
            }
        }
    }

    /// Tells the channel's subscribers they may have missed publications (they resubscribe and
    /// recover from history).
    fn gap_reported(&self, handler: &Arc<dyn BrokerHandler>, channel: &str) {
        if let Some(metrics) = self.metrics.get() {
            metrics.broker_gaps.inc();
        }
        handler.handle_gap(channel);
    }

    /// A history read's position: subscribers hold it, so a later frame after it is in sequence.
    fn note_read(&self, channel: &str, position: &StreamPosition) {
        if !self.channels.lock().contains_key(channel) {
            return;
        }
        self.orders
            .lock()
            .entry(channel.to_string())
            .or_default()
            .note_read(position);
    }

    fn jetstream(&self) -> Result<async_nats::jetstream::Context, BrokerError> {
        let client = self.ready_client()?;
        if !self.config.nats_jetstream {
            return Err(unavailable(
                "history on NATS needs broker.nats_jetstream = true",
            ));
        }
        Ok(self
            .js
            .get_or_init(|| async_nats::jetstream::new(client.clone()))
            .clone())
    }

    fn on_control(&self, payload: &[u8]) {
        let Some(handler) = self.handler.get() else {
            return;
        };
        match serde_json::from_slice::<Control>(payload) {
            Ok(control) => handler.handle_control(&control),
            Err(e) => tracing::warn!(error = %e, "nats broker: malformed control message"),
        }
    }

    /// Called when the node is ready again after publications may have been lost: every local
    /// channel's subscribers resubscribe (and recover where they can).
    fn report_gaps(&self) {
        let channels: Vec<String> = self.channels.lock().keys().cloned().collect();
        let Some(handler) = self.handler.get() else {
            return;
        };
        for channel in channels {
            // Subscribers resubscribe from their own positions: what the node delivered is moot.
            self.orders.lock().remove(&channel);
            tracing::info!(%channel, "nats broker: possible gap, telling subscribers");
            if let Some(metrics) = self.metrics.get() {
                metrics.broker_gaps.inc();
            }
            handler.handle_gap(&channel);
        }
    }

    fn set_ready(&self, ready: bool) {
        let was = self.ready.swap(ready, Ordering::SeqCst);
        if was && !ready {
            // Whatever was published from now until the next ready moment may not reach us.
            self.gap.store(true, Ordering::SeqCst);
            tracing::warn!("nats broker: not ready");
        }
        if let Some(metrics) = self.metrics.get() {
            metrics.broker_ready.set(i64::from(ready));
        }
    }

    async fn refresh_presence(&self) -> Result<(), BrokerError> {
        let Ok(buckets) = self.buckets() else {
            return Ok(());
        };
        let entries: Vec<(String, Bytes)> = {
            let local = self.local_presence.lock();
            local
                .iter()
                .flat_map(|(channel, clients)| {
                    clients.iter().map(move |(client, info)| {
                        (kv::presence_key(channel, client), info.clone())
                    })
                })
                .collect()
        };
        for (key, value) in entries {
            buckets
                .put(&buckets.presence, &key, value, self.config.command_timeout)
                .await?;
        }
        Ok(())
    }
}

/// Backoff of async-nats's reconnection attempts: 50 ms doubling up to `max`, with jitter so
/// nodes do not reconnect in lockstep.
fn backoff(attempts: usize, max: Duration) -> Duration {
    let base = Duration::from_millis(50).saturating_mul(1u32 << attempts.min(16));
    base.min(max) + Duration::from_millis(rand::random::<u64>() % 50)
}

async fn connect(inner: &Arc<Inner>) -> Result<async_nats::Client, String> {
    let weak: Weak<Inner> = Arc::downgrade(inner);
    let max_delay = inner.config.max_reconnect_delay;
    let urls: Vec<async_nats::ServerAddr> = inner
        .config
        .nats_urls
        .iter()
        .filter_map(|u| u.parse().ok())
        .collect();
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(inner.config.connect_timeout)
        .request_timeout(Some(inner.config.command_timeout))
        // A stalled server is found by our probe; async-nats's own pings then replace the dead
        // connection.
        .ping_interval(inner.config.command_timeout.max(Duration::from_millis(500)))
        .reconnect_delay_callback(move |attempts| backoff(attempts, max_delay))
        .event_callback(move |event| {
            let weak = weak.clone();
            async move {
                let Some(inner) = weak.upgrade() else { return };
                match event {
                    async_nats::Event::Connected => inner.connected.store(true, Ordering::SeqCst),
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        inner.connected.store(false, Ordering::SeqCst);
                        inner.set_ready(false);
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        // The subscription's bounded queue overflowed: messages were dropped.
                        tracing::warn!(sid, "nats broker: slow consumer, messages dropped");
                        if let Some(metrics) = inner.metrics.get() {
                            metrics.broker_dropped.inc();
                        }
                        inner.gap.store(true, Ordering::SeqCst);
                    }
                    other => tracing::info!(event = %other, "nats broker: event"),
                }
                inner.wake.notify_one();
            }
        })
        .connect(urls)
        .await
        .map_err(|e| e.to_string())
}

/// Owns the connection's readiness: probe, (re)create the KV buckets, rewrite presence, tell
/// subscribers of possible gaps; async-nats reconnects and resubscribes underneath.
async fn supervise(inner: Arc<Inner>) {
    let client = loop {
        match connect(&inner).await {
            Ok(client) => break client,
            Err(e) => {
                tracing::warn!(error = %e, "nats broker: cannot create client");
                tokio::select! {
                    _ = inner.stop.cancelled() => return,
                    _ = tokio::time::sleep(inner.config.max_reconnect_delay) => {}
                }
            }
        }
    };
    let _ = inner.client.set(client.clone());
    let control = spawn_reader(&inner, &client, inner.subjects.control(), None).await;
    let mut probe = client
        .subscribe(inner.subjects.probe(&inner.uid))
        .await
        .ok();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    // A slow probe must not be followed by a burst of catch-up probes.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let refresh_every = inner.config.presence_ttl / 3;
    let mut last_refresh = tokio::time::Instant::now();
    let mut ever_ready = false;
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => break,
            _ = inner.wake.notified() => {}
            _ = tick.tick() => {}
        }
        if !inner.connected.load(Ordering::SeqCst) {
            inner.set_ready(false);
            continue;
        }
        if probe.is_none() {
            probe = client
                .subscribe(inner.subjects.probe(&inner.uid))
                .await
                .ok();
        }
        let Some(sub) = probe.as_mut() else { continue };
        if let Err(e) = probe_once(&inner, &client, sub).await {
            tracing::debug!(error = %e, "nats broker: probe failed");
            inner.set_ready(false);
            continue;
        }
        if !inner.ready.load(Ordering::SeqCst) {
            if let Err(e) = become_ready(&inner, &client).await {
                tracing::warn!(error = %e, "nats broker: not ready");
                continue;
            }
            if ever_ready {
                if let Some(metrics) = inner.metrics.get() {
                    metrics.broker_reconnects.inc();
                }
            }
            ever_ready = true;
            last_refresh = tokio::time::Instant::now();
        } else if last_refresh.elapsed() >= refresh_every {
            last_refresh = tokio::time::Instant::now();
            if let Err(e) = inner.refresh_presence().await {
                // JetStream (or the bucket) is gone while core NATS answers: presence would
                // expire everywhere, so the node is not ready until the buckets work again
                // (`become_ready` re-creates them and rewrites every entry).
                tracing::warn!(error = %e, "nats broker: presence refresh failed");
                inner.set_ready(false);
                continue;
            }
        }
        // A slow-consumer drop while ready also leaves gaps.
        if inner.ready.load(Ordering::SeqCst) && inner.gap.swap(false, Ordering::SeqCst) {
            inner.report_gaps();
        }
    }
    control.abort();
}

/// A message to ourselves through the server: proves the connection and its subscriptions work.
async fn probe_once(
    inner: &Inner,
    client: &async_nats::Client,
    sub: &mut async_nats::Subscriber,
) -> Result<(), String> {
    let nonce = rand::random::<u64>().to_string();
    let round_trip = async {
        client
            .publish(inner.subjects.probe(&inner.uid), Bytes::from(nonce.clone()))
            .await
            .map_err(|e| e.to_string())?;
        client.flush().await.map_err(|e| e.to_string())?;
        // Older probes that timed out may still arrive: skip them.
        while let Some(msg) = sub.next().await {
            if msg.payload.as_ref() == nonce.as_bytes() {
                return Ok(());
            }
        }
        Err("probe subscription closed".to_string())
    };
    tokio::time::timeout(inner.config.command_timeout, round_trip)
        .await
        .map_err(|_| "probe timed out".to_string())?
}

async fn become_ready(inner: &Arc<Inner>, client: &async_nats::Client) -> Result<(), BrokerError> {
    // The history stream may be gone (server restarted empty): look it up again on first use.
    inner.history.forget().await;
    if inner.config.nats_jetstream {
        let buckets = Buckets::open(client, &inner.config).await?;
        *inner.buckets.lock() = Some(buckets);
        // Entries written before the outage may be gone (server restarted empty): write them again.
        inner.refresh_presence().await?;
    }
    inner.set_ready(true);
    tracing::info!(channels = inner.channels.lock().len(), "nats broker: ready");
    Ok(())
}

/// Subscribes to `subject` and spawns the task that hands its messages to the node (`channel`:
/// the channel it carries, `None` for control).
async fn spawn_reader(
    inner: &Arc<Inner>,
    client: &async_nats::Client,
    subject: String,
    channel: Option<String>,
) -> JoinHandle<()> {
    let inner = inner.clone();
    let client = client.clone();
    tokio::spawn(async move {
        // Retried: the control subscription is made once, whatever the connection's state.
        let mut sub = loop {
            match client.subscribe(subject.clone()).await {
                Ok(sub) => break sub,
                Err(e) => {
                    tracing::warn!(error = %e, "nats broker: subscribe failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        while let Some(msg) = sub.next().await {
            let open = crate::core::wakes::burst(
                msg,
                || sub.next().now_or_never(),
                |msg| match &channel {
                    Some(channel) => inner.on_message(channel, &msg.payload),
                    None => inner.on_control(&msg.payload),
                },
            );
            if !open {
                break;
            }
        }
    })
}

/// Hands a channel's messages to the node and, while a publication waits for a missing one,
/// wakes up when the wait is over.
async fn read_channel(inner: &Inner, channel: &str, sub: &mut async_nats::Subscriber) {
    loop {
        let deadline = inner.hole_deadline(channel);
        let hole = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = sub.next() => match msg {
                Some(msg) => {
                    let open = crate::core::wakes::burst(
                        msg,
                        || sub.next().now_or_never(),
                        |msg| inner.on_message(channel, &msg.payload),
                    );
                    if !open {
                        return;
                    }
                }
                None => return,
            },
            _ = hole => inner.check_hole(channel),
        }
    }
}

#[async_trait]
impl Broker for NatsBroker {
    fn set_handler(&self, handler: Arc<dyn BrokerHandler>, metrics: Arc<Metrics>) {
        let _ = self.inner.handler.set(handler);
        let _ = self.inner.metrics.set(metrics);
    }

    async fn subscribe(&self, channel: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let client = inner.ready_client()?.clone();
        if inner.channels.lock().contains_key(channel) {
            return Ok(());
        }
        let _ops = inner.subscribe_ops.lock().await;
        if inner.channels.lock().contains_key(channel) {
            return Ok(());
        }
        let subject = inner.subjects.channel(channel);
        let mut sub = tokio::time::timeout(inner.config.command_timeout, client.subscribe(subject))
            .await
            .map_err(|_| unavailable("NATS subscribe timed out"))?
            .map_err(unavailable)?;
        // The SUB must be in effect before the caller goes on (it then publishes its join, or the
        // client expects every later publication).
        inner.barrier(&client).await?;
        let reader = {
            let inner = inner.clone();
            let channel = channel.to_string();
            tokio::spawn(async move { read_channel(&inner, &channel, &mut sub).await })
        };
        inner.channels.lock().insert(channel.to_string(), reader);
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) {
        let inner = &self.inner;
        let _ops = inner.subscribe_ops.lock().await;
        // Under the map's lock: a subscriber added meanwhile either sees the channel still
        // subscribed (and is seen here by the hub check) or sees it gone and subscribes after us.
        let mut channels = inner.channels.lock();
        if inner
            .handler
            .get()
            .is_some_and(|h| h.has_subscribers(channel))
        {
            return;
        }
        if let Some(task) = channels.remove(channel) {
            // Dropping the subscription sends the UNSUB.
            task.abort();
            inner.orders.lock().remove(channel);
        }
    }

    fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst) && !self.inner.dead.load(Ordering::SeqCst)
    }

    async fn publish(
        &self,
        channel: &str,
        publication: Publication,
        key: Option<&str>,
        history: Option<HistoryOptions>,
    ) -> Result<StreamPosition, BrokerError> {
        let inner = &self.inner;
        // Serialized once, here; the same bytes are stored and published.
        let payload = serde_json::to_vec(&publication).map_err(unavailable)?;
        let Some(options) = history else {
            let frame = wire::publication_frame(0, "", key, &payload);
            inner
                .publish(inner.subjects.channel(channel), frame.into())
                .await?;
            return Ok(StreamPosition::default());
        };
        let js = inner.jetstream()?;
        let payload = Bytes::from(payload);
        let position = inner
            .history
            .store(&js, channel, payload.clone(), &options)
            .await?;
        let frame = wire::publication_frame(position.offset, &position.epoch, key, &payload);
        if let Err(e) = inner
            .publish(inner.subjects.channel(channel), frame.into())
            .await
        {
            // Stored, so not failed (a retry would store it twice): subscribers find the hole at
            // the next publication and recover it from the stream.
            tracing::warn!(%channel, error = %e, "nats broker: stored publication not sent live");
        }
        Ok(position)
    }

    async fn publish_join(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        let frame = wire::join_frame(info);
        self.inner
            .publish(self.inner.subjects.channel(channel), frame.into())
            .await
    }

    async fn publish_leave(&self, channel: &str, info: &ClientInfo) -> Result<(), BrokerError> {
        let frame = wire::leave_frame(info);
        self.inner
            .publish(self.inner.subjects.channel(channel), frame.into())
            .await
    }

    async fn publish_control(&self, control: Control) -> Result<(), BrokerError> {
        let payload = serde_json::to_vec(&control).map_err(unavailable)?;
        self.inner
            .publish(self.inner.subjects.control(), payload.into())
            .await
    }

    async fn history(
        &self,
        channel: &str,
        query: &HistoryQuery,
        options: HistoryOptions,
    ) -> Result<HistoryPage, BrokerError> {
        let inner = &self.inner;
        let js = inner.jetstream()?;
        // The position alone is enough for a `limit: 0` read without `since`.
        let entries = query.since.is_some() || query.limit != Some(0);
        let (position, items) = inner.history.read(&js, channel, entries, &options).await?;
        inner.note_read(channel, &position);
        Ok(crate::core::history::stored_page(
            position,
            items,
            query,
            options.ttl,
            crate::core::clock::unix_millis(),
        )?)
    }

    async fn remove_history(&self, channel: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let js = inner.jetstream()?;
        inner.history.remove(&js, channel).await
    }

    async fn latest(
        &self,
        _channel: &str,
    ) -> Result<(Vec<Arc<Publication>>, StreamPosition), BrokerError> {
        // Configuration refuses conflation on this broker: no latest values are kept.
        Err(unavailable(
            "conflation is not supported by the NATS broker",
        ))
    }

    fn sweep(&self, _meta_ttl: Duration) {
        // KV buckets expire entries by themselves (max_age).
    }

    async fn announce(&self, entry: &NodeEntry) -> Result<(), BrokerError> {
        let inner = &self.inner;
        *inner.entry.lock() = Some(entry.clone());
        if !inner.config.nats_jetstream {
            return Ok(());
        }
        let buckets = inner.buckets()?;
        let value = serde_json::to_vec(entry).map_err(unavailable)?;
        buckets
            .put(
                &buckets.nodes,
                &encode_token(&entry.uid),
                value.into(),
                inner.config.command_timeout,
            )
            .await
    }

    async fn nodes(&self) -> Result<Vec<NodeEntry>, BrokerError> {
        let inner = &self.inner;
        if !inner.config.nats_jetstream {
            // Without JetStream there is no shared registry: the node knows only itself.
            return Ok(inner.entry.lock().iter().cloned().collect());
        }
        let buckets = inner.buckets()?;
        let values = buckets
            .values(&buckets.nodes, None, inner.config.command_timeout)
            .await?;
        let mut nodes: Vec<NodeEntry> = values
            .into_iter()
            .filter_map(|(_, value)| serde_json::from_slice(&value).ok())
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.uid.cmp(&b.uid)));
        Ok(nodes)
    }

    async fn close(&self) {
        let inner = &self.inner;
        if inner.dead.load(Ordering::SeqCst) {
            return;
        }
        let timeout = inner.config.command_timeout;
        let entry = inner.entry.lock().take();
        let left: Vec<String> = inner
            .local_presence
            .lock()
            .drain()
            .flat_map(|(channel, clients)| {
                clients
                    .into_keys()
                    .map(move |c| kv::presence_key(&channel, &c))
            })
            .collect();
        if let Ok(buckets) = inner.buckets() {
            if let Some(entry) = entry {
                if let Err(e) = buckets
                    .delete(&buckets.nodes, &encode_token(&entry.uid), timeout)
                    .await
                {
                    tracing::warn!(error = %e, "nats broker: node entry not removed");
                }
            }
            for key in left {
                if let Err(e) = buckets.delete(&buckets.presence, &key, timeout).await {
                    tracing::warn!(error = %e, "nats broker: presence not removed");
                    break;
                }
            }
        }
        inner.stop.cancel();
        for (_, task) in inner.channels.lock().drain() {
            task.abort();
        }
        if let Ok(client) = inner.client() {
            let _ = tokio::time::timeout(timeout, client.flush()).await;
        }
    }
}

fn forget_local(inner: &Inner, channel: &str, client: &str) {
    let mut local = inner.local_presence.lock();
    if let Some(clients) = local.get_mut(channel) {
        clients.remove(client);
        if clients.is_empty() {
            local.remove(channel);
        }
    }
}

#[async_trait]
impl PresenceStore for NatsBroker {
    async fn add(&self, channel: &str, info: ClientInfo) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let value = Bytes::from(serde_json::to_vec(&info).map_err(unavailable)?);
        // Remembered first, so a refresh running meanwhile cannot miss it.
        inner
            .local_presence
            .lock()
            .entry(channel.to_string())
            .or_default()
            .insert(info.client.clone(), value.clone());
        let key = kv::presence_key(channel, &info.client);
        let stored = match inner.buckets() {
            Ok(buckets) => {
                buckets
                    .put(&buckets.presence, &key, value, inner.config.command_timeout)
                    .await
            }
            Err(e) => Err(e),
        };
        if stored.is_err() {
            // The session rolls the subscription back on this error: the entry must not be
            // refreshed later as a ghost.
            forget_local(inner, channel, &info.client);
        }
        stored
    }

    async fn remove(&self, channel: &str, client: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        forget_local(inner, channel, client);
        let buckets = inner.buckets()?;
        buckets
            .delete(
                &buckets.presence,
                &kv::presence_key(channel, client),
                inner.config.command_timeout,
            )
            .await
    }

    async fn get(&self, channel: &str) -> Result<BTreeMap<String, ClientInfo>, BrokerError> {
        let inner = &self.inner;
        let buckets = inner.buckets()?;
        let values = buckets
            .values(
                &buckets.presence,
                Some(&kv::presence_channel_filter(channel)),
                inner.config.command_timeout,
            )
            .await?;
        Ok(values
            .into_iter()
            .filter_map(|(_, value)| {
                serde_json::from_slice::<ClientInfo>(&value)
                    .ok()
                    .map(|info| (info.client.clone(), info))
            })
            .collect())
    }

    async fn stats(&self, channel: &str) -> Result<(u32, u32), BrokerError> {
        let presence = PresenceStore::get(self, channel).await?;
        let users: HashSet<&str> = presence.values().map(|i| i.user.as_str()).collect();
        Ok((presence.len() as u32, users.len() as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_subjects_are_one_safe_token() {
        let subjects = Subjects {
            prefix: "herald.t1".into(),
        };
        for channel in ["a.b", "*", ">", "with space", "ns:#$x", ""] {
            let subject = subjects.channel(channel);
            let token = subject.strip_prefix("herald.t1.ch.").unwrap_or("");
            assert!(token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        }
        assert_ne!(subjects.channel("a"), subjects.channel("b"));
    }
}
