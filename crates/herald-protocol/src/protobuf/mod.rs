//! The client protocol in its Protobuf form (what centrifuge-js's protobuf build and the mobile SDKs
//! speak), over binary WebSocket frames.
//!
//! Framing: a frame carries one or more messages, each prefixed by its length as a varint (Protobuf's
//! "length-delimited" stream). Client frames carry `Command`s, server frames carry `Reply`s; a push
//! is a `Reply` with id 0 and a `push`; an empty `Reply` is the server's ping and an empty `Command`
//! the client's pong — so both are the single byte `0x00`.
//!
//! Data: Herald keeps payloads (`data`, `conn_info`, `chan_info`, …) as JSON text so that JSON and
//! Protobuf clients of one channel see the same publication. Incoming `bytes` payloads must therefore
//! be JSON (UTF-8, one JSON value); a command whose payload is not is answered with error 107 naming
//! the field ([`Method::Invalid`]) and the connection stays open. Outgoing payloads are the JSON text's
//! bytes. An empty `bytes` field is an absent payload (Protobuf cannot tell them apart). The one
//! exception: a delta-compression patch (`Publication.delta` true) carries the fossil patch's raw
//! bytes in `data`.

mod decode;
mod encode;
mod streams;
pub mod wire;

pub use decode::decode_frame;
pub use encode::{
    encode_delta_publication_push, encode_publication_push, encode_push, encode_reply, PING,
};
pub use streams::{decode_emulation_request, encode_disconnect_push};

#[cfg(test)]
mod tests;
