//! The streaming endpoints (`/connection/http_stream`, `/connection/sse`, `/connection/uni_http_stream`,
//! `/connection/uni_sse`) and `/emulation`: the same admission as the WebSocket upgrade, the
//! request checked before anything is held, then the response body handed to one session task.

use super::response::{respond, Body};
use super::websocket::{admit, refused};
use crate::core::session_handle::{Inbox, InboxRefusal};
use crate::edges::session::{Session, Transport};
use crate::edges::stream::requests::{
    emulation_request, query_param, uni_connect_command, CONNECT_PARAM,
};
use crate::edges::stream::{Framing, StreamConn};
use crate::node::Node;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Which streaming endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    HttpStream,
    Sse,
    UniHttpStream,
    UniSse,
}

impl Endpoint {
    pub(super) fn from_path(path: &str) -> Option<Endpoint> {
        match path {
            "/connection/http_stream" => Some(Endpoint::HttpStream),
            "/connection/sse" => Some(Endpoint::Sse),
            "/connection/uni_http_stream" => Some(Endpoint::UniHttpStream),
            "/connection/uni_sse" => Some(Endpoint::UniSse),
            _ => None,
        }
    }

    /// The transport's name, as metrics label it and Centrifugo names it.
    pub(super) fn name(self) -> &'static str {
        match self {
            Endpoint::HttpStream => "http_stream",
            Endpoint::Sse => "sse",
            Endpoint::UniHttpStream => "uni_http_stream",
            Endpoint::UniSse => "uni_sse",
        }
    }

    fn framing(self) -> Framing {
        match self {
            Endpoint::HttpStream | Endpoint::UniHttpStream => Framing::Lines,
            Endpoint::Sse | Endpoint::UniSse => Framing::Events,
        }
    }

    fn uni(self) -> bool {
        matches!(self, Endpoint::UniHttpStream | Endpoint::UniSse)
    }
}

/// Requests an emulated connection may have waiting at once, and their bytes (in messages of
/// `client.max_message_size`).
const INBOX_REQUESTS: usize = 32;
const INBOX_MESSAGES_OF_MAX_SIZE: usize = 4;

fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut message = message.into();
    message.push('\n');
    respond(status, "text/plain; charset=utf-8", message)
}

/// 204: no body at all (not even a line break).
fn no_content() -> Response<Body> {
    respond(StatusCode::NO_CONTENT, "text/plain; charset=utf-8", "")
}

/// Reads a request body of at most `max` bytes: 413 beyond.
async fn read_body(body: Incoming, max: usize) -> Result<Bytes, Box<Response<Body>>> {
    match Limited::new(body, max).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(Box::new(text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body larger than client.max_message_size ({max} bytes)"),
            )))
        }
        Err(_) => Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            "could not read the request body",
        ))),
    }
}

fn is_protobuf(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/octet-stream"))
}

/// The CORS answer of the streaming endpoints and `/emulation`, as Centrifugo gives it: a page of an
/// origin `http.allowed_origins` allows gets its origin back, with credentials and the request
/// headers its preflight asked for. Other origins get no CORS headers (the browser refuses).
fn cors(node: &Node, request: &http::HeaderMap, mut response: Response<Body>) -> Response<Body> {
    let Some(origin) = request.get(header::ORIGIN).cloned() else {
        return response;
    };
    let h = response.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if !crate::edges::http::handshake::origin_allowed(&node.config().http.allowed_origins, request)
    {
        return response;
    }
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    if let Some(asked) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        if asked.as_bytes() != b"null" && !asked.is_empty() {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
    }
    if request.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, OPTIONS"),
        );
    }
    response
}

pub(super) async fn stream(
    node: Arc<Node>,
    req: Request<Incoming>,
    peer: SocketAddr,
    endpoint: Endpoint,
    abort: Option<CancellationToken>,
) -> Response<Body> {
    let headers = req.headers().clone();
    let response = open_stream(node.clone(), req, peer, endpoint, abort).await;
    cors(&node, &headers, response)
}

