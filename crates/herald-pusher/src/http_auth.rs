//! Signed HTTP API requests.
//!
//! Every request carries in its query string `auth_key`, `auth_timestamp` (unix seconds),
//! `auth_version=1.0`, `body_md5` (hex MD5 of the body, required when the body is not empty) and
//! `auth_signature`: the hex HMAC-SHA256, keyed by the app secret, of
//!
//! ```text
//! <METHOD>\n<path>\n<query>
//! ```
//!
//! where `<query>` is every parameter but `auth_signature`, keys lowercased, sorted by key and
//! joined as `k=v&k=v` *without* URL escaping (values are percent-decoded first). Pusher refuses
//! timestamps more than 600 seconds from its clock; the window is the caller's choice here.
//!
//! Every failure answers HTTP 401 (Pusher's "authentication error") with a message that names the
//! parameter at fault.

use crate::sign::{hmac_sha256_hex, md5_hex, nibble, verify_hmac_sha256_hex};

/// The only signing scheme version.
pub const AUTH_VERSION: &str = "1.0";

/// Pusher's tolerance between `auth_timestamp` and the server clock.
pub const DEFAULT_TIMESTAMP_WINDOW_SECS: u64 = 600;

/// The parts of an HTTP request the signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The path as received, without the query string.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: &'a str,
    pub body: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestAuthError {
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{0} is given more than once")]
    Duplicate(&'static str),
    #[error("auth_version must be 1.0, got {0:?}")]
    UnsupportedVersion(String),
    #[error("auth_key does not belong to this app")]
    UnknownKey,
    #[error("auth_timestamp must be unix seconds, got {0:?}")]
    BadTimestamp(String),
    #[error(
        "auth_timestamp {timestamp} is not within {window}s of the server time {now}; check the client clock"
    )]
    StaleTimestamp {
        timestamp: u64,
        now: u64,
        window: u64,
    },
    #[error("body_md5 does not match the body")]
    BodyMd5Mismatch,
    #[error("auth_signature is invalid")]
    InvalidSignature,
}

impl RequestAuthError {
    /// The query parameter at fault.
    pub fn field(&self) -> &'static str {
        match self {
            RequestAuthError::Missing(field) | RequestAuthError::Duplicate(field) => field,
            RequestAuthError::UnsupportedVersion(_) => "auth_version",
            RequestAuthError::UnknownKey => "auth_key",
            RequestAuthError::BadTimestamp(_) | RequestAuthError::StaleTimestamp { .. } => {
                "auth_timestamp"
            }
            RequestAuthError::BodyMd5Mismatch => "body_md5",
            RequestAuthError::InvalidSignature => "auth_signature",
        }
    }

    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        401
    }
}

/// Splits and percent-decodes a query string (`+` is a space); keys are lowercased. Pairs keep
/// their order; a pair without `=` has an empty value.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(k, true).to_ascii_lowercase(),
                percent_decode(v, true),
            )
        })
        .collect()
}

/// The string an HTTP API request signs, from already decoded parameters (`auth_signature` is
/// left out whatever its case).
pub fn string_to_sign(method: &str, path: &str, params: &[(String, String)]) -> String {
    format!(
        "{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path,
        sorted_query(params)
    )
}

/// `k=v&k=v` of every parameter but `auth_signature`, sorted by key.
fn sorted_query(params: &[(String, String)]) -> String {
    let mut sorted: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .filter(|(k, _)| !k.eq_ignore_ascii_case("auth_signature"))
        .collect();
    // Stable, so repeated keys keep their order.
    sorted.sort_by_key(|&(k, _)| k);
    let pairs: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join("&")
}

/// Signs a request as the Pusher server SDKs do and returns its query string (unescaped, as the
/// SDKs send it), `auth_signature` last. For tests and for Herald's own API clients.
pub fn sign_request(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: &[u8],
    timestamp: u64,
) -> String {
    let mut all: Vec<(String, String)> = vec![
        ("auth_key".into(), key.into()),
        ("auth_timestamp".into(), timestamp.to_string()),
        ("auth_version".into(), AUTH_VERSION.into()),
    ];
    if !body.is_empty() {
        all.push(("body_md5".into(), md5_hex(body)));
    }
    all.extend(
        params
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned())),
    );
    let to_sign = string_to_sign(method, path, &all);
    let signature = hmac_sha256_hex(secret.as_bytes(), to_sign.as_bytes());
    format!("{}&auth_signature={signature}", sorted_query(&all))
}

