//! Subscriptions: a channel's signature checked as the app server made it, then the hub, the
//! broker, presence (members are users: one member however many connections it has) and, on
//! cache channels, the last event replayed. A refused subscription gets a
//! `pusher:subscription_error` on its channel; the connection stays open.

use super::{PusherSession, Subscription};
use crate::core::wire::pusher_event;
use herald_protocol::ClientInfo;
use herald_pusher::auth::verify_channel_auth;
use herald_pusher::channel::ChannelKind;
use herald_pusher::incoming::Subscribe;
use herald_pusher::outgoing;
use herald_pusher::user::{PresenceMember, MAX_USER_INFO_BYTES};
use serde_json::value::RawValue;
use std::collections::{HashMap, HashSet};

/// A presence subscription: this connection's member, and the channel's members as this
/// connection has learned them (the connections of each user, so a user with two connections
/// is added once and removed when its last one leaves).
pub(super) struct Presence {
    user_id: String,
    members: HashMap<String, (Option<Box<RawValue>>, HashSet<String>)>,
    /// Connections tracked in `members`, bounded.
    tracked: usize,
    max_tracked: usize,
}

/// Connections tracked per member allowed, on average, before joins are no longer tracked
/// (a bound on what one presence channel makes each subscriber hold).
const CONNECTIONS_PER_MEMBER: usize = 16;

impl Presence {
    fn new(user_id: String, max_members: usize) -> Presence {
        Presence {
            user_id,
            members: HashMap::new(),
            tracked: 0,
            max_tracked: max_members.saturating_mul(CONNECTIONS_PER_MEMBER).max(64),
        }
    }

    /// Adds a connection; true when its user was not a member before.
    pub(super) fn join(&mut self, info: &ClientInfo) -> bool {
        if self.tracked >= self.max_tracked && !self.members.contains_key(&info.user) {
            return false;
        }
        let (_, clients) = self
            .members
            .entry(info.user.clone())
            .or_insert_with(|| (info.chan_info.clone(), HashSet::new()));
        let new_member = clients.is_empty();
        if clients.insert(info.client.clone()) {
            self.tracked += 1;
        }
        new_member
    }

    /// Removes a connection; true when it was its user's last.
    pub(super) fn leave(&mut self, info: &ClientInfo) -> bool {
        let Some((_, clients)) = self.members.get_mut(&info.user) else {
            return false;
        };
        if clients.remove(&info.client) {
            self.tracked -= 1;
        }
        if clients.is_empty() {
            self.members.remove(&info.user);
            return true;
        }
        false
    }

    pub(super) fn user_id(&self) -> &str {
        &self.user_id
    }

    /// Whether `user` is this connection's own member (Pusher does not tell a member about
    /// itself).
    pub(super) fn is_self(&self, user: &str) -> bool {
        self.user_id == user
    }

    fn succeeded(&self, channel: &str) -> String {
        let members: Vec<PresenceMember> = self
            .members
            .iter()
            .map(|(user_id, (info, _))| member(user_id, info.as_deref()))
            .collect();
        outgoing::presence_subscription_succeeded(channel, members.iter())
    }
}

/// A presence entry's user as a Pusher member: its channel info is the member's `user_info`.
pub(super) fn member(user_id: &str, chan_info: Option<&RawValue>) -> PresenceMember {
    PresenceMember {
        user_id: user_id.to_string(),
        user_info: chan_info.and_then(|raw| serde_json::from_str(raw.get()).ok()),
    }
}

/// Why a subscription was refused: the `pusher:subscription_error` it becomes.
struct Refusal {
    kind: &'static str,
    status: u16,
    message: String,
}

impl Refusal {
    fn new(kind: &'static str, status: u16, message: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            status,
            message: message.into(),
        }
    }

    fn auth(message: impl Into<String>) -> Refusal {
        Refusal::new("AuthError", 401, message)
    }

    fn unavailable(e: impl std::fmt::Display) -> Refusal {
        Refusal::new("ServerError", 503, format!("try again: {e}"))
    }
}

impl PusherSession {
    pub(super) async fn subscribe(&mut self, request: Subscribe) {
        let name = request.channel.as_str().to_string();
        // pusher-js unsubscribes before subscribing again: a repeat changes nothing.
        if self.subs.contains_key(&name) {
            return;
        }
        if let Err(refusal) = self.try_subscribe(&request).await {
            let reason = match refusal.status {
                401 | 400 => "subscribe auth",
                503 => "subscribe unavailable",
                _ => "subscribe limit",
            };
            self.count_refusal(reason);
            self.queue(outgoing::subscription_error(
                &name,
                refusal.kind,
                &refusal.message,
                refusal.status,
            ));
        }
    }

