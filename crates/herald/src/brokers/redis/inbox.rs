//! What one connection's subscriptions receive, read by a task of its own and handed to the node
//! in bursts: every message already read (at most [`wakes::BURST`]) in one batch, so a subscriber
//! connection is woken once per burst and writes it with one syscall instead of one per
//! publication. The supervisor's probes and refreshes, which may wait up to the command timeout
//! on a stalled server or shard, never hold deliveries up.
//!
//! Nothing read after the node gave the connection up is delivered. Once a command on it failed
//! (`Inner::fail` clears `ready`) the node says it is down, yet a stalled connection that wakes
//! up still hands over what was published meanwhile. Delivered, those publications would move
//! the node's positions (see `delivery.rs`) up to the stream's, so the reconnect's gap check
//! would find nothing missing and the subscribers would never be told they were cut off. Left
//! undelivered, the gap check finds them missing and tells the subscribers, who recover them.

use super::Inner;
use crate::core::wakes;
use redis::Msg;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::Receiver;

/// The pub/sub traffic of one connection, queued by its push sender in the order it arrived
/// (at most `broker.max_queued_messages`: the push handler gives the connection up when it is
/// full).
pub(super) struct Inbox(pub(super) Receiver<Received>);

/// One item of an [`Inbox`].
pub(super) enum Received {
    Message(Msg),
    /// One of the cluster's shard connections was lost: what it read before is delivered before
    /// the probe follows the loss.
    ShardConnectionLost,
    /// The single Redis's pub/sub connection was lost, after what it read before.
    Closed,
}

impl Inbox {
    /// The next item; `None`: the connection closed.
    async fn next(&mut self) -> Option<Received> {
        self.0.recv().await
    }

    /// The next item if one is there already: `Some(None)` means the connection closed.
    fn next_ready(&mut self) -> Option<Option<Received>> {
        match self.0.try_recv() {
            Ok(item) => Some(Some(item)),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(None),
        }
    }
}

/// Delivers what the connection receives until it closes or the node gives it up; returns why
/// it stopped.
pub(super) async fn read(inner: Arc<Inner>, mut inbox: Inbox) -> String {
    while let Some(first) = inbox.next().await {
        let mut dropped = 0;
        let mut closed = false;
        let open = wakes::burst(
            first,
            || inbox.next_ready(),
            |item| match item {
                Received::Closed => closed = true,
                Received::Message(_) | Received::ShardConnectionLost if given_up(&inner) => {
                    dropped += 1;
                }
                Received::Message(msg) => {
                    inner.on_message(msg.get_channel_name(), msg.get_payload_bytes())
                }
                Received::ShardConnectionLost => inner.shard_connection_lost(),
            },
        );
        if dropped > 0 {
            tracing::debug!(
                dropped,
                "redis broker: not delivering what a connection given up still read"
            );
        }
        if !open || closed {
            break;
        }
        if given_up(&inner) {
            return "a command failed".into();
        }
    }
    "pub/sub connection closed".into()
}

/// Whether the node gave the connection up: `ready` is true from the end of the resubscription
/// until a command fails (`Inner::fail`) or the node stops.
fn given_up(inner: &Inner) -> bool {
    !inner.ready.load(Ordering::SeqCst)
}
