//! The WebSocket endpoint: the upgrade handshake's checks and limits, then the socket handed to one
//! session task.

use super::response::{respond, Body};
use crate::edges::session::{Session, Transport};
use crate::edges::ws::WsConn;
use crate::node::Node;
use bytes::Bytes;
use herald_protocol::Format;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;

pub(super) fn websocket(
    node: Arc<Node>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
    uni: bool,
) -> Response<Body> {
    let (key, slot) = match checked_upgrade(&node, &req, peer) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    let accept = crate::edges::http::handshake::accept_key(key.as_bytes());
    // Unidirectional WebSocket is JSON only, as in Centrifugo.
    let (format, subprotocol) = if uni {
        (Format::Json, None)
    } else {
        crate::edges::http::handshake::negotiate_format(req.headers(), req.uri().query())
    };
    // Captured now: the handshake request is gone once the socket belongs to the session.
    let forwarded = node
        .hooks
        .proxy()
        .map(|p| p.capture_headers(req.headers()))
        .unwrap_or_default();
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => match into_ws(upgraded, node.config().client.max_message_size) {
                Some(ws) => {
                    let ws = ws.binary(format.is_binary());
                    let conn = if uni {
                        Transport::UniWebSocket {
                            ws,
                            connected: false,
                            refused: None,
                        }
                    } else {
                        Transport::WebSocket(ws)
                    };
                    let counted = node.metrics.transport_opened(conn.name());
                    let session = Box::new(Session::new(node, conn, format, forwarded));
                    // A task of its own: this one's state (the upgrade) ends here, and what a
                    // connection holds for its lifetime is only the session's.
                    tokio::spawn(async move {
                        let (_slot, _counted) = (slot, counted);
                        session.run().await;
                    });
                }
                None => tracing::warn!("websocket upgrade over an unexpected transport"),
            },
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    switching_protocols(&accept, subprotocol)
}

/// What every WebSocket upgrade passes: a valid request (its key), then [`admit`] (its slot).
pub(super) fn checked_upgrade(
    node: &Arc<Node>,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Result<(HeaderValue, crate::node::ConnectionSlot), Box<Response<Body>>> {
    let key = upgrade_key(node, req)?;
    let slot = admit(node, req.headers(), peer)?;
    Ok((key, slot))
}

/// The key of a valid upgrade request, or the refusal it gets.
fn upgrade_key(node: &Node, req: &Request<Incoming>) -> Result<HeaderValue, Box<Response<Body>>> {
    match crate::edges::http::handshake::validate_upgrade(
        req.method(),
        req.version(),
        req.headers(),
    ) {
        Ok(key) => Ok(key.clone()),
        Err(refusal) => {
            refused(node, refusal.reason);
            let mut response =
                respond(refusal.status, "text/plain; charset=utf-8", refusal.message);
            if refusal.needs_version_header() {
                response.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static(crate::edges::http::handshake::WEBSOCKET_VERSION),
                );
            }
            Err(Box::new(response))
        }
    }
}

/// Takes the socket back from hyper so the session owns it directly.
pub(super) fn into_ws(upgraded: hyper::upgrade::Upgraded, max_message: usize) -> Option<WsConn> {
    let parts = upgraded
        .downcast::<TokioIo<crate::edges::tls::Socket>>()
        .ok()?;
    let ws = WsConn::new(parts.io.into_inner(), &parts.read_buf, max_message);
    // hyper's read buffer (8 KiB) must not live as long as the connection: dropped here.
    Some(ws)
}

/// The 101 answer to an accepted upgrade.
pub(super) fn switching_protocols(
    accept: &str,
    subprotocol: Option<&'static str>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(value) = HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    if let Some(subprotocol) = subprotocol {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(subprotocol),
        );
    }
    response
}

/// What every client connection passes before the server holds anything for it: the origin,
/// shutdown, the new-connection rate of its address and the node's connection limit (one count
/// for every transport).
pub(super) fn admit(
    node: &Arc<Node>,
    headers: &http::HeaderMap,
    peer: SocketAddr,
) -> Result<crate::node::ConnectionSlot, Box<Response<Body>>> {
    // Before anything is forwarded: the connect hook runs only once the session runs.
    if !crate::edges::http::handshake::origin_allowed(&node.config().http.allowed_origins, headers)
    {
        refused(node, "origin");
        return Err(Box::new(respond(
            StatusCode::FORBIDDEN,
            "text/plain; charset=utf-8",
            "origin not allowed (http.allowed_origins)\n",
        )));
    }
    if node.shutdown.is_cancelled() {
        refused(node, "shutdown");
        return Err(Box::new(respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "shutting down\n",
        )));
    }
    if !node.admit_ip(peer.ip()) {
        refused(node, "ip rate");
        return Err(Box::new(respond(
            StatusCode::TOO_MANY_REQUESTS,
            "text/plain; charset=utf-8",
            "too many new connections from this address (client.connection_rate_per_ip)\n",
        )));
    }
    let Some(slot) = node.open_connection() else {
        refused(node, "max connections");
        return Err(Box::new(respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "connection limit reached\n",
        )));
    };
    Ok(slot)
}

pub(super) fn refused(node: &Node, reason: &'static str) {
    node.metrics
        .connections_refused
        .get_or_create(&crate::core::metrics::ReasonLabel { reason })
        .inc();
}
