//! Node-local routing: which local connections subscribe to which channel, and which connections
//! belong to which user. Publications arrive from the broker already positioned; the hub encodes each
//! one once and queues the shared bytes on every subscriber's outbox.
//!
//! Channels whose namespace sets a delivery interval (`batch_window`, `max_rate`) are aggregated per
//! channel, not per subscriber: publications wait in the channel's window, and at its end the window
//! is encoded once into one frame that every local subscriber shares. With conflation only the latest
//! publication per key stays in the window. So 100 devices × 100 viewers at 1 Hz cost 100 frames a
//! second, not 10,000.

use crate::config::NamespaceOptions;
use crate::core::channel::Namespaces;
use crate::core::delivery::{BrokerHandler, Control};
use crate::core::metrics::Metrics;
use crate::core::outbox::{OutItem, Pushed, Segment};
use crate::core::session_handle::SessionHandle;
use bytes::Bytes;
use herald_protocol::{encode_publication_push, encode_push, ClientInfo, Publication, PushBody};
use indexmap::IndexMap;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

struct Subscriber {
    handle: Arc<SessionHandle>,
    slot: u32,
    join_leave: bool,
}

/// A channel's publications waiting for the end of its delivery interval.
struct Window {
    interval: Duration,
    max_bytes: usize,
    conflated: bool,
    state: Mutex<WindowState>,
}

#[derive(Default)]
struct WindowState {
    /// Publications without a key, in order.
    plain: Vec<Arc<Publication>>,
    /// Latest publication per key (conflated channels).
    keyed: IndexMap<String, Arc<Publication>>,
    bytes: usize,
    /// A flush task is sleeping until the window's end.
    scheduled: bool,
    last_flush: Option<Instant>,
}

impl WindowState {
    /// The window's publications in offset order, and whether all of them are keyed (only then
    /// may an overflowing outbox supersede them).
    fn take(&mut self) -> (Vec<Arc<Publication>>, bool) {
        let all_keyed = self.plain.is_empty();
        let mut batch = std::mem::take(&mut self.plain);
        batch.extend(std::mem::take(&mut self.keyed).into_values());
        batch.sort_by_key(|p| p.offset);
        self.bytes = 0;
        (batch, all_keyed)
    }
}

/// Estimated size of a publication's encoded push in a window.
fn window_cost(channel: &str, publication: &Publication) -> usize {
    let info = publication.info.as_ref().map_or(0, |i| {
        i.user.len()
            + i.client.len()
            + i.conn_info.as_ref().map_or(0, |v| v.get().len())
            + i.chan_info.as_ref().map_or(0, |v| v.get().len())
            + 64
    });
    let tags: usize = publication
        .tags
        .iter()
        .map(|(k, v)| k.len() + v.len() + 6)
        .sum();
    publication.data.get().len() + channel.len() + info + tags + 96
}

/// Largest item a window is cut into, so no single item outgrows an outbox.
const MAX_WINDOW_ITEM: usize = 64 * 1024;

struct ChannelEntry {
    subscribers: IndexMap<u64, Subscriber>,
    window: Option<Arc<Window>>,
}

const SHARDS: usize = 64;

/// Windows (with their channel) that end at one instant.
type DueWindows = Vec<(String, Arc<Window>)>;

