//! The hub as the broker's handler: what arrives from the broker (publications, joins and leaves,
//! controls, gap notices) is queued on the local subscribers.

use super::{Hub, PerFormat, Subscriber};
use crate::core::delivery::{BrokerHandler, Control};
use crate::core::outbox::OutItem;
use bytes::Bytes;
use herald_protocol::{ClientInfo, Publication, PushBody};
use std::sync::Arc;

impl BrokerHandler for Hub {
    fn handle_publication(&self, channel: &str, publication: Arc<Publication>, key: Option<&str>) {
        match self.window_of(channel) {
            // No local subscriber: nothing to do.
            None => {}
            Some(Some(window)) => self.add_to_window(channel, window, publication, key),
            Some(None) => {
                let encoded = PerFormat::new();
                let conflated = key.is_some();
                match self.delta_patch(channel, &publication) {
                    None => self.fan_out(channel, |sub| {
                        Some(publication_item(
                            sub,
                            channel,
                            &publication,
                            &encoded,
                            conflated,
                        ))
                    }),
                    Some(patch) => {
                        self.deliver_with_delta(channel, &publication, &encoded, conflated, patch)
                    }
                }
            }
        }
    }

    fn handle_join(&self, channel: &str, info: &ClientInfo) {
        self.push_join_leave(channel, &PushBody::Join(info));
    }

    fn handle_leave(&self, channel: &str, info: &ClientInfo) {
        self.push_join_leave(channel, &PushBody::Leave(info));
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
            | Control::Disconnect { user, client, .. }
            | Control::Refresh { user, client, .. } => (user, client.as_deref()),
            Control::Emulation { session, data, .. } => {
                // Dropped when the session is not here or its inbox is full: the sender already
                // answered, and the client's command times out as over a lost connection.
                if let Some(inbox) = self.emulation_inbox(session) {
                    let _ = inbox.push_forwarded(data);
                }
                return;
            }
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

/// A publication for a subscriber without delta compression, in its format (encoded once per
/// format in `encoded`).
pub(super) fn publication_item(
    sub: &Subscriber,
    channel: &str,
    publication: &Publication,
    encoded: &PerFormat<Bytes>,
    conflated: bool,
) -> OutItem {
    let bytes = encoded.get(sub.format, |format| {
        format.encode_publication_push(channel, publication)
    });
    OutItem::Publication {
        slot: sub.slot,
        offset: publication.offset,
        bytes: bytes.clone(),
        conflated,
        segments: None,
    }
}

impl Hub {
    /// A join or leave push for the subscribers that asked for them, encoded once per format.
    fn push_join_leave(&self, channel: &str, body: &PushBody<'_>) {
        let encoded = PerFormat::new();
        self.fan_out(channel, |sub| {
            sub.join_leave.then(|| {
                let bytes = encoded.get(sub.format, |format| {
                    let mut out = Vec::new();
                    format.encode_push(channel, body, &mut out);
                    Bytes::from(out)
                });
                OutItem::Push {
                    slot: sub.slot,
                    bytes: bytes.clone(),
                }
            })
        });
    }
}
