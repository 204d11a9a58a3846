//! Who may call the server API and what a request must look like, checked without I/O (fuzzed by
//! `fuzz/fuzz_targets/http_request.rs`): the API key, the keyless allow-list, the body and the
//! `batch` envelope.
//!
//! Without `api.key` the API is meant for processes on this host. A browser on this host is one too,
//! and any web page it opens could aim a request at `http://127.0.0.1:8000/api/...` — directly or
//! through a rebinding DNS name. So a keyless request is served only when everything it says about
//! where it comes from is loopback (the allow-list): the TCP peer, `Host` (and an absolute URI's
//! authority), `Origin` if present, `Sec-Fetch-Site` if present, every forwarding header
//! (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`, `X-Forwarded-Host`; a `Via` proxy hop never is), and
//! a body request must be `Content-Type: application/json`, which no page can send to another site
//! without the CORS preflight Herald never grants.

use http::{header, HeaderMap, StatusCode, Uri};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use subtle::ConstantTimeEq;

/// A request refused before any method runs: the HTTP status, the API error code and message, and
/// the `reason` label of `herald_api_refused_total`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiRefusal {
    pub status: StatusCode,
    pub code: u32,
    pub message: String,
    pub reason: &'static str,
}

impl ApiRefusal {
    fn new(status: StatusCode, code: u32, reason: &'static str, message: String) -> ApiRefusal {
        ApiRefusal {
            status,
            code,
            message,
            reason,
        }
    }

    fn not_local(reason: &'static str, rule: String) -> ApiRefusal {
        ApiRefusal::new(
            StatusCode::UNAUTHORIZED,
            101,
            reason,
            format!("no api.key configured: the API answers requests made on this host only: {rule}; set api.key to call it from elsewhere"),
        )
    }
}

/// Whether an API request may reach its method. With a key, the key decides; without one, the
/// keyless allow-list and the JSON content type do.
pub fn authorize(
    key: &str,
    peer: IpAddr,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<(), ApiRefusal> {
    if !key.is_empty() {
        return check_key(key, headers);
    }
    keyless_allowed(peer, uri, headers)?;
    json_content_type(headers)
}

/// `X-API-Key: <key>` or `Authorization: apikey <key>`, compared in constant time.
fn check_key(key: &str, headers: &HeaderMap) -> Result<(), ApiRefusal> {
    let presented = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("apikey ")
                        .or_else(|| v.strip_prefix("Apikey "))
                })
        })
        .unwrap_or("");
    if bool::from(presented.as_bytes().ct_eq(key.as_bytes())) {
        Ok(())
    } else {
        Err(ApiRefusal::new(
            StatusCode::UNAUTHORIZED,
            101,
            "key",
            "missing or wrong API key".into(),
        ))
    }
}

/// The keyless allow-list: every statement of origin the request makes is loopback.
pub fn keyless_allowed(peer: IpAddr, uri: &Uri, headers: &HeaderMap) -> Result<(), ApiRefusal> {
    if !is_loopback_ip(peer) {
        return Err(ApiRefusal::not_local(
            "peer",
            format!("the caller {peer} is not a loopback address"),
        ));
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(host), None) => host.to_str().unwrap_or(""),
        (None, _) => {
            return Err(ApiRefusal::not_local(
                "host",
                "a Host header is required".into(),
            ))
        }
        (Some(_), Some(_)) => {
            return Err(ApiRefusal::not_local("host", "one Host header only".into()))
        }
    };
    if !is_loopback_host(host) {
        return Err(ApiRefusal::not_local(
            "host",
            format!("Host {host:?} is not localhost or a loopback address"),
        ));
    }
    if let Some(authority) = uri.authority() {
        if !is_loopback_host(authority.as_str()) {
            return Err(ApiRefusal::not_local(
                "host",
                format!("the request names host {:?}", authority.as_str()),
            ));
        }
    }
    for origin in headers.get_all(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        if !is_loopback_origin(origin) {
            return Err(ApiRefusal::not_local(
                "origin",
                format!("Origin {origin:?} is not a page served from this host"),
            ));
        }
    }
    for site in headers.get_all("sec-fetch-site") {
        let site = site.to_str().unwrap_or("");
        if !["same-origin", "same-site", "none"]
            .iter()
            .any(|s| s.eq_ignore_ascii_case(site))
        {
            return Err(ApiRefusal::not_local(
                "origin",
                format!("Sec-Fetch-Site {site:?}: a page of another site sent it"),
            ));
        }
    }
    forwarding_is_loopback(headers).map_err(|rule| ApiRefusal::not_local("forwarded", rule))
}

