//! Server side of RFC 6455 framing, written for many idle connections.
//!
//! A general WebSocket library keeps a read buffer per connection (8 KiB in tokio-util's framing),
//! which alone is twice Herald's budget for an idle connection. Here nothing is buffered while a
//! connection is idle: the session waits for readiness, then [`WsConn::read_available`] reads what
//! the kernel has into a stack buffer and keeps only an incomplete frame's bytes. Writes are built
//! into one buffer (frames for several messages) and written without waiting: the session keeps
//! serving its timers while a write is pending, and measures how long the write made no progress.
//!
//! The parsers ([`parse_frame`], [`parse_close`]) are pure so they are tested and fuzzed directly.

mod conn;
mod frame;

pub use conn::{Incoming, WsConn, WsError};
pub use frame::{
    parse_close, parse_frame, valid_close_code, write_header, Frame, Violation,
    CLOSE_INVALID_PAYLOAD, CLOSE_PROTOCOL_ERROR, CLOSE_TOO_BIG, CLOSE_UNSUPPORTED_DATA, OP_BINARY,
    OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};
