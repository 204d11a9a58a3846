//! The WebSocket connection request: `GET /app/<key>?protocol=7&client=js&version=8.4.0&flash=false`
//! (what pusher-js asks for). Refusals carry the close code the server owes the client.

use crate::codes::ErrorCode;
use crate::http_auth::parse_query;

/// Protocol versions served. Version 5 is where clients started answering `pusher:ping`, which
/// the server relies on; pusher-js and the other current client libraries send 7.
pub const SUPPORTED_PROTOCOLS: std::ops::RangeInclusive<u8> = 5..=7;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    pub app_key: String,
    pub protocol: u8,
    /// The client library (`js` for pusher-js).
    pub client: Option<String>,
    /// The client library version.
    pub version: Option<String>,
}

/// Reads the path (without query) and raw query string of a WebSocket upgrade request.
pub fn parse_connect(path: &str, query: &str) -> Result<ConnectRequest, ErrorCode> {
    let app_key = path
        .strip_prefix("/app/")
        .filter(|key| !key.is_empty() && !key.contains('/'))
        .ok_or(ErrorCode::PathNotFound)?;
    let params = parse_query(query);
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let protocol = get("protocol").ok_or(ErrorCode::NoProtocolVersion)?;
    let protocol: u8 = protocol
        .parse()
        .ok()
        .filter(|p| SUPPORTED_PROTOCOLS.contains(p))
        .ok_or(ErrorCode::UnsupportedProtocolVersion)?;
    let version = get("version").map(str::to_owned);
    if let Some(v) = &version {
        let valid = !v.is_empty()
            && v.len() <= 32
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+' | b'_'));
        if !valid {
            return Err(ErrorCode::InvalidVersionFormat);
        }
    }
    Ok(ConnectRequest {
        app_key: app_key.to_owned(),
        protocol,
        client: get("client").map(|c| c.chars().take(64).collect()),
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pusher_js_request() {
        let r = parse_connect(
            "/app/278d425bdf160c739803",
            "protocol=7&client=js&version=8.4.0&flash=false",
        )
        .expect("valid");
        assert_eq!(
            r,
            ConnectRequest {
                app_key: "278d425bdf160c739803".into(),
                protocol: 7,
                client: Some("js".into()),
                version: Some("8.4.0".into()),
            }
        );
    }

    #[test]
    fn refusals_carry_their_close_code() {
        assert_eq!(
            parse_connect("/apps/k", "protocol=7"),
            Err(ErrorCode::PathNotFound)
        );
        assert_eq!(
            parse_connect("/app/", "protocol=7"),
            Err(ErrorCode::PathNotFound)
        );
        assert_eq!(
            parse_connect("/app/k/x", "protocol=7"),
            Err(ErrorCode::PathNotFound)
        );
        assert_eq!(
            parse_connect("/app/k", "client=js"),
            Err(ErrorCode::NoProtocolVersion)
        );
        assert_eq!(
            parse_connect("/app/k", "protocol=3"),
            Err(ErrorCode::UnsupportedProtocolVersion)
        );
        assert_eq!(
            parse_connect("/app/k", "protocol=8"),
            Err(ErrorCode::UnsupportedProtocolVersion)
        );
        assert_eq!(
            parse_connect("/app/k", "protocol=x"),
            Err(ErrorCode::UnsupportedProtocolVersion)
        );
        assert_eq!(
            parse_connect("/app/k", "protocol=7&version=1%202"),
            Err(ErrorCode::InvalidVersionFormat)
        );
        assert_eq!(
            parse_connect("/app/k", "protocol=5").map(|r| r.protocol),
            Ok(5)
        );
    }
}