/// Every client address and host a proxy reports must be loopback too: a proxy on this host that
/// forwards someone else's request names them (or, with `Via`, at least says it is a proxy).
fn forwarding_is_loopback(headers: &HeaderMap) -> Result<(), String> {
    if headers.contains_key(header::VIA) {
        return Err("the request came through a proxy (Via)".into());
    }
    for name in ["X-Forwarded-For", "X-Real-IP"] {
        for value in headers.get_all(name) {
            let text = value.to_str().unwrap_or("");
            if !text.split(',').all(|node| node_is_loopback(node.trim())) {
                return Err(format!(
                    "{name} {text:?} names a client that is not loopback"
                ));
            }
        }
    }
    for value in headers.get_all("x-forwarded-host") {
        let text = value.to_str().unwrap_or("");
        if !text.split(',').all(|host| is_loopback_host(host.trim())) {
            return Err(format!("X-Forwarded-Host {text:?} is not a loopback host"));
        }
    }
    for value in headers.get_all(header::FORWARDED) {
        let text = value.to_str().unwrap_or("");
        for pair in text.split([',', ';']) {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            let ok = match key.trim().to_ascii_lowercase().as_str() {
                "for" => node_is_loopback(value),
                "host" => is_loopback_host(value),
                _ => true,
            };
            if !ok {
                return Err(format!("Forwarded {text:?} is not loopback"));
            }
        }
    }
    Ok(())
}

fn is_loopback_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// A forwarded client address: `127.0.0.1`, `127.0.0.1:5000`, `::1`, `[::1]:5000`.
fn node_is_loopback(node: &str) -> bool {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return is_loopback_ip(ip);
    }
    split_host_port(node).is_some_and(|host| match host.parse::<IpAddr>() {
        Ok(ip) => is_loopback_ip(ip),
        Err(_) => false,
    })
}

/// The host of `host[:port]` (`[v6][:port]` for IPv6); `None` when it is not of that shape.
fn split_host_port(text: &str) -> Option<&str> {
    let valid_port = |port: &str| {
        !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
    };
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            None if after.is_empty() => Some(host),
            Some(port) if valid_port(port) => Some(host),
            _ => None,
        };
    }
    match text.split_once(':') {
        None => Some(text),
        Some((host, port)) if valid_port(port) => Some(host),
        Some(_) => None,
    }
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
pub fn is_loopback_host(text: &str) -> bool {
    let Some(host) = split_host_port(text) else {
        return false;
    };
    if host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("localhost.") {
        return true;
    }
    if let Ok(v4) = host.parse::<Ipv4Addr>() {
        return v4.is_loopback();
    }
    // Only in brackets, as a URL writes it.
    text.starts_with('[')
        && host
            .parse::<Ipv6Addr>()
            .is_ok_and(|v6| is_loopback_ip(IpAddr::V6(v6)))
}

/// `http://localhost:3000`, `https://127.0.0.1`, `http://[::1]:8000`: a page served from this host.
pub fn is_loopback_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
        && is_loopback_host(rest)
}

/// `application/json`, optionally with parameters (`; charset=utf-8`).
fn json_content_type(headers: &HeaderMap) -> Result<(), ApiRefusal> {
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let value = match (types.next(), types.next()) {
        (Some(value), None) => value.to_str().unwrap_or(""),
        _ => "",
    };
    let media = value.split(';').next().unwrap_or("").trim();
    if media.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    Err(ApiRefusal::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        107,
        "content type",
        format!("no api.key configured: the API takes Content-Type: application/json only (got {value:?}), so that no web page can post to it"),
    ))
}

/// The request body as the method's parameters: a JSON object (an empty body is `{}`).
pub fn parse_body(body: &[u8]) -> Result<Box<RawValue>, ApiRefusal> {
    let bad = |message: String| ApiRefusal::new(StatusCode::BAD_REQUEST, 107, "body", message);
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return RawValue::from_string("{}".into()).map_err(|e| bad(e.to_string()));
    }
    let text = std::str::from_utf8(body).map_err(|_| bad("request body is not UTF-8".into()))?;
    let raw: Box<RawValue> =
        serde_json::from_str(text).map_err(|e| bad(format!("request body is not JSON: {e}")))?;
    if !raw.get().trim_start().starts_with('{') {
        return Err(bad("request body must be a JSON object".into()));
    }
    Ok(raw)
}