    /// The member a presence subscription joins as, from the signed `channel_data`.
    fn presence_member(request: &Subscribe) -> Result<PresenceMember, Refusal> {
        let data = request
            .channel_data
            .as_deref()
            .ok_or_else(|| Refusal::new("AuthError", 400, "presence channels need channel_data"))?;
        let member = PresenceMember::from_channel_data(data)
            .map_err(|e| Refusal::new("AuthError", 400, e.to_string()))?;
        if member.user_info_len() > MAX_USER_INFO_BYTES {
            return Err(Refusal::new(
                "AuthError",
                400,
                format!("channel_data.user_info is over {MAX_USER_INFO_BYTES} bytes"),
            ));
        }
        Ok(member)
    }

    /// Checks who may subscribe: signatures for private and presence channels, the signed-in
    /// user for its own `#server-to-user-` channel.
    fn authorize(&self, request: &Subscribe) -> Result<(), Refusal> {
        let Some(app) = &self.app else {
            return Err(Refusal::auth("no app"));
        };
        let channel = &request.channel;
        if channel.kind() == ChannelKind::ServerToUser {
            if channel.server_to_user_id() != self.user.as_deref() {
                return Err(Refusal::new(
                    "AuthError",
                    403,
                    "sign in as this user before subscribing to its channel",
                ));
            }
            return Ok(());
        }
        if channel.requires_auth() {
            let channel_data = channel
                .is_presence()
                .then_some(request.channel_data.as_deref())
                .flatten();
            verify_channel_auth(
                &app.key,
                &app.secret,
                self.socket_id(),
                channel.as_str(),
                channel_data,
                request.auth.as_deref(),
            )
            .map_err(|e| Refusal::auth(e.to_string()))?;
        }
        Ok(())
    }

    async fn try_subscribe(&mut self, request: &Subscribe) -> Result<(), Refusal> {
        let (Some(app), Some(handle)) = (self.app.clone(), self.handle.clone()) else {
            return Err(Refusal::auth("not connected"));
        };
        let max_channels = self.node.config().client.max_channels;
        if self.subs.len() >= max_channels {
            return Err(Refusal::new(
                "LimitReached",
                403,
                format!("at most {max_channels} channels per connection (client.max_channels)"),
            ));
        }
        self.authorize(request)?;
        let channel = &request.channel;
        let member = if channel.is_presence() {
            Some(Self::presence_member(request)?)
        } else {
            None
        };
        let name = channel.as_str().to_string();
        let herald = app.herald_channel(&name);
        let node = self.node.clone();
        node.namespaces
            .resolve(&herald)
            .map_err(|e| Refusal::new("SubscriptionError", 400, e.to_string()))?;
        let slot = self.next_slot;
        self.next_slot = self.next_slot.wrapping_add(1);
        // Registered before presence and history are read: what happens meanwhile arrives
        // through the outbox (members are sets, so a join seen twice counts once).
        let first = node
            .hub
            .add_subscriber(&herald, &handle, slot, member.is_some(), false);
        self.slots.insert(slot, name.clone());
        if let Err(e) = node.broker.subscribe(&herald).await {
            self.rollback(&herald, slot).await;
            return Err(Refusal::unavailable(e));
        }
        if first {
            node.hooks.channel_occupied(&herald);
        }
        let presence = match member {
            Some(member) => match self.join_presence(&app, &herald, member).await {
                Ok(presence) => Some(presence),
                Err(refusal) => {
                    self.rollback(&herald, slot).await;
                    return Err(refusal);
                }
            },
            None => None,
        };
        let succeeded = match &presence {
            Some(presence) => presence.succeeded(&name),
            None => outgoing::subscription_succeeded(&name),
        };
        self.queue(succeeded);
        self.subs.insert(
            name.clone(),
            Subscription {
                slot,
                herald: herald.clone(),
                presence,
            },
        );
        if channel.is_cache() {
            self.replay_cache(&name, &herald).await;
        }
        Ok(())
    }

    /// Reads the channel's members, refuses a new member past the app's limit, then joins.
    async fn join_presence(
        &mut self,
        app: &crate::config::PusherApp,
        herald: &str,
        member: PresenceMember,
    ) -> Result<Presence, Refusal> {
        let node = self.node.clone();
        let current = node
            .presence
            .get(herald)
            .await
            .map_err(Refusal::unavailable)?;
        let mut presence = Presence::new(member.user_id.clone(), app.max_presence_members);
        for info in current.values() {
            presence.join(info);
        }
        if !presence.members.contains_key(&member.user_id)
            && presence.members.len() >= app.max_presence_members
        {
            return Err(Refusal::new(
                "LimitReached",
                403,
                format!(
                    "presence channel is full: {} members (pusher.apps[].max_presence_members)",
                    app.max_presence_members
                ),
            ));
        }
        let info = ClientInfo {
            user: member.user_id,
            client: self.socket_id().to_string(),
            conn_info: None,
            chan_info: member
                .user_info
                .and_then(|v| RawValue::from_string(v.to_string()).ok()),
        };
        node.presence
            .add(herald, info.clone())
            .await
            .map_err(Refusal::unavailable)?;
        presence.join(&info);
        node.announce_member(herald, &info.user, true).await;
        if let Err(e) = node.broker.publish_join(herald, &info).await {
            tracing::warn!(channel = %herald, error = %e, "join event not published");
        }
        node.hooks.join(herald, &info);
        Ok(presence)
    }

