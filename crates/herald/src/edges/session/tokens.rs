//! What a token means for each command that carries one: the claims (or the time left) to use,
//! an error reply, or a close. Pure: the verifier's answer and the clock come in as values.
//!
//! An expired token at connect or subscribe is error 109, on which SDKs fetch a new token and
//! retry; on `refresh` and `sub_refresh` it closes the connection (3005, 3006), as there is nothing
//! left to retry. Any other refusal, or a token for another user or channel, closes with 3500.

use super::Handled;
use herald_auth::{ConnectClaims, SubscribeClaims, TokenError};
use herald_protocol::{Disconnect, ErrorCode};

/// A connection token at `connect`.
pub(super) fn connect_token(verified: Result<ConnectClaims, TokenError>) -> Handled<ConnectClaims> {
    match verified {
        Ok(claims) => Ok(claims),
        Err(TokenError::Expired) => Err(ErrorCode::TokenExpired.into()),
        Err(e) => {
            tracing::debug!(error = %e, "connection token refused");
            Err(Disconnect::INVALID_TOKEN.into())
        }
    }
}

/// Seconds a new connection has left (`None`: it never expires), from the expiry its token or the
/// connect hook gave. An expiry already past is error 109.
pub(super) fn connection_ttl(expires_at: Option<i64>, now: i64) -> Handled<Option<u64>> {
    match expires_at {
        Some(at) if at <= now => Err(ErrorCode::TokenExpired.into()),
        Some(at) => Ok(Some((at - now) as u64)),
        None => Ok(None),
    }
}

/// A new connection token from `refresh`; it must be `user`'s. Returns the seconds left.
pub(super) fn refresh_token(
    verified: Result<ConnectClaims, TokenError>,
    user: &str,
    now: i64,
) -> Handled<Option<u64>> {
    let claims = match verified {
        Ok(claims) => claims,
        Err(TokenError::Expired) => return Err(Disconnect::EXPIRED.into()),
        Err(_) => return Err(Disconnect::INVALID_TOKEN.into()),
    };
    if claims.sub != user {
        return Err(Disconnect::INVALID_TOKEN.into());
    }
    Ok(seconds_left(claims.connection_expires_at(), now))
}

/// A subscription token at `subscribe`; it must be for `channel` and `user`, and not past the
/// subscription's own expiry.
pub(super) fn subscribe_token(
    verified: Result<SubscribeClaims, TokenError>,
    channel: &str,
    user: &str,
    now: i64,
) -> Handled<SubscribeClaims> {
    let claims = match verified {
        Ok(claims) => claims,
        Err(TokenError::Expired) => return Err(ErrorCode::TokenExpired.into()),
        Err(e) => {
            tracing::debug!(error = %e, "subscription token refused");
            return Err(Disconnect::INVALID_TOKEN.into());
        }
    };
    if claims.channel != channel || claims.sub != user {
        return Err(Disconnect::INVALID_TOKEN.into());
    }
    if claims.subscription_expires_at().is_some_and(|at| at <= now) {
        return Err(ErrorCode::TokenExpired.into());
    }
    Ok(claims)
}

/// A new subscription token from `sub_refresh`; it must be for `channel` and `user`. Returns the
/// seconds left.
pub(super) fn sub_refresh_token(
    verified: Result<SubscribeClaims, TokenError>,
    channel: &str,
    user: &str,
    now: i64,
) -> Handled<Option<u64>> {
    let claims = match verified {
        Ok(claims) => claims,
        Err(TokenError::Expired) => return Err(Disconnect::SUB_EXPIRED.into()),
        Err(_) => return Err(Disconnect::INVALID_TOKEN.into()),
    };
    if claims.channel != channel || claims.sub != user {
        return Err(Disconnect::INVALID_TOKEN.into());
    }
    Ok(seconds_left(claims.subscription_expires_at(), now))
}

/// Seconds until `expires_at` (none left when it is past); `None` when it never expires.
pub(super) fn seconds_left(expires_at: Option<i64>, now: i64) -> Option<u64> {
    expires_at.map(|at| (at - now).max(0) as u64)
}

