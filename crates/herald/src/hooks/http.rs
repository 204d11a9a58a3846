//! The one HTTP/1 client the hooks share: a pooled hyper client, a deadline on the whole exchange,
//! a bound on the response size.

use super::HookError;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Larger backend answers are refused: they would be held in memory per call.
const MAX_RESPONSE_BYTES: usize = 4 << 20;

#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        HttpClient { inner }
    }

    /// POSTs a JSON body; returns the body of a 2xx answer. Everything (connect, headers, body)
    /// happens within `deadline`, so a stuck backend costs at most that.
    pub async fn post_json(
        &self,
        uri: &Uri,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
        deadline: Duration,
    ) -> Result<Bytes, HookError> {
        let mut request = Request::post(uri.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| HookError::Unavailable(e.to_string()))?;
        let exchange = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| HookError::Unavailable(error_chain(&e)))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| HookError::BadResponse(format!("reading the body: {e}")))?
                .to_bytes();
            if !status.is_success() {
                return Err(HookError::Status(status.as_u16()));
            }
            Ok(body)
        };
        tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| HookError::Timeout)?
    }
}

/// hyper's errors hide the cause (e.g. "connection refused") in their source chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
