//! Listeners and HTTP routing: the WebSocket endpoint, health, readiness, metrics and the server API.
//!
//! Each accepted socket is served by hyper; a WebSocket upgrade hands the socket to one session task,
//! after which hyper's task ends — one task per idle connection.

use crate::node::Node;
use crate::session::Session;
use crate::ws::WsConn;
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;

pub const WEBSOCKET_PATH: &str = "/connection/websocket";
const MAX_API_BODY: usize = 4 << 20;
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// WebSocket, health, and also the API and metrics (no internal listener configured).
    Everything,
    /// WebSocket and health only.
    Public,
    /// API, metrics and health only.
    Internal,
}

pub fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Accepts until shutdown. A connection beyond the listener's descriptor share is closed at
/// once (crate::descriptors); running out of descriptors anyway pauses accepting instead of
/// spinning.
pub async fn accept_loop(
    node: Arc<Node>,
    listener: TcpListener,
    role: Role,
    share: crate::descriptors::Share,
) {
    let mut last_warning: Option<Instant> = None;
    let mut last_refusal_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = node.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let permit = match share.try_acquire() {
                    Ok(permit) => permit,
                    Err(refusal) => {
                        if last_refusal_warning
                            .is_none_or(|at| at.elapsed() > Duration::from_secs(10))
                        {
                            tracing::warn!(
                                listener = share.name(),
                                max = share.max(),
                                reason = refusal.reason(),
                                "listener at its share; closing new connections at accept"
                            );
                            last_refusal_warning = Some(Instant::now());
                        }
                        crate::descriptors::close_now(stream);
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let send_buffer = node.config.client.send_buffer;
                if send_buffer > 0 {
                    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(send_buffer);
                }
                let node = node.clone();
                tokio::spawn(serve_connection(node, stream, peer, role, permit));
            }
            Err(e) => {
                let out_of_files =
                    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE));
                if last_warning.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
                    tracing::warn!(error = %e, out_of_files, "accept failed; pausing");
                    last_warning = Some(Instant::now());
                }
                node.metrics
                    .connections_refused
                    .get_or_create(&crate::metrics::ReasonLabel {
                        reason: "accept error",
                    })
                    .inc();
                tokio::time::sleep(Duration::from_millis(if out_of_files { 100 } else { 10 }))
                    .await;
            }
        }
    }
}

async fn serve_connection(
    node: Arc<Node>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    role: Role,
    // Held while hyper serves the socket; an upgraded WebSocket is counted by node.connections.
    _permit: crate::descriptors::Permit,
) {
    let service = hyper::service::service_fn(move |req| {
        let node = node.clone();
        async move { Ok::<_, std::convert::Infallible>(route(node, req, peer, role).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, %peer, "http connection ended with error");
    }
}

pub(crate) type Body = Full<Bytes>;

pub(crate) fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    respond(
        status,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

fn api_error(status: StatusCode, code: u32, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

async fn route(
    node: Arc<Node>,
    req: Request<Incoming>,
    peer: SocketAddr,
    role: Role,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let api_here = role != Role::Public;
    let clients_here = role != Role::Internal;
    match (req.method(), path.as_str()) {
        (&Method::GET, WEBSOCKET_PATH) if clients_here => websocket(node, req, peer),
        (&Method::GET, "/health") => json_response(StatusCode::OK, &json!({})),
        (&Method::GET, "/ready") => match node.readiness() {
            crate::broker::BrokerHealth::Ready => {
                json_response(StatusCode::OK, &json!({"status": "ready"}))
            }
            // Still 200: the node serves every channel but those of the lost shard, which no
            // other node can serve either, so taking it out of the load balancer helps nobody.
            crate::broker::BrokerHealth::Degraded { shards, down } => json_response(
                StatusCode::OK,
                &json!({"status": "degraded", "broker": {"shards": shards, "shards_down": down}}),
            ),
            crate::broker::BrokerHealth::Down => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "not ready"}),
            ),
        },
        (&Method::GET, "/metrics") if api_here => {
            if let Some(devices) = crate::devices::DeviceIngest::for_node(&node) {
                node.metrics.set_devices(devices.metric_counts());
            }
            respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                node.metrics.render(),
            )
        }
        (&Method::GET, "/") if clients_here => respond(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            format!("Herald {}\n", env!("CARGO_PKG_VERSION")),
        ),
        (_, p) if clients_here && node.config.map.enabled && crate::map::handles(p) => {
            crate::map::serve(&node, &req).await
        }
        (_, p) if api_here && p.starts_with("/api/") => {
            if req.method() != Method::POST {
                return api_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    107,
                    "the API takes POST requests",
                );
            }
            let method = p.trim_start_matches("/api/").to_string();
            api(node, req, peer, &method).await
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n",
        ),
    }
}

