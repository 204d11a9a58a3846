//! The WebSocket opening handshake as RFC 6455 §4.2.1 describes it, checked without I/O (fuzzed by
//! `fuzz/fuzz_targets/http_request.rs`): what a request must carry to be upgraded, the refusal
//! (status and message) when it does not, the `Origin` policy and the `Sec-WebSocket-Accept` value.

use base64::Engine as _;
use herald_protocol::Format;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode, Version};

/// The only protocol version Herald speaks (RFC 6455).
pub const WEBSOCKET_VERSION: &str = "13";
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why a handshake is not upgraded: the HTTP status and a message that names the header at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandshakeRefusal {
    pub status: StatusCode,
    pub message: &'static str,
    /// The `reason` label of `herald_connections_refused_total`.
    pub reason: &'static str,
}

impl HandshakeRefusal {
    fn bad(message: &'static str) -> HandshakeRefusal {
        HandshakeRefusal {
            status: StatusCode::BAD_REQUEST,
            message,
            reason: "bad handshake",
        }
    }

    /// A 426 must tell the client which version to use (RFC 6455 §4.2.2).
    pub fn needs_version_header(&self) -> bool {
        self.status == StatusCode::UPGRADE_REQUIRED
    }
}

/// Checks an opening handshake; returns the client's `Sec-WebSocket-Key` for the accept value.
pub fn validate_upgrade<'a>(
    method: &Method,
    version: Version,
    headers: &'a HeaderMap,
) -> Result<&'a HeaderValue, HandshakeRefusal> {
    if method != Method::GET {
        return Err(HandshakeRefusal {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: "a WebSocket handshake is a GET request\n",
            reason: "bad handshake",
        });
    }
    if version < Version::HTTP_11 {
        return Err(HandshakeRefusal::bad(
            "a WebSocket handshake needs HTTP/1.1\n",
        ));
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(HandshakeRefusal::bad(
            "expected a WebSocket upgrade: the Upgrade header must be \"websocket\"\n",
        ));
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(HandshakeRefusal::bad(
            "expected a WebSocket upgrade: the Connection header must contain \"Upgrade\"\n",
        ));
    }
    let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.as_bytes() == WEBSOCKET_VERSION.as_bytes() => {}
        _ => {
            return Err(HandshakeRefusal {
                status: StatusCode::UPGRADE_REQUIRED,
                message: "unsupported Sec-WebSocket-Version: this server speaks version 13\n",
                reason: "websocket version",
            })
        }
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err(HandshakeRefusal::bad(
            "expected exactly one Sec-WebSocket-Key header\n",
        ));
    };
    if !valid_key(key.as_bytes()) {
        return Err(HandshakeRefusal::bad(
            "Sec-WebSocket-Key must be the base64 encoding of 16 bytes\n",
        ));
    }
    Ok(key)
}

/// Whether the comma-separated values of header `name` hold `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|b| *b == b',')
            .any(|part| part.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// A key is 16 random bytes in base64: 24 characters ending in `==`.
fn valid_key(key: &[u8]) -> bool {
    let key = key.trim_ascii();
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|bytes| bytes.len() == 16)
}

/// The `Sec-WebSocket-Accept` value for a client's key.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.trim_ascii());
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// The subprotocols of the two client protocol formats (what SDKs offer in
/// `Sec-WebSocket-Protocol`).
pub const SUBPROTOCOL_PROTOBUF: &str = "centrifuge-protobuf";
pub const SUBPROTOCOL_JSON: &str = "centrifuge-json";

/// The client protocol format a handshake asks for: Protobuf when `Sec-WebSocket-Protocol` offers
/// `centrifuge-protobuf` or the query has `format=protobuf` (as Centrifugo), JSON otherwise. Also
/// the subprotocol to echo: the offered one Herald speaks (a strict client such as node's `ws`
/// fails the handshake when its offer is not answered), none when nothing known was offered.
pub fn negotiate_format(
    headers: &HeaderMap,
    query: Option<&str>,
) -> (Format, Option<&'static str>) {
    let offered = |name: &str| has_token(headers, header::SEC_WEBSOCKET_PROTOCOL, name);
    let by_query = query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.eq_ignore_ascii_case("format=protobuf"))
    });
    if offered(SUBPROTOCOL_PROTOBUF) {
        (Format::Protobuf, Some(SUBPROTOCOL_PROTOBUF))
    } else if offered(SUBPROTOCOL_JSON) {
        // An explicit JSON offer wins over the query: the echoed subprotocol must be true.
        (Format::Json, Some(SUBPROTOCOL_JSON))
    } else if by_query {
        (Format::Protobuf, None)
    } else {
        (Format::Json, None)
    }
}

