//! What the streaming endpoints are sent, checked before any connection state exists: the connect
//! request of a unidirectional stream, the `cf_connect` query parameter, and the body of an
//! `/emulation` request. Errors name the field.

use serde::Deserialize;

/// The query parameter that carries the connect command (SSE) or request (uni SSE) of a GET.
pub const CONNECT_PARAM: &str = "cf_connect";

/// An `/emulation` request: commands for the session `session` held by node `node`.
#[derive(Debug)]
pub struct EmulationRequest {
    pub node: String,
    pub session: String,
    /// The commands, encoded as the connection's format (JSON: newline-delimited commands;
    /// Protobuf: length-delimited commands).
    pub data: Vec<u8>,
}

/// An `/emulation` body in JSON: the commands as text.
#[derive(Deserialize)]
struct JsonEmulationRequest {
    node: String,
    session: String,
    data: String,
}

/// Why a request was refused: a message naming the field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

/// The value of `name` in a URL query, percent-decoded (`+` is a space).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    let query = query?;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == name {
            return Some(percent_decode(value));
        }
    }
    None
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks a unidirectional connect request (an empty body is `{}`) and wraps it as the connect
/// command the session answers first.
pub fn uni_connect_command(body: &[u8]) -> Result<Vec<u8>, BadRequest> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        &b"{}"[..]
    } else {
        body
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let checked: Result<herald_protocol::command::ConnectRequest, _> =
        serde_path_to_error::deserialize(&mut de);
    if let Err(e) = checked {
        let path = e.path().to_string();
        let what = if path == "." {
            "connect request".to_string()
        } else {
            format!("connect request field {path:?}")
        };
        return Err(BadRequest(format!("bad {what}: {}", e.inner())));
    }
    let mut command = b"{\"id\":1,\"connect\":".to_vec();
    command.extend_from_slice(body.trim_ascii());
    command.push(b'}');
    Ok(command)
}

/// Parses an `/emulation` body: a Protobuf `EmulationRequest` (not length-delimited) when
/// `protobuf`, else JSON.
pub fn emulation_request(body: &[u8], protobuf: bool) -> Result<EmulationRequest, BadRequest> {
    if protobuf {
        return protobuf_emulation_request(body);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let request: JsonEmulationRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            BadRequest(format!("bad emulation request: {}", e.inner()))
        } else {
            BadRequest(format!(
                "bad emulation request field {path:?}: {}",
                e.inner()
            ))
        }
    })?;
    Ok(EmulationRequest {
        node: request.node,
        session: request.session,
        data: request.data.into_bytes(),
    })
}

fn protobuf_emulation_request(body: &[u8]) -> Result<EmulationRequest, BadRequest> {
    let request = herald_protocol::protobuf::decode_emulation_request(body)
        .map_err(|e| BadRequest(format!("bad emulation request (Protobuf): {e}")))?;
    // Protobuf cannot tell a missing string from an empty one; neither names a connection.
    for (field, value) in [("node", &request.node), ("session", &request.session)] {
        if value.is_empty() {
            return Err(BadRequest(format!(
                "bad emulation request field \"{field}\": missing or empty"
            )));
        }
    }
    Ok(EmulationRequest {
        node: request.node,
        session: request.session,
        data: request.data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        let q = Some("a=1&cf_connect=%7B%22id%22%3A1%7D+x&b");
        assert_eq!(query_param(q, CONNECT_PARAM).unwrap(), "{\"id\":1} x");
        assert_eq!(query_param(q, "b").unwrap(), "");
        assert_eq!(query_param(q, "c"), None);
        assert_eq!(query_param(Some("x=%zz%4"), "x").unwrap(), "%zz%4");
    }

    #[test]
    fn uni_connect_requests_are_checked_and_wrapped() {
        assert_eq!(
            uni_connect_command(b"").unwrap(),
            b"{\"id\":1,\"connect\":{}}".to_vec()
        );
        assert_eq!(
            uni_connect_command(b" {\"token\":\"t\"} ").unwrap(),
            b"{\"id\":1,\"connect\":{\"token\":\"t\"}}".to_vec()
        );
        let e = uni_connect_command(b"{\"token\":5}").unwrap_err();
        assert!(e.0.contains("\"token\""), "{e}");
        let e = uni_connect_command(b"{\"subs\":{\"a\":{\"offset\":\"x\"}}}").unwrap_err();
        assert!(e.0.contains("subs.a.offset"), "{e}");
        assert!(uni_connect_command(b"[1]").is_err());
    }

    #[test]
    fn emulation_requests_name_the_bad_field() {
        let ok = emulation_request(br#"{"node":"n","session":"s","data":"{}"}"#, false).unwrap();
        assert_eq!((ok.node.as_str(), &ok.data[..]), ("n", &b"{}"[..]));
        let e = emulation_request(br#"{"node":"n","session":1,"data":""}"#, false).unwrap_err();
        assert!(e.0.contains("\"session\""), "{e}");
        let e = emulation_request(br#"{"node":"n","data":""}"#, false).unwrap_err();
        assert!(e.0.contains("session"), "{e}");
    }

    #[test]
    fn protobuf_emulation_requests_are_decoded_and_checked() {
        use herald_protocol::protobuf::wire;
        use prost::Message as _;
        let body = wire::EmulationRequest {
            node: "n".into(),
            session: "s".into(),
            data: vec![0, 1, 2],
        }
        .encode_to_vec();
        let ok = emulation_request(&body, true).unwrap();
        assert_eq!((ok.node.as_str(), ok.session.as_str()), ("n", "s"));
        assert_eq!(ok.data, vec![0, 1, 2]);
        let no_session = wire::EmulationRequest {
            node: "n".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let e = emulation_request(&no_session, true).unwrap_err();
        assert!(e.0.contains("\"session\""), "{e}");
        let e = emulation_request(b"\xff\xff\xff\xff", true).unwrap_err();
        assert!(e.0.contains("Protobuf"), "{e}");
        // A JSON body sent as Protobuf is refused, not misread.
        assert!(emulation_request(br#"{"node":"n","session":"s","data":""}"#, true).is_err());
    }
}
