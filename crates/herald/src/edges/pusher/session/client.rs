//! What a Pusher client publishes or proves itself: client events (`client-*`) on the private and
//! presence channels it is subscribed to, when its app allows them, and user sign-in.

use super::run::Close;
use super::PusherSession;
use crate::edges::pusher::events::{publication_data, publication_tags};
use herald_protocol::ClientInfo;
use herald_pusher::auth::verify_user_auth;
use herald_pusher::codes::ErrorCode;
use herald_pusher::incoming::ClientEvent;
use herald_pusher::outgoing;
use herald_pusher::user::UserData;
use std::time::Instant;

impl PusherSession {
    /// Publishes a client event to the channel's other subscribers, Pusher and Centrifugo alike.
    /// A refusal is a `pusher:error` naming why; the connection stays open.
    pub(super) async fn client_event(&mut self, event: ClientEvent) {
        let Some(app) = self.app.clone() else {
            return;
        };
        let name = event.channel.as_str();
        let refused = if !app.client_events {
            Some((
                None,
                "client events are not enabled for this app (pusher.apps[].client_events)".into(),
            ))
        } else if !event.channel.allows_client_events() {
            Some((
                None,
                format!("client events are allowed on private- and presence- channels only, not on {name}"),
            ))
        } else if !self.subs.contains_key(name) {
            Some((
                None,
                format!("subscribe to {name} before sending client events on it"),
            ))
        } else if !self.events.take(Instant::now()) {
            let code = ErrorCode::ClientEventRateLimit;
            Some((Some(code), code.message().to_string()))
        } else {
            let max = self.node.config().pusher.max_event_bytes;
            let size = event.data.as_deref().map_or(0, str::len);
            (size > max).then(|| {
                (
                    None,
                    format!(
                        "client event data is {size} bytes, over pusher.max_event_bytes ({max})"
                    ),
                )
            })
        };
        if let Some((code, message)) = refused {
            let reason = if code.is_some() {
                "client event rate"
            } else {
                "client event"
            };
            self.count_refusal(reason);
            self.queue_error(code, &message);
            return;
        }
        let Some(sub) = self.subs.get(name) else {
            return;
        };
        // On presence channels subscribers learn the sender's user id (`user_id`).
        let user = match &sub.presence {
            Some(presence) => presence.user_id().to_string(),
            None => self.user.clone().unwrap_or_default(),
        };
        let info = ClientInfo {
            user,
            client: self.socket_id().to_string(),
            conn_info: None,
            chan_info: None,
        };
        let user_id = sub
            .presence
            .is_some()
            .then(|| info.user.clone())
            .filter(|u| !u.is_empty());
        let herald = sub.herald.clone();
        let text = event.data.as_deref().unwrap_or("");
        let data = publication_data(text);
        let socket_id = info.client.clone();
        let published = self
            .node
            .publish(
                &herald,
                data,
                Some(info),
                publication_tags(&event.event),
                "client",
            )
            .await;
        match published {
            Ok(_) => {
                self.node.metrics.pusher_client_events.inc();
                let hooks = &self.node.hooks.pusher;
                hooks.client_event(
                    &app.id,
                    &herald,
                    &event.event,
                    text,
                    &socket_id,
                    user_id.as_deref(),
                );
            }
            Err(e) => {
                self.count_refusal("client event");
                self.queue_error(None, &format!("client event not published: {e}"));
            }
        }
    }

    /// `pusher:signin`: the app server signed `user_data` for this socket. The connection is then
    /// among the user's (server-side termination, `client.connections_per_user`), and may
    /// subscribe to the user's `#server-to-user-<id>` channel. A bad signature closes it (4009),
    /// as Pusher does.
    pub(super) fn signin(&mut self, auth: &str, user_data: &str) -> Result<(), Close> {
        let (Some(app), Some(handle)) = (self.app.clone(), self.handle.clone()) else {
            return Ok(());
        };
        let refuse = |this: &Self, message: String| {
            this.count_refusal("signin");
            Close::refused(ErrorCode::Unauthorized, message)
        };
        if let Err(e) =
            verify_user_auth(&app.key, &app.secret, &handle.client, user_data, Some(auth))
        {
            return Err(refuse(self, format!("signin: {e}")));
        }
        let user = UserData::parse(user_data).map_err(|e| refuse(self, e.to_string()))?;
        if let Some(current) = self.user.as_deref().filter(|u| *u != user.id) {
            // One identity per connection: its user channel and presence stay whose they are.
            let message = format!(
                "already signed in as {current:?}; connect again to sign in as another user"
            );
            self.count_refusal("signin");
            self.queue_error(None, &message);
            return Ok(());
        }
        if self.user.is_none() {
            let per_user = self.node.config().client.connections_per_user;
            if !self.node.hub.sign_in(&user.id, &handle, per_user) {
                return Err(refuse(
                    self,
                    format!(
                        "user {:?} has too many connections (client.connections_per_user)",
                        user.id
                    ),
                ));
            }
            self.user = Some(user.id.clone());
        }
        self.queue(outgoing::signin_success(user_data));
        if user.watchlist_truncated {
            let code = ErrorCode::WatchlistLimitExceeded;
            self.queue_error(Some(code), code.message());
        }
        Ok(())
    }
}
