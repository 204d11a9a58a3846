//! OsmAnd / Traccar Client over HTTP: GET or POST with the query form, POST with the JSON or
//! form body. `200` only after the position is in the spool; `400` with the reason otherwise.

use super::admission::Admission;
use super::{DeviceIngest, Protocol};
use bytes::Bytes;
use herald_devices::{osmand, SessionState};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Most time a request's headers may take, also while the connection idles between requests.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn serve(
    ingest: Arc<DeviceIngest>,
    stream: TcpStream,
    peer: SocketAddr,
    // Held for the connection's life: its descriptor and its place in the per-address count.
    _admission: Admission,
) {
    let stop = ingest.stop.clone();
    // A silent or trickling client is closed by hyper's header timeout, never later than
    // `devices.login_timeout`.
    let header_timeout = HEADER_TIMEOUT.min(ingest.node.config().devices.login_timeout);
    let service = hyper::service::service_fn(move |req| {
        let ingest = ingest.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(ingest, req, peer).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, %peer, "osmand connection ended with error");
            }
        }
        _ = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn handle(
    ingest: Arc<DeviceIngest>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST\n");
    }
    let target = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // A body that trickles is cut at `devices.login_timeout` (hyper times only the headers).
    let body_timeout = ingest.node.config().devices.login_timeout;
    let collected = tokio::time::timeout(
        body_timeout,
        Limited::new(req.into_body(), osmand::MAX_BODY_LEN).collect(),
    )
    .await;
    let body = match collected {
        Ok(Ok(b)) => b.to_bytes(),
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                format!("body not received within devices.login_timeout ({body_timeout:?})\n"),
            )
        }
        Ok(Err(_)) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "body larger than {} bytes or unreadable\n",
                    osmand::MAX_BODY_LEN
                ),
            )
        }
    };
    let now = DeviceIngest::now();
    let mut session = SessionState::new();
    session.now_ms = now;
    let decoded =
        match osmand::decode_request(&target, content_type.as_deref(), &body, &mut session) {
            Ok(d) => d,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("bad request: {e}\n")),
        };
    let mut ids: Vec<&String> = decoded.device_id.iter().collect();
    for p in &decoded.positions {
        if !ids.contains(&&p.device_id) {
            ids.push(&p.device_id);
        }
    }
    for id in &ids {
        if !ingest.allowed(id) {
            return text(
                StatusCode::FORBIDDEN,
                format!("device {id:?} is not allowed\n"),
            );
        }
        if let Err(full) = ingest.registry.seen(id, Protocol::Osmand, Some(peer), now) {
            ingest.refused(Protocol::Osmand, "registry_full");
            return text(StatusCode::SERVICE_UNAVAILABLE, format!("{full}\n"));
        }
    }
    let live = match ingest.accept(decoded.positions, Protocol::Osmand).await {
        Ok(live) => live,
        Err(e) => {
            tracing::warn!(error = %e, "osmand position not accepted");
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("position not accepted: {e}\n"),
            );
        }
    };
    ingest.publish(live).await;
    text(StatusCode::OK, "")
}
