//! The client protocol's wire formats. A connection picks one at its handshake; every command it
//! sends is decoded, and every reply and push it receives is encoded, through its [`Format`], so
//! the session and the hub never name a codec.

use crate::command::{decode_frame, DecodeError, Method};
use crate::reply::{
    encode_publication_push, encode_push, encode_reply, Publication, PushBody, ReplyBody,
};
use bytes::Bytes;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Format {
    /// JSON objects; several messages in one frame are separated by newlines.
    #[default]
    Json,
}

impl Format {
    /// Stable name for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
        }
    }

    /// The commands one frame carries, at most `max_commands` of them.
    pub fn decode_frame(
        self,
        frame: &[u8],
        max_commands: usize,
    ) -> Result<Vec<(u32, Method)>, DecodeError> {
        match self {
            Format::Json => decode_frame(frame, max_commands),
        }
    }

    /// Appends the reply to command `id` to `out`.
    pub fn encode_reply(self, id: u32, body: &ReplyBody, out: &mut Vec<u8>) {
        match self {
            Format::Json => encode_reply(id, body, out),
        }
    }

    /// Appends a push about `channel` to `out`.
    pub fn encode_push(self, channel: &str, body: &PushBody<'_>, out: &mut Vec<u8>) {
        match self {
            Format::Json => encode_push(channel, body, out),
        }
    }

    /// A publication push, encoded once and shared by every subscriber of this format.
    pub fn encode_publication_push(self, channel: &str, publication: &Publication) -> Bytes {
        match self {
            Format::Json => encode_publication_push(channel, publication),
        }
    }
}
