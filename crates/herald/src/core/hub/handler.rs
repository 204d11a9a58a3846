//! The hub as the broker's handler: what arrives from the broker (publications, joins and leaves,
//! controls, gap notices) is queued on the local subscribers.

use super::{Hub, PerFormat, Subscriber};
use crate::core::delivery::{BrokerHandler, Control};
use crate::core::outbox::OutItem;
use crate::core::wire::Wire;
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
                // Looked up on the first Pusher subscriber, so channels without any pay nothing.
                let sender = std::cell::OnceCell::new();
                match self.delta_patch(channel, &publication) {
                    None => self.fan_out(channel, |sub| {
                        let own = sub.wire == Wire::Pusher
                            && *sender.get_or_init(|| self.pusher_sender(&publication))
                                == Some(sub.handle.seq);
                        (!own).then(|| {
                            publication_item(sub, channel, &publication, &encoded, conflated)
                        })
                    }),
                    Some(patch) => {
                        self.deliver_with_delta(channel, &publication, &encoded, conflated, patch)
                    }
                }
            }
        }
    }

    fn handle_join(&self, channel: &str, info: &ClientInfo) {
        self.push_join_leave(channel, info, true);
    }

    fn handle_leave(&self, channel: &str, info: &ClientInfo) {
        self.push_join_leave(channel, info, false);
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
    let bytes = encoded.get(sub.wire, |wire| {
        wire.encode_publication(channel, publication)
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
    /// The local Pusher connection a publication names as its sender (`info.client`): Pusher
    /// never echoes an event to the connection that sent it, a client event or an API trigger
    /// naming its `socket_id`. Looked up once per fan-out, so subscribers compare numbers.
    fn pusher_sender(&self, publication: &Publication) -> Option<u64> {
        let client = &publication.info.as_ref()?.client;
        self.session(client)
            .filter(|h| h.wire == Wire::Pusher)
            .map(|h| h.seq)
    }

    /// A join or leave push for the subscribers that asked for them, encoded once per format.
    /// Pusher subscribers get the member itself: their session tells members (users) from
    /// connections.
    fn push_join_leave(&self, channel: &str, info: &ClientInfo, joined: bool) {
        let encoded = PerFormat::new();
        let member = std::cell::OnceCell::new();
        self.fan_out(channel, |sub| {
            sub.join_leave.then(|| {
                let Some(format) = sub.wire.format() else {
                    return OutItem::Member {
                        slot: sub.slot,
                        joined,
                        info: member.get_or_init(|| Arc::new(info.clone())).clone(),
                    };
                };
                let bytes = encoded.get(sub.wire, |_| {
                    let body = if joined {
                        PushBody::Join(info)
                    } else {
                        PushBody::Leave(info)
                    };
                    let mut out = Vec::new();
                    format.encode_push(channel, &body, &mut out);
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
