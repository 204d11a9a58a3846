//! The HTTP listeners: accepting within the descriptor budget, and serving each socket with hyper
//! under the HTTP layer's limits.

use super::router::route;
use super::{Role, Routes};
use crate::edges::tls::Socket;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Accepts until shutdown. A connection beyond the listener's descriptor share is closed at
/// once (crate::edges::descriptors); running out of descriptors anyway pauses accepting instead of
/// spinning. With `tls`, each connection's handshake runs in its own task, holding its permit.
pub async fn accept_loop(
    routes: Arc<Routes>,
    listener: TcpListener,
    role: Role,
    share: crate::edges::descriptors::Share,
    tls: Option<Arc<crate::edges::tls::Endpoint>>,
) {
    let node = routes.node.clone();
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
                        crate::edges::sockets::close_now(stream);
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let send_buffer = node.config().client.send_buffer;
                if send_buffer > 0 {
                    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(send_buffer);
                }
                let routes = routes.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let socket = match tls {
                        None => Socket::Plain(stream),
                        Some(tls) => {
                            let timeout = routes.node.config().http.tls_handshake_timeout;
                            match tls.accept(stream, timeout).await {
                                Some(stream) => Socket::Tls(Box::new(stream)),
                                None => return,
                            }
                        }
                    };
                    serve_connection(routes, socket, peer, role, permit).await
                });
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
    routes: Arc<Routes>,
    stream: Socket,
    peer: SocketAddr,
    role: Role,
    // Held while hyper serves the socket; an upgraded WebSocket is counted by node.connections.
    _permit: crate::edges::descriptors::Permit,
) {
    let metrics = routes.node.metrics.clone();
    let abort = tokio_util::sync::CancellationToken::new();
    let abort_here = abort.clone();
    let tls = stream.is_tls();
    let service = hyper::service::service_fn(move |mut req| {
        let routes = routes.clone();
        if tls {
            mark_https(&mut req);
        }
        req.extensions_mut()
            .insert(super::ConnectionAbort(abort.clone()));
        async move { Ok::<_, std::convert::Infallible>(route(&routes, req, peer, role).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let result = tokio::select! {
        result = conn => result,
        // Dropping the connection closes the socket, whatever hyper still had to write.
        _ = abort_here.cancelled() => Ok(()),
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %peer, "http connection ended with error");
        if let Some(reason) = http_close_reason(&e) {
            metrics
                .http_closed
                .get_or_create(&crate::core::metrics::ReasonLabel { reason })
                .inc();
        }
    }
}

/// Gives a request that came over TLS the `https` scheme (what the admin console's `Secure`
/// cookie goes by), with the authority of its Host header when it named none.
fn mark_https<B>(req: &mut http::Request<B>) {
    let mut parts = req.uri().clone().into_parts();
    if parts.authority.is_none() {
        let host = req.headers().get(http::header::HOST);
        match host.and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok()) {
            Some(authority) => parts.authority = Some(authority),
            None => return,
        }
    }
    parts.scheme = Some(http::uri::Scheme::HTTPS);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
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
