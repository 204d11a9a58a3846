//! A connection's outbox: what other tasks queue for it, drained by the connection's own task.
//!
//! Bounded in bytes, with an overflow policy per kind of item:
//! - conflated publications (latest-value channels) are superseded: the subscription's queued
//!   publications are dropped and the subscription is marked for a resync, after which the
//!   connection receives the latest value of every key instead of the values it missed;
//! - anything else makes the connection a slow consumer: the item is dropped, the outbox is marked
//!   overflowed and the connection closes with `slow` (3008); the client reconnects and recovers
//!   from history.
//!
//! Nothing grows without limit.

use crate::core::delivery::Control;
use bytes::Bytes;
use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::VecDeque;
use tokio::sync::Notify;

#[derive(Debug)]
pub enum OutItem {
    /// Publication pushes for subscription `slot` (one, or a window's worth); `offset` is the
    /// highest offset they carry. Dropped at drain time when the slot was unsubscribed or when the
    /// client already received this offset in a subscribe reply.
    Publication {
        slot: u32,
        offset: u64,
        bytes: Bytes,
        conflated: bool,
        /// For a window's worth: where each publication's push sits in `bytes`, in offset order.
        segments: Option<std::sync::Arc<[Segment]>>,
    },
    /// A publication for subscription `slot` with delta compression: the session picks the patch
    /// when the client holds its base, the full push otherwise.
    DeltaPublication {
        slot: u32,
        offset: u64,
        push: std::sync::Arc<DeltaPush>,
    },
    /// Another channel push (join, leave) for subscription `slot`.
    Push { slot: u32, bytes: Bytes },
    /// A connection joined or left presence channel subscription `slot`, for a Pusher
    /// connection: its session announces members (users), not connections.
    Member {
        slot: u32,
        joined: bool,
        info: std::sync::Arc<herald_protocol::ClientInfo>,
    },
    /// A server-side command for this connection.
    Control(Control),
    /// The broker cannot vouch for subscription `slot`'s stream (it lost publications while
    /// disconnected): the session ends the subscription with `insufficient state` so the SDK
    /// resubscribes and recovers from history.
    Gap { slot: u32 },
}

impl OutItem {
    fn cost(&self) -> usize {
        match self {
            OutItem::Publication { bytes, .. } | OutItem::Push { bytes, .. } => bytes.len(),
            // The full push: the most the session will write of it.
            OutItem::DeltaPublication { push, .. } => push.full.len(),
            OutItem::Member { info, .. } => {
                64 + info.user.len() + info.chan_info.as_ref().map_or(0, |i| i.get().len())
            }
            OutItem::Control(_) | OutItem::Gap { .. } => 64,
        }
    }
}

/// One publication push inside a window item: its offset and byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub start: u32,
    pub end: u32,
}

/// One publication as every delta-compression subscriber of a channel reading one wire format may
/// receive it, encoded once per format by the hub (core/hub/delta.rs).
#[derive(Debug)]
pub struct DeltaPush {
    /// In full, `delta: false`.
    pub full: Bytes,
    /// A patch against the publication at this offset, `delta: true`; none when the previous
    /// publication is not the one just before, or the patch is no smaller than the data.
    pub patch: Option<(u64, Bytes)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued after dropping this many superseded publications of the same conflated subscription.
    Superseded(usize),
    /// This push overflowed the bound: the connection must be closed as slow.
    Overflowed,
    /// Already overflowed or closed; the item was dropped.
    Dropped,
}

/// What one drain hands to the connection task.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    pub bytes: usize,
    pub overflowed: bool,
    /// Conflated subscriptions that lost values and need the latest value of every key.
    pub resync: Vec<u32>,
}

#[derive(Default)]
struct State {
    items: VecDeque<OutItem>,
    bytes: usize,
    overflowed: bool,
    closed: bool,
    resync: Vec<u32>,
}

