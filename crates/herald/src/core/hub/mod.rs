//! Node-local routing: which local connections subscribe to which channel, and which connections
//! belong to which user. Publications arrive from the broker already positioned; the hub encodes each
//! one at most once per wire format its subscribers read ([`PerFormat`]) and queues the shared bytes
//! on every subscriber's outbox.
//!
//! Channels whose namespace sets a delivery interval (`batch_window`, `max_rate`) are aggregated per
//! channel, not per subscriber: publications wait in the channel's window, and at its end the window
//! is encoded once into one frame that every local subscriber shares. With conflation only the latest
//! publication per key stays in the window. So 100 devices × 100 viewers at 1 Hz cost 100 frames a
//! second, not 10,000.

use crate::core::channel::Namespaces;
use crate::core::metrics::Metrics;
use crate::core::outbox::{OutItem, Pushed, Segment};
use crate::core::session_handle::{Inbox, SessionHandle};
use crate::core::wire::Wire;
use indexmap::IndexMap;
use parking_lot::{Mutex, RwLock};
use std::cell::OnceCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

struct Subscriber {
    handle: Arc<SessionHandle>,
    slot: u32,
    join_leave: bool,
    /// Negotiated delta compression (delta.rs).
    delta: bool,
    wire: Wire,
}

/// A value encoded at most once per wire, on first need during one fan-out: a publication sent
/// to JSON, Protobuf and Pusher subscribers is encoded once for each wire present, never per
/// subscriber, and not at all for a wire nobody on the channel reads.
pub(super) struct PerFormat<T> {
    encoded: [OnceCell<T>; Wire::COUNT],
}

impl<T> PerFormat<T> {
    pub(super) fn new() -> Self {
        PerFormat {
            encoded: [OnceCell::new(), OnceCell::new(), OnceCell::new()],
        }
    }

    pub(super) fn get(&self, wire: Wire, encode: impl FnOnce(Wire) -> T) -> &T {
        self.encoded[wire.index()].get_or_init(|| encode(wire))
    }
}

struct ChannelEntry {
    subscribers: IndexMap<u64, Subscriber>,
    window: Option<Arc<Window>>,
    delta: Arc<delta::DeltaState>,
}

mod delta;
mod handler;
mod windows;

use windows::Window;

const SHARDS: usize = 64;

/// Windows (with their channel) that end at one instant.
type DueWindows = Vec<(String, Arc<Window>)>;

