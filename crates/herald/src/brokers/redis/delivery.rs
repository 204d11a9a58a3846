//! Delivery of what arrives on pub/sub to the node, once and in offset order, and the proof
//! after a reconnect (or a returned shard) that nothing was missed — or the gap notice to the
//! channel's subscribers ([`handle_gap`](crate::brokers::BrokerHandler::handle_gap)) so they
//! recover from history.

use super::Inner;
use crate::brokers::wire::{self, Message};
use crate::brokers::{BrokerError, Control};
use futures_util::StreamExt;
use herald_protocol::StreamPosition;
use std::sync::Arc;

/// What the node knows of a channel's stream from what it delivered and read, to prove after a
/// reconnect that its subscribers missed nothing.
#[derive(Default)]
pub(super) struct Seen {
    /// The last publication delivered from pub/sub (epoch, offset); dedupe and gap detection.
    delivered: Option<(String, u64)>,
    /// The first position a history read returned since the node listens to the channel (the
    /// oldest a subscriber may hold while nothing was delivered yet).
    read: Option<(String, u64)>,
}

impl Inner {
    /// Remembers the first position a history read returned, for the gap check after a reconnect.
    /// Offset 0 proves nothing was missed whatever the stream holds later (and a channel without
    /// a stream answers it): nothing to remember.
    pub(super) fn note_read(&self, channel: &str, position: &StreamPosition) {
        if position.offset == 0 || !self.subscribed.lock().contains(channel) {
            return;
        }
        let mut seen = self.seen.lock();
        let entry = seen.entry(channel.to_string()).or_default();
        let replace = match &entry.read {
            Some((epoch, _)) => epoch != &position.epoch,
            None => true,
        };
        if replace {
            entry.read = Some((position.epoch.clone(), position.offset));
        }
    }

    /// A message from pub/sub: `name` is the pub/sub channel.
    pub(super) fn on_message(&self, name: &str, payload: &[u8]) {
        let Some(handler) = self.handler() else {
            return;
        };
        if name == self.keys.control() {
            match serde_json::from_slice::<Control>(payload) {
                Ok(control) => handler.handle_control(&control),
                Err(e) => tracing::warn!(error = %e, "redis broker: malformed control message"),
            }
            return;
        }
        let Some(channel) = self.keys.channel_of(name) else {
            return;
        };
        let channel = channel.as_str();
        if !handler.has_subscribers(channel) {
            return;
        }
        match wire::decode(payload) {
            Ok(Message::Publication {
                offset,
                epoch,
                key,
                publication,
            }) => {
                if offset > 0 && !self.in_sequence(channel, &epoch, offset) {
                    return;
                }
                handler.handle_publication(channel, Arc::new(publication), key.as_deref());
            }
            Ok(Message::Join(info)) => handler.handle_join(channel, &info),
            Ok(Message::Leave(info)) => handler.handle_leave(channel, &info),
            Err(e) => tracing::warn!(%channel, error = %e, "redis broker: malformed message"),
        }
    }

    /// Whether a publication continues what the node delivered: duplicates (after a resubscribe)
    /// are dropped; a hole (publications lost while the connection was down) is reported to the
    /// channel's subscribers instead of being delivered over silently.
    fn in_sequence(&self, channel: &str, epoch: &str, offset: u64) -> bool {
        let mut seen = self.seen.lock();
        let entry = seen.entry(channel.to_string()).or_default();
        if let Some((last_epoch, last)) = &entry.delivered {
            if last_epoch == epoch {
                if offset <= *last {
                    return false;
                }
                if offset > *last + 1 {
                    entry.delivered = Some((epoch.to_string(), offset));
                    drop(seen);
                    self.report_gap(channel);
                    return false;
                }
            }
        }
        entry.delivered = Some((epoch.to_string(), offset));
        true
    }

    pub(super) fn report_gap(&self, channel: &str) {
        tracing::info!(%channel, "redis broker: possible gap, telling subscribers to recover");
        if let Some(metrics) = self.metrics.get() {
            metrics.broker_gaps.inc();
        }
        // Subscribers resubscribe from their own positions; what the node saw no longer matters.
        self.seen.lock().remove(channel);
        if let Some(handler) = self.handler() {
            handler.handle_gap(channel);
        }
    }

    /// After a reconnect: for every resubscribed channel, compare the stream's position in Redis
    /// with what the node delivered or read. Equal proves no gap; anything else is reported.
    pub(super) async fn check_gaps(&self, channels: &[String]) -> Result<(), BrokerError> {
        if channels.is_empty() {
            return Ok(());
        }
        // One read per channel, several at once: channels live in different slots on a cluster.
        // (epoch, offset) of each channel's stream, when it has one.
        type Top = (Option<String>, Option<u64>);
        let tops: Vec<Result<Top, BrokerError>> = futures_util::stream::iter(channels.to_vec())
            .map(|channel| async move {
                let (generation, mut conn) = self.conn()?;
                let cmd = redis::cmd("HMGET")
                    .arg(self.keys.meta(&channel))
                    .arg("e")
                    .arg("o")
                    .to_owned();
                self.timed(generation, cmd.query_async(&mut conn)).await
            })
            .buffered(64)
            .collect()
            .await;
        let tops = tops.into_iter().collect::<Result<Vec<_>, _>>()?;
        for (channel, (epoch, offset)) in channels.iter().zip(tops) {
            // What every current subscriber is known to have: pub/sub continuity when something
            // was delivered, else the first position a subscriber read.
            let known = self
                .seen
                .lock()
                .get(channel)
                .and_then(|s| s.delivered.clone().or_else(|| s.read.clone()));
            let top = offset.unwrap_or(0);
            let gap = match (known, epoch) {
                // No stream and nothing known: a channel without history, nothing to recover.
                (None, None) => false,
                // A stream the node never learned a position of: it cannot prove anything.
                (None, Some(_)) => top > 0,
                // The stream the subscribers hold positions in is gone.
                (Some(_), None) => true,
                // Behind the stream: publications were missed. Ahead of it: the stream lost its
                // newest entries (a cluster failover to a replica that had not received them)
                // and will hand their offsets out again.
                (Some((known_epoch, known)), Some(epoch)) => known_epoch != epoch || known != top,
            };
            tracing::trace!(%channel, top, gap, "redis broker: gap check");
            if gap {
                self.report_gap(channel);
            }
        }
        Ok(())
    }
}