/// With a key configured, every caller must present it; without one, only loopback callers may call.
fn api_authorized(
    node: &Node,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Result<(), &'static str> {
    let key = &node.config.api.key;
    if key.is_empty() {
        // A reverse proxy on the same host makes every caller look local; its forwarding headers
        // give it away, and then a key is required.
        let proxied = ["x-forwarded-for", "forwarded", "x-real-ip"]
            .iter()
            .any(|h| req.headers().contains_key(*h));
        return if peer.ip().is_loopback() && !proxied {
            Ok(())
        } else {
            Err("no api.key configured: the API answers direct loopback clients only")
        };
    }
    let headers = req.headers();
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
        Err("missing or wrong API key")
    }
}

async fn api(
    node: Arc<Node>,
    req: Request<Incoming>,
    peer: SocketAddr,
    method: &str,
) -> Response<Body> {
    if let Err(message) = api_authorized(&node, &req, peer) {
        return api_error(StatusCode::UNAUTHORIZED, 101, message);
    }
    if !crate::api::METHODS.contains(&method) {
        return api_error(
            StatusCode::NOT_FOUND,
            104,
            &format!("unknown method {method:?}"),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_API_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return api_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    107,
                    "request body larger than 4 MiB",
                );
            }
            return api_error(
                StatusCode::BAD_REQUEST,
                107,
                "could not read the request body",
            );
        }
    };
    let text = if body.iter().all(|b| b.is_ascii_whitespace()) {
        "{}"
    } else {
        match std::str::from_utf8(&body) {
            Ok(text) => text,
            Err(_) => return api_error(StatusCode::BAD_REQUEST, 107, "request body is not UTF-8"),
        }
    };
    let raw: Box<serde_json::value::RawValue> = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                107,
                &format!("request body is not JSON: {e}"),
            )
        }
    };
    if !raw.get().trim_start().starts_with('{') {
        return api_error(
            StatusCode::BAD_REQUEST,
            107,
            "request body must be a JSON object",
        );
    }
    // Every publication of the request is queued before any connection writes (crate::wakes).
    match crate::wakes::batched(crate::api::call(&node, method, &raw)).await {
        Ok(result) => json_response(StatusCode::OK, &json!({"result": result})),
        Err(Some(e)) => json_response(StatusCode::OK, &e.to_json()),
        Err(None) => api_error(
            StatusCode::NOT_FOUND,
            104,
            &format!("unknown method {method:?}"),
        ),
    }
}

/// Decrements the connection count when a WebSocket connection ends, however it ends.
struct ConnectionSlot(Arc<Node>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.connections.dec();
    }
}

fn websocket(node: Arc<Node>, mut req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let headers = req.headers();
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let version = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (true, Some(key), "13") = (upgrade.eq_ignore_ascii_case("websocket"), key, version) else {
        return respond(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            "expected a WebSocket upgrade (Upgrade: websocket, Sec-WebSocket-Key, Sec-WebSocket-Version: 13)\n",
        );
    };
    let allowed = &node.config.http.allowed_origins;
    if !allowed.is_empty() && !allowed.iter().any(|o| o == "*") {
        // Only browsers send Origin, and the check exists to stop other sites' pages; apps and
        // server-side SDKs send none and are not refused for it.
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
        if origin.is_some_and(|origin| !allowed.iter().any(|o| o.eq_ignore_ascii_case(origin))) {
            refused(&node, "origin");
            return respond(
                StatusCode::FORBIDDEN,
                "text/plain; charset=utf-8",
                "origin not allowed\n",
            );
        }
    }
    if node.shutdown.is_cancelled() {
        refused(&node, "shutdown");
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "shutting down\n",
        );
    }
    if !node.admit_ip(peer.ip()) {
        refused(&node, "ip rate");
        return respond(
            StatusCode::TOO_MANY_REQUESTS,
            "text/plain; charset=utf-8",
            "too many new connections from this address (client.connection_rate_per_ip)\n",
        );
    }
    let max = node.config.client.max_connections;
    if node.connections.fetch_add(1, Ordering::AcqRel) >= max {
        node.connections.fetch_sub(1, Ordering::AcqRel);
        refused(&node, "max connections");
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "connection limit reached\n",
        );
    }
    node.metrics.connections.inc();
    node.metrics.connections_accepted.inc();
    let slot = ConnectionSlot(node.clone());
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes());
    // Captured now: the handshake request is gone once the socket belongs to the session.
    let forwarded = node
        .hooks
        .proxy
        .as_ref()
        .map(|p| p.capture_headers(req.headers()))
        .unwrap_or_default();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let _slot = slot;
        match upgrade.await {
            // Take the TCP stream back from hyper so the session owns the socket directly.
            Ok(upgraded) => match upgraded.downcast::<TokioIo<tokio::net::TcpStream>>() {
                Ok(parts) => {
                    let max = node.config.client.max_message_size;
                    let ws = WsConn::new(parts.io.into_inner(), &parts.read_buf, max);
                    // hyper's read buffer (8 KiB) must not live as long as the connection.
                    drop(parts.read_buf);
                    Session::new(node, ws, forwarded).run().await;
                }
                Err(_) => tracing::warn!("websocket upgrade over an unexpected transport"),
            },
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

fn refused(node: &Node, reason: &'static str) {
    node.metrics
        .connections_refused
        .get_or_create(&crate::metrics::ReasonLabel { reason })
        .inc();
}
