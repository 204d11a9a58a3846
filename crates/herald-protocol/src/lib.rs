//! Herald's client wire protocol: the Centrifugo client protocol v2 in its JSON form.
//!
//! The crate is pure (no I/O) so it can be unit-tested and fuzzed directly:
//! - [`command`]: commands a client sends, decoded from one WebSocket text frame that may carry several
//!   newline-separated commands;
//! - [`reply`]: replies and pushes the server sends, encoded into a caller-owned buffer;
//! - [`format`]: the wire format a connection chose, through which every command is decoded and
//!   every reply and push encoded;
//! - [`codes`]: error codes, disconnect codes and unsubscribe codes with the meaning SDKs give them.
//!
//! The JSON shapes follow the public `client.proto` of centrifugal/protocol: field names are the proto
//! field names, empty fields are omitted, `bytes` fields (`data`, `conn_info`, `chan_info`) are embedded
//! JSON values.

#![forbid(unsafe_code)]

pub mod codes;
pub mod command;
pub mod delta;
pub mod format;
pub mod reply;

pub use codes::{Disconnect, ErrorCode, UnsubscribeCode};
pub use command::{decode_frame, Command, DecodeError, Method};
pub use format::Format;
pub use reply::*;