/// The `http.allowed_origins` policy. An empty list or `"*"` allows every origin. Otherwise a
/// listed origin is allowed, and so is a handshake without `Origin`: only browsers send it, and the
/// policy exists to stop other sites' pages, not apps or server-side SDKs.
pub fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() || allowed.iter().any(|o| o == "*") {
        return true;
    }
    let mut origins = headers.get_all(header::ORIGIN).iter();
    match (origins.next(), origins.next()) {
        (None, _) => true,
        (Some(origin), None) => origin.to_str().is_ok_and(|origin| {
            allowed
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin))
        }),
        // Two Origin headers: no browser sends that.
        (Some(_), Some(_)) => false,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A header map from name/value pairs (repeated names stay repeated); the API request
    /// checks' tests use it too.
    pub(crate) fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    const GOOD: &[(&str, &str)] = &[
        ("Upgrade", "websocket"),
        ("Connection", "keep-alive, Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];

    fn check(pairs: &[(&str, &str)]) -> Result<(), HandshakeRefusal> {
        validate_upgrade(&Method::GET, Version::HTTP_11, &headers(pairs)).map(|_| ())
    }

    fn without(name: &str) -> Vec<(&'static str, &'static str)> {
        GOOD.iter().filter(|(n, _)| *n != name).copied().collect()
    }

    #[test]
    fn the_rfc_example_is_accepted() {
        assert_eq!(check(GOOD), Ok(()));
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn each_missing_part_is_named() {
        let status = |pairs: &[(&str, &str)]| check(pairs).unwrap_err().status;
        assert_eq!(status(&without("Upgrade")), StatusCode::BAD_REQUEST);
        assert_eq!(status(&without("Connection")), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(&without("Sec-WebSocket-Key")),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(&without("Sec-WebSocket-Version")),
            StatusCode::UPGRADE_REQUIRED
        );
        let mut v8 = without("Sec-WebSocket-Version");
        v8.push(("Sec-WebSocket-Version", "8"));
        assert!(check(&v8).unwrap_err().needs_version_header());
        let mut short = without("Sec-WebSocket-Key");
        short.push(("Sec-WebSocket-Key", "c2hvcnQ="));
        assert!(check(&short).unwrap_err().message.contains("16 bytes"));
        let good = headers(GOOD);
        let http10 = validate_upgrade(&Method::GET, Version::HTTP_10, &good);
        assert!(http10.unwrap_err().message.contains("HTTP/1.1"));
        let post = validate_upgrade(&Method::POST, Version::HTTP_11, &good);
        assert_eq!(post.unwrap_err().status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn the_format_follows_the_subprotocol_or_the_query() {
        let protobuf = Some(SUBPROTOCOL_PROTOBUF);
        let json = Some(SUBPROTOCOL_JSON);
        let offer = |value: &str| headers(&[("Sec-WebSocket-Protocol", value)]);
        assert_eq!(negotiate_format(&headers(&[]), None), (Format::Json, None));
        assert_eq!(
            negotiate_format(&offer("centrifuge-protobuf"), None),
            (Format::Protobuf, protobuf)
        );
        assert_eq!(
            negotiate_format(&offer("chat, Centrifuge-Protobuf"), None),
            (Format::Protobuf, protobuf)
        );
        assert_eq!(
            negotiate_format(&offer("centrifuge-json"), None),
            (Format::Json, json)
        );
        assert_eq!(
            negotiate_format(&offer("centrifuge-json"), Some("format=protobuf")),
            (Format::Json, json)
        );
        assert_eq!(
            negotiate_format(
                &headers(&[]),
                Some("cf_ws_frame_ping_pong=true&format=protobuf")
            ),
            (Format::Protobuf, None)
        );
        assert_eq!(
            negotiate_format(&offer("mqtt"), Some("format=json")),
            (Format::Json, None)
        );
        assert_eq!(
            negotiate_format(&headers(&[]), Some("xformat=protobuf")),
            (Format::Json, None)
        );
    }

    #[test]
    fn origin_policy() {
        let list = vec!["https://app.example".to_string()];
        assert!(origin_allowed(
            &[],
            &headers(&[("Origin", "https://evil.example")])
        ));
        assert!(origin_allowed(&list, &headers(&[])));
        assert!(origin_allowed(
            &list,
            &headers(&[("Origin", "https://APP.example")])
        ));
        assert!(!origin_allowed(
            &list,
            &headers(&[("Origin", "https://evil.example")])
        ));
        assert!(!origin_allowed(&list, &headers(&[("Origin", "null")])));
        let two = [
            ("Origin", "https://app.example"),
            ("Origin", "https://app.example"),
        ];
        assert!(!origin_allowed(&list, &headers(&two)));
    }
}
