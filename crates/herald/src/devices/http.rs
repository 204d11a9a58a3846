//! OsmAnd / Traccar Client over HTTP: GET or POST with the query form, POST with the JSON or
//! form body. `200` only after the position is in the spool; `400` with the reason otherwise.

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
use tokio::net::{TcpListener, TcpStream};

pub async fn accept_loop(ingest: Arc<DeviceIngest>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = ingest.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let task = ingest.tasks.spawn(serve(ingest.clone(), stream, peer));
                drop(task);
            }
            Err(e) => {
                tracing::warn!(error = %e, "osmand accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve(ingest: Arc<DeviceIngest>, stream: TcpStream, peer: SocketAddr) {
    let stop = ingest.stop.clone();
    let service = hyper::service::service_fn(move |req| {
        let ingest = ingest.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(ingest, req, peer).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
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
    let body = match Limited::new(req.into_body(), osmand::MAX_BODY_LEN)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
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
        ingest.registry.seen(id, Protocol::Osmand, Some(peer), now);
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
