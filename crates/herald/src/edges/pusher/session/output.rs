//! Writing to the client: what the node left in the connection's outbox becomes messages, one
//! Pusher event each. Publications were encoded for Pusher by the hub; presence joins and leaves
//! become `member_added`/`member_removed` once per user; server-side disconnects close.

use super::run::Close;
use super::subscribe::member;
use super::PusherSession;
use crate::core::delivery::Control;
use crate::core::outbox::OutItem;
use herald_protocol::ClientInfo;
use herald_pusher::codes::ErrorCode;
use herald_pusher::outgoing;

/// Centrifugo disconnect codes from here up tell a client not to reconnect.
const NO_RECONNECT_FROM: u16 = 3500;

impl PusherSession {
    /// Turns the outbox into pending messages; a full outbox (the client does not read fast
    /// enough) ends the connection (4100: back off, then reconnect).
    pub(super) async fn take_outbox(&mut self) -> Result<(), Close> {
        let Some(handle) = self.handle.clone() else {
            return Ok(());
        };
        let drained = handle.outbox.drain(&mut self.drained);
        if drained.overflowed {
            return Err(Close::slow());
        }
        while let Some(item) = self.drained.pop_front() {
            match item {
                OutItem::Publication {
                    slot,
                    bytes,
                    segments,
                    ..
                } => {
                    if !self.slots.contains_key(&slot) {
                        continue;
                    }
                    match segments {
                        // A window's worth: each event its own message.
                        Some(segments) => {
                            for s in segments.iter() {
                                self.queue(bytes.slice(s.start as usize..s.end as usize));
                            }
                        }
                        None => self.queue(bytes),
                    }
                }
                OutItem::Member { slot, joined, info } => self.member(slot, joined, &info),
                OutItem::Control(control) => self.control(control)?,
                // Centrifugo pushes, patches and gap notices are never queued for Pusher: a
                // Pusher client has no recovery to resume from a gap.
                OutItem::Push { .. } | OutItem::DeltaPublication { .. } | OutItem::Gap { .. } => {}
            }
        }
        Ok(())
    }

    /// A connection joined or left a presence channel: the client hears of users, not
    /// connections, and never of itself.
    fn member(&mut self, slot: u32, joined: bool, info: &ClientInfo) {
        let Some(name) = self.slots.get(&slot).cloned() else {
            return;
        };
        let Some(presence) = self
            .subs
            .get_mut(&name)
            .and_then(|sub| sub.presence.as_mut())
        else {
            return;
        };
        let message = if joined {
            let new_member = presence.join(info) && !presence.is_self(&info.user);
            new_member.then(|| {
                let member = member(&info.user, info.chan_info.as_deref());
                outgoing::member_added(&name, &member)
            })
        } else {
            let gone = presence.leave(info) && !presence.is_self(&info.user);
            gone.then(|| outgoing::member_removed(&name, &info.user))
        };
        if let Some(message) = message {
            self.queue(message);
        }
    }

    /// Server-side commands: a disconnect (the server API's, or a Pusher user termination)
    /// closes; Pusher has no server-side subscriptions or expiry, so the rest do nothing.
    fn control(&mut self, control: Control) -> Result<(), Close> {
        match control {
            Control::Disconnect { code, reason, .. } => {
                let code = if code >= NO_RECONNECT_FROM {
                    ErrorCode::Unauthorized
                } else {
                    ErrorCode::ReconnectImmediately
                };
                Err(Close::server(code, reason))
            }
            Control::Subscribe { .. }
            | Control::Unsubscribe { .. }
            | Control::Refresh { .. }
            | Control::Emulation { .. } => Ok(()),
        }
    }
}