/// A parsed `batch`: each command's method and parameters, borrowed from the body.
#[derive(Debug)]
pub struct BatchRequest<'a> {
    pub commands: Vec<(String, &'a RawValue)>,
    /// Run the commands concurrently (as Centrifugo's `parallel`).
    pub parallel: bool,
}

/// Parses `{"commands": [{"<method>": {...}}, ...], "parallel": bool}` with at most `max_commands`
/// commands. The count is checked while reading, so an oversized batch costs no more than the body
/// it came in. Errors name the field.
pub fn parse_batch(raw: &RawValue, max_commands: usize) -> Result<BatchRequest<'_>, String> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let envelope = de
        .deserialize_map(EnvelopeVisitor { max_commands })
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    let commands = envelope.commands.ok_or("field \"commands\" is required")?;
    let mut parsed = Vec::with_capacity(commands.len());
    for (i, command) in commands.into_iter().enumerate() {
        let entries: BTreeMap<String, &RawValue> =
            serde_json::from_str(command.get()).map_err(|e| format!("commands[{i}]: {e}"))?;
        let mut entries = entries.into_iter();
        let (Some((method, params)), None) = (entries.next(), entries.next()) else {
            return Err(format!("commands[{i}] must have exactly one method key"));
        };
        if method == "batch" {
            return Err(format!("commands[{i}]: batch cannot be nested"));
        }
        parsed.push((method, params));
    }
    Ok(BatchRequest {
        commands: parsed,
        parallel: envelope.parallel,
    })
}

struct Envelope<'a> {
    commands: Option<Vec<&'a RawValue>>,
    parallel: bool,
}

struct EnvelopeVisitor {
    max_commands: usize,
}

impl<'de> Visitor<'de> for EnvelopeVisitor {
    type Value = Envelope<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object with \"commands\"")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
        let mut envelope = Envelope {
            commands: None,
            parallel: false,
        };
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "commands" => {
                    envelope.commands = Some(map.next_value_seed(CommandsSeed {
                        max: self.max_commands,
                    })?)
                }
                "parallel" => {
                    envelope.parallel = map
                        .next_value::<bool>()
                        .map_err(|e| de::Error::custom(format!("field \"parallel\": {e}")))?
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(envelope)
    }
}

struct CommandsSeed {
    max: usize,
}

impl<'de> DeserializeSeed<'de> for CommandsSeed {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for CommandsSeed {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("field \"commands\": an array of commands")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut commands = Vec::new();
        while let Some(command) = seq.next_element::<&'de RawValue>()? {
            if commands.len() == self.max {
                return Err(de::Error::custom(format!(
                    "field \"commands\": more than {} commands (api.max_batch_commands); split the batch",
                    self.max
                )));
            }
            commands.push(command);
        }
        Ok(commands)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::edges::http::handshake::tests::headers;