/// Verifies a request for the app with `key` and `secret`, at `now` unix seconds: its signed
/// query ([`verify_query`]), then its body ([`SignedQuery::check_body`]).
pub fn verify_request(
    req: &SignedRequest<'_>,
    key: &str,
    secret: &str,
    now: u64,
    window_secs: u64,
) -> Result<(), RequestAuthError> {
    verify_query(
        req.method,
        req.path,
        req.query,
        !req.body.is_empty(),
        key,
        secret,
        now,
        window_secs,
    )?
    .check_body(req.body)
}

/// A request whose query carries a valid signature; its body is still to be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedQuery {
    body_md5: Option<String>,
}

/// Verifies everything the signature covers without the body, so a server can refuse an
/// unsigned request before it reads a byte of its body.
///
/// Checked in this order: the parameters are there, once each (`body_md5` too when the request
/// has a body: `has_body`, as its headers announce it); the version; the key; the signature; the
/// timestamp. The signature is tried over the path as received and, when that
/// fails and the path holds `%`, over the percent-decoded path (SDKs sign the path unescaped, and
/// an HTTP client may escape a channel name's `@ , ; =` on the way).
#[allow(clippy::too_many_arguments)] // the parts of a request, each named
pub fn verify_query(
    method: &str,
    path: &str,
    query: &str,
    has_body: bool,
    key: &str,
    secret: &str,
    now: u64,
    window_secs: u64,
) -> Result<SignedQuery, RequestAuthError> {
    let params = parse_query(query);
    let signature = single(&params, "auth_signature")?;
    let given_key = single(&params, "auth_key")?;
    let timestamp = single(&params, "auth_timestamp")?;
    let version = single(&params, "auth_version")?;
    let body_md5 = optional_single(&params, "body_md5")?.map(str::to_string);
    if has_body && body_md5.is_none() {
        return Err(RequestAuthError::Missing("body_md5"));
    }
    if version != AUTH_VERSION {
        return Err(RequestAuthError::UnsupportedVersion(short(version)));
    }
    if given_key != key {
        return Err(RequestAuthError::UnknownKey);
    }

    let signed_by = |path: &str| {
        let to_sign = string_to_sign(method, path, &params);
        verify_hmac_sha256_hex(secret.as_bytes(), to_sign.as_bytes(), signature)
    };
    let valid = signed_by(path) || (path.contains('%') && signed_by(&percent_decode(path, false)));
    if !valid {
        return Err(RequestAuthError::InvalidSignature);
    }

    let timestamp: u64 = match timestamp.parse() {
        Ok(t) if timestamp.bytes().all(|b| b.is_ascii_digit()) => t,
        _ => return Err(RequestAuthError::BadTimestamp(short(timestamp))),
    };
    if timestamp.abs_diff(now) > window_secs {
        return Err(RequestAuthError::StaleTimestamp {
            timestamp,
            now,
            window: window_secs,
        });
    }
    Ok(SignedQuery { body_md5 })
}

impl SignedQuery {
    /// Checks the body against the signed `body_md5`, which a request with a body must carry.
    pub fn check_body(&self, body: &[u8]) -> Result<(), RequestAuthError> {
        match &self.body_md5 {
            None if !body.is_empty() => Err(RequestAuthError::Missing("body_md5")),
            None => Ok(()),
            // body_md5 is covered by the signature, so a match ties the body to the request.
            Some(given) if given.eq_ignore_ascii_case(&md5_hex(body)) => Ok(()),
            Some(_) => Err(RequestAuthError::BodyMd5Mismatch),
        }
    }
}

fn single<'a>(
    params: &'a [(String, String)],
    key: &'static str,
) -> Result<&'a str, RequestAuthError> {
    optional_single(params, key)?.ok_or(RequestAuthError::Missing(key))
}

fn optional_single<'a>(
    params: &'a [(String, String)],
    key: &'static str,
) -> Result<Option<&'a str>, RequestAuthError> {
    let mut found = params
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str());
    let first = found.next();
    if found.next().is_some() {
        return Err(RequestAuthError::Duplicate(key));
    }
    Ok(first)
}

fn short(s: &str) -> String {
    s.chars().take(32).collect()
}

