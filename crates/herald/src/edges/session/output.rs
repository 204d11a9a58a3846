//! Writing to the client: what the node left in the connection's outbox (publications not yet
//! seen, pushes, gaps, server-side commands) becomes pending messages, merged into as few frames
//! as possible and handed to the kernel as it takes them.

use super::positioning::{unseen, Unseen};
use super::subscribe::SubscribeParams;
use super::tokens::{seconds_left, ttl_field};
use super::{Close, Ending, Session};
use crate::brokers::Control;
use crate::core::clock::unix_secs;
use crate::core::outbox::OutItem;
use crate::edges::spare;
use bytes::Bytes;
use herald_protocol::{Disconnect, PushBody, UnsubscribeCode};
use std::time::{Duration, Instant};

/// Largest frame the server builds when it merges several messages into one.
pub(super) const MAX_BATCH_BYTES: usize = 64 * 1024;

/// Outbox items that wait on the hub or the broker.
enum Waits {
    Gap(u32),
    Control(Control),
}

impl Waits {
    fn into_item(self) -> OutItem {
        match self {
            Waits::Gap(slot) => OutItem::Gap { slot },
            Waits::Control(control) => OutItem::Control(control),
        }
    }
}

impl Session {
    /// Whether the output owed to the client (replies, pushes, pongs not yet handed to the
    /// kernel) has reached `client.max_outbox_bytes`.
    pub(super) fn output_full(&self) -> bool {
        self.pending_bytes + self.conn.queued_out() >= self.node.config().client.max_outbox_bytes
    }

    /// Tells the client the server ended its subscription to `channel`.
    pub(super) fn queue_unsubscribe(&mut self, channel: &str, code: UnsubscribeCode) {
        let mut out = Vec::new();
        let body = PushBody::Unsubscribe {
            code: code.code,
            reason: code.reason,
        };
        self.format.encode_push(channel, &body, &mut out);
        self.queue(Bytes::from(out));
    }

    /// Adds a message to what the next write sends.
    pub(super) fn queue(&mut self, message: Bytes) {
        self.pending_bytes += message.len();
        self.pending.push(message);
    }

    /// Starts writing pending messages (merged with newlines into as few frames as possible) once
    /// the previous write is done, and hands the kernel what it takes without waiting.
    pub(super) fn write_some(&mut self) -> Result<(), Close> {
        if !self.pending.is_empty() && !self.conn.is_writing() {
            let messages = std::mem::take(&mut self.pending);
            self.pending_bytes = 0;
            let (bytes, frames) = self.conn.queue_messages(&messages, MAX_BATCH_BYTES);
            spare::give_messages(messages);
            self.node.metrics.bytes_out.inc_by(bytes as u64);
            self.node.metrics.frames_out.inc_by(frames as u64);
        }
        match self.conn.try_write() {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, "websocket write failed");
                Err(Close::gone("write error"))
            }
        }
    }

    /// Turns what the node left in the outbox into pending messages; a full outbox (the client
    /// does not read fast enough) ends the connection. Publications and pushes, nearly all of
    /// it, are handled here without waiting or allocating per wake-up; returns `Some` when a
    /// gap or a server-side command (left at the front of `drained`) or a resync (the slots
    /// returned) needs [`Session::finish_outbox`].
    pub(super) fn take_outbox(&mut self) -> Result<Option<Vec<u32>>, Close> {
        let drained = match &self.handle {
            Some(handle) => handle.outbox.drain(&mut self.drained),
            None => return Ok(None),
        };
        if drained.overflowed {
            return Err(Disconnect::SLOW.into());
        }
        // Most items become one message: room for all at once, in a spare list when we hold none.
        if self.pending.capacity() == 0 {
            self.pending = spare::take_messages();
        }
        self.pending.reserve(self.drained.len());
        while let Some(item) = self.drained.pop_front() {
            if let Some(waits) = self.queue_item(item) {
                self.drained.push_front(waits.into_item());
                return Ok(Some(drained.resync));
            }
        }
        Ok((!drained.resync.is_empty()).then_some(drained.resync))
    }

    /// The rest of [`Session::take_outbox`]: gaps and server-side commands, which wait on the
    /// hub or the broker, then the resyncs of conflated subscriptions.
    pub(super) async fn finish_outbox(&mut self, resync: Vec<u32>) -> Result<(), Close> {
        let mut items = std::mem::take(&mut self.drained);
        let mut result = Ok(());
        while let Some(item) = items.pop_front() {
            match self.queue_item(item) {
                None => {}
                Some(Waits::Gap(slot)) => {
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
                Some(Waits::Control(control)) => {
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
            for slot in resync {
                self.resync(slot).await;
            }
        }
        result
    }

    /// Queues a publication or push the client has not seen; hands back what must wait.
    fn queue_item(&mut self, item: OutItem) -> Option<Waits> {
        match item {
            OutItem::Publication {
                slot,
                offset,
                bytes,
                segments,
                ..
            } => {
                let seen = self.slots.get(&slot).copied();
                match unseen(seen, offset, segments.as_deref()) {
                    Unseen::Nothing => {}
                    Unseen::All => self.queue(bytes),
                    // Zero-copy slices of the shared bytes.
                    Unseen::Newer(segments) => {
                        for segment in segments {
                            self.queue(bytes.slice(segment.start as usize..segment.end as usize));
                        }
                    }
                }
            }
            OutItem::DeltaPublication { slot, offset, push } => {
                self.queue_delta_publication(slot, offset, &push)
            }
            OutItem::Push { slot, bytes } => {
                if self.slots.contains_key(&slot) {
                    self.queue(bytes);
                }
            }
            // Only Pusher subscribers are handed members.
            OutItem::Member { .. } => {}
            OutItem::Gap { slot } => return Some(Waits::Gap(slot)),
            OutItem::Control(control) => return Some(Waits::Control(control)),
        }
        None
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
                    let push = self.format.encode_publication_push(&channel, &publication);
                    self.queue(push);
                }
            }
            Err(e) => {
                tracing::warn!(%channel, error = %e, "resync of a conflated subscription failed")
            }
        }
    }

    /// The server API extended the connection (to `expire_at`, Unix seconds; `None`: for good):
    /// the expiry moves, and the client learns it from a `refresh` push.
    fn refresh_by_server(&mut self, expire_at: Option<i64>) {
        let ttl = seconds_left(expire_at, unix_secs());
        self.expires_at = ttl.map(|secs| Instant::now() + Duration::from_secs(secs));
        let body = PushBody::Refresh {
            expires: ttl.is_some(),
            ttl: ttl_field(ttl),
        };
        let mut out = Vec::new();
        self.format.encode_push("", &body, &mut out);
        self.queue(Bytes::from(out));
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
                        let body = PushBody::Subscribe(&result);
                        self.format.encode_push(&channel, &body, &mut out);
                        self.queue(Bytes::from(out));
                    }
                    Err(code) => tracing::debug!(%channel, %code, "server-side subscribe refused"),
                }
                Ok(())
            }
            Control::Refresh {
                expired, expire_at, ..
            } => {
                if expired {
                    return Err(Disconnect::EXPIRED.into());
                }
                self.refresh_by_server(expire_at);
                Ok(())
            }
            // Delivered to the hub's inbox of the session, never to an outbox.
            Control::Emulation { .. } => Ok(()),
            Control::Unsubscribe { channel, .. } => {
                if self.unsubscribe_channel(&channel).await {
                    self.queue_unsubscribe(&channel, UnsubscribeCode::SERVER);
                }
                Ok(())
            }
        }
    }
}
