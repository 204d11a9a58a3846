//! The Pusher Channels WebSocket endpoint, `/app/<key>?protocol=7`: the same upgrade checks and
//! connection limits as every client transport, then the socket handed to a Pusher session. A
//! request Pusher would refuse (unknown key, unsupported protocol, an app over its connection
//! limit) is still upgraded: Pusher clients learn why from a `pusher:error` and the close code,
//! which tell pusher-js whether to retry.

use super::response::Body;
use super::websocket::{checked_upgrade, into_ws, switching_protocols};
use crate::edges::pusher::PusherSession;
use crate::node::Node;
use herald_pusher::codes::ErrorCode;
use herald_pusher::connect::parse_connect;
use http::{Request, Response};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;

/// Whether `path` is the Pusher WebSocket endpoint.
pub(super) fn handles(path: &str) -> bool {
    path.starts_with("/app/")
}

pub(super) fn pusher_websocket(
    node: Arc<Node>,
    mut req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let (key, slot) = match checked_upgrade(&node, &req, peer) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    let config = node.config();
    let app = parse_connect(req.uri().path(), req.uri().query().unwrap_or("")).and_then(|r| {
        config
            .pusher
            .app_by_key(&r.app_key)
            .cloned()
            .map(Arc::new)
            .ok_or(ErrorCode::AppNotFound)
    });
    // Counted while the connection lives (`pusher.apps[].max_connections`).
    let (app, app_slot) = match app {
        Ok(app) => match node.open_app_connection(&app.id, app.max_connections) {
            Some(app_slot) => (Ok(app), Some(app_slot)),
            None => (Err(ErrorCode::OverConnectionQuota), None),
        },
        Err(code) => (Err(code), None),
    };
    let max_message = config.client.max_message_size;
    drop(config);
    let accept = crate::edges::http::handshake::accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => match into_ws(upgraded, max_message) {
                Some(ws) => {
                    let counted = node
                        .metrics
                        .transport_opened(crate::edges::pusher::TRANSPORT);
                    let session = Box::new(PusherSession::new(node, ws, app));
                    // A task of its own: what a connection holds for its lifetime is only the
                    // session's.
                    tokio::spawn(async move {
                        let _held = (slot, app_slot, counted);
                        session.run().await;
                    });
                }
                None => tracing::warn!("websocket upgrade over an unexpected transport"),
            },
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    switching_protocols(&accept, None)
}