/// Decodes `%XX` escapes (and `+` as a space in query strings); malformed escapes stay as they
/// are, and bytes that do not form UTF-8 become U+FFFD.
pub(crate) fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => match (
                b.get(i + 1).and_then(|&c| nibble(c)),
                b.get(i + 2).and_then(|&c| nibble(c)),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push((hi << 4) | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The worked example of Pusher's HTTP API reference.
    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";
    const BODY: &str = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
    const TIMESTAMP: u64 = 1353088179;
    const SIGNATURE: &str = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";
    const QUERY: &str = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f&auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";

    fn request<'a>(query: &'a str, body: &'a str) -> SignedRequest<'a> {
        SignedRequest {
            method: "POST",
            path: "/apps/3/events",
            query,
            body: body.as_bytes(),
        }
    }

    #[test]
    fn worked_example_body_md5_and_string_to_sign() {
        assert_eq!(md5_hex(BODY.as_bytes()), "ec365a775a4cd0599faeb73354201b6f");
        let params = parse_query(QUERY);
        assert_eq!(
            string_to_sign("POST", "/apps/3/events", &params),
            "POST\n/apps/3/events\nauth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f"
        );
    }

    #[test]
    fn worked_example_signature() {
        let query = sign_request(
            KEY,
            SECRET,
            "POST",
            "/apps/3/events",
            &[],
            BODY.as_bytes(),
            TIMESTAMP,
        );
        assert_eq!(query, QUERY);
        let to_sign = string_to_sign("POST", "/apps/3/events", &parse_query(QUERY));
        assert_eq!(
            hmac_sha256_hex(SECRET.as_bytes(), to_sign.as_bytes()),
            SIGNATURE
        );
    }

    #[test]
    fn worked_example_verifies_within_the_window() {
        let req = request(QUERY, BODY);
        assert_eq!(verify_request(&req, KEY, SECRET, TIMESTAMP, 600), Ok(()));
        assert_eq!(
            verify_request(&req, KEY, SECRET, TIMESTAMP + 600, 600),
            Ok(())
        );
        assert_eq!(
            verify_request(&req, KEY, SECRET, TIMESTAMP - 600, 600),
            Ok(())
        );
        assert_eq!(
            verify_request(&req, KEY, SECRET, TIMESTAMP + 601, 600),
            Err(RequestAuthError::StaleTimestamp {
                timestamp: TIMESTAMP,
                now: TIMESTAMP + 601,
                window: 600
            })
        );
    }

    #[test]
    fn parameter_order_and_key_case_do_not_matter() {
        let reordered = "AUTH_VERSION=1.0&auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c&body_md5=ec365a775a4cd0599faeb73354201b6f&auth_timestamp=1353088179&auth_key=278d425bdf160c739803";
        assert_eq!(
            verify_request(&request(reordered, BODY), KEY, SECRET, TIMESTAMP, 600),
            Ok(())
        );
    }

    #[test]
    fn tampering_is_refused() {
        let now = TIMESTAMP;
        let other_body = BODY.replace("project-3", "project-4");
        assert_eq!(
            verify_request(&request(QUERY, &other_body), KEY, SECRET, now, 600),
            Err(RequestAuthError::BodyMd5Mismatch)
        );
        let mut other_path = request(QUERY, BODY);
        other_path.path = "/apps/4/events";
        assert_eq!(
            verify_request(&other_path, KEY, SECRET, now, 600),
            Err(RequestAuthError::InvalidSignature)
        );
        let later = QUERY.replace("1353088179", "1353088180");
        assert_eq!(
            verify_request(&request(&later, BODY), KEY, SECRET, now, 600),
            Err(RequestAuthError::InvalidSignature)
        );
        assert_eq!(
            verify_request(&request(QUERY, BODY), KEY, "other secret", now, 600),
            Err(RequestAuthError::InvalidSignature)
        );
    }

    #[test]
    fn missing_and_malformed_parameters_name_the_field() {
        let now = TIMESTAMP;
        let cases = [
            (
                "auth_timestamp=1&auth_version=1.0&auth_signature=x",
                "auth_key",
            ),
            (
                "auth_key=k&auth_version=1.0&auth_signature=x",
                "auth_timestamp",
            ),
            (
                "auth_key=k&auth_timestamp=1&auth_signature=x",
                "auth_version",
            ),
            (
                "auth_key=k&auth_timestamp=1&auth_version=1.0",
                "auth_signature",
            ),
        ];
        for (query, field) in cases {
            let err = verify_request(&request(query, ""), "k", "s", now, 600).unwrap_err();
            assert_eq!(err, RequestAuthError::Missing(field), "{query}");
            assert_eq!(err.field(), field);
            assert_eq!(err.status(), 401);
            assert!(err.to_string().contains(field));
        }
        let no_md5 = "auth_key=k&auth_timestamp=1&auth_version=1.0&auth_signature=x";
        assert_eq!(
            verify_request(&request(no_md5, "{}"), "k", "s", now, 600),
            Err(RequestAuthError::Missing("body_md5"))
        );
        let twice = "auth_key=k&auth_key=k&auth_timestamp=1&auth_version=1.0&auth_signature=x";
        assert_eq!(
            verify_request(&request(twice, ""), "k", "s", now, 600),
            Err(RequestAuthError::Duplicate("auth_key"))
        );
        let v2 = "auth_key=k&auth_timestamp=1&auth_version=2.0&auth_signature=x";
        assert_eq!(
            verify_request(&request(v2, ""), "k", "s", now, 600).map_err(|e| e.field()),
            Err("auth_version")
        );
        let other = QUERY.replace("auth_key=278d425bdf160c739803", "auth_key=other");
        assert_eq!(
            verify_request(&request(&other, BODY), KEY, SECRET, now, 600),
            Err(RequestAuthError::UnknownKey)
        );
    }

    #[test]
    fn bad_timestamps_are_refused_after_the_signature() {
        let query = sign_request("k", "s", "GET", "/apps/1/channels", &[], b"", 0)
            .replace("auth_timestamp=0", "auth_timestamp=-5");
        // The signature no longer matches, so that is what is reported.
        assert_eq!(
            verify_request(
                &SignedRequest {
                    method: "GET",
                    path: "/apps/1/channels",
                    query: &query,
                    body: b""
                },
                "k",
                "s",
                0,
                600
            ),
            Err(RequestAuthError::InvalidSignature)
        );
        let query = "auth_key=k&auth_timestamp=1e9&auth_version=1.0";
        let to_sign = string_to_sign("GET", "/p", &parse_query(query));
        let query = format!(
            "{query}&auth_signature={}",
            hmac_sha256_hex(b"s", to_sign.as_bytes())
        );
        assert_eq!(
            verify_request(
                &SignedRequest {
                    method: "GET",
                    path: "/p",
                    query: &query,
                    body: b""
                },
                "k",
                "s",
                0,
                600
            ),
            Err(RequestAuthError::BadTimestamp("1e9".into()))
        );
    }

    #[test]
    fn get_requests_sign_their_extra_parameters_unescaped() {
        // As pusher-http-node signs GET /channels?filter_by_prefix=presence-&info=user_count.
        let params = [
            ("filter_by_prefix", "presence-"),
            ("info", "user_count,subscription_count"),
        ];
        let query = sign_request("k", "s", "GET", "/apps/1/channels", &params, b"", 100);
        assert!(
            query.contains("info=user_count,subscription_count"),
            "{query}"
        );
        let req = SignedRequest {
            method: "GET",
            path: "/apps/1/channels",
            query: &query,
            body: b"",
        };
        assert_eq!(verify_request(&req, "k", "s", 100, 600), Ok(()));
        // An HTTP client escaping the comma still verifies: values are decoded before signing.
        let escaped = query.replace(
            "user_count,subscription_count",
            "user_count%2Csubscription_count",
        );
        let req = SignedRequest {
            query: &escaped,
            ..req
        };
        assert_eq!(verify_request(&req, "k", "s", 100, 600), Ok(()));
    }

    #[test]
    fn escaped_paths_verify_against_the_unescaped_signature() {
        let path = "/apps/1/channels/presence-a@b,c";
        let query = sign_request("k", "s", "GET", path, &[], b"", 100);
        let req = SignedRequest {
            method: "GET",
            path: "/apps/1/channels/presence-a%40b%2Cc",
            query: &query,
            body: b"",
        };
        assert_eq!(verify_request(&req, "k", "s", 100, 600), Ok(()));
    }

    #[test]
    fn query_parsing_decodes() {
        assert_eq!(
            parse_query("Name=Something+else&x=%41%zz&flag&&y="),
            vec![
                ("name".to_string(), "Something else".to_string()),
                ("x".to_string(), "A%zz".to_string()),
                ("flag".to_string(), String::new()),
                ("y".to_string(), String::new()),
            ]
        );
        // The reference's note: keys lowercased, values unescaped in the signed string.
        let params = parse_query("auth_key=foo&Name=Something%20else");
        assert_eq!(
            string_to_sign("get", "/some/resource", &params),
            "GET\n/some/resource\nauth_key=foo&name=Something else"
        );
    }
}
