//! The Pusher Channels protocol, pure: what Herald's Pusher edge reads and writes, with no I/O,
//! no clock and no state.
//!
//! Herald serves Pusher clients (pusher-js, Laravel Echo, the other Channels client libraries) and
//! Pusher server SDKs unmodified. The server layer owns sockets, subscriptions, presence rosters,
//! caches and timers; this crate owns every byte format and rule they meet:
//!
//! - [`connect`]: the `/app/<key>?protocol=7` upgrade request and the close code of each refusal;
//! - [`incoming`]: client frames (`pusher:ping`, `pusher:subscribe`, `pusher:signin`, `client-`
//!   events, ...) decoded into [`ClientMessage`];
//! - [`outgoing`]: server frames (`pusher:connection_established`, `pusher_internal:*`, channel
//!   events, `pusher:error`, ...) encoded with the `data` double-encoding pusher-js expects;
//! - [`channel`]: channel names, their kinds (public, `private-`, `private-encrypted-`,
//!   `presence-`, `#server-to-user-`) and the `cache-` flag;
//! - [`socket_id`]: the `123.456` connection ids;
//! - [`auth`]: channel authorization and user sign-in tokens (`<key>:<hex HMAC-SHA256>`);
//! - [`user`]: presence `channel_data` and sign-in `user_data`;
//! - [`http_auth`]: HTTP API request signatures (`auth_signature`, `body_md5`, timestamps);
//! - [`api`]: HTTP API routes, trigger and batch bodies with their limits, `info` attributes and
//!   the JSON answers;
//! - [`webhook`]: webhook bodies and their `X-Pusher-Signature`;
//! - [`codes`]: the 4000–4399 error codes and what pusher-js does on each close code.
//!
//! Signature checks compare in constant time. Every decoder is total over arbitrary input: errors
//! are typed, name the field at fault, and carry at most a short excerpt of what was received.
//!
//! The tests assert the published examples of Pusher's documentation: the HTTP API reference's
//! worked authentication example (body MD5, string to sign and signature), the private and
//! presence channel signatures of the authorization reference, and the JSON shapes of the
//! protocol, HTTP API and webhook references.
//!
//! # Use
//!
//! ```
//! use herald_pusher::{auth, incoming, outgoing, ClientMessage, SocketId};
//!
//! let socket_id = SocketId::parse("1234.1234").unwrap();
//! let hello = outgoing::connection_established(&socket_id, outgoing::DEFAULT_ACTIVITY_TIMEOUT_SECS);
//! assert!(hello.starts_with(r#"{"event":"pusher:connection_established""#));
//!
//! let frame = r#"{"event":"pusher:subscribe","data":{"channel":"private-foobar",
//!     "auth":"278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"}}"#;
//! let ClientMessage::Subscribe(sub) = incoming::decode(frame).unwrap() else { unreachable!() };
//! assert!(sub.channel.requires_auth());
//! auth::verify_channel_auth(
//!     "278d425bdf160c739803",
//!     "7ad3773142a6692b25b8",
//!     socket_id.as_str(),
//!     sub.channel.as_str(),
//!     sub.channel_data.as_deref(),
//!     sub.auth.as_deref(),
//! )
//! .unwrap();
//! let reply = outgoing::subscription_succeeded(sub.channel.as_str());
//! assert_eq!(
//!     reply,
//!     r#"{"event":"pusher_internal:subscription_succeeded","channel":"private-foobar","data":"{}"}"#
//! );
//! ```

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod channel;
pub mod codes;
pub mod connect;
pub mod http_auth;
pub mod incoming;
pub mod outgoing;
mod sign;
pub mod socket_id;
pub mod user;
pub mod webhook;

pub use channel::{ChannelKind, ChannelName, ChannelNameError};
pub use codes::{CloseAction, ErrorCode};
pub use incoming::{ClientEvent, ClientMessage, DecodeError, Subscribe};
pub use sign::{hmac_sha256_hex, md5_hex, verify_hmac_sha256_hex};
pub use socket_id::SocketId;
pub use user::{PresenceMember, UserData};
