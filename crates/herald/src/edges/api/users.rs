//! Methods acting on users' connections: `subscribe` and `unsubscribe` (server-side), `disconnect`,
//! `refresh`, and `connections`.

use super::params::{
    refuse_narrowing, require_channel, ConnectionsParams, DisconnectParams, RefreshParams,
    UserChannelParams,
};
use super::ApiError;
use crate::brokers::Control;
use crate::node::{broker_error, Node};
use serde_json::{json, Value};

pub(super) async fn control(
    node: &Node,
    p: UserChannelParams,
    subscribe: bool,
) -> Result<Value, ApiError> {
    if p.user.is_empty() && p.client.is_none() {
        return Err(ApiError::bad("field \"user\" (or \"client\") is required"));
    }
    refuse_narrowing(p.session.as_deref(), &[])?;
    require_channel(&p.channel)?;
    node.namespaces.resolve(&p.channel)?;
    let control = if subscribe {
        Control::Subscribe {
            user: p.user,
            client: p.client,
            channel: p.channel,
        }
    } else {
        Control::Unsubscribe {
            user: p.user,
            client: p.client,
            channel: p.channel,
        }
    };
    node.broker
        .publish_control(control)
        .await
        .map_err(broker_error)?;
    Ok(json!({}))
}

pub(super) async fn disconnect(node: &Node, p: DisconnectParams) -> Result<Value, ApiError> {
    if p.user.is_empty() && p.client.is_none() {
        return Err(ApiError::bad("field \"user\" (or \"client\") is required"));
    }
    refuse_narrowing(
        p.session.as_deref(),
        p.whitelist.as_deref().unwrap_or_default(),
    )?;
    let (code, reason) = match p.disconnect {
        Some(spec) => {
            if !(3000..=4999).contains(&spec.code) {
                return Err(ApiError::bad("disconnect.code must be within 3000..=4999"));
            }
            if spec.reason.len() > 100 {
                return Err(ApiError::bad("disconnect.reason must be at most 100 bytes"));
            }
            (spec.code, spec.reason)
        }
        None => {
            let d = herald_protocol::Disconnect::FORCE_NO_RECONNECT;
            (d.code, d.reason.to_string())
        }
    };
    node.broker
        .publish_control(Control::Disconnect {
            user: p.user,
            client: p.client,
            code,
            reason,
        })
        .await
        .map_err(broker_error)?;
    Ok(json!({}))
}

/// Centrifugo's `refresh`: a backend that manages expiry itself moves a user's (or one
/// connection's) expiry, or ends it as expired (3005 "token expired": the SDK gets a new token).
pub(super) async fn refresh(node: &Node, p: RefreshParams) -> Result<Value, ApiError> {
    if p.user.is_empty() {
        return Err(ApiError::bad("field \"user\" is required"));
    }
    refuse_narrowing(p.session.as_deref(), &[])?;
    let expire_at = p.expire_at.unwrap_or(0);
    if expire_at < 0 {
        return Err(ApiError::bad(
            "field \"expire_at\" must be Unix seconds (0: no expiry)",
        ));
    }
    node.broker
        .publish_control(Control::Refresh {
            user: p.user,
            client: p.client,
            expired: p.expired.unwrap_or(false),
            expire_at: (expire_at > 0).then_some(expire_at),
        })
        .await
        .map_err(broker_error)?;
    Ok(json!({}))
}

/// Most connections one `connections` reply lists.
pub const MAX_CONNECTIONS_LISTED: usize = 1000;

/// A user's connections on this node (not cluster-wide), shaped as Centrifugo PRO's `connections`
/// answers: client id → transport, protocol (wire format), user, and `state.channels`.
pub(super) fn connections(node: &Node, p: ConnectionsParams) -> Result<Value, ApiError> {
    if p.user.is_empty() {
        return Err(ApiError::bad("field \"user\" is required"));
    }
    if !p.expression.is_empty() {
        return Err(ApiError::bad(
            "field \"expression\" is not supported: list a user's connections with \"user\"",
        ));
    }
    let sessions = node.hub.user_sessions(&p.user, None);
    let connections: serde_json::Map<String, Value> = sessions
        .iter()
        .take(MAX_CONNECTIONS_LISTED)
        .map(|h| {
            let protocol = h.wire.name();
            let channels: serde_json::Map<String, Value> = node
                .hub
                .session_channels(h.seq)
                .into_iter()
                .map(|channel| (channel, json!({})))
                .collect();
            (
                h.client.clone(),
                json!({
                    "transport": h.transport,
                    "protocol": protocol,
                    "user": h.user,
                    "state": {"channels": channels},
                }),
            )
        })
        .collect();
    Ok(json!({"node": node.uid, "total": sessions.len(), "connections": connections}))
}
