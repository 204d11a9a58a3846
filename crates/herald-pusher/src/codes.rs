//! Error codes of the Pusher Channels protocol, sent as WebSocket close codes and in `pusher:error`.
//!
//! The protocol splits 4000–4299 into three ranges that tell a client what to do after the server
//! closes the connection: 4000–4099 do not reconnect unchanged, 4100–4199 reconnect after backing
//! off (at least a second), 4200–4299 reconnect at once. 4300–4399 are "any other error": they are
//! reported in a `pusher:error` on a connection that stays open. pusher-js treats a *close* with a
//! code of 4300 or more like 4000–4099 (it stops reconnecting), so a server must never close with
//! them.

use std::fmt;

/// Every code the protocol documents (protocol version 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// 4000: the app accepts only TLS connections; pusher-js switches to `wss://` and retries.
    TlsOnly = 4000,
    /// 4001: no app has this key.
    AppNotFound = 4001,
    /// 4003: the app exists but is disabled.
    AppDisabled = 4003,
    /// 4004: the app has used up its connection quota.
    OverConnectionQuota = 4004,
    /// 4005: the WebSocket request path is not `/app/<key>`.
    PathNotFound = 4005,
    /// 4006: the `version` query parameter is malformed.
    InvalidVersionFormat = 4006,
    /// 4007: the `protocol` query parameter names a version the server does not speak.
    UnsupportedProtocolVersion = 4007,
    /// 4008: the `protocol` query parameter is missing.
    NoProtocolVersion = 4008,
    /// 4009: the connection (or one of its requests) is not authorized.
    Unauthorized = 4009,
    /// 4100: the server is over capacity; reconnect after backing off.
    OverCapacity = 4100,
    /// 4200: generic "reconnect immediately" (for example on server shutdown).
    ReconnectImmediately = 4200,
    /// 4201: a ping went unanswered.
    PongNotReceived = 4201,
    /// 4202: the client stayed silent too long and cannot be pinged.
    ClosedAfterInactivity = 4202,
    /// 4301: a client event was refused because the connection sends them too fast.
    ClientEventRateLimit = 4301,
    /// 4302: a sign-in watchlist was longer than allowed; only its first entries were kept.
    WatchlistLimitExceeded = 4302,
}

/// What pusher-js does when the server closes a connection with a given code (its `getCloseAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAction {
    /// 4000: switch to TLS and reconnect at once.
    TlsOnly,
    /// 4001–4099 and 4300 or more: stop; the connection state becomes `disconnected`.
    Refused,
    /// 1002–1004 and 4100–4199: reconnect after a second.
    Backoff,
    /// 4200–4299: reconnect at once.
    Retry,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::TlsOnly,
        ErrorCode::AppNotFound,
        ErrorCode::AppDisabled,
        ErrorCode::OverConnectionQuota,
        ErrorCode::PathNotFound,
        ErrorCode::InvalidVersionFormat,
        ErrorCode::UnsupportedProtocolVersion,
        ErrorCode::NoProtocolVersion,
        ErrorCode::Unauthorized,
        ErrorCode::OverCapacity,
        ErrorCode::ReconnectImmediately,
        ErrorCode::PongNotReceived,
        ErrorCode::ClosedAfterInactivity,
        ErrorCode::ClientEventRateLimit,
        ErrorCode::WatchlistLimitExceeded,
    ];

    pub fn code(self) -> u16 {
        self as u16
    }

    pub fn from_code(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// A short reason, fit for a close frame (well under the 123 bytes a close reason may hold).
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::TlsOnly => {
                "Application only accepts TLS connections, reconnect using wss://"
            }
            ErrorCode::AppNotFound => "Application does not exist",
            ErrorCode::AppDisabled => "Application is disabled",
            ErrorCode::OverConnectionQuota => "Application is over its connection quota",
            ErrorCode::PathNotFound => "Path not found",
            ErrorCode::InvalidVersionFormat => "Invalid version string format",
            ErrorCode::UnsupportedProtocolVersion => "Unsupported protocol version",
            ErrorCode::NoProtocolVersion => "No protocol version supplied",
            ErrorCode::Unauthorized => "Connection is unauthorized",
            ErrorCode::OverCapacity => "Over capacity",
            ErrorCode::ReconnectImmediately => "Reconnect immediately",
            ErrorCode::PongNotReceived => "Pong reply not received",
            ErrorCode::ClosedAfterInactivity => "Closed after inactivity",
            ErrorCode::ClientEventRateLimit => "Client event rejected due to rate limit",
            ErrorCode::WatchlistLimitExceeded => {
                "Watchlist limit exceeded, only the first 100 user ids are accepted"
            }
        }
    }

    /// True for the codes a server may close a connection with (4000–4299). The others are sent
    /// as `pusher:error` on a connection that stays open.
    pub fn closes_connection(self) -> bool {
        self.code() < 4300
    }

    /// What pusher-js does when the connection is closed with this code.
    pub fn client_action(self) -> CloseAction {
        // Every documented code is at least 4000, so there is always an action.
        close_action(self.code()).unwrap_or(CloseAction::Refused)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.message())
    }
}

/// pusher-js's reaction to any WebSocket close code; `None` means it just reconnects as after a
/// network loss (1000, 1001, 1005, 1006 and the rest below 4000 except 1002–1004).
pub fn close_action(code: u16) -> Option<CloseAction> {
    match code {
        1002..=1004 => Some(CloseAction::Backoff),
        0..=3999 => None,
        4000 => Some(CloseAction::TlsOnly),
        4001..=4099 => Some(CloseAction::Refused),
        4100..=4199 => Some(CloseAction::Backoff),
        4200..=4299 => Some(CloseAction::Retry),
        _ => Some(CloseAction::Refused),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_the_documented_ones() {
        let numbers: Vec<u16> = ErrorCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(
            numbers,
            [
                4000, 4001, 4003, 4004, 4005, 4006, 4007, 4008, 4009, 4100, 4200, 4201, 4202, 4301,
                4302
            ]
        );
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(code.code()), Some(code));
            assert!(
                code.message().len() <= 123,
                "{code:?} reason fits a close frame"
            );
        }
        assert_eq!(ErrorCode::from_code(4002), None);
    }

    #[test]
    fn ranges_map_to_what_pusher_js_does() {
        assert_eq!(ErrorCode::TlsOnly.client_action(), CloseAction::TlsOnly);
        assert_eq!(ErrorCode::AppNotFound.client_action(), CloseAction::Refused);
        assert_eq!(
            ErrorCode::Unauthorized.client_action(),
            CloseAction::Refused
        );
        assert_eq!(
            ErrorCode::OverCapacity.client_action(),
            CloseAction::Backoff
        );
        assert_eq!(
            ErrorCode::ReconnectImmediately.client_action(),
            CloseAction::Retry
        );
        assert_eq!(
            ErrorCode::PongNotReceived.client_action(),
            CloseAction::Retry
        );
        assert_eq!(
            ErrorCode::ClientEventRateLimit.client_action(),
            CloseAction::Refused
        );
        assert_eq!(close_action(1000), None);
        assert_eq!(close_action(1006), None);
        assert_eq!(close_action(1003), Some(CloseAction::Backoff));
        assert_eq!(close_action(4999), Some(CloseAction::Refused));
    }

    #[test]
    fn only_4000_to_4299_close() {
        assert!(ErrorCode::OverCapacity.closes_connection());
        assert!(ErrorCode::ClosedAfterInactivity.closes_connection());
        assert!(!ErrorCode::ClientEventRateLimit.closes_connection());
        assert!(!ErrorCode::WatchlistLimitExceeded.closes_connection());
    }
}