    /// A cache channel's last event for a new subscriber, or `pusher:cache_miss`.
    async fn replay_cache(&mut self, name: &str, herald: &str) {
        let last = match crate::edges::pusher::cache::last_event(&self.node, herald).await {
            Ok(last) => last,
            Err(e) => {
                tracing::warn!(channel = %herald, error = %e, "cache channel not read");
                None
            }
        };
        match last {
            Some(publication) => self.queue(pusher_event(herald, &publication)),
            None => {
                if let Some(app) = &self.app {
                    self.node.hooks.pusher.cache_miss(&app.id, herald);
                }
                self.queue(outgoing::cache_miss(name));
            }
        }
    }

    async fn rollback(&mut self, herald: &str, slot: u32) {
        self.slots.remove(&slot);
        if let Some(handle) = &self.handle {
            if self.node.hub.remove_subscriber(herald, handle.seq) {
                self.node.broker.unsubscribe(herald).await;
            }
        }
    }

    /// Leaves a channel by its Pusher name; false when not subscribed.
    pub(super) async fn unsubscribe_channel(&mut self, name: &str) -> bool {
        let Some(sub) = self.subs.remove(name) else {
            return false;
        };
        self.slots.remove(&sub.slot);
        let node = self.node.clone();
        if let Some(handle) = &self.handle {
            if node.hub.remove_subscriber(&sub.herald, handle.seq) {
                node.hooks.channel_vacated(&sub.herald);
                node.broker.unsubscribe(&sub.herald).await;
            }
        }
        if let Some(presence) = sub.presence {
            let info = ClientInfo {
                user: presence.user_id.clone(),
                client: self.socket_id().to_string(),
                conn_info: None,
                chan_info: presence
                    .members
                    .get(&presence.user_id)
                    .and_then(|(info, _)| info.clone()),
            };
            node.hooks.leave(&sub.herald, &info);
            if let Err(e) = node.presence.remove(&sub.herald, &info.client).await {
                tracing::warn!(channel = %sub.herald, error = %e, "presence not removed");
            }
            node.announce_member(&sub.herald, &info.user, false).await;
            if let Err(e) = node.broker.publish_leave(&sub.herald, &info).await {
                tracing::warn!(channel = %sub.herald, error = %e, "leave event not published");
            }
        }
        true
    }
}

/// The members of a presence snapshot, one per user (for tests of the counting).
#[cfg(test)]
fn members_of(infos: &std::collections::BTreeMap<String, ClientInfo>) -> usize {
    let mut presence = Presence::new("me".into(), 100);
    for info in infos.values() {
        presence.join(info);
    }
    presence.members.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(user: &str, client: &str) -> ClientInfo {
        ClientInfo {
            user: user.into(),
            client: client.into(),
            conn_info: None,
            chan_info: None,
        }
    }

    #[test]
    fn members_are_users_and_leave_with_their_last_connection() {
        let mut p = Presence::new("me".into(), 100);
        assert!(p.join(&info("a", "1.1")));
        assert!(!p.join(&info("a", "1.2")), "a second connection of a");
        assert!(!p.join(&info("a", "1.2")), "the same join twice");
        assert!(p.join(&info("b", "2.1")));
        assert!(!p.leave(&info("a", "1.1")));
        assert!(p.leave(&info("a", "1.2")), "a's last connection");
        assert!(!p.leave(&info("a", "1.2")), "already gone");
        assert_eq!(p.members.len(), 1);
        assert_eq!(p.tracked, 1);
        let snapshot: std::collections::BTreeMap<String, ClientInfo> = [
            ("1".to_string(), info("a", "1")),
            ("2".to_string(), info("a", "2")),
            ("3".to_string(), info("b", "3")),
        ]
        .into();
        assert_eq!(members_of(&snapshot), 2);
    }

    #[test]
    fn tracking_is_bounded() {
        let mut p = Presence::new("me".into(), 1);
        for i in 0..1000 {
            p.join(&info(&format!("u{i}"), &format!("{i}.0")));
        }
        assert_eq!(p.tracked, 64);
        // Connections of a known member are still tracked past the bound.
        assert!(!p.join(&info("u0", "0.1")));
        assert_eq!(p.members["u0"].1.len(), 2);
    }
}
