//! `POST /admin/login` (the password form, rate-limited per address) and `POST /admin/logout`.

use super::access;
use super::{pages, read_body, Admin, COOKIE};
use crate::core::clock::unix_secs;
use crate::edges::http::response::{respond, Body};
use crate::edges::map::query;
use crate::node::Node;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::time::Instant;

/// Whether the request came over TLS: then the cookie is `Secure`. A request URI carries a scheme
/// only when the listener put one there (plain HTTP/1 requests have none).
fn over_tls<B>(req: &Request<B>) -> bool {
    req.uri().scheme_str() == Some("https")
}

fn see_other(cookie: String) -> Response<Body> {
    let mut response = respond(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    let h = response.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/admin"));
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        h.insert(header::SET_COOKIE, value);
    }
    response
}

fn cookie(value: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/admin; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

pub async fn login(
    admin: &Admin,
    node: &Node,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    if !access::same_origin(req.headers()) {
        admin.count_login("origin");
        return pages::login(
            StatusCode::FORBIDDEN,
            Some("Request from another site refused."),
        );
    }
    let password = &node.config().admin.password;
    if password.is_empty() {
        admin.count_login("wrong password");
        return pages::login(
            StatusCode::UNAUTHORIZED,
            Some("Password login is off (admin.password is not set)."),
        );
    }
    // Counted before the body is read: a refused client gets no answer about its guess.
    if !admin.limiter.allow(peer.ip(), Instant::now()) {
        admin.count_login("limited");
        let mut response = pages::login(
            StatusCode::TOO_MANY_REQUESTS,
            Some("Too many login attempts: wait a minute."),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
        return response;
    }
    let secure = over_tls(&req);
    let body = match read_body(req.into_body()).await {
        Ok(body) => body,
        Err((status, message)) => return super::error(status, message),
    };
    let given = query::pairs(&String::from_utf8_lossy(&body))
        .into_iter()
        .find(|(key, _)| key == "password")
        .map(|(_, value)| value)
        .unwrap_or_default();
    if !super::session::secrets_equal(&given, password) {
        admin.count_login("wrong password");
        return pages::login(StatusCode::UNAUTHORIZED, Some("Wrong password."));
    }
    admin.count_login("ok");
    let ttl = node.config().admin.session_ttl.as_secs();
    let now = u64::try_from(unix_secs()).unwrap_or(0);
    let session = admin.signer.issue(now + ttl);
    see_other(cookie(&session, ttl, secure))
}

/// Ends the browser's session (a stateless session stays valid until it expires if its cookie
/// was copied: changing `admin.password` or `admin.secret` ends them all).
pub async fn logout(admin: &Admin, req: Request<Incoming>) -> Response<Body> {
    let session = match access::session(admin, req.headers()) {
        Ok(session) => session,
        Err(denied) => return super::data::denied(admin, denied),
    };
    if !access::same_origin(req.headers()) {
        admin.count_refused("origin");
        return super::error(StatusCode::FORBIDDEN, "request from another site refused");
    }
    let secure = over_tls(&req);
    let body = match read_body(req.into_body()).await {
        Ok(body) => body,
        Err((status, message)) => return super::error(status, message),
    };
    let token = query::pairs(&String::from_utf8_lossy(&body))
        .into_iter()
        .find(|(key, _)| key == "csrf")
        .map(|(_, value)| value)
        .unwrap_or_default();
    if !admin.signer.csrf_matches(&session, &token) {
        admin.count_refused("csrf");
        return super::error(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
    }
    see_other(cookie("", 0, secure))
}
