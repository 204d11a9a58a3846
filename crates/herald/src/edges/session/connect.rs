//! `connect` and `refresh`: who the client is (connection token, connect hook, or anonymous), when
//! its connection expires, its registration with the hub, and its server-side subscriptions.

use super::subscribe::SubscribeParams;
use super::tokens::{connect_token, connection_ttl, refresh_token, ttl_field};
use super::{Close, Handled, Session};
use crate::core::channel::personal_channel;
use crate::core::clock::unix_secs;
use crate::core::outbox::Outbox;
use crate::core::session_handle::SessionHandle;
use crate::hooks::proxy::Hook;
use herald_protocol::command::{ConnectRequest, RefreshRequest};
use herald_protocol::{
    single_line, ConnectResult, Disconnect, ErrorCode, RefreshResult, ReplyBody, SubscribeResult,
};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What connecting grants besides the identity (which goes straight into the session).
#[derive(Default)]
struct Admission {
    /// UNIX seconds (none: never).
    expires_at: Option<i64>,
    /// The connect hook's `data`, for the connect reply.
    data: Option<Box<RawValue>>,
    /// Server-side subscriptions.
    channels: Vec<(String, SubscribeParams)>,
}

impl Session {
    pub(super) async fn connect(&mut self, req: ConnectRequest) -> Handled {
        if self.handle.is_some() {
            return Err(Disconnect::BAD_REQUEST.into());
        }
        let node = self.node.clone();
        let client_id = uuid::Uuid::new_v4().to_string();
        let admission = self.admit(&req, &client_id).await?;
        // Read after the connect hook answered: a reload meanwhile applies to this connection.
        let config = node.config();
        let client_config = &config.client;
        let ttl = connection_ttl(admission.expires_at, unix_secs())?;
        self.expires_at = ttl.map(|secs| Instant::now() + Duration::from_secs(secs));
        let mut server_channels = admission.channels;
        if !self.user.is_empty() {
            server_channels.insert(
                0,
                (personal_channel(&self.user), SubscribeParams::default()),
            );
        }
        let handle = Arc::new(SessionHandle {
            seq: node.next_seq(),
            client: client_id,
            user: self.user.clone(),
            wire: self.format.into(),
            transport: self.conn.name(),
            outbox: Outbox::new(
                client_config.max_outbox_bytes,
                client_config.max_outbox_messages,
                node.metrics.outbox_bytes.clone(),
                client_config.outbox_budget,
            ),
        });
        if !node
            .hub
            .try_add_session(handle.clone(), client_config.connections_per_user)
        {
            return Err(Disconnect::CONNECTION_LIMIT.into());
        }
        self.handle = Some(handle.clone());
        self.next_ping = Instant::now() + client_config.ping_interval;
        let subs = self.subscribe_server_side(server_channels, &req).await?;
        Ok(ReplyBody::Connect(ConnectResult {
            client: handle.client.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            expires: ttl.is_some(),
            ttl: ttl_field(ttl),
            data: admission.data,
            subs,
            ping: node.config().client.ping_interval.as_secs().max(1) as u32,
            pong: !self.conn.unidirectional(),
            // An emulated connection's commands name the node that holds it (its unique id).
            node: match self.conn.emulation_session() {
                Some(_) => node.uid.clone(),
                None => node.name.clone(),
            },
            session: self
                .conn
                .emulation_session()
                .unwrap_or_default()
                .to_string(),
            time: 0,
        }))
    }

    /// Finds out who the client is: the connect hook for a token-less client when there is one,
    /// otherwise its connection token, or anonymous when allowed. Sets the session's user,
    /// connection info and (from the hook) meta.
    async fn admit(&mut self, req: &ConnectRequest, client_id: &str) -> Handled<Admission> {
        let node = self.node.clone();
        let connect_proxy = node.hooks.proxy_for(Hook::Connect);
        let mut admission = Admission::default();
        if let (true, Some(proxy)) = (req.token.is_empty(), connect_proxy) {
            let identity = self.connect_by_backend(&proxy, req, client_id).await?;
            self.user = identity.user;
            self.conn_info = identity.info;
            self.meta = identity.meta;
            admission.expires_at = identity.expire_at;
            admission.data = identity.data;
            for (channel, chan_info, data) in identity.channels {
                let params = SubscribeParams {
                    chan_info,
                    data,
                    ..Default::default()
                };
                admission.channels.push((channel, params));
            }
        } else if req.token.is_empty() {
            if !node.config().client.allow_anonymous {
                return Err(Disconnect::INVALID_TOKEN.into());
            }
        } else {
            let claims = connect_token(node.verifier.verify_connect(&req.token))?;
            self.user = claims.sub.clone();
            self.conn_info = claims.info.clone().map(single_line);
            admission.expires_at = claims.connection_expires_at();
            // As in Centrifugo: `subs` when given, `channels` otherwise.
            if claims.subs.is_empty() {
                for channel in &claims.channels {
                    let params = SubscribeParams::default();
                    admission.channels.push((channel.clone(), params));
                }
            } else {
                for (channel, options) in &claims.subs {
                    let params = SubscribeParams {
                        chan_info: options.info.clone().map(single_line),
                        data: options.data.clone().map(single_line),
                        ..Default::default()
                    };
                    admission.channels.push((channel.clone(), params));
                }
            }
        }
        Ok(admission)
    }

    /// Subscribes a new connection to its server-side channels. One refused is logged and left
    /// out; an unreachable broker closes the connection instead.
    async fn subscribe_server_side(
        &mut self,
        channels: Vec<(String, SubscribeParams)>,
        req: &ConnectRequest,
    ) -> Result<BTreeMap<String, SubscribeResult>, Close> {
        let mut subs = BTreeMap::new();
        for (channel, mut params) in channels {
            // A reconnecting SDK sends the positions of its server-side subscriptions.
            if let Some(previous) = req.subs.get(&channel) {
                params.position.recover = previous.recover;
                params.position.recoverable = previous.recover;
                params.position.offset = previous.offset;
                params.position.epoch = previous.epoch.clone();
            }
            match self.subscribe_channel(&channel, params, true).await {
                Ok(result) => {
                    subs.insert(channel, result);
                }
                // The broker is unreachable: a connection without its server-side channels
                // would miss their publications silently, so it is told to come back later
                // (SDKs reconnect after 3010, possibly to another node).
                Err(ErrorCode::Internal) if !self.node.broker.is_ready() => {
                    return Err(Disconnect::INSUFFICIENT_STATE.into());
                }
                Err(code) => {
                    tracing::warn!(%channel, %code, user = %self.user, "server-side subscription refused")
                }
            }
        }
        Ok(subs)
    }

    /// A new connection token: the connection's expiry moves to the token's.
    pub(super) fn refresh(&mut self, req: RefreshRequest) -> Handled {
        let verified = self.node.verifier.verify_connect(&req.token);
        let ttl = refresh_token(verified, &self.user, unix_secs())?;
        self.expires_at = ttl.map(|secs| Instant::now() + Duration::from_secs(secs));
        Ok(ReplyBody::Refresh(RefreshResult {
            client: self.client_id().to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            expires: ttl.is_some(),
            ttl: ttl_field(ttl),
        }))
    }
}
