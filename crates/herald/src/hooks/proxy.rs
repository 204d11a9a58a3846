//! Proxy hooks: the client that calls the backend, in Centrifugo's HTTP proxy format (see `wire`),
//! so backends written for Centrifugo work unchanged.
//!
//! Calls are bounded per node by a semaphore (`proxy.max_concurrent`): a call over the limit fails at
//! once instead of queueing, so a slow backend cannot pile up waiting sessions.

use super::http::HttpClient;
use super::wire::{
    decode, Answer, ConnectResult, HookCtx, Identity, Outcome, PublishResult, Published,
    RefreshResult, Refreshed, Request, RpcResult, SubscribeResult, Subscribed,
};
use super::HookError;
use crate::config::{parse_http_url, ProxyConfig};
use crate::core::metrics::{HookErrorLabel, HookLabel, Metrics};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

type Json = Box<RawValue>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect,
    Refresh,
    Subscribe,
    Publish,
    Rpc,
    Send,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Refresh => "refresh",
            Hook::Subscribe => "subscribe",
            Hook::Publish => "publish",
            Hook::Rpc => "rpc",
            Hook::Send => "send",
        }
    }
}

struct Endpoints {
    connect: Option<Uri>,
    refresh: Option<Uri>,
    subscribe: Option<Uri>,
    publish: Option<Uri>,
    rpc: Option<Uri>,
    send: Option<Uri>,
}

pub struct Proxy {
    client: HttpClient,
    endpoints: Endpoints,
    timeout: Duration,
    permits: Arc<Semaphore>,
    forward: Vec<HeaderName>,
    metrics: Arc<Metrics>,
}

impl Proxy {
    /// `None` when no endpoint is configured.
    pub fn new(config: &ProxyConfig, client: HttpClient, metrics: Arc<Metrics>) -> Option<Proxy> {
        let uri = |s: &str| (!s.is_empty()).then(|| parse_http_url(s).ok()).flatten();
        let endpoints = Endpoints {
            connect: uri(&config.connect_endpoint),
            refresh: uri(&config.refresh_endpoint),
            subscribe: uri(&config.subscribe_endpoint),
            publish: uri(&config.publish_endpoint),
            rpc: uri(&config.rpc_endpoint),
            send: uri(&config.send_endpoint),
        };
        let any = [
            &endpoints.connect,
            &endpoints.refresh,
            &endpoints.subscribe,
            &endpoints.publish,
            &endpoints.rpc,
            &endpoints.send,
        ]
        .iter()
        .any(|e| e.is_some());
        any.then(|| Proxy {
            client,
            endpoints,
            timeout: config.timeout,
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            forward: config
                .forward_headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            metrics,
        })
    }

    fn endpoint(&self, hook: Hook) -> Option<&Uri> {
        let e = &self.endpoints;
        match hook {
            Hook::Connect => e.connect.as_ref(),
            Hook::Refresh => e.refresh.as_ref(),
            Hook::Subscribe => e.subscribe.as_ref(),
            Hook::Publish => e.publish.as_ref(),
            Hook::Rpc => e.rpc.as_ref(),
            Hook::Send => e.send.as_ref(),
        }
    }

    pub fn has(&self, hook: Hook) -> bool {
        self.endpoint(hook).is_some()
    }

    /// The handshake headers this proxy forwards, captured once per connection.
    pub fn capture_headers(&self, headers: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        self.forward
            .iter()
            .flat_map(|name| {
                headers
                    .get_all(name)
                    .iter()
                    .map(move |v| (name.clone(), v.clone()))
            })
            .collect()
    }

    /// One backend call: permit, POST, decode. Every failure is counted and returned, never panics.
    async fn call<T: Answer>(
        &self,
        hook: Hook,
        ctx: &HookCtx<'_>,
        request: &Request<'_>,
    ) -> Result<Outcome<T::Out>, HookError> {
        let body = serde_json::to_vec(request)
            .map_err(|e| HookError::BadResponse(format!("encoding the request: {e}")))?;
        self.call_encoded::<T>(hook, ctx, body).await
    }

