//! Which path goes where (by the listener's role), and the server API endpoint: its key or
//! keyless allow-list, body limits, and the JSON reply.

use super::pusher_upgrade;
use super::response::{api_error, json_response, respond, Body};
use super::streaming;
use super::websocket::websocket;
use super::{Role, Routes};
use super::{EMULATION_PATH, MAX_API_BODY, UNI_WEBSOCKET_PATH, WEBSOCKET_PATH};
use crate::edges::devices::DeviceIngest;
use crate::node::Node;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;

pub(super) async fn route(
    routes: &Routes,
    req: Request<Incoming>,
    peer: SocketAddr,
    role: Role,
) -> Response<Body> {
    let node = routes.node.clone();
    let devices = routes.devices.as_deref();
    let path = req.uri().path().to_string();
    let api_here = role != Role::Public;
    let clients_here = role != Role::Internal;
    match (req.method(), path.as_str()) {
        (&Method::GET, WEBSOCKET_PATH) if clients_here => websocket(node, req, peer, false),
        (&Method::GET, UNI_WEBSOCKET_PATH) if clients_here => websocket(node, req, peer, true),
        (&Method::GET, p)
            if clients_here && node.config().pusher.enabled() && pusher_upgrade::handles(p) =>
        {
            pusher_upgrade::pusher_websocket(node, req, peer)
        }
        (_, EMULATION_PATH) if clients_here => streaming::emulation(node, req).await,
        (_, p) if clients_here && streaming::Endpoint::from_path(p).is_some() => {
            let endpoint =
                streaming::Endpoint::from_path(p).unwrap_or(streaming::Endpoint::HttpStream);
            let abort = req
                .extensions()
                .get::<super::ConnectionAbort>()
                .map(|a| a.0.clone());
            streaming::stream(node, req, peer, endpoint, abort).await
        }
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
            if node.config().api.key.is_empty() {
                if let Err(refusal) =
                    crate::edges::api::request::keyless_allowed(peer.ip(), req.uri(), req.headers())
                {
                    return api_refused(&node, &refusal);
                }
            }
            if let Some(devices) = devices {
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
        (_, p) if clients_here && node.config().map.enabled && crate::edges::map::handles(p) => {
            crate::edges::map::serve(&node, devices, &req).await
        }
        (_, p) if api_here && node.config().admin.active() && crate::edges::admin::handles(p) => {
            crate::edges::admin::serve(&routes.admin, &node, devices, req, peer).await
        }
        (_, p)
            if api_here && node.config().pusher.enabled() && crate::edges::pusher::handles(p) =>
        {
            crate::edges::pusher::serve(&node, req).await
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
            api(node, devices, req, peer, &method).await
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
    devices: Option<&DeviceIngest>,
    req: Request<Incoming>,
    peer: SocketAddr,
    method: &str,
) -> Response<Body> {
    // The API key, or without one the keyless allow-list (crate::edges::api::request).
    if let Err(refusal) = crate::edges::api::request::authorize(
        &node.config().api.key,
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
    match crate::core::wakes::batched(crate::edges::api::handle(&node, devices, method, &raw)).await
    {
        Ok(body) => {
            drop(raw);
            respond(StatusCode::OK, "application/json", body)
        }
        Err(Some(e)) => json_response(StatusCode::OK, &e.to_json()),
        Err(None) => api_error(
            StatusCode::NOT_FOUND,
            104,
            &format!("unknown method {method:?}"),
        ),
    }
}