pub struct Hub {
    channels: Vec<RwLock<HashMap<String, ChannelEntry>>>,
    sessions: RwLock<HashMap<String, Arc<SessionHandle>>>,
    /// Connections by user; anonymous connections are in `anonymous`, a count.
    users: RwLock<HashMap<String, Vec<Arc<SessionHandle>>>>,
    anonymous: std::sync::atomic::AtomicUsize,
    /// Emulated connections by their session secret: where `/emulation` requests go.
    emulated: RwLock<HashMap<String, Arc<Inbox>>>,
    hasher: RandomState,
    metrics: Arc<Metrics>,
    namespaces: Arc<Namespaces>,
    /// For flush tasks, which outlive the call that scheduled them.
    this: Weak<Hub>,
    /// Windows waiting for their end, by the instant they end (on the grid from `grid_start`).
    flushes: Mutex<HashMap<Instant, DueWindows>>,
    grid_start: Instant,
    /// Set once when the node stops: connections see it when their outbox wakes them, so no
    /// connection waits on a shutdown future shared by all of them on every wake-up.
    stopping: AtomicBool,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>, namespaces: Arc<Namespaces>) -> Arc<Hub> {
        Arc::new_cyclic(|this| Hub {
            channels: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            sessions: RwLock::new(HashMap::new()),
            users: RwLock::new(HashMap::new()),
            anonymous: std::sync::atomic::AtomicUsize::new(0),
            emulated: RwLock::new(HashMap::new()),
            hasher: RandomState::new(),
            metrics,
            namespaces,
            this: this.clone(),
            flushes: Mutex::new(HashMap::new()),
            grid_start: Instant::now(),
            stopping: AtomicBool::new(false),
        })
    }

    /// The node stops: every connection is woken and closes with `shutdown`. A connection
    /// registering meanwhile wakes itself (`add_session` reads the flag after inserting).
    pub fn stop_sessions(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for handle in self.all_sessions() {
            handle.outbox.wake();
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    fn shard(&self, channel: &str) -> &RwLock<HashMap<String, ChannelEntry>> {
        &self.channels[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    pub fn add_session(&self, handle: Arc<SessionHandle>) {
        self.try_add_session(handle, 0);
    }

    /// Registers a connection unless its user already has `per_user` of them here (0: no
    /// limit); false when refused. The count and the insert happen under one lock, so
    /// connections of one user racing on several threads cannot pass the limit together.
    pub fn try_add_session(&self, handle: Arc<SessionHandle>, per_user: usize) -> bool {
        // Anonymous connections are only counted: one list of all of them would make every
        // disconnect scan it (a flood of anonymous connections, quadratic work).
        if handle.user.is_empty() {
            self.anonymous.fetch_add(1, Ordering::Relaxed);
        } else {
            let mut users = self.users.write();
            let list = users.entry(handle.user.clone()).or_default();
            if per_user > 0 && list.len() >= per_user {
                return false;
            }
            list.push(handle.clone());
        }
        self.sessions
            .write()
            .insert(handle.client.clone(), handle.clone());
        if self.stopping.load(Ordering::SeqCst) {
            handle.outbox.wake();
        }
        true
    }

    /// Files a connection under a user it proved after connecting (a Pusher sign-in), unless
    /// that user already has `per_user` connections here (0: no limit); false when refused. The
    /// connection is then among the user's for server-side disconnects and the `connections` API.
    pub fn sign_in(&self, user: &str, handle: &Arc<SessionHandle>, per_user: usize) -> bool {
        let mut users = self.users.write();
        let list = users.entry(user.to_string()).or_default();
        if per_user > 0 && list.len() >= per_user {
            return false;
        }
        list.push(handle.clone());
        true
    }

    /// Undoes [`Hub::sign_in`].
    pub fn sign_out(&self, user: &str, seq: u64) {
        let mut users = self.users.write();
        if let Some(list) = users.get_mut(user) {
            list.retain(|h| h.seq != seq);
            if list.is_empty() {
                users.remove(user);
            }
        }
    }

    pub fn remove_session(&self, handle: &SessionHandle) {
        self.sessions.write().remove(&handle.client);
        if handle.user.is_empty() {
            self.anonymous.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let mut users = self.users.write();
        if let Some(list) = users.get_mut(&handle.user) {
            list.retain(|h| h.seq != handle.seq);
            if list.is_empty() {
                users.remove(&handle.user);
            }
        }
    }

    pub fn add_subscriber(
        &self,
        channel: &str,
        handle: &Arc<SessionHandle>,
        slot: u32,
        join_leave: bool,
        delta: bool,
    ) -> bool {
        let mut shard = self.shard(channel).write();
        let first = !shard.contains_key(channel);
        let entry = shard
            .entry(channel.to_string())
            .or_insert_with(|| ChannelEntry {
                subscribers: IndexMap::new(),
                window: self
                    .namespaces
                    .resolve(channel)
                    .ok()
                    .and_then(|ns| Self::new_window(&ns)),
                delta: Default::default(),
            });
        if delta {
            entry.delta.add_subscriber();
        }
        entry.subscribers.insert(
            handle.seq,
            Subscriber {
                handle: handle.clone(),
                slot,
                join_leave,
                delta,
                wire: handle.wire,
            },
        );
        self.metrics.subscriptions.inc();
        if first {
            self.metrics.channels.inc();
        }
        first
    }

    /// Unregisters a subscriber; returns true when the channel has no subscriber left on this node.
    pub fn remove_subscriber(&self, channel: &str, seq: u64) -> bool {
        let mut shard = self.shard(channel).write();
        let Some(entry) = shard.get_mut(channel) else {
            return false;
        };
        if let Some(removed) = entry.subscribers.swap_remove(&seq) {
            self.metrics.subscriptions.dec();
            if removed.delta {
                entry.delta.remove_subscriber();
            }
        }
        if entry.subscribers.is_empty() {
            shard.remove(channel);
            self.metrics.channels.dec();
            return true;
        }
        false
    }

    /// Queues what `make` gives each subscriber (nothing, one item, or several).
    fn fan_out<I: IntoIterator<Item = OutItem>>(
        &self,
        channel: &str,
        make: impl Fn(&Subscriber) -> I,
    ) {
        let shard = self.shard(channel).read();
        let Some(entry) = shard.get(channel) else {
            return;
        };
        let mut delivered = 0u64;
        let mut dropped = 0u64;
        for sub in entry.subscribers.values() {
            for item in make(sub) {
                let (pushed, needs_wake) = sub.handle.outbox.push_deferred(item);
                if needs_wake {
                    crate::core::wakes::wake(&sub.handle);
                }
                match pushed {
                    Pushed::Queued => delivered += 1,
                    Pushed::Superseded(n) => {
                        delivered += 1;
                        dropped += n as u64;
                    }
                    Pushed::Overflowed | Pushed::Dropped => dropped += 1,
                }
            }
        }
        self.metrics.deliveries.inc_by(delivered);
        if dropped > 0 {
            self.metrics.outbox_drops.inc_by(dropped);
        }
    }

    /// Registers an emulated connection's inbox under its session secret.
    pub fn add_emulated(&self, session: &str, inbox: Arc<Inbox>) {
        self.emulated.write().insert(session.to_string(), inbox);
    }

    pub fn remove_emulated(&self, session: &str) {
        if let Some(inbox) = self.emulated.write().remove(session) {
            inbox.close();
        }
    }

    /// The inbox of the emulated connection with this session secret, if it is on this node.
    pub fn emulation_inbox(&self, session: &str) -> Option<Arc<Inbox>> {
        self.emulated.read().get(session).cloned()
    }

    pub fn session(&self, client: &str) -> Option<Arc<SessionHandle>> {
        self.sessions.read().get(client).cloned()
    }

    /// Connections of a user (all of them, or the one with `client` id).
    pub fn user_sessions(&self, user: &str, client: Option<&str>) -> Vec<Arc<SessionHandle>> {
        let users = self.users.read();
        let Some(list) = users.get(user) else {
            return Vec::new();
        };
        list.iter()
            .filter(|h| client.is_none_or(|c| h.client == c))
            .cloned()
            .collect()
    }

    /// Every connected session, for a drain that tells them to leave one by one.
    pub fn all_sessions(&self) -> Vec<Arc<SessionHandle>> {
        self.sessions.read().values().cloned().collect()
    }

    pub fn num_clients(&self) -> usize {
        self.sessions.read().len()
    }

    /// Distinct users here; anonymous connections count as one user, as in Centrifugo.
    pub fn num_users(&self) -> usize {
        let anonymous = self.anonymous.load(Ordering::Relaxed) > 0;
        self.users.read().len() + usize::from(anonymous)
    }

    /// This node's subscribers of one channel.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.shard(channel)
            .read()
            .get(channel)
            .map_or(0, |entry| entry.subscribers.len())
    }

    /// Channels with local subscribers matching a glob pattern, with their subscriber counts.
    pub fn channels(&self, pattern: &str) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for shard in &self.channels {
            for (name, entry) in shard.read().iter() {
                if crate::core::channel::pattern_matches(pattern, name) {
                    out.push((name.clone(), entry.subscribers.len()));
                }
            }
        }
        out.sort();
        out
    }

    /// Channels one local connection subscribes to, sorted (scans every channel: for the
    /// `connections` API, not the hot path).
    pub fn session_channels(&self, seq: u64) -> Vec<String> {
        let mut out: Vec<String> = self
            .channels
            .iter()
            .flat_map(|shard| {
                shard
                    .read()
                    .iter()
                    .filter(|(_, entry)| entry.subscribers.contains_key(&seq))
                    .map(|(name, _)| name.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort();
        out
    }

    pub fn num_channels(&self) -> usize {
        self.channels.iter().map(|s| s.read().len()).sum()
    }

    pub fn num_subscriptions(&self) -> usize {
        self.channels
            .iter()
            .map(|s| {
                s.read()
                    .values()
                    .map(|e| e.subscribers.len())
                    .sum::<usize>()
            })
            .sum()
    }

    /// Enforces the node-wide outbox budget: when all outboxes together hold more than `budget`
    /// bytes, the connections with the largest outboxes are closed as slow until the rest fits.
    /// Returns how many were shed.
    pub fn shed_slowest(&self, budget: usize) -> usize {
        let total = self.metrics.outbox_bytes.get().max(0) as usize;
        if budget == 0 || total <= budget {
            return 0;
        }
        let mut sizes: Vec<(usize, Arc<SessionHandle>)> = self
            .sessions
            .read()
            .values()
            .map(|h| (h.outbox.queued_bytes(), h.clone()))
            .filter(|(bytes, _)| *bytes > 0)
            .collect();
        sizes.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        let mut excess = total - budget;
        let mut shed = 0;
        for (bytes, handle) in sizes {
            if excess == 0 {
                break;
            }
            handle.outbox.force_slow();
            excess = excess.saturating_sub(bytes);
            shed += 1;
        }
        if shed > 0 {
            tracing::warn!(
                shed,
                total,
                budget,
                "outbox budget exceeded: closing the slowest connections"
            );
        }
        shed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ChannelConfig;
    use crate::core::outbox::Outbox;
    use bytes::Bytes;
    use herald_protocol::Format;

    fn session(hub: &Hub, metrics: &Metrics, seq: u64, queued: usize) -> Arc<SessionHandle> {
        let handle = Arc::new(SessionHandle {
            seq,
            client: format!("c{seq}"),
            user: format!("u{seq}"),
            wire: Wire::Json,
            transport: "websocket",
            outbox: Outbox::new(1 << 20, 10_000, metrics.outbox_bytes.clone(), 0),
        });
        let item = OutItem::Push {
            slot: 1,
            bytes: Bytes::from(vec![b'x'; queued]),
        };
        assert_eq!(handle.outbox.push(item), Pushed::Queued);
        hub.add_session(handle.clone());
        handle
    }

    #[test]
    fn the_budget_sheds_the_largest_outboxes_first() {
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(
            metrics.clone(),
            Arc::new(Namespaces::new(&ChannelConfig::default())),
        );
        let small = session(&hub, &metrics, 1, 10_000);
        let medium = session(&hub, &metrics, 2, 50_000);
        let large = session(&hub, &metrics, 3, 100_000);
        // 160,000 queued against a budget of 100,000: shedding the largest is enough.
        assert_eq!(hub.shed_slowest(100_000), 1);
        let probe = || OutItem::Push {
            slot: 1,
            bytes: Bytes::from_static(b"x"),
        };
        assert_eq!(
            large.outbox.push(probe()),
            Pushed::Dropped,
            "the largest was closed as slow"
        );
        assert_eq!(medium.outbox.push(probe()), Pushed::Queued);
        assert_eq!(small.outbox.push(probe()), Pushed::Queued);
        assert_eq!(
            metrics.outbox_bytes.get(),
            60_002,
            "the shed outbox's bytes were released"
        );
        assert_eq!(hub.shed_slowest(100_000), 0, "within budget now");
    }

    #[test]
    fn anonymous_connections_are_counted_not_listed() {
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(
            metrics.clone(),
            Arc::new(Namespaces::new(&ChannelConfig::default())),
        );
        let handle = |seq: u64, user: &str| {
            Arc::new(SessionHandle {
                seq,
                client: format!("c{seq}"),
                user: user.into(),
                wire: Wire::Pusher,
                transport: "pusher",
                outbox: Outbox::new(1 << 20, 10_000, metrics.outbox_bytes.clone(), 0),
            })
        };
        let anonymous: Vec<_> = (0..1000).map(|seq| handle(seq, "")).collect();
        for h in &anonymous {
            assert!(
                hub.try_add_session(h.clone(), 1),
                "no per-user limit for anonymous"
            );
        }
        let alice = handle(5000, "alice");
        hub.add_session(alice.clone());
        assert_eq!((hub.num_clients(), hub.num_users()), (1001, 2));
        assert!(hub.user_sessions("", None).is_empty());
        // Signed in later (Pusher): listed under the user, and taken out again.
        assert!(hub.sign_in("bob", &anonymous[0], 1));
        assert!(
            !hub.sign_in("bob", &anonymous[1], 1),
            "bob's one connection is in use"
        );
        assert_eq!(hub.user_sessions("bob", None).len(), 1);
        hub.sign_out("bob", anonymous[0].seq);
        for h in &anonymous {
            hub.remove_session(h);
        }
        assert_eq!((hub.num_clients(), hub.num_users()), (1, 1));
        hub.remove_session(&alice);
        assert_eq!((hub.num_clients(), hub.num_users()), (0, 0));
    }

    fn subscriber(hub: &Hub, metrics: &Metrics, seq: u64, format: Format) -> Arc<SessionHandle> {
        let wire = Wire::from(format);
        let handle = Arc::new(SessionHandle {
            seq,
            client: format!("c{seq}"),
            user: format!("u{seq}"),
            wire,
            transport: "websocket",
            outbox: Outbox::new(1 << 20, 10_000, metrics.outbox_bytes.clone(), 0),
        });
        hub.add_subscriber("news", &handle, 1, true, false);
        handle
    }

    /// The publication items an outbox holds: (bytes, segments).
    fn queued(handle: &SessionHandle) -> Vec<(Bytes, Option<Arc<[Segment]>>)> {
        let mut items = std::collections::VecDeque::new();
        handle.outbox.drain(&mut items);
        items
            .into_iter()
            .filter_map(|item| match item {
                OutItem::Publication {
                    bytes, segments, ..
                } => Some((bytes, segments)),
                OutItem::Push { bytes, .. } => Some((bytes, None)),
                _ => None,
            })
            .collect()
    }

    fn publication(offset: u64) -> Arc<herald_protocol::Publication> {
        Arc::new(herald_protocol::Publication {
            data: serde_json::value::RawValue::from_string(format!("{{\"n\":{offset}}}")).unwrap(),
            info: None,
            offset,
            tags: Default::default(),
            time: 0,
        })
    }

    #[test]
    fn per_format_encodes_once_per_format_asked_for() {
        let calls = std::cell::Cell::new(0);
        let cache = PerFormat::new();
        for wire in [
            Wire::Json,
            Wire::Json,
            Wire::Protobuf,
            Wire::Json,
            Wire::Pusher,
        ] {
            cache.get(wire, |w| {
                calls.set(calls.get() + 1);
                w
            });
        }
        assert_eq!(calls.get(), 3);
        assert_eq!(*cache.get(Wire::Protobuf, |_| Wire::Json), Wire::Protobuf);
    }

    #[test]
    fn a_publication_is_encoded_once_per_format_and_shared() {
        use crate::core::delivery::BrokerHandler;
        use prost::Message as _;
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(
            metrics.clone(),
            Arc::new(Namespaces::new(&ChannelConfig::default())),
        );
        let json: Vec<_> = (1..=3)
            .map(|seq| subscriber(&hub, &metrics, seq, Format::Json))
            .collect();
        let protobuf: Vec<_> = (4..=5)
            .map(|seq| subscriber(&hub, &metrics, seq, Format::Protobuf))
            .collect();
        hub.handle_publication("news", publication(7), None);
        let info = herald_protocol::ClientInfo {
            user: "u".into(),
            client: "c".into(),
            conn_info: None,
            chan_info: None,
        };
        hub.handle_join("news", &info);
        let json_items: Vec<_> = json.iter().map(|h| queued(h)).collect();
        let protobuf_items: Vec<_> = protobuf.iter().map(|h| queued(h)).collect();
        for items in json_items.iter().chain(&protobuf_items) {
            assert_eq!(items.len(), 2, "the publication and the join");
        }
        for i in 0..2 {
            // One allocation per format: every subscriber of a format shares the same bytes.
            assert!(json_items
                .iter()
                .all(|items| items[i].0.as_ptr() == json_items[0][i].0.as_ptr()));
            assert!(protobuf_items
                .iter()
                .all(|items| items[i].0.as_ptr() == protobuf_items[0][i].0.as_ptr()));
        }
        let text: serde_json::Value = serde_json::from_slice(&json_items[0][0].0).unwrap();
        assert_eq!(text["push"]["pub"]["data"]["n"], 7);
        let reply = herald_protocol::protobuf::wire::Reply::decode_length_delimited(
            protobuf_items[0][0].0.clone(),
        )
        .unwrap();
        let push = reply.push.unwrap();
        assert_eq!(push.channel, "news");
        assert_eq!(push.r#pub.unwrap().data, br#"{"n":7}"#);
    }

    #[test]
    fn a_window_is_encoded_once_per_format_with_segments_in_that_format() {
        use prost::Message as _;
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(
            metrics.clone(),
            Arc::new(Namespaces::new(&ChannelConfig::default())),
        );
        let a = subscriber(&hub, &metrics, 1, Format::Protobuf);
        let b = subscriber(&hub, &metrics, 2, Format::Protobuf);
        let c = subscriber(&hub, &metrics, 3, Format::Json);
        hub.deliver_batch("news", (1..=3).map(publication).collect(), false);
        let (a, b, c) = (queued(&a), queued(&b), queued(&c));
        assert_eq!((a.len(), b.len(), c.len()), (1, 1, 1));
        assert_eq!(a[0].0.as_ptr(), b[0].0.as_ptr());
        let (bytes, segments) = &a[0];
        let segments = segments.as_ref().unwrap();
        assert_eq!(segments.len(), 3);
        // Protobuf: each segment is one length-delimited reply, and together they are the item.
        assert_eq!(segments[2].end as usize, bytes.len());
        for (segment, offset) in segments.iter().zip(1..) {
            let slice = bytes.slice(segment.start as usize..segment.end as usize);
            let reply =
                herald_protocol::protobuf::wire::Reply::decode_length_delimited(slice).unwrap();
            assert_eq!(reply.push.unwrap().r#pub.unwrap().offset, offset);
        }
        // JSON: newline-separated objects.
        let text = std::str::from_utf8(&c[0].0).unwrap();
        assert_eq!(text.lines().count(), 3);
    }
}