    async fn call_encoded<T: Answer>(
        &self,
        hook: Hook,
        ctx: &HookCtx<'_>,
        body: Vec<u8>,
    ) -> Result<Outcome<T::Out>, HookError> {
        let label = HookLabel { hook: hook.name() };
        self.metrics.proxy_calls.get_or_create(&label).inc();
        let started = Instant::now();
        let result = self.call_inner::<T>(hook, ctx, body).await;
        self.metrics
            .proxy_duration
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.metrics
                .proxy_errors
                .get_or_create(&HookErrorLabel {
                    hook: hook.name(),
                    reason: e.reason(),
                })
                .inc();
            tracing::warn!(hook = hook.name(), client = ctx.client, error = %e, "proxy call failed");
        }
        result
    }

    async fn call_inner<T: Answer>(
        &self,
        hook: Hook,
        ctx: &HookCtx<'_>,
        body: Vec<u8>,
    ) -> Result<Outcome<T::Out>, HookError> {
        let Some(uri) = self.endpoint(hook) else {
            return Err(HookError::Unavailable("hook not configured".into()));
        };
        let _permit = self.permits.try_acquire().map_err(|_| HookError::Busy)?;
        let answer = self
            .client
            .post_json(uri, ctx.headers, Bytes::from(body), self.timeout)
            .await?;
        decode::<T>(&answer)
    }

    pub async fn connect(
        &self,
        ctx: &HookCtx<'_>,
        name: &str,
        version: &str,
        data: Option<&RawValue>,
    ) -> Result<Outcome<Identity>, HookError> {
        let request = Request {
            name: Some(name),
            version: Some(version),
            data,
            ..Request::new(ctx, false)
        };
        self.call::<ConnectResult>(Hook::Connect, ctx, &request)
            .await
    }

    pub async fn refresh(&self, ctx: &HookCtx<'_>) -> Result<Outcome<Refreshed>, HookError> {
        let request = Request::new(ctx, true);
        self.call::<RefreshResult>(Hook::Refresh, ctx, &request)
            .await
    }

    pub async fn subscribe(
        &self,
        ctx: &HookCtx<'_>,
        channel: &str,
        data: Option<&RawValue>,
    ) -> Result<Outcome<Subscribed>, HookError> {
        let request = Request {
            channel: Some(channel),
            data,
            ..Request::new(ctx, true)
        };
        self.call::<SubscribeResult>(Hook::Subscribe, ctx, &request)
            .await
    }

    pub async fn publish(
        &self,
        ctx: &HookCtx<'_>,
        channel: &str,
        data: &RawValue,
    ) -> Result<Outcome<Published>, HookError> {
        let request = Request {
            channel: Some(channel),
            data: Some(data),
            ..Request::new(ctx, true)
        };
        self.call::<PublishResult>(Hook::Publish, ctx, &request)
            .await
    }

    pub async fn rpc(
        &self,
        ctx: &HookCtx<'_>,
        method: &str,
        data: Option<&RawValue>,
    ) -> Result<Outcome<Option<Json>>, HookError> {
        let request = Request {
            method: Some(method),
            data,
            ..Request::new(ctx, true)
        };
        self.call::<RpcResult>(Hook::Rpc, ctx, &request).await
    }

    /// Fire-and-forget: the call runs in its own task and its answer is ignored. Over the concurrency
    /// limit the message is dropped (and counted as `busy`), like any other call.
    pub fn send(self: &Arc<Self>, ctx: &HookCtx<'_>, data: Option<&RawValue>) {
        let request = Request {
            data,
            ..Request::new(ctx, true)
        };
        let Ok(body) = serde_json::to_vec(&request) else {
            return;
        };
        let client = ctx.client.to_string();
        let headers = ctx.headers.to_vec();
        let this = self.clone();
        tokio::spawn(async move {
            let ctx = HookCtx {
                client: &client,
                user: "",
                meta: None,
                headers: &headers,
            };
            // Failures are already counted and logged by the call; there is nobody to tell.
            let _ = this
                .call_encoded::<serde_json::Value>(Hook::Send, &ctx, body)
                .await;
        });
    }
}
