//! Delivery windows (storm control, docs/storm-control.md): a namespace with `batch_window` or
//! `max_rate` keeps one window per channel and node, bounded by `window_max_bytes`, holding only
//! the latest publication per key when conflated. At its end the window is encoded once, cut into
//! shared items, and queued on every subscriber. Windows end on a grid shared by every channel of
//! one interval, and one task flushes all windows due at an instant.

use super::{Hub, PerFormat, Segment};
use crate::config::NamespaceOptions;
use crate::core::outbox::OutItem;
use crate::core::wire::Wire;
use bytes::Bytes;
use herald_protocol::Publication;
use indexmap::IndexMap;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A channel's publications waiting for the end of its delivery interval.
pub(super) struct Window {
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
    pub(super) fn take(&mut self) -> (Vec<Arc<Publication>>, bool) {
        let all_keyed = self.plain.is_empty();
        let mut batch = std::mem::take(&mut self.plain);
        batch.extend(std::mem::take(&mut self.keyed).into_values());
        batch.sort_by_key(|p| p.offset);
        self.bytes = 0;
        (batch, all_keyed)
    }
}

/// Estimated size of a publication's encoded push in a window.
pub(super) fn window_cost(channel: &str, publication: &Publication) -> usize {
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
pub(super) const MAX_WINDOW_ITEM: usize = 64 * 1024;

/// A shared part of an encoded window: one frame's worth of publication pushes.
pub(super) struct WindowItem {
    bytes: Bytes,
    /// Where each publication starts and ends in `bytes`.
    segments: Arc<[Segment]>,
    /// The highest offset in `bytes`.
    offset: u64,
}

/// Encodes a window's publications in `format`, merged as that format merges messages in one
/// frame (JSON: newlines; Protobuf: concatenated), into items of at most `MAX_WINDOW_ITEM` bytes
/// (unless a single publication is larger). Each item records where every publication starts, so a
/// subscriber that already has some of them (from its subscribe reply) receives only the rest.
pub(super) fn encode_window(
    format: Wire,
    channel: &str,
    batch: &[Arc<Publication>],
) -> Vec<WindowItem> {
    let separator = format.separator();
    let mut items = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    let mut segments: Vec<Segment> = Vec::new();
    let mut cut = |out: &mut Vec<u8>, segments: &mut Vec<Segment>| {
        let segments: Arc<[Segment]> = std::mem::take(segments).into();
        items.push(WindowItem {
            bytes: Bytes::from(std::mem::take(out)),
            offset: segments.iter().map(|s| s.offset).max().unwrap_or(0),
            segments,
        });
    };
    for publication in batch {
        let encoded = format.encode_publication(channel, publication);
        if !out.is_empty() && out.len() + separator.len() + encoded.len() > MAX_WINDOW_ITEM {
            cut(&mut out, &mut segments);
        }
        if !out.is_empty() {
            out.extend_from_slice(separator);
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
        cut(&mut out, &mut segments);
    }
    items
}

impl Hub {
    pub(super) fn new_window(ns: &NamespaceOptions) -> Option<Arc<Window>> {
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

    /// Delivers a window's publications as shared items, encoded once per format on first need
    /// ([`encode_window`]).
    pub(super) fn deliver_batch(
        &self,
        channel: &str,
        batch: Vec<Arc<Publication>>,
        conflated: bool,
    ) {
        let encoded = PerFormat::new();
        self.fan_out(channel, |sub| {
            let items = encoded.get(sub.wire, |wire| encode_window(wire, channel, &batch));
            let slot = sub.slot;
            items.iter().map(move |item| OutItem::Publication {
                slot,
                offset: item.offset,
                bytes: item.bytes.clone(),
                conflated,
                segments: Some(item.segments.clone()),
            })
        });
    }

    pub(super) fn window_of(&self, channel: &str) -> Option<Option<Arc<Window>>> {
        self.shard(channel)
            .read()
            .get(channel)
            .map(|entry| entry.window.clone())
    }

    /// Adds a publication to a channel's window; delivers early when the window is full, and
    /// otherwise makes sure a flush is scheduled for the window's end. Deliveries happen under the
    /// window's lock, so an early and a scheduled delivery of one channel never overtake each other.
    pub(super) fn add_to_window(
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
    pub(super) fn on_grid(&self, at: Instant, interval: Duration) -> Instant {
        let step = interval.as_nanos().max(1);
        let since = at.saturating_duration_since(self.grid_start).as_nanos();
        let steps = since.div_ceil(step);
        let offset = u64::try_from(steps.saturating_mul(step)).unwrap_or(u64::MAX);
        self.grid_start + Duration::from_nanos(offset)
    }

    /// Queues a window's flush at `due`; one task per distinct instant flushes every window due
    /// then, with the connections' wake-ups batched (crate::core::wakes).
    pub(super) fn schedule_flush(&self, due: Instant, channel: &str, window: Arc<Window>) {
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
}
