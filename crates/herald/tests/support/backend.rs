//! A scriptable HTTP backend for hook tests: records every request and answers each with whatever
//! the test's handler says (JSON, a status, garbage, a delay, or nothing at all).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::Value;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// One request the backend received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

/// How the backend answers.
pub enum Reply {
    Json(Value),
    Status(u16),
    Raw(&'static str),
    Slow(Duration, Box<Reply>),
    /// Never answers (the connection stays open).
    Hang,
}

type Handler = Box<dyn Fn(&Recorded) -> Reply + Send + Sync>;

pub struct Backend {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    handler: Arc<Mutex<Arc<Handler>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let handler: Arc<Mutex<Arc<Handler>>> =
            Arc::new(Mutex::new(Arc::new(Box::new(handler) as Handler)));
        let (reqs, h) = (requests.clone(), handler.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (reqs, h) = (reqs.clone(), h.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (reqs, h) = (reqs.clone(), h.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let recorded = Recorded {
                                path: parts.uri.path().to_string(),
                                headers: parts.headers,
                                body,
                            };
                            reqs.lock().push(recorded.clone());
                            let handler = h.lock().clone();
                            let mut reply = handler(&recorded);
                            loop {
                                match reply {
                                    Reply::Slow(delay, next) => {
                                        tokio::time::sleep(delay).await;
                                        reply = *next;
                                    }
                                    Reply::Hang => std::future::pending::<()>().await,
                                    _ => break,
                                }
                            }
                            let (status, text) = match reply {
                                Reply::Json(v) => (200, v.to_string()),
                                Reply::Status(s) => (s, String::new()),
                                Reply::Raw(t) => (200, t.to_string()),
                                Reply::Slow(..) | Reply::Hang => (500, String::new()),
                            };
                            let mut response = hyper::Response::new(Full::new(Bytes::from(text)));
                            *response.status_mut() =
                                http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            addr,
            requests,
            handler,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn set(&self, handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        *self.handler.lock() = Arc::new(Box::new(handler));
    }

    pub fn requests(&self, path: &str) -> Vec<Recorded> {
        self.requests
            .lock()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until at least `n` requests reached `path`; returns them.
    pub async fn wait_for(&self, path: &str, n: usize) -> Vec<Recorded> {
        let ok = super::eventually(super::WAIT, || self.requests(path).len() >= n).await;
        let got = self.requests(path);
        assert!(ok, "expected {n} requests to {path}, got {}", got.len());
        got
    }
}

/// A URL on which nothing listens (connection refused).
pub async fn down_url(path: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}{path}")
}
