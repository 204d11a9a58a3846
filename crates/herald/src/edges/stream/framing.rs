//! How the non-WebSocket transports frame what the session writes, and how a unidirectional
//! client sees it. Pure: bytes in, bytes out.
//!
//! The session writes messages in the bidirectional JSON protocol: replies `{"id":N,…}`, pushes
//! `{"push":{…}}` and pings `{}`, several of them possibly merged with newlines. A unidirectional
//! client receives bare pushes instead (`{"channel":…,"pub":…}`, `{"connect":…}`), as Centrifugo
//! sends them.
//!
//! Over Protobuf (bidirectional HTTP streaming only) every message is already a varint-length-
//! delimited `Reply`: the stream is their concatenation, as a Protobuf WebSocket frame is.

use bytes::Bytes;

/// The framing of one streaming response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON message per line (`http_stream`, `uni_http_stream`).
    Lines,
    /// One server-sent event per message: `data: <message>\n\n` (`sse`, `uni_sse`).
    Events,
    /// Length-delimited Protobuf replies back to back (`http_stream` in Protobuf).
    Delimited,
}

/// What a unidirectional client receives for one bidirectional message (a single line): the push
/// inside `{"push":…}`, the connect reply as `{"connect":…}`, pings as they are. Other replies
/// (errors) are not for a unidirectional client: `None`.
pub fn unidirectional(line: &Bytes) -> Option<Bytes> {
    const PUSH: &[u8] = b"{\"push\":";
    const ID: &[u8] = b"{\"id\":";
    if line.starts_with(PUSH) && line.ends_with(b"}") {
        // Zero-copy: the hub's shared publication bytes are sliced, not rewritten.
        return Some(line.slice(PUSH.len()..line.len() - 1));
    }
    if let Some(rest) = line.strip_prefix(ID) {
        let comma = rest.iter().position(|&b| b == b',')?;
        let body = &rest[comma + 1..];
        if !body.starts_with(b"\"connect\":") {
            return None;
        }
        let mut out = Vec::with_capacity(body.len() + 1);
        out.push(b'{');
        out.extend_from_slice(body);
        return Some(Bytes::from(out));
    }
    Some(line.clone())
}

/// Appends `messages` to `out` in `framing`, each line of a merged message on its own; with
/// `uni`, as a unidirectional client sees them. Returns the payload bytes (without framing).
pub fn frame(messages: &[Bytes], framing: Framing, uni: bool, out: &mut Vec<u8>) -> usize {
    let mut payload = 0;
    if framing == Framing::Delimited {
        // Delimited already; no unidirectional endpoint takes Protobuf.
        for message in messages {
            payload += message.len();
            out.extend_from_slice(message);
        }
        return payload;
    }
    for message in messages {
        for line in message.split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let line = message.slice_ref(line);
            let line = if uni {
                match unidirectional(&line) {
                    Some(line) => line,
                    None => continue,
                }
            } else {
                line
            };
            payload += line.len();
            match framing {
                Framing::Lines => {
                    out.extend_from_slice(&line);
                    out.push(b'\n');
                }
                Framing::Events => {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(&line);
                    out.extend_from_slice(b"\n\n");
                }
                Framing::Delimited => {}
            }
        }
    }
    payload
}

/// The disconnect push a streaming client gets before its response ends (a WebSocket client gets
/// the code in the close frame instead): `reconnect` as the SDKs read the code. In Protobuf for a
/// `Delimited` stream.
pub fn disconnect_push(code: u16, reason: &str, framing: Framing) -> Bytes {
    let reconnect = !((3500..4000).contains(&code) || (4500..5000).contains(&code));
    if framing == Framing::Delimited {
        return Bytes::from(herald_protocol::protobuf::encode_disconnect_push(
            u32::from(code),
            reason,
            reconnect,
        ));
    }
    let body = serde_json::json!({"push": {"disconnect": {
        "code": code, "reason": reason, "reconnect": reconnect,
    }}});
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(messages: &[&str], framing: Framing, uni: bool) -> String {
        let messages: Vec<Bytes> = messages
            .iter()
            .map(|m| Bytes::copy_from_slice(m.as_bytes()))
            .collect();
        let mut out = Vec::new();
        frame(&messages, framing, uni, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn lines_keep_every_message_on_its_own_line() {
        let out = framed(
            &["{\"id\":1,\"connect\":{}}", "{}\n{\"push\":{}}"],
            Framing::Lines,
            false,
        );
        assert_eq!(out, "{\"id\":1,\"connect\":{}}\n{}\n{\"push\":{}}\n");
    }

    #[test]
    fn events_carry_one_message_each() {
        let out = framed(&["{\"a\":1}\n{\"b\":2}"], Framing::Events, false);
        assert_eq!(out, "data: {\"a\":1}\n\ndata: {\"b\":2}\n\n");
    }

    #[test]
    fn unidirectional_clients_get_bare_pushes() {
        let out = framed(
            &[
                "{\"id\":1,\"connect\":{\"client\":\"c\"}}",
                "{\"push\":{\"channel\":\"x\",\"pub\":{\"data\":1}}}",
                "{}",
                "{\"id\":2,\"error\":{\"code\":100}}",
            ],
            Framing::Lines,
            true,
        );
        assert_eq!(
            out,
            "{\"connect\":{\"client\":\"c\"}}\n{\"channel\":\"x\",\"pub\":{\"data\":1}}\n{}\n"
        );
    }

    #[test]
    fn disconnect_says_whether_to_reconnect() {
        assert_eq!(
            &disconnect_push(3001, "shutdown", Framing::Lines)[..],
            b"{\"push\":{\"disconnect\":{\"code\":3001,\"reason\":\"shutdown\",\"reconnect\":true}}}"
        );
        assert!(disconnect_push(3501, "bad request", Framing::Events).ends_with(b"false}}}"));
    }

    #[test]
    fn protobuf_streams_are_concatenated_and_disconnect_in_protobuf() {
        let messages = [
            Bytes::from_static(b"\x02\x08\x01"),
            Bytes::from_static(b"\x00"),
        ];
        let mut out = Vec::new();
        assert_eq!(frame(&messages, Framing::Delimited, false, &mut out), 4);
        assert_eq!(out, b"\x02\x08\x01\x00");
        use herald_protocol::protobuf::wire;
        use prost::Message as _;
        let push = disconnect_push(3501, "bad request", Framing::Delimited);
        let reply = wire::Reply::decode_length_delimited(&push[..]).unwrap();
        assert!(reply.id == 0 && reply.push.is_some());
    }
}