pub struct Hub {
    channels: Vec<RwLock<HashMap<String, ChannelEntry>>>,
    sessions: RwLock<HashMap<String, Arc<SessionHandle>>>,
    users: RwLock<HashMap<String, Vec<Arc<SessionHandle>>>>,
    hasher: RandomState,
    metrics: Arc<Metrics>,
    namespaces: Arc<Namespaces>,
    /// For flush tasks, which outlive the call that scheduled them.
    this: Weak<Hub>,
    /// Windows waiting for their end, by the instant they end (on the grid from `grid_start`).
    flushes: Mutex<HashMap<Instant, DueWindows>>,
    grid_start: Instant,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>, namespaces: Arc<Namespaces>) -> Arc<Hub> {
        Arc::new_cyclic(|this| Hub {
            channels: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            sessions: RwLock::new(HashMap::new()),
            users: RwLock::new(HashMap::new()),
            hasher: RandomState::new(),
            metrics,
            namespaces,
            this: this.clone(),
            flushes: Mutex::new(HashMap::new()),
            grid_start: Instant::now(),
        })
    }

    fn shard(&self, channel: &str) -> &RwLock<HashMap<String, ChannelEntry>> {
        &self.channels[(self.hasher.hash_one(channel) as usize) % SHARDS]
    }

    pub fn add_session(&self, handle: Arc<SessionHandle>) {
        self.sessions
            .write()
            .insert(handle.client.clone(), handle.clone());
        self.users
            .write()
            .entry(handle.user.clone())
            .or_default()
            .push(handle);
    }

    pub fn remove_session(&self, handle: &SessionHandle) {
        self.sessions.write().remove(&handle.client);
        let mut users = self.users.write();
        if let Some(list) = users.get_mut(&handle.user) {
            list.retain(|h| h.seq != handle.seq);
            if list.is_empty() {
                users.remove(&handle.user);
            }
        }
    }

    fn new_window(ns: &NamespaceOptions) -> Option<Arc<Window>> {
        let interval = ns.delivery_interval();
        (!interval.is_zero()).then(|| {
            Arc::new(Window {
                interval,
                max_bytes: ns.window_max_bytes,
                conflated: ns.conflated(),
                state: Mutex::new(WindowState::default()),
            })
        })
    }

    /// Registers a subscriber; returns true when it is the channel's first on this node.
    pub fn add_subscriber(
        &self,
        channel: &str,
        handle: &Arc<SessionHandle>,
        slot: u32,
        join_leave: bool,
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
                    .and_then(|ns| Self::new_window(ns)),
            });
        entry.subscribers.insert(
            handle.seq,
            Subscriber {
                handle: handle.clone(),
                slot,
                join_leave,
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
        if entry.subscribers.swap_remove(&seq).is_some() {
            self.metrics.subscriptions.dec();
        }
        if entry.subscribers.is_empty() {
            shard.remove(channel);
            self.metrics.channels.dec();
            return true;
        }
        false
    }

    fn fan_out(&self, channel: &str, make: impl Fn(&Subscriber) -> Option<OutItem>) {
        let shard = self.shard(channel).read();
        let Some(entry) = shard.get(channel) else {
            return;
        };
        let mut delivered = 0u64;
        let mut dropped = 0u64;
        for sub in entry.subscribers.values() {
            let Some(item) = make(sub) else { continue };
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
        self.metrics.deliveries.inc_by(delivered);
        if dropped > 0 {
            self.metrics.outbox_drops.inc_by(dropped);
        }
    }

    /// Queues pre-encoded publication pushes (one publication, or a window's worth) for every
    /// subscriber. `offset` is the highest offset in `bytes`.
    fn deliver(
        &self,
        channel: &str,
        offset: u64,
        bytes: Bytes,
        conflated: bool,
        segments: Option<Arc<[Segment]>>,
    ) {
        self.fan_out(channel, |sub| {
            Some(OutItem::Publication {
                slot: sub.slot,
                offset,
                bytes: bytes.clone(),
                conflated,
                segments: segments.clone(),
            })
        });
    }

    /// Encodes a window's publications once, newline-separated, and delivers them as shared items
    /// of at most `MAX_WINDOW_ITEM` bytes (one frame each, unless a single publication is larger).
    /// Each item records where every publication starts, so a subscriber that already has some of
    /// them (from its subscribe reply) receives only the rest.
    fn deliver_batch(&self, channel: &str, batch: Vec<Arc<Publication>>, conflated: bool) {
        let mut out: Vec<u8> = Vec::new();
        let mut segments: Vec<Segment> = Vec::new();
        for publication in &batch {
            let encoded = encode_publication_push(channel, publication);
            if !out.is_empty() && out.len() + 1 + encoded.len() > MAX_WINDOW_ITEM {
                let (full, parts) = (std::mem::take(&mut out), std::mem::take(&mut segments));
                self.deliver_segments(channel, full, parts, conflated);
            }
            if !out.is_empty() {
                out.push(b'\n');
            }
            let start = out.len() as u32;
            out.extend_from_slice(&encoded);
            segments.push(Segment {
                offset: publication.offset,
                start,
                end: out.len() as u32,
            });
        }
        if !out.is_empty() {
            self.deliver_segments(channel, out, segments, conflated);
        }
    }

    fn deliver_segments(
        &self,
        channel: &str,
        out: Vec<u8>,
        segments: Vec<Segment>,
        conflated: bool,
    ) {
        let offset = segments.iter().map(|s| s.offset).max().unwrap_or(0);
        self.deliver(
            channel,
            offset,
            Bytes::from(out),
            conflated,
            Some(segments.into()),
        );
    }

    fn window_of(&self, channel: &str) -> Option<Option<Arc<Window>>> {
        self.shard(channel)
            .read()
            .get(channel)
            .map(|entry| entry.window.clone())
    }

    /// Adds a publication to a channel's window; delivers early when the window is full, and
    /// otherwise makes sure a flush is scheduled for the window's end. Deliveries happen under the
    /// window's lock, so an early and a scheduled delivery of one channel never overtake each other.
    fn add_to_window(
        &self,
        channel: &str,
        window: Arc<Window>,
        publication: Arc<Publication>,
        key: Option<&str>,
    ) {
        let now = Instant::now();
        let mut state = window.state.lock();
        state.bytes += window_cost(channel, &publication);
        match key.filter(|_| window.conflated) {
            Some(key) => {
                if let Some(replaced) = state.keyed.insert(key.to_string(), publication) {
                    state.bytes -= window_cost(channel, &replaced);
                }
            }
            None => state.plain.push(publication),
        }
        let due = state.last_flush.map_or(now, |at| at + window.interval);
        if state.bytes >= window.max_bytes || (due <= now && !state.scheduled) {
            let (batch, all_keyed) = state.take();
            state.last_flush = Some(now);
            self.deliver_batch(channel, batch, window.conflated && all_keyed);
            return;
        }
        if !state.scheduled {
            state.scheduled = true;
            drop(state);
            self.schedule_flush(self.on_grid(due, window.interval), channel, window);
        }
    }

    /// The first point at or after `at` of the grid of `interval` steps from the hub's start.
    /// Windows of one interval all end on this grid, so they are flushed together and a client
    /// following many windowed channels receives them all in one write.
    fn on_grid(&self, at: Instant, interval: Duration) -> Instant {
        let step = interval.as_nanos().max(1);
        let since = at.saturating_duration_since(self.grid_start).as_nanos();
        let steps = since.div_ceil(step);
        let offset = u64::try_from(steps.saturating_mul(step)).unwrap_or(u64::MAX);
        self.grid_start + Duration::from_nanos(offset)
    }

    /// Queues a window's flush at `due`; one task per distinct instant flushes every window due
    /// then, with the connections' wake-ups batched (crate::core::wakes).
    fn schedule_flush(&self, due: Instant, channel: &str, window: Arc<Window>) {
        let mut flushes = self.flushes.lock();
        let first = !flushes.contains_key(&due);
        flushes
            .entry(due)
            .or_default()
            .push((channel.to_string(), window));
        drop(flushes);
        let Some(hub) = self.this.upgrade().filter(|_| first) else {
            return;
        };
        tokio::spawn(async move {
            tokio::time::sleep_until(due.into()).await;
            let due_windows = hub.flushes.lock().remove(&due).unwrap_or_default();
            crate::core::wakes::batched_sync(|| {
                for (channel, window) in due_windows {
                    let mut state = window.state.lock();
                    state.scheduled = false;
                    // The grid point, not the (slightly later) time of this flush: from it, the
                    // next window ends exactly one interval later, on the grid.
                    state.last_flush = Some(due);
                    let (batch, all_keyed) = state.take();
                    if !batch.is_empty() {
                        hub.deliver_batch(&channel, batch, window.conflated && all_keyed);
                    }
                }
            });
        });
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

    pub fn user_connection_count(&self, user: &str) -> usize {
        self.users.read().get(user).map_or(0, Vec::len)
    }

    pub fn num_clients(&self) -> usize {
        self.sessions.read().len()
    }

    pub fn num_users(&self) -> usize {
        self.users.read().len()
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

impl BrokerHandler for Hub {
    fn handle_publication(&self, channel: &str, publication: Arc<Publication>, key: Option<&str>) {
        match self.window_of(channel) {
            // No local subscriber: nothing to do.
            None => {}
            Some(Some(window)) => self.add_to_window(channel, window, publication, key),
            Some(None) => {
                let bytes = encode_publication_push(channel, &publication);
                self.deliver(channel, publication.offset, bytes, key.is_some(), None);
            }
        }
    }

    fn handle_join(&self, channel: &str, info: &ClientInfo) {
        let mut out = Vec::new();
        encode_push(channel, &PushBody::Join(info), &mut out);
        let bytes = Bytes::from(out);
        self.fan_out(channel, |sub| {
            sub.join_leave.then(|| OutItem::Push {
                slot: sub.slot,
                bytes: bytes.clone(),
            })
        });
    }

    fn handle_leave(&self, channel: &str, info: &ClientInfo) {
        let mut out = Vec::new();
        encode_push(channel, &PushBody::Leave(info), &mut out);
        let bytes = Bytes::from(out);
        self.fan_out(channel, |sub| {
            sub.join_leave.then(|| OutItem::Push {
                slot: sub.slot,
                bytes: bytes.clone(),
            })
        });
    }

    fn handle_gap(&self, channel: &str) {
        self.fan_out(channel, |sub| Some(OutItem::Gap { slot: sub.slot }));
    }

    fn has_subscribers(&self, channel: &str) -> bool {
        self.shard(channel).read().contains_key(channel)
    }

    fn local_channels(&self) -> Vec<String> {
        self.channels
            .iter()
            .flat_map(|shard| shard.read().keys().cloned().collect::<Vec<_>>())
            .collect()
    }

    fn handle_control(&self, control: &Control) {
        let (user, client) = match control {
            Control::Subscribe { user, client, .. }
            | Control::Unsubscribe { user, client, .. }
            | Control::Disconnect { user, client, .. } => (user, client.as_deref()),
        };
        let targets = if user.is_empty() {
            client.and_then(|c| self.session(c)).into_iter().collect()
        } else {
            self.user_sessions(user, client)
        };
        for handle in targets {
            handle.outbox.push(OutItem::Control(control.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ChannelConfig;
    use crate::core::outbox::Outbox;
    use bytes::Bytes;

    fn session(hub: &Hub, metrics: &Metrics, seq: u64, queued: usize) -> Arc<SessionHandle> {
        let handle = Arc::new(SessionHandle {
            seq,
            client: format!("c{seq}"),
            user: format!("u{seq}"),
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
}
