//! The console's page, login page, script and style (embedded: the console makes no request to
//! any other host), and the security headers every console response carries.

use crate::edges::http::response::{respond, Body};
use crate::node::Node;
use http::{header, HeaderValue, Response, StatusCode};

const CONSOLE: &str = include_str!("console.html");
const LOGIN: &str = include_str!("login.html");
const SCRIPT: &str = include_str!("admin.js");
const STYLE: &str = include_str!("admin.css");

/// Text safe inside HTML (element content and quoted attributes).
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The console, for a logged-in session: its CSRF token goes in a `<meta>` element the script reads.
pub fn console(node: &Node, csrf: &str) -> Response<Body> {
    let html = CONSOLE
        .replace("{{CSRF}}", &escape(csrf))
        .replace("{{NODE}}", &escape(&node.name))
        .replace("{{VERSION}}", env!("CARGO_PKG_VERSION"));
    no_cache(respond(StatusCode::OK, "text/html; charset=utf-8", html))
}

/// The login form, with a message after a failed attempt.
pub fn login(status: StatusCode, message: Option<&str>) -> Response<Body> {
    let message = message
        .map(|m| format!("<p class=\"error\" id=\"login-error\">{}</p>", escape(m)))
        .unwrap_or_default();
    let html = LOGIN.replace("{{MESSAGE}}", &message);
    no_cache(respond(status, "text/html; charset=utf-8", html))
}

pub fn script() -> Response<Body> {
    no_cache(respond(
        StatusCode::OK,
        "text/javascript; charset=utf-8",
        SCRIPT,
    ))
}

pub fn style() -> Response<Body> {
    no_cache(respond(StatusCode::OK, "text/css; charset=utf-8", STYLE))
}

fn no_cache(mut response: Response<Body>) -> Response<Body> {
    response
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-cache"));
    response
}

/// The map's headers, tighter: scripts and styles from this origin only (no inline code), no
/// images from elsewhere, forms only to this origin, never framed.
pub fn secured(mut response: Response<Body>) -> Response<Body> {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("strict-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
