//! What arrives on a channel's subject, handed to the node: publications with history once and
//! in offset order (held up to [`REORDER_WINDOW`] for a missing one, then a gap notice), the rest
//! as they come; control messages; gap notices after the node may have missed publications.

use super::history::{self, Verdict};
use super::{Inner, REORDER_WINDOW};
use crate::brokers::wire::{self, Message};
use crate::brokers::{BrokerHandler, Control};
use futures_util::{FutureExt, StreamExt};
use herald_protocol::{Publication, StreamPosition};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

impl Inner {
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
    pub(super) fn note_read(&self, channel: &str, position: &StreamPosition) {
        if !self.channels.lock().contains_key(channel) {
            return;
        }
        self.orders
            .lock()
            .entry(channel.to_string())
            .or_default()
            .note_read(position);
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
    pub(super) fn report_gaps(&self) {
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
}

/// Subscribes to `subject` and spawns the task that hands its messages to the node (`channel`:
/// the channel it carries, `None` for control).
pub(super) async fn spawn_reader(
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
pub(super) async fn read_channel(inner: &Inner, channel: &str, sub: &mut async_nats::Subscriber) {
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
