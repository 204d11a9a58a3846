//! The admin console at `/admin` (docs/operations.md#admin-console): one embedded page with its
//! script and style, a login form that opens a signed session, and JSON endpoints under
//! `/admin/api/` that run the server API's methods (crate::edges::api) for the page.
//!
//! Every data endpoint needs a session cookie or the admin token; every state-changing request
//! made with a session also needs the session's CSRF token (and is refused from a foreign `Origin`).

mod access;
mod data;
mod limiter;
mod login;
mod pages;
mod session;

use crate::core::metrics::ReasonLabel;
use crate::edges::devices::DeviceIngest;
use crate::edges::http::response::{json_response, Body};
use crate::node::Node;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

pub use session::{SessionError, Signer};

/// The session cookie's name.
pub const COOKIE: &str = "herald_admin";
/// Largest login, logout or API body the console reads.
const MAX_BODY: usize = 256 << 10;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The console's state: its session key, the login limiter and its metrics.
pub struct Admin {
    signer: Signer,
    limiter: limiter::LoginLimiter,
    logins: Family<ResultLabel, Counter>,
    refused: Family<ReasonLabel, Counter>,
}

impl Admin {
    /// Reads `[admin]` and registers the console's metrics.
    pub fn new(node: &Node) -> Arc<Admin> {
        let config = &node.config().admin;
        let admin = Admin {
            signer: Signer::new(&config.secret, &config.password),
            limiter: limiter::LoginLimiter::new(config.login_attempts_per_minute),
            logins: Family::default(),
            refused: Family::default(),
        };
        node.metrics.register(
            "admin_logins",
            "Admin console logins, by result (ok, wrong password, limited, origin)",
            admin.logins.clone(),
        );
        node.metrics.register(
            "admin_refused",
            "Admin console requests refused, by reason (no credentials, invalid, expired, csrf, origin)",
            admin.refused.clone(),
        );
        Arc::new(admin)
    }

    fn count_login(&self, result: &'static str) {
        self.logins.get_or_create(&ResultLabel { result }).inc();
    }

    fn count_refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }
}

/// Whether `path` belongs to the console.
pub fn handles(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

/// Serves a console request (the caller checked `admin.active()` and [`handles`]).
pub async fn serve(
    admin: &Admin,
    node: &Node,
    devices: Option<&DeviceIngest>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let response = match (&method, path.as_str()) {
        (&Method::GET | &Method::HEAD, "/admin" | "/admin/") => {
            match access::session(admin, req.headers()) {
                Ok(cookie) => pages::console(node, &admin.signer.csrf(&cookie)),
                Err(_) => pages::login(StatusCode::OK, None),
            }
        }
        (&Method::GET | &Method::HEAD, "/admin/admin.js") => pages::script(),
        (&Method::GET | &Method::HEAD, "/admin/admin.css") => pages::style(),
        (&Method::POST, "/admin/login") => login::login(admin, node, req, peer).await,
        (&Method::POST, "/admin/logout") => login::logout(admin, req).await,
        (_, p) if p.starts_with("/admin/api/") => data::serve(admin, node, devices, req).await,
        (
            _,
            "/admin" | "/admin/" | "/admin/admin.js" | "/admin/admin.css" | "/admin/login"
            | "/admin/logout",
        ) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(StatusCode::NOT_FOUND, "not found"),
    };
    pages::secured(response)
}

/// A JSON error as the console's endpoints answer it.
fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"error": {"code": status.as_u16(), "message": message}}),
    )
}

/// The whole body, at most [`MAX_BODY`] bytes; or the refusal's status and message.
async fn read_body(body: Incoming) -> Result<bytes::Bytes, (StatusCode, &'static str)> {
    use http_body_util::{BodyExt, Limited};
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body larger than 256 KiB",
        )),
        Err(_) => Err((StatusCode::BAD_REQUEST, "could not read the request body")),
    }
}
