//! Who is asking: a session cookie, or the admin token as a bearer token.

use super::{Admin, SessionError, COOKIE};
use crate::core::clock::unix_secs;
use http::{header, HeaderMap};

/// How a request proved itself.
pub enum Access {
    /// A browser session (the cookie's value): state changes need its CSRF token.
    Session(String),
    /// The admin token (`Authorization: Bearer`): not sent by browsers on their own, so no CSRF.
    Token,
}

/// Why a request has no access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    NoCredentials,
    Session(SessionError),
    WrongToken,
}

impl Denied {
    pub fn reason(self) -> &'static str {
        match self {
            Denied::NoCredentials => "no credentials",
            Denied::Session(e) => e.reason(),
            Denied::WrongToken => "invalid",
        }
    }
}

/// The session cookie's value, if the request carries one.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A valid session's cookie value.
pub fn session(admin: &Admin, headers: &HeaderMap) -> Result<String, Denied> {
    let value = cookie(headers).ok_or(Denied::NoCredentials)?;
    let now = u64::try_from(unix_secs()).unwrap_or(0);
    admin.signer.verify(value, now).map_err(Denied::Session)?;
    Ok(value.to_string())
}

/// A session or the admin token (an `Authorization` header wins over a cookie).
pub fn authenticate(admin: &Admin, token: &str, headers: &HeaderMap) -> Result<Access, Denied> {
    if let Some(given) = bearer(headers) {
        return if !token.is_empty() && super::session::secrets_equal(given, token) {
            Ok(Access::Token)
        } else {
            Err(Denied::WrongToken)
        };
    }
    session(admin, headers).map(Access::Session)
}

/// False when the request names an `Origin` other than the host it was sent to (a page of another
/// site posting here); requests without `Origin` (scripts, old browsers) pass.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let origin = origin.to_str().unwrap_or("");
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}