async fn open_stream(
    node: Arc<Node>,
    req: Request<Incoming>,
    peer: SocketAddr,
    endpoint: Endpoint,
    abort: Option<CancellationToken>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    if parts.method == Method::OPTIONS {
        return no_content();
    }
    let get_allowed = matches!(endpoint, Endpoint::Sse | Endpoint::UniSse);
    if !(parts.method == Method::POST || (get_allowed && parts.method == Method::GET)) {
        let allowed = if get_allowed { "GET or POST" } else { "POST" };
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} takes {allowed} requests", parts.uri.path()),
        );
    }
    // Protobuf on the bidirectional HTTP stream only, as Centrifugo: SSE is text, and the
    // unidirectional endpoints take a JSON connect request.
    let format = if is_protobuf(&parts.headers) {
        if endpoint != Endpoint::HttpStream {
            return text(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "{} streams JSON only (Content-Type application/json); Protobuf is served on /connection/http_stream",
                    parts.uri.path()
                ),
            );
        }
        herald_protocol::Format::Protobuf
    } else {
        herald_protocol::Format::Json
    };
    let slot = match admit(&node, &parts.headers, peer) {
        Ok(slot) => slot,
        Err(response) => return *response,
    };
    let max = node.config().client.max_message_size;
    // The first message: the connect command (bidirectional), or the connect request (uni).
    let first = if parts.method == Method::GET {
        match query_param(parts.uri.query(), CONNECT_PARAM) {
            Some(value) if value.len() > max => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("{CONNECT_PARAM} larger than client.max_message_size ({max} bytes)"),
                )
            }
            Some(value) => Bytes::from(value.into_bytes()),
            None if endpoint.uni() => Bytes::new(),
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("missing the {CONNECT_PARAM} query parameter (the connect command)"),
                )
            }
        }
    } else {
        match read_body(body, max).await {
            Ok(body) => body,
            Err(response) => return *response,
        }
    };
    let first = if endpoint.uni() {
        match uni_connect_command(&first) {
            Ok(command) => Bytes::from(command),
            Err(e) => {
                refused(&node, "bad connect request");
                return text(StatusCode::BAD_REQUEST, e.0);
            }
        }
    } else if first.is_empty()
        || (format == herald_protocol::Format::Json && first.iter().all(u8::is_ascii_whitespace))
    {
        return text(
            StatusCode::BAD_REQUEST,
            "empty connect command (the request body or cf_connect)",
        );
    } else {
        first
    };
    let inbox = Arc::new(Inbox::new(
        INBOX_REQUESTS,
        INBOX_MESSAGES_OF_MAX_SIZE * max,
        format,
    ));
    // Cannot fail: the inbox is new and empty.
    let _ = inbox.push(first);
    let framing = match format {
        herald_protocol::Format::Protobuf => Framing::Delimited,
        herald_protocol::Format::Json => endpoint.framing(),
    };
    let preamble: &'static [u8] = match framing {
        Framing::Events => b"\r\n",
        Framing::Lines | Framing::Delimited => b"",
    };
    let (mut conn, body) = StreamConn::new(framing, endpoint.uni(), inbox, preamble, abort);
    let session = if endpoint.uni() {
        None
    } else {
        let session = uuid::Uuid::new_v4().to_string();
        conn.register(node.hub.clone(), session.clone());
        Some(session)
    };
    let forwarded = node
        .hooks
        .proxy()
        .map(|p| p.capture_headers(&parts.headers))
        .unwrap_or_default();
    let transport = Transport::stream(conn, endpoint.name(), session);
    let metrics = node.metrics.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let _counted = metrics.transport_opened(endpoint.name());
        Box::new(Session::new(node, transport, format, forwarded))
            .run()
            .await;
    });
    let mut response = Response::new(body.boxed_unsync());
    let h = response.headers_mut();
    let content_type = match framing {
        Framing::Events => "text/event-stream; charset=utf-8",
        Framing::Lines => "application/json",
        Framing::Delimited => "application/octet-stream",
    };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(header::EXPIRES, HeaderValue::from_static("0"));
    // Proxies (nginx) must pass each chunk on as it comes.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// `POST /emulation`: commands for an emulated connection, on this node or — through the
/// broker — on the node that holds it. 204 once handed over; 404 for a session or node that is
/// not there (centrifuge-js then reconnects); 429 while the connection has too many waiting.
pub(super) async fn emulation(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let headers = req.headers().clone();
    let response = emulate(node.clone(), req).await;
    cors(&node, &headers, response)
}

async fn emulate(node: Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    if parts.method == Method::OPTIONS {
        return no_content();
    }
    if !crate::edges::http::handshake::origin_allowed(
        &node.config().http.allowed_origins,
        &parts.headers,
    ) {
        emulation_refused(&node, "origin");
        return text(
            StatusCode::FORBIDDEN,
            "origin not allowed (http.allowed_origins)",
        );
    }
    if parts.method != Method::POST {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "/emulation takes POST requests",
        );
    }
    let max = node.config().client.max_message_size;
    let body = match read_body(body, max).await {
        Ok(body) => body,
        Err(response) => {
            emulation_refused(&node, "body size");
            return *response;
        }
    };
    let protobuf = is_protobuf(&parts.headers);
    let request = match emulation_request(&body, protobuf) {
        Ok(request) => request,
        Err(e) => {
            emulation_refused(&node, "malformed");
            return text(StatusCode::BAD_REQUEST, e.0);
        }
    };
    drop(body);
    if request.node == node.uid {
        let Some(inbox) = node.hub.emulation_inbox(&request.session) else {
            emulation_refused(&node, "unknown session");
            return text(StatusCode::NOT_FOUND, "no such session on this node");
        };
        return match inbox.push(Bytes::from(request.data)) {
            Ok(()) => no_content(),
            Err(InboxRefusal::Full) => {
                emulation_refused(&node, "inbox full");
                text(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many commands waiting for this connection",
                )
            }
            Err(InboxRefusal::Closed) => {
                emulation_refused(&node, "unknown session");
                text(StatusCode::NOT_FOUND, "no such session on this node")
            }
        };
    }
    // Another node's session: only a live node of this cluster is sent anything.
    let known = match node.broker.nodes().await {
        Ok(nodes) => nodes.iter().any(|n| n.uid == request.node),
        Err(_) => return text(StatusCode::SERVICE_UNAVAILABLE, "broker unavailable"),
    };
    if !known {
        emulation_refused(&node, "unknown node");
        return text(StatusCode::NOT_FOUND, "no such node");
    }
    // The control travels as JSON: Protobuf commands go in base64 (the holding node's inbox
    // decodes them, see `Inbox::push_forwarded`).
    let data = if protobuf {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&request.data)
    } else {
        match String::from_utf8(request.data) {
            Ok(data) => data,
            // Cannot happen: JSON text came from a JSON string.
            Err(_) => return text(StatusCode::BAD_REQUEST, "emulation data is not UTF-8"),
        }
    };
    let control = crate::brokers::Control::Emulation {
        node: request.node,
        session: request.session,
        data,
    };
    match node.broker.publish_control(control).await {
        Ok(()) => no_content(),
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "broker unavailable"),
    }
}

fn emulation_refused(node: &Node, reason: &'static str) {
    node.metrics
        .emulation_refused
        .get_or_create(&crate::core::metrics::ReasonLabel { reason })
        .inc();
}