/// The protocol's `ttl` field for seconds left: 0 when it never expires, at most `u32::MAX`, and
/// at least 1 when it does. A ttl of 0 is left out of the reply, and an SDK then reads `expires`
/// without a `ttl`: centrifuge-js refreshes again at once (a getToken loop until the grace ends),
/// centrifuge-python fails to arm its refresh timer. Asked again in a second, it is closed by the
/// grace timer all the same if nothing newer comes.
pub(super) fn ttl_field(seconds: Option<u64>) -> u32 {
    match seconds {
        None => 0,
        Some(secs) => secs.clamp(1, u64::from(u32::MAX)) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edges::session::Refusal;
    use herald_auth::SubOverrides;
    use std::collections::BTreeMap;

    const NOW: i64 = 1_000_000;

    fn connect_claims(sub: &str, exp: Option<i64>) -> ConnectClaims {
        ConnectClaims {
            sub: sub.to_string(),
            exp,
            expire_at: None,
            info: None,
            channels: Vec::new(),
            subs: BTreeMap::new(),
            meta: None,
        }
    }

    fn subscribe_claims(sub: &str, channel: &str, exp: Option<i64>) -> SubscribeClaims {
        SubscribeClaims {
            sub: sub.to_string(),
            channel: channel.to_string(),
            exp,
            expire_at: None,
            info: None,
            data: None,
            overrides: SubOverrides::default(),
        }
    }

    fn invalid() -> TokenError {
        TokenError::Invalid("bad signature".to_string())
    }

    /// The error reply code, or a panic naming what came instead.
    fn reply_code<T: std::fmt::Debug>(handled: Handled<T>) -> u32 {
        match handled {
            Err(Refusal::Reply(error)) => error.code,
            other => panic!("expected an error reply, got {other:?}"),
        }
    }

    /// The close code, or a panic naming what came instead.
    fn close_code<T: std::fmt::Debug>(handled: Handled<T>) -> u16 {
        match handled {
            Err(Refusal::Close(close)) => close.code,
            other => panic!("expected a close, got {other:?}"),
        }
    }

    #[test]
    fn connect_token_accepts_verified_claims() {
        let claims = connect_token(Ok(connect_claims("alice", None))).expect("accepted");
        assert_eq!(claims.sub, "alice");
    }

    #[test]
    fn connect_token_expired_is_a_109_reply_and_invalid_closes_3500() {
        assert_eq!(reply_code(connect_token(Err(TokenError::Expired))), 109);
        assert_eq!(close_code(connect_token(Err(invalid()))), 3500);
        assert_eq!(
            close_code(connect_token(Err(TokenError::NotConfigured))),
            3500
        );
    }

    #[test]
    fn connection_ttl_counts_down_and_refuses_a_past_expiry() {
        assert_eq!(connection_ttl(None, NOW).expect("never"), None);
        assert_eq!(connection_ttl(Some(NOW + 30), NOW).expect("ok"), Some(30));
        assert_eq!(reply_code(connection_ttl(Some(NOW), NOW)), 109);
        assert_eq!(reply_code(connection_ttl(Some(NOW - 1), NOW)), 109);
    }

    #[test]
    fn refresh_token_gives_the_time_left_for_the_same_user() {
        let refreshed = refresh_token(Ok(connect_claims("alice", Some(NOW + 60))), "alice", NOW);
        assert_eq!(refreshed.expect("ok"), Some(60));
        let forever = refresh_token(Ok(connect_claims("alice", None)), "alice", NOW);
        assert_eq!(forever.expect("ok"), None);
    }

    #[test]
    fn refresh_token_refusals_close() {
        assert_eq!(
            close_code(refresh_token(Err(TokenError::Expired), "alice", NOW)),
            3005
        );
        assert_eq!(
            close_code(refresh_token(Err(invalid()), "alice", NOW)),
            3500
        );
        let other_user = refresh_token(Ok(connect_claims("bob", None)), "alice", NOW);
        assert_eq!(close_code(other_user), 3500);
    }

    #[test]
    fn subscribe_token_accepts_a_token_for_this_channel_and_user() {
        let claims = subscribe_token(
            Ok(subscribe_claims("alice", "news", Some(NOW + 5))),
            "news",
            "alice",
            NOW,
        )
        .expect("accepted");
        assert_eq!(claims.channel, "news");
    }

    #[test]
    fn subscribe_token_refusals() {
        let check = |verified, channel| subscribe_token(verified, channel, "alice", NOW);
        assert_eq!(reply_code(check(Err(TokenError::Expired), "news")), 109);
        assert_eq!(close_code(check(Err(invalid()), "news")), 3500);
        let claims = subscribe_claims("alice", "sport", None);
        assert_eq!(close_code(check(Ok(claims), "news")), 3500);
        let claims = subscribe_claims("bob", "news", None);
        assert_eq!(close_code(check(Ok(claims), "news")), 3500);
        let claims = subscribe_claims("alice", "news", Some(NOW));
        assert_eq!(reply_code(check(Ok(claims), "news")), 109);
    }

    #[test]
    fn sub_refresh_token_gives_the_time_left() {
        let claims = subscribe_claims("alice", "news", Some(NOW + 10));
        let left = sub_refresh_token(Ok(claims), "news", "alice", NOW).expect("ok");
        assert_eq!(left, Some(10));
        // Past already: no time left, but not refused (the timer ends the subscription).
        let claims = subscribe_claims("alice", "news", Some(NOW - 10));
        let left = sub_refresh_token(Ok(claims), "news", "alice", NOW).expect("ok");
        assert_eq!(left, Some(0));
    }

    #[test]
    fn sub_refresh_token_refusals_close() {
        let check = |verified| sub_refresh_token(verified, "news", "alice", NOW);
        assert_eq!(close_code(check(Err(TokenError::Expired))), 3006);
        assert_eq!(close_code(check(Err(invalid()))), 3500);
        let claims = subscribe_claims("alice", "sport", None);
        assert_eq!(close_code(check(Ok(claims))), 3500);
        let claims = subscribe_claims("bob", "news", None);
        assert_eq!(close_code(check(Ok(claims))), 3500);
    }

    #[test]
    fn seconds_left_and_the_ttl_field() {
        assert_eq!(seconds_left(None, NOW), None);
        assert_eq!(seconds_left(Some(NOW + 3), NOW), Some(3));
        assert_eq!(seconds_left(Some(NOW - 3), NOW), Some(0));
        assert_eq!(ttl_field(None), 0);
        assert_eq!(ttl_field(Some(42)), 42);
        assert_eq!(ttl_field(Some(u64::MAX)), u32::MAX);
        // Expiring with no whole second left still says when to refresh.
        assert_eq!(ttl_field(Some(0)), 1);
    }
}
