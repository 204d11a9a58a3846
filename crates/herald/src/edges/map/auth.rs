//! Who may read the map's data: the holder of a connection token that could see the fleet channel
//! over the WebSocket — either the token lists it as a server-side subscription (`channels` or
//! `subs` claim), or the channel's namespace lets the token's user subscribe without a token.

use crate::core::channel::may_subscribe_without_token;
use crate::core::clock::unix_secs;
use crate::node::Node;
use herald_auth::TokenError;
use http::{header, HeaderMap, StatusCode};

/// Why a map data request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapAuthError {
    #[error("missing header Authorization: Bearer <connection token>")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("{0}")]
    Invalid(String),
    #[error("user {user:?} may not subscribe to {channel:?}")]
    Forbidden { user: String, channel: String },
    #[error("devices.fleet_channel is empty: the map has no channel to show")]
    NoFleetChannel,
}

impl MapAuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            MapAuthError::Missing | MapAuthError::Expired | MapAuthError::Invalid(_) => {
                StatusCode::UNAUTHORIZED
            }
            MapAuthError::Forbidden { .. } => StatusCode::FORBIDDEN,
            MapAuthError::NoFleetChannel => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The protocol error code, as the server API uses them.
    pub fn code(&self) -> u32 {
        match self {
            MapAuthError::Missing | MapAuthError::Invalid(_) => 101,
            MapAuthError::Expired => 109,
            MapAuthError::Forbidden { .. } => 103,
            MapAuthError::NoFleetChannel => 108,
        }
    }
}

/// The bearer token of a request, if it carries one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Checks the request's connection token; returns its user.
pub fn authorize(node: &Node, headers: &HeaderMap) -> Result<String, MapAuthError> {
    let config = node.config();
    let fleet = config.devices.fleet_channel.as_str();
    if fleet.is_empty() {
        return Err(MapAuthError::NoFleetChannel);
    }
    let token = bearer(headers).ok_or(MapAuthError::Missing)?;
    let claims = node.verifier.verify_connect(token).map_err(|e| match e {
        TokenError::Expired => MapAuthError::Expired,
        other => MapAuthError::Invalid(other.to_string()),
    })?;
    // `expire_at` may end a connection before `exp`; the map honours it the same way.
    if claims
        .connection_expires_at()
        .is_some_and(|at| at <= unix_secs())
    {
        return Err(MapAuthError::Expired);
    }
    let listed = claims.channels.iter().any(|c| c == fleet) || claims.subs.contains_key(fleet);
    let open = node
        .namespaces
        .resolve(fleet)
        .is_ok_and(|ns| may_subscribe_without_token(&ns, fleet, &claims.sub));
    if listed || open {
        Ok(claims.sub)
    } else {
        Err(MapAuthError::Forbidden {
            user: claims.sub,
            channel: fleet.to_string(),
        })
    }
}
