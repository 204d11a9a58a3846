//! The Pusher Channels HTTP API (docs/pusher.md) for the apps of `[[pusher.apps]]`: a request
//! names its app in the path, is signed with the app's secret (checked before anything is read
//! from the body), and acts on the app's channels, which live in the app's Herald namespace on
//! the same hub, brokers and limits as the server API. The protocol itself (routes, signatures,
//! bodies, limits) is `herald_pusher`, which does no I/O.

mod api;
mod cache;
mod events;
mod session;

pub use events::EVENT_TAG;
pub use session::{PusherSession, TRANSPORT};

use crate::core::metrics::ReasonLabel;
use crate::edges::http::response::{respond, Body};
use crate::node::Node;
use herald_pusher::api::{Route, RouteError};
use herald_pusher::http_auth::{verify_query, RequestAuthError};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::time::{SystemTime, UNIX_EPOCH};

/// Whether `path` belongs to the Pusher HTTP API.
pub fn handles(path: &str) -> bool {
    path.starts_with("/apps/")
}

/// A refusal: its status, the request field at fault and why.
struct Refusal {
    status: StatusCode,
    /// Counted in `herald_api_refused_total{reason}`.
    reason: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: u16, reason: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            reason,
            message: message.into(),
        }
    }
}

/// Serves one request to `/apps/…` (the caller checked [`handles`]).
pub async fn serve(node: &Node, req: Request<Incoming>) -> Response<Body> {
    match answer(node, req).await {
        Ok(body) => respond(StatusCode::OK, "application/json", body),
        Err(refusal) => {
            node.metrics
                .api_refused
                .get_or_create(&ReasonLabel {
                    reason: refusal.reason,
                })
                .inc();
            // Pusher answers errors as text, which its SDKs put in the error they raise.
            respond(
                refusal.status,
                "text/plain; charset=utf-8",
                format!("{}\n", refusal.message),
            )
        }
    }
}

async fn answer(node: &Node, req: Request<Incoming>) -> Result<Vec<u8>, Refusal> {
    let route = Route::parse(req.method().as_str(), req.uri().path()).map_err(|e| {
        let path = short(req.uri().path());
        let message = match e {
            RouteError::NotFound => format!("no Pusher endpoint at {path}"),
            RouteError::MethodNotAllowed => format!("{} is not allowed on {path}", req.method()),
        };
        Refusal::new(e.status(), "pusher route", message)
    })?;
    let config = node.config();
    let app = config
        .pusher
        .app_by_id(app_id(&route))
        .ok_or_else(|| {
            Refusal::new(
                404,
                "pusher app",
                format!("app id {:?} is not configured", short(app_id(&route))),
            )
        })?
        .clone();
    let query = req.uri().query().unwrap_or("").to_string();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // The signed query first: an unsigned caller cannot make the node read a body.
    // A body is announced by its length, or sent chunked without one.
    let has_body = match req.headers().get(http::header::CONTENT_LENGTH) {
        Some(length) => length.as_bytes() != b"0",
        None => req.headers().contains_key(http::header::TRANSFER_ENCODING),
    };
    let signed = verify_query(
        req.method().as_str(),
        req.uri().path(),
        &query,
        has_body,
        &app.key,
        &app.secret,
        now,
        config.pusher.timestamp_window.as_secs(),
    )
    .map_err(signature_refused)?;
    let body = read_body(req, body_limit(config.pusher.max_event_bytes)).await?;
    signed.check_body(&body).map_err(signature_refused)?;
    api::handle(node, &app, route, &query, &body).await
}

fn signature_refused(e: RequestAuthError) -> Refusal {
    Refusal::new(e.status(), "pusher signature", e.to_string())
}

fn app_id(route: &Route) -> &str {
    match route {
        Route::Trigger { app_id }
        | Route::BatchTrigger { app_id }
        | Route::Channels { app_id }
        | Route::Channel { app_id, .. }
        | Route::ChannelUsers { app_id, .. }
        | Route::TerminateUserConnections { app_id, .. } => app_id,
    }
}

/// The largest body read: a full batch of the largest events, each escaped (every byte of data
/// may double as JSON inside a JSON string), with room for names and channels.
fn body_limit(max_event_bytes: usize) -> usize {
    let batch = herald_pusher::api::ApiLimits::default().max_batch_size;
    batch * (2 * max_event_bytes + 32 * 1024)
}

async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Vec<u8>, Refusal> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(body) => Ok(body.to_bytes().to_vec()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(Refusal::new(
                413,
                "pusher body",
                format!("request body larger than {limit} bytes"),
            ))
        }
        Err(_) => Err(Refusal::new(
            400,
            "pusher body",
            "could not read the request body",
        )),
    }
}

/// A client-given value, cut for an error message.
fn short(value: &str) -> String {
    value.chars().take(64).collect()
}
