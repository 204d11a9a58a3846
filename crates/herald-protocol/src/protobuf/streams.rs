//! What the Protobuf form of the HTTP-streaming transport adds to the WebSocket one: the body of an
//! `/emulation` request, and the disconnect push a stream ends with (a WebSocket client reads the
//! code in the close frame instead).

use super::wire;
use prost::Message as _;

/// Decodes an `/emulation` body: one `EmulationRequest`, not length-delimited.
pub fn decode_emulation_request(body: &[u8]) -> Result<wire::EmulationRequest, prost::DecodeError> {
    wire::EmulationRequest::decode(body)
}

/// A length-delimited `Reply` carrying `push.disconnect` (`Push` field 11).
pub fn encode_disconnect_push(code: u32, reason: &str, reconnect: bool) -> Vec<u8> {
    DisconnectReply {
        push: Some(DisconnectPush {
            disconnect: Some(Disconnect {
                code,
                reason: reason.to_string(),
                reconnect,
            }),
        }),
    }
    .encode_length_delimited_to_vec()
}

#[derive(Clone, PartialEq, prost::Message)]
struct DisconnectReply {
    #[prost(message, optional, tag = "4")]
    push: Option<DisconnectPush>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DisconnectPush {
    #[prost(message, optional, tag = "11")]
    disconnect: Option<Disconnect>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Disconnect {
    #[prost(uint32, tag = "1")]
    code: u32,
    #[prost(string, tag = "2")]
    reason: String,
    #[prost(bool, tag = "3")]
    reconnect: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnect_push_decodes_as_a_reply_with_a_push() {
        let bytes = encode_disconnect_push(3501, "bad request", false);
        let reply = DisconnectReply::decode_length_delimited(&bytes[..]).unwrap();
        let d = reply.push.unwrap().disconnect.unwrap();
        assert_eq!(
            (d.code, d.reason.as_str(), d.reconnect),
            (3501, "bad request", false)
        );
        // The generic Reply sees an id-0 reply with a push: what an SDK dispatches as a push.
        let reply = wire::Reply::decode_length_delimited(&bytes[..]).unwrap();
        assert_eq!(reply.id, 0);
        assert!(reply.push.is_some());
    }

    #[test]
    fn emulation_requests_have_the_field_numbers_of_client_proto() {
        // node = 1, session = 2, data = 3 (what centrifuge-js encodes).
        let body = b"\x0a\x01n\x12\x01s\x1a\x02\x00\x01";
        let r = decode_emulation_request(body).unwrap();
        assert_eq!(
            (r.node.as_str(), r.session.as_str(), &r.data[..]),
            ("n", "s", &[0u8, 1][..])
        );
        assert!(decode_emulation_request(b"\xff\xff\xff").is_err());
    }
}
