//! Listeners and HTTP routing: the WebSocket endpoint, health, readiness, metrics and the server API.
//!
//! Each accepted socket is served by hyper; a WebSocket upgrade hands the socket to one session task,
//! after which hyper's task ends — one task per idle connection.

pub mod handshake;

use crate::edges::session::Session;
use crate::edges::ws::WsConn;
use crate::node::Node;
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
use tokio::net::TcpListener;

pub const WEBSOCKET_PATH: &str = "/connection/websocket";
const MAX_API_BODY: usize = 4 << 20;

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
/// once (crate::edges::descriptors); running out of descriptors anyway pauses accepting instead of
/// spinning.
pub async fn accept_loop(
    node: Arc<Node>,
    listener: TcpListener,
    role: Role,
    share: crate::edges::descriptors::Share,
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
                        crate::edges::descriptors::close_now(stream);
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
                    .get_or_create(&crate::core::metrics::ReasonLabel {
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
    _permit: crate::edges::descriptors::Permit,
) {
    let metrics = node.metrics.clone();
    let service = hyper::service::service_fn(move |req| {
        let node = node.clone();
        async move { Ok::<_, std::convert::Infallible>(route(node, req, peer, role).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, %peer, "http connection ended with error");
        if let Some(reason) = http_close_reason(&e) {
            metrics
                .http_closed
                .get_or_create(&crate::core::metrics::ReasonLabel { reason })
                .inc();
        }
    }
}

/// The whole request head (and the next one on a kept-alive connection) must arrive within this:
/// silent sockets and slowloris heads are closed then.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why hyper gave up on a connection, when it was the client's doing (the limits of the HTTP
/// layer): counted in `herald_http_closed_total{reason}`.
fn http_close_reason(e: &hyper::Error) -> Option<&'static str> {
    if e.is_timeout() {
        Some("header timeout")
    } else if e.is_parse_too_large() {
        Some("head too large")
    } else if e.is_parse() {
        Some("malformed request")
    } else {
        None
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
            crate::brokers::BrokerHealth::Ready => {
                json_response(StatusCode::OK, &json!({"status": "ready"}))
            }
            // Still 200: the node serves every channel but those of the lost shard, which no
            // other node can serve either, so taking it out of the load balancer helps nobody.
            crate::brokers::BrokerHealth::Degraded { shards, down } => json_response(
                StatusCode::OK,
                &json!({"status": "degraded", "broker": {"shards": shards, "shards_down": down}}),
            ),
            crate::brokers::BrokerHealth::Down => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "not ready"}),
            ),
        },
        (&Method::GET, "/metrics") if api_here => {
            // Metrics need no key (Prometheus); without one they stay on this host like the API.
            if node.config.api.key.is_empty() {
                if let Err(refusal) =
                    crate::edges::api::request::keyless_allowed(peer.ip(), req.uri(), req.headers())
                {
                    return api_refused(&node, &refusal);
                }
            }
            if let Some(devices) = crate::edges::devices::DeviceIngest::for_node(&node) {
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
        (_, p) if clients_here && node.config.map.enabled && crate::edges::map::handles(p) => {
            crate::edges::map::serve(&node, &req).await
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

/// Counts a refusal in `herald_api_refused_total` and answers with its status and message.
fn api_refused(node: &Node, refusal: &crate::edges::api::request::ApiRefusal) -> Response<Body> {
    node.metrics
        .api_refused
        .get_or_create(&crate::core::metrics::ReasonLabel {
            reason: refusal.reason,
        })
        .inc();
    api_error(refusal.status, refusal.code, &refusal.message)
}

async fn api(
    node: Arc<Node>,
    req: Request<Incoming>,
    peer: SocketAddr,
    method: &str,
) -> Response<Body> {
    // The API key, or without one the keyless allow-list (crate::edges::api::request).
    if let Err(refusal) = crate::edges::api::request::authorize(
        &node.config.api.key,
        peer.ip(),
        req.uri(),
        req.headers(),
    ) {
        return api_refused(&node, &refusal);
    }
    if !crate::edges::api::METHODS.contains(&method) {
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
                node.metrics
                    .api_refused
                    .get_or_create(&crate::core::metrics::ReasonLabel {
                        reason: "body size",
                    })
                    .inc();
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
    let raw = match crate::edges::api::request::parse_body(&body) {
        Ok(raw) => raw,
        Err(refusal) => return api_refused(&node, &refusal),
    };
    drop(body);
    // Every publication of the request is queued before any connection writes (crate::core::wakes).
    match crate::core::wakes::batched(crate::edges::api::handle(&node, method, &raw)).await {
        Ok(result) => {
            drop(raw);
            let mut out = String::with_capacity(result.len() + 11);
            out.push_str("{\"result\":");
            out.push_str(&result);
            out.push('}');
            respond(StatusCode::OK, "application/json", out)
        }
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
    let key = match crate::edges::http::handshake::validate_upgrade(
        req.method(),
        req.version(),
        req.headers(),
    ) {
        Ok(key) => key.clone(),
        Err(refusal) => {
            refused(&node, refusal.reason);
            let mut response =
                respond(refusal.status, "text/plain; charset=utf-8", refusal.message);
            if refusal.needs_version_header() {
                response.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static(crate::edges::http::handshake::WEBSOCKET_VERSION),
                );
            }
            return response;
        }
    };
    // Before anything is forwarded: the connect hook runs only after the upgrade.
    if !crate::edges::http::handshake::origin_allowed(
        &node.config.http.allowed_origins,
        req.headers(),
    ) {
        refused(&node, "origin");
        return respond(
            StatusCode::FORBIDDEN,
            "text/plain; charset=utf-8",
            "origin not allowed (http.allowed_origins)\n",
        );
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
    let accept = crate::edges::http::handshake::accept_key(key.as_bytes());
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
        .get_or_create(&crate::core::metrics::ReasonLabel { reason })
        .inc();
}
