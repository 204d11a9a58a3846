//! How a connection ends: the close code and reason sent to the client, and how much the server
//! still writes and waits for on the way out.

use herald_protocol::Disconnect;

/// How a session's connection is ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Pending replies, then a close frame, then a short wait for the peer's close.
    Polite,
    /// The same without waiting for the peer: it was silent or hostile, and is not given more
    /// time than its timeout.
    Brief,
    /// The socket is unusable or the peer is gone: nothing more is written.
    Silent,
    /// The peer does not read (slow consumer, stalled write): a reset at once, dropping what the
    /// kernel still holds for it, so neither the client nor kernel memory waits behind stale data.
    Abort,
}

/// Why the session ends, sent as the WebSocket close code and reason.
#[derive(Debug, Clone)]
pub struct Close {
    pub code: u16,
    pub reason: String,
    pub ending: Ending,
    pub label: &'static str,
}

impl From<Disconnect> for Close {
    fn from(d: Disconnect) -> Self {
        // A slow consumer is not waited for, whichever way it was detected.
        let ending = if d == Disconnect::SLOW {
            Ending::Abort
        } else {
            Ending::Polite
        };
        Close {
            code: d.code,
            reason: d.reason.to_string(),
            ending,
            label: d.label(),
        }
    }
}

impl Close {
    /// The backend asked for this connection to be closed.
    pub(super) fn backend(code: u16, reason: String) -> Close {
        Close {
            code,
            reason,
            ending: Ending::Polite,
            label: "backend disconnect",
        }
    }

    pub(super) fn gone(label: &'static str) -> Close {
        Close {
            code: 3000,
            reason: String::new(),
            ending: Ending::Silent,
            label,
        }
    }

    /// A write made no progress for `client.write_timeout`: the peer does not read.
    pub(super) fn write_timeout() -> Close {
        Close {
            label: "write timeout",
            ..Disconnect::SLOW.into()
        }
    }

    /// More WebSocket pings than `client.max_ping_rate` allows.
    pub(super) fn ping_flood() -> Close {
        Close {
            code: CLOSE_POLICY_VIOLATION,
            reason: "too many pings (client.max_ping_rate)".to_string(),
            ending: Ending::Brief,
            label: "ping flood",
        }
    }
}

/// RFC 6455's code for a peer that broke the server's policy.
const CLOSE_POLICY_VIOLATION: u16 = 1008;