    fn local(pairs: &[(&str, &str)]) -> Result<(), &'static str> {
        let uri: Uri = "/api/publish".parse().unwrap();
        authorize("", "127.0.0.1".parse().unwrap(), &uri, &headers(pairs)).map_err(|e| e.reason)
    }

    const JSON: (&str, &str) = ("Content-Type", "application/json");

    #[test]
    fn keyless_allow_list() {
        for host in [
            "localhost",
            "localhost:8000",
            "127.0.0.1:8000",
            "127.3.2.1",
            "[::1]:8000",
            "[::1]",
        ] {
            assert_eq!(local(&[("Host", host), JSON]), Ok(()), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8000",
            "127.0.0.1.evil.example",
            "10.0.0.1",
            "::1",
            "localhost:x",
            "",
        ] {
            assert_eq!(local(&[("Host", host), JSON]), Err("host"), "{host}");
        }
        assert_eq!(local(&[JSON]), Err("host"));
        let h = ("Host", "127.0.0.1:8000");
        assert_eq!(
            local(&[h, ("Content-Type", "application/json; charset=utf-8")]),
            Ok(())
        );
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "application/jsonx",
        ] {
            assert_eq!(
                local(&[h, ("Content-Type", ct)]),
                Err("content type"),
                "{ct}"
            );
        }
        assert_eq!(local(&[h]), Err("content type"));
        assert_eq!(
            local(&[h, JSON, ("Origin", "http://localhost:3000")]),
            Ok(())
        );
        assert_eq!(
            local(&[h, JSON, ("Origin", "https://evil.example")]),
            Err("origin")
        );
        assert_eq!(local(&[h, JSON, ("Origin", "null")]), Err("origin"));
        assert_eq!(
            local(&[h, JSON, ("Sec-Fetch-Site", "cross-site")]),
            Err("origin")
        );
        assert_eq!(local(&[h, JSON, ("X-Forwarded-For", "127.0.0.1")]), Ok(()));
        assert_eq!(
            local(&[h, JSON, ("X-Forwarded-For", "203.0.113.9, 127.0.0.1")]),
            Err("forwarded")
        );
        assert_eq!(
            local(&[h, JSON, ("X-Real-IP", "203.0.113.9")]),
            Err("forwarded")
        );
        assert_eq!(
            local(&[
                h,
                JSON,
                ("Forwarded", "for=\"[2001:db8::1]:4711\";host=localhost")
            ]),
            Err("forwarded")
        );
        assert_eq!(
            local(&[h, JSON, ("Forwarded", "for=127.0.0.1;proto=http")]),
            Ok(())
        );
        assert_eq!(local(&[h, JSON, ("Via", "1.1 nginx")]), Err("forwarded"));
        let remote = authorize(
            "",
            "10.1.2.3".parse().unwrap(),
            &"/".parse().unwrap(),
            &headers(&[h, JSON]),
        );
        assert_eq!(remote.unwrap_err().reason, "peer");
        let mapped = authorize(
            "",
            "::ffff:127.0.0.1".parse().unwrap(),
            &"/".parse().unwrap(),
            &headers(&[h, JSON]),
        );
        assert_eq!(mapped, Ok(()));
        let absolute: Uri = "http://evil.example/api/publish".parse().unwrap();
        let rebound = authorize(
            "",
            "127.0.0.1".parse().unwrap(),
            &absolute,
            &headers(&[h, JSON]),
        );
        assert_eq!(rebound.unwrap_err().reason, "host");
    }

    #[test]
    fn with_a_key_the_key_decides() {
        let uri: Uri = "/api/info".parse().unwrap();
        let remote: IpAddr = "203.0.113.9".parse().unwrap();
        let ok = headers(&[("X-API-Key", "k"), ("Host", "herald.example")]);
        assert_eq!(authorize("k", remote, &uri, &ok), Ok(()));
        let bearer = headers(&[("Authorization", "apikey k")]);
        assert_eq!(authorize("k", remote, &uri, &bearer), Ok(()));
        let wrong = headers(&[("X-API-Key", "x")]);
        assert_eq!(
            authorize("k", remote, &uri, &wrong).unwrap_err().status,
            StatusCode::UNAUTHORIZED
        );
    }

    #[test]
    fn batches_are_bounded_while_parsing() {
        let raw = |s: &str| RawValue::from_string(s.to_string()).unwrap();
        let two = raw(
            r#"{"commands":[{"publish":{"channel":"a","data":1}},{"info":{}}],"parallel":true,"x":[1]}"#,
        );
        let batch = parse_batch(&two, 2).unwrap();
        assert!(batch.parallel);
        assert_eq!(batch.commands.len(), 2);
        assert_eq!(batch.commands[1].0, "info");
        let e = parse_batch(&two, 1).unwrap_err();
        assert!(e.contains("api.max_batch_commands"), "{e}");
        assert!(parse_batch(&raw("{}"), 5).unwrap_err().contains("commands"));
        assert!(parse_batch(&raw(r#"{"commands":[{}]}"#), 5)
            .unwrap_err()
            .contains("commands[0]"));
        assert!(parse_batch(&raw(r#"{"commands":[{"batch":{}}]}"#), 5)
            .unwrap_err()
            .contains("nested"));
        assert!(parse_batch(&raw(r#"{"commands":5}"#), 5).is_err());
        assert!(parse_batch(&raw(r#"{"commands":[],"parallel":"yes"}"#), 5)
            .unwrap_err()
            .contains("parallel"));
    }

    #[test]
    fn bodies() {
        assert_eq!(parse_body(b"  ").unwrap().get(), "{}");
        assert_eq!(
            parse_body(b"[1]").unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        assert!(parse_body(b"{\"a\":")
            .unwrap_err()
            .message
            .contains("not JSON"));
        assert!(parse_body(&[0xff]).unwrap_err().message.contains("UTF-8"));
    }
}
