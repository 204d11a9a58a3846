//! Numeric codes shared with every Centrifugo SDK. Changing a number breaks clients.

use std::fmt;

/// Error codes carried in a reply's `error` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ErrorCode {
    Internal = 100,
    Unauthorized = 101,
    UnknownChannel = 102,
    PermissionDenied = 103,
    MethodNotFound = 104,
    AlreadySubscribed = 105,
    LimitExceeded = 106,
    BadRequest = 107,
    NotAvailable = 108,
    TokenExpired = 109,
    Expired = 110,
    TooManyRequests = 111,
    UnrecoverablePosition = 112,
    /// Code 100 (internal, temporary: SDKs retry) with a message naming the condition: the
    /// channel lives on a broker shard (Redis Cluster primary) that cannot be reached.
    ShardUnavailable = 1100,
}

impl ErrorCode {
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::ShardUnavailable => ErrorCode::Internal as u32,
            code => code as u32,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::Internal => "internal server error",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::UnknownChannel => "unknown channel",
            ErrorCode::PermissionDenied => "permission denied",
            ErrorCode::MethodNotFound => "method not found",
            ErrorCode::AlreadySubscribed => "already subscribed",
            ErrorCode::LimitExceeded => "limit exceeded",
            ErrorCode::BadRequest => "bad request",
            ErrorCode::NotAvailable => "not available",
            ErrorCode::TokenExpired => "token expired",
            ErrorCode::Expired => "expired",
            ErrorCode::TooManyRequests => "too many requests",
            ErrorCode::UnrecoverablePosition => "unrecoverable position",
            ErrorCode::ShardUnavailable => "broker shard unavailable, retry later",
        }
    }

    /// Temporary errors tell SDKs to retry the operation.
    pub fn temporary(self) -> bool {
        matches!(
            self,
            ErrorCode::Internal | ErrorCode::TooManyRequests | ErrorCode::ShardUnavailable
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.message())
    }
}

/// A reason to close a connection. Sent as the WebSocket close code and reason.
///
/// Codes 3000..=3499 and 4000..=4499 tell SDKs to reconnect; 3500..=3999 and 4500..=4999 are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect {
    pub code: u16,
    pub reason: &'static str,
}

impl Disconnect {
    pub const SHUTDOWN: Disconnect = Disconnect {
        code: 3001,
        reason: "shutdown",
    };
    pub const SERVER_ERROR: Disconnect = Disconnect {
        code: 3004,
        reason: "internal server error",
    };
    pub const EXPIRED: Disconnect = Disconnect {
        code: 3005,
        reason: "connection expired",
    };
    pub const SUB_EXPIRED: Disconnect = Disconnect {
        code: 3006,
        reason: "subscription expired",
    };
    pub const SLOW: Disconnect = Disconnect {
        code: 3008,
        reason: "slow",
    };
    pub const WRITE_ERROR: Disconnect = Disconnect {
        code: 3009,
        reason: "write error",
    };
    pub const INSUFFICIENT_STATE: Disconnect = Disconnect {
        code: 3010,
        reason: "insufficient state",
    };
    pub const FORCE_RECONNECT: Disconnect = Disconnect {
        code: 3011,
        reason: "force reconnect",
    };
    pub const NO_PONG: Disconnect = Disconnect {
        code: 3012,
        reason: "no pong",
    };
    pub const TOO_MANY_REQUESTS: Disconnect = Disconnect {
        code: 3013,
        reason: "too many requests",
    };
    pub const INVALID_TOKEN: Disconnect = Disconnect {
        code: 3500,
        reason: "invalid token",
    };
    pub const BAD_REQUEST: Disconnect = Disconnect {
        code: 3501,
        reason: "bad request",
    };
    pub const STALE: Disconnect = Disconnect {
        code: 3502,
        reason: "stale",
    };
    pub const FORCE_NO_RECONNECT: Disconnect = Disconnect {
        code: 3503,
        reason: "force disconnect",
    };
    pub const CONNECTION_LIMIT: Disconnect = Disconnect {
        code: 3504,
        reason: "connection limit",
    };
    pub const CHANNEL_LIMIT: Disconnect = Disconnect {
        code: 3505,
        reason: "channel limit",
    };
    pub const PERMISSION_DENIED: Disconnect = Disconnect {
        code: 3507,
        reason: "permission denied",
    };
    pub const NOT_AVAILABLE: Disconnect = Disconnect {
        code: 3508,
        reason: "not available",
    };
    pub const TOO_MANY_ERRORS: Disconnect = Disconnect {
        code: 3509,
        reason: "too many errors",
    };
    /// WebSocket's own code for a message larger than the server accepts.
    pub const MESSAGE_TOO_BIG: Disconnect = Disconnect {
        code: 1009,
        reason: "message too big",
    };

    pub fn reconnect(self) -> bool {
        matches!(self.code, 3000..=3499 | 4000..=4499)
    }

    /// Stable label for metrics.
    pub fn label(self) -> &'static str {
        self.reason
    }
}

/// Codes of a server-initiated unsubscribe push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsubscribeCode {
    pub code: u32,
    pub reason: &'static str,
}

impl UnsubscribeCode {
    pub const SERVER: UnsubscribeCode = UnsubscribeCode {
        code: 2000,
        reason: "server unsubscribe",
    };
    /// Tells the SDK to resubscribe (2500..=2999 resubscribe).
    pub const INSUFFICIENT: UnsubscribeCode = UnsubscribeCode {
        code: 2500,
        reason: "insufficient state",
    };
    pub const EXPIRED: UnsubscribeCode = UnsubscribeCode {
        code: 2501,
        reason: "subscription expired",
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_ranges_follow_the_sdk_convention() {
        assert!(Disconnect::SHUTDOWN.reconnect());
        assert!(Disconnect::SLOW.reconnect());
        assert!(Disconnect::NO_PONG.reconnect());
        assert!(!Disconnect::INVALID_TOKEN.reconnect());
        assert!(!Disconnect::BAD_REQUEST.reconnect());
        assert!(!Disconnect::MESSAGE_TOO_BIG.reconnect());
    }

    #[test]
    fn only_internal_and_rate_errors_are_temporary() {
        assert!(ErrorCode::Internal.temporary());
        assert!(ErrorCode::TooManyRequests.temporary());
        assert!(!ErrorCode::PermissionDenied.temporary());
        assert_eq!(ErrorCode::UnrecoverablePosition.code(), 112);
        assert_eq!(ErrorCode::ShardUnavailable.code(), 100);
        assert!(ErrorCode::ShardUnavailable.temporary());
    }
}
