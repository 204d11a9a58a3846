#![no_main]
//! Hostile bytes at Herald's HTTP edge. Each input goes (1) as raw bytes through hyper's HTTP/1
//! server parser over an in-memory pipe (no network) into the checks Herald routes with — the
//! WebSocket handshake (RFC 6455), the Origin policy, the API key and keyless allow-list, the body
//! and `batch` parsing — and (2) straight into the body and batch parsers. Nothing may panic, and
//! every answer keeps its contract (statuses, the 426 version header, the batch bound).

use bytes::Bytes;
use herald::edges::api::request::{authorize, keyless_allowed, parse_batch, parse_body};
use herald::edges::http::handshake::{accept_key, origin_allowed, validate_upgrade};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use std::sync::OnceLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MAX_BATCH: usize = 8;
const MAX_BODY: usize = 64 << 10;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

/// The body checks: a parsed body is an object; a parsed batch holds at most MAX_BATCH commands.
fn check_body(body: &[u8]) {
    if let Ok(raw) = parse_body(body) {
        assert!(raw.get().trim_start().starts_with('{'));
        if let Ok(batch) = parse_batch(&raw, MAX_BATCH) {
            assert!(batch.commands.len() <= MAX_BATCH);
            assert!(batch.commands.iter().all(|(method, _)| method != "batch"));
        }
    }
}

async fn route(req: Request<Incoming>, peer: IpAddr) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/connection/websocket" {
        match validate_upgrade(req.method(), req.version(), req.headers()) {
            Ok(key) => assert_eq!(accept_key(key.as_bytes()).len(), 28),
            Err(refusal) => {
                assert!(matches!(
                    refusal.status,
                    StatusCode::BAD_REQUEST
                        | StatusCode::METHOD_NOT_ALLOWED
                        | StatusCode::UPGRADE_REQUIRED
                ));
                assert_eq!(
                    refusal.needs_version_header(),
                    refusal.status == StatusCode::UPGRADE_REQUIRED
                );
            }
        }
        let policy = ["https://app.example".to_string()];
        let _ = origin_allowed(&policy, req.headers());
        assert!(origin_allowed(&[], req.headers()));
        return Response::new(Full::new(Bytes::new()));
    }
    let keyless = authorize("", peer, req.uri(), req.headers());
    if !peer.is_loopback() {
        assert_eq!(keyless.as_ref().map_err(|r| r.reason), Err("peer"));
    }
    if keyless.is_ok() {
        assert!(keyless_allowed(peer, req.uri(), req.headers()).is_ok());
    }
    let _ = authorize("key", peer, req.uri(), req.headers());
    if let Ok(body) = Limited::new(req.into_body(), MAX_BODY).collect().await {
        check_body(&body.to_bytes());
    }
    Response::new(Full::new(Bytes::new()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let peer: IpAddr = if selector & 1 == 0 {
        IpAddr::from([127, 0, 0, 1])
    } else {
        IpAddr::from([203, 0, 113, 9])
    };
    check_body(bytes);
    let input = bytes.to_vec();
    runtime().block_on(async move {
        let (client, server) = tokio::io::duplex(1 << 16);
        let service = hyper::service::service_fn(move |req| async move {
            Ok::<_, std::convert::Infallible>(route(req, peer).await)
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server), service);
        let (mut reader, mut writer) = tokio::io::split(client);
        let write = async move {
            let _ = writer.write_all(&input).await;
            let _ = writer.shutdown().await;
        };
        let read = async move {
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink).await;
        };
        let _ = tokio::join!(conn, write, read);
    });
});
