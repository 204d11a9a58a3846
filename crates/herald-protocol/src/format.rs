//! The client protocol's wire formats. A connection picks one at its handshake; every command it
//! sends is decoded, and every reply and push it receives is encoded, through its [`Format`], so
//! the session and the hub never name a codec.

use crate::command::{DecodeError, Method};
use crate::reply::{Publication, PushBody, ReplyBody};
use crate::{command, delta, protobuf, reply};
use bytes::Bytes;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Format {
    /// JSON objects in text frames; several messages in one frame are separated by newlines.
    #[default]
    Json,
    /// Protobuf messages in binary frames, each prefixed by its varint length; several messages in
    /// one frame are concatenated ([`crate::protobuf`]).
    Protobuf,
}

impl Format {
    /// Both formats, e.g. for per-format caches.
    pub const ALL: [Format; 2] = [Format::Json, Format::Protobuf];

    /// Stable name for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Protobuf => "protobuf",
        }
    }

    /// Whether messages travel in binary frames (else text frames).
    pub fn is_binary(self) -> bool {
        matches!(self, Format::Protobuf)
    }

    /// What separates two messages merged into one frame.
    pub fn separator(self) -> &'static [u8] {
        match self {
            Format::Json => b"\n",
            Format::Protobuf => b"",
        }
    }

    /// The server's ping message.
    pub fn ping(self) -> &'static [u8] {
        match self {
            Format::Json => reply::PING,
            Format::Protobuf => protobuf::PING,
        }
    }

    /// The commands one frame carries, at most `max_commands` of them.
    pub fn decode_frame(
        self,
        frame: &[u8],
        max_commands: usize,
    ) -> Result<Vec<(u32, Method)>, DecodeError> {
        match self {
            Format::Json => command::decode_frame(frame, max_commands),
            Format::Protobuf => protobuf::decode_frame(frame, max_commands),
        }
    }

    /// Appends the reply to command `id` to `out`.
    pub fn encode_reply(self, id: u32, body: &ReplyBody, out: &mut Vec<u8>) {
        match self {
            Format::Json => reply::encode_reply(id, body, out),
            Format::Protobuf => protobuf::encode_reply(id, body, out),
        }
    }

    /// Appends a push about `channel` to `out`.
    pub fn encode_push(self, channel: &str, body: &PushBody<'_>, out: &mut Vec<u8>) {
        match self {
            Format::Json => reply::encode_push(channel, body, out),
            Format::Protobuf => protobuf::encode_push(channel, body, out),
        }
    }

    /// A publication push, encoded once and shared by every subscriber of this format.
    pub fn encode_publication_push(self, channel: &str, publication: &Publication) -> Bytes {
        match self {
            Format::Json => reply::encode_publication_push(channel, publication),
            Format::Protobuf => protobuf::encode_publication_push(channel, publication),
        }
    }

    /// A publication push for a delta-compression subscriber, encoded once and shared: in full
    /// (`patch`: none, `delta` false), or carrying `patch`, a fossil patch against the previous
    /// publication's data, with `delta` true. JSON carries the data (and the patch) as a JSON
    /// string, Protobuf as raw bytes. None when this format cannot carry the patch (JSON: a
    /// patch that is not UTF-8): the caller sends the publication in full.
    pub fn encode_delta_publication_push(
        self,
        channel: &str,
        publication: &Publication,
        patch: Option<&[u8]>,
    ) -> Option<Bytes> {
        match (self, patch) {
            (Format::Json, patch) => {
                delta::encode_delta_publication_push(channel, publication, patch)
            }
            (Format::Protobuf, None) => {
                Some(protobuf::encode_publication_push(channel, publication))
            }
            (Format::Protobuf, Some(patch)) => Some(protobuf::encode_delta_publication_push(
                channel,
                publication,
                patch,
            )),
        }
    }

    /// Whether [`Format::encode_delta_publication_push`] in full is the plain publication push
    /// (Protobuf), so the two can share one encoding.
    pub fn delta_full_is_plain(self) -> bool {
        matches!(self, Format::Protobuf)
    }

    /// A publication as a delta-compression subscriber receives it in full in a subscribe reply,
    /// i.e. as its first base: JSON sends `data` as a JSON string holding the data's JSON text
    /// (the SDK keeps those bytes as the base), Protobuf sends the data's bytes as they are.
    pub fn delta_publication(self, publication: &Arc<Publication>) -> Arc<Publication> {
        match self {
            Format::Json => Arc::new(delta::with_data_as_string(publication)),
            Format::Protobuf => publication.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format_round_trips_through_its_own_codec() {
        for format in Format::ALL {
            let mut out = Vec::new();
            format.encode_reply(3, &ReplyBody::Ping, &mut out);
            assert!(!out.is_empty());
            // A client's pong in each format decodes to Pong.
            let pong: &[u8] = if format.is_binary() { &[0] } else { b"{}" };
            assert!(matches!(
                format.decode_frame(pong, 1).unwrap()[0],
                (0, Method::Pong)
            ));
        }
        assert_eq!(Format::Protobuf.ping(), [0]);
        assert_eq!(Format::Json.ping(), b"{}");
    }
}
