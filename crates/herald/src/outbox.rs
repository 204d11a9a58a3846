//! A connection's outbox: what other tasks queue for it, drained by the connection's own task.
//!
//! Bounded in bytes. Overflow policy: the connection is a slow consumer — the item is dropped, the
//! outbox is marked overflowed and the connection closes with the protocol's `slow` code (3008), after
//! which the client reconnects and recovers from history. Nothing grows without limit.

use crate::broker::Control;
use bytes::Bytes;
use parking_lot::Mutex;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::VecDeque;
use tokio::sync::Notify;

#[derive(Debug)]
pub enum OutItem {
    /// A publication push for subscription `slot`. Dropped at drain time when the slot was unsubscribed
    /// or when the client already received this offset in a subscribe reply.
    Publication {
        slot: u32,
        offset: u64,
        bytes: Bytes,
    },
    /// Another channel push (join, leave) for subscription `slot`.
    Push { slot: u32, bytes: Bytes },
    /// A server-side command for this connection.
    Control(Control),
}

impl OutItem {
    fn cost(&self) -> usize {
        match self {
            OutItem::Publication { bytes, .. } | OutItem::Push { bytes, .. } => bytes.len(),
            OutItem::Control(_) => 64,
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// This push overflowed the bound: the connection must be closed as slow.
    Overflowed,
    /// Already overflowed or closed; the item was dropped.
    Dropped,
}

#[derive(Default)]
struct State {
    items: VecDeque<OutItem>,
    bytes: usize,
    overflowed: bool,
    closed: bool,
}

pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    max_bytes: usize,
    /// Node-wide gauge of queued bytes.
    gauge: Gauge,
}

impl Outbox {
    pub fn new(max_bytes: usize, gauge: Gauge) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            max_bytes,
            gauge,
        }
    }

    pub fn push(&self, item: OutItem) -> Pushed {
        let cost = item.cost();
        let mut state = self.state.lock();
        if state.overflowed || state.closed {
            return Pushed::Dropped;
        }
        // Control commands always fit: they must reach the connection even when it is full.
        if !matches!(item, OutItem::Control(_)) && state.bytes + cost > self.max_bytes {
            state.overflowed = true;
            drop(state);
            self.notify.notify_one();
            return Pushed::Overflowed;
        }
        state.bytes += cost;
        self.gauge.inc_by(cost as i64);
        let was_empty = state.items.is_empty();
        state.items.push_back(item);
        drop(state);
        // The connection task drains everything on one wake-up, so later pushes need no extra wake.
        if was_empty {
            self.notify.notify_one();
        }
        Pushed::Queued
    }

    /// Moves everything queued into `into`; returns the drained byte count and whether the outbox overflowed.
    pub fn drain(&self, into: &mut VecDeque<OutItem>) -> (usize, bool) {
        let mut state = self.state.lock();
        let bytes = std::mem::take(&mut state.bytes);
        self.gauge.dec_by(bytes as i64);
        if into.is_empty() {
            std::mem::swap(into, &mut state.items);
        } else {
            into.extend(state.items.drain(..));
        }
        (bytes, state.overflowed)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(len: usize) -> OutItem {
        OutItem::Publication {
            slot: 0,
            offset: 0,
            bytes: Bytes::from(vec![b'x'; len]),
        }
    }

    #[test]
    fn overflow_marks_slow_and_drops_after() {
        let outbox = Outbox::new(100, Gauge::default());
        assert_eq!(outbox.push(publication(60)), Pushed::Queued);
        assert_eq!(outbox.push(publication(60)), Pushed::Overflowed);
        assert_eq!(outbox.push(publication(1)), Pushed::Dropped);
        let mut items = VecDeque::new();
        let (bytes, overflowed) = outbox.drain(&mut items);
        assert_eq!((bytes, overflowed, items.len()), (60, true, 1));
    }

    #[test]
    fn drain_empties_and_resets_the_byte_count() {
        let outbox = Outbox::new(100, Gauge::default());
        for _ in 0..3 {
            outbox.push(publication(30));
        }
        let mut items = VecDeque::new();
        assert_eq!(outbox.drain(&mut items), (90, false));
        assert_eq!(items.len(), 3);
        assert_eq!(outbox.push(publication(90)), Pushed::Queued);
        assert_eq!(outbox.close(), 90);
        assert_eq!(outbox.push(publication(1)), Pushed::Dropped);
    }
}