pub struct Outbox {
    state: Mutex<State>,
    max_items: usize,
    notify: Notify,
    /// Signalled once when the connection is marked slow, so a write blocked on a full socket is
    /// abandoned at once instead of at its timeout.
    slow: Notify,
    max_bytes: usize,
    /// Node-wide gauge of queued bytes.
    gauge: Gauge,
    /// Node-wide budget (0: none). The sweeper sheds the largest outboxes above it; as a backstop
    /// between sweeps, an outbox that is already behind cannot take the node past twice the budget.
    budget: usize,
}

impl Outbox {
    pub fn new(max_bytes: usize, max_items: usize, gauge: Gauge, budget: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            max_items,
            notify: Notify::new(),
            slow: Notify::new(),
            max_bytes,
            gauge,
            budget,
        }
    }

    fn over_node_budget(&self, queued: usize, cost: usize) -> bool {
        self.budget > 0
            && queued > 0
            && self.gauge.get().max(0) as usize + cost > self.budget.saturating_mul(2)
    }

    /// Queues `item` and wakes the connection task when it needs waking.
    pub fn push(&self, item: OutItem) -> Pushed {
        let (pushed, needs_wake) = self.push_deferred(item);
        if needs_wake {
            self.wake();
        }
        pushed
    }

    /// Queues `item`; the caller wakes the task with [`Outbox::wake`] when the flag says so
    /// (after queuing a whole burst: see `crate::core::wakes`). An overflow wakes at once.
    pub fn push_deferred(&self, item: OutItem) -> (Pushed, bool) {
        let cost = item.cost();
        let mut state = self.state.lock();
        if state.overflowed || state.closed {
            return (Pushed::Dropped, false);
        }
        let mut superseded = 0;
        // Control commands always fit: they must reach the connection even when it is full.
        let is_control = matches!(item, OutItem::Control(_) | OutItem::Gap { .. });
        let full = |state: &State| {
            state.bytes + cost > self.max_bytes || state.items.len() >= self.max_items
        };
        if !is_control && full(&state) {
            if let OutItem::Publication {
                slot,
                conflated: true,
                ..
            } = &item
            {
                let slot = *slot;
                let before = state.items.len();
                state.items.retain(|queued| {
                    !matches!(queued, OutItem::Publication { slot: s, conflated: true, .. } if *s == slot)
                });
                superseded = before - state.items.len();
                let remaining: usize = state.items.iter().map(OutItem::cost).sum();
                self.gauge.dec_by((state.bytes - remaining) as i64);
                state.bytes = remaining;
                if !state.resync.contains(&slot) {
                    state.resync.push(slot);
                }
            }
        }
        let over_connection = full(&state);
        if !is_control && (over_connection || self.over_node_budget(state.bytes, cost)) {
            self.mark_slow(&mut state);
            drop(state);
            self.notify.notify_one();
            return (Pushed::Overflowed, false);
        }
        state.bytes += cost;
        self.gauge.inc_by(cost as i64);
        let was_empty = state.items.is_empty();
        state.items.push_back(item);
        drop(state);
        // The connection task drains everything on one wake-up, so later pushes need no extra wake.
        let needs_wake = was_empty || superseded > 0;
        if superseded > 0 {
            (Pushed::Superseded(superseded), needs_wake)
        } else {
            (Pushed::Queued, needs_wake)
        }
    }

    /// Wakes the connection task to drain what is queued.
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Moves everything queued into `into`.
    pub fn drain(&self, into: &mut VecDeque<OutItem>) -> Drained {
        let mut state = self.state.lock();
        let bytes = std::mem::take(&mut state.bytes);
        self.gauge.dec_by(bytes as i64);
        if into.is_empty() {
            std::mem::swap(into, &mut state.items);
        } else {
            into.extend(state.items.drain(..));
        }
        Drained {
            bytes,
            overflowed: state.overflowed,
            resync: std::mem::take(&mut state.resync),
        }
    }

    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// Marks the connection as a slow consumer (node-wide budget exceeded); its task closes it.
    pub fn force_slow(&self) {
        let mut state = self.state.lock();
        self.mark_slow(&mut state);
        drop(state);
        self.notify.notify_one();
    }

    /// A slow connection will be closed: what it queued will never be sent, so the memory is
    /// released now rather than when its task (possibly stuck in a write) gets to run.
    fn mark_slow(&self, state: &mut State) {
        self.slow.notify_one();
        state.overflowed = true;
        state.items = VecDeque::new();
        self.gauge.dec_by(std::mem::take(&mut state.bytes) as i64);
    }

    /// Stops accepting items (the connection is going away) and returns the bytes still queued.
    pub fn close(&self) -> usize {
        let mut state = self.state.lock();
        state.closed = true;
        state.items = VecDeque::new();
        let bytes = std::mem::take(&mut state.bytes);
        self.gauge.dec_by(bytes as i64);
        bytes
    }

    pub async fn wait(&self) {
        self.notify.notified().await
    }

    /// Completes when the connection has been marked slow.
    pub async fn slowed(&self) {
        self.slow.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(len: usize) -> OutItem {
        OutItem::Publication {
            slot: 0,
            offset: 0,
            bytes: Bytes::from(vec![b'x'; len]),
            conflated: false,
            segments: None,
        }
    }

    fn conflated(slot: u32, len: usize) -> OutItem {
        OutItem::Publication {
            slot,
            offset: 0,
            bytes: Bytes::from(vec![b'x'; len]),
            conflated: true,
            segments: None,
        }
    }

    #[test]
    fn overflow_marks_slow_and_drops_after() {
        let gauge = Gauge::default();
        let outbox = Outbox::new(100, 1000, gauge.clone(), 0);
        assert_eq!(outbox.push(publication(60)), Pushed::Queued);
        assert_eq!(outbox.push(publication(60)), Pushed::Overflowed);
        assert_eq!(outbox.push(publication(1)), Pushed::Dropped);
        assert_eq!(
            gauge.get(),
            0,
            "a slow connection's queue is released at once"
        );
        let mut items = VecDeque::new();
        let drained = outbox.drain(&mut items);
        assert_eq!(
            (drained.bytes, drained.overflowed, items.len()),
            (0, true, 0)
        );
    }

    #[test]
    fn drain_empties_and_resets_the_byte_count() {
        let outbox = Outbox::new(100, 1000, Gauge::default(), 0);
        for _ in 0..3 {
            outbox.push(publication(30));
        }
        let mut items = VecDeque::new();
        assert_eq!(outbox.drain(&mut items).bytes, 90);
        assert_eq!(items.len(), 3);
        assert_eq!(outbox.push(publication(90)), Pushed::Queued);
        assert_eq!(outbox.close(), 90);
        assert_eq!(outbox.push(publication(1)), Pushed::Dropped);
    }

    #[test]
    fn conflated_overflow_supersedes_instead_of_disconnecting() {
        let gauge = Gauge::default();
        let outbox = Outbox::new(100, 1000, gauge.clone(), 0);
        assert_eq!(outbox.push(conflated(1, 40)), Pushed::Queued);
        assert_eq!(outbox.push(conflated(2, 20)), Pushed::Queued);
        assert_eq!(outbox.push(conflated(1, 40)), Pushed::Queued);
        // Slot 1's two queued values are superseded; slot 2's value stays.
        assert_eq!(outbox.push(conflated(1, 40)), Pushed::Superseded(2));
        assert_eq!(gauge.get(), 60);
        let mut items = VecDeque::new();
        let drained = outbox.drain(&mut items);
        assert!(!drained.overflowed);
        assert_eq!(drained.resync, vec![1]);
        assert_eq!(items.len(), 2);
        // A plain item that cannot fit still overflows.
        outbox.push(conflated(1, 90));
        assert_eq!(outbox.push(publication(20)), Pushed::Overflowed);
    }

    #[test]
    fn the_item_count_is_bounded_too() {
        let outbox = Outbox::new(1 << 20, 3, Gauge::default(), 0);
        for _ in 0..3 {
            assert_eq!(outbox.push(publication(1)), Pushed::Queued);
        }
        assert_eq!(outbox.push(publication(1)), Pushed::Overflowed);
    }
}
