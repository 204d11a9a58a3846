//! The application backend's part in Herald: proxy hooks (Herald asks the backend and waits for its
//! answer: connect, refresh, subscribe, publish, rpc, send) and webhooks (Herald tells the backend
//! what happened, from a bounded queue: disconnect, channel occupied/vacated, join/leave).
//!
//! Sessions only call into this module; the wire format, the limits and the error mapping live here.

pub mod http;
pub mod proxy;
pub mod pusher_webhook;
pub mod sign;
pub mod webhook;
pub mod wire;

use crate::config::Config;
use crate::core::metrics::Metrics;
use herald_protocol::{ClientInfo, ReplyError};
use std::sync::Arc;

pub use proxy::Proxy;
pub use webhook::{WebhookWorker, Webhooks};
pub use wire::HookCtx;
pub use wire::Outcome;

/// Why a backend call gave no usable answer. The client sees `client_message`; logs and metrics see
/// the detail and `reason`.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("proxy.max_concurrent calls already in flight")]
    Busy,
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("backend did not answer within the timeout")]
    Timeout,
    #[error("backend answered HTTP {0}")]
    Status(u16),
    #[error("bad backend response: {0}")]
    BadResponse(String),
}

impl HookError {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            HookError::Busy => "busy",
            HookError::Unavailable(_) => "unavailable",
            HookError::Timeout => "timeout",
            HookError::Status(_) => "status",
            HookError::BadResponse(_) => "bad_response",
        }
    }

    /// What the client is told: short, without backend addresses.
    pub fn client_message(&self) -> &'static str {
        match self {
            HookError::Busy => "backend busy",
            HookError::Unavailable(_) | HookError::Status(_) => "backend unavailable",
            HookError::Timeout => "backend timeout",
            HookError::BadResponse(_) => "bad backend response",
        }
    }

    /// The command's error reply: 100 internal, temporary, so SDKs retry with backoff (the fault is
    /// the server side's, not the client's).
    pub fn reply_error(&self) -> ReplyError {
        ReplyError {
            code: herald_protocol::ErrorCode::Internal.code(),
            message: self.client_message().to_string(),
            temporary: true,
        }
    }
}

/// The node's hooks; each part is `None` when not configured.
pub struct Hooks {
    /// Swapped by a configuration reload; calls in flight finish with the proxy they started with.
    proxy: arc_swap::ArcSwapOption<Proxy>,
    client: http::HttpClient,
    metrics: Arc<Metrics>,
    pub webhooks: Option<Webhooks>,
    /// Pusher apps' webhooks (`pusher.apps[].webhook_url`).
    pub pusher: pusher_webhook::PusherWebhooks,
    workers: parking_lot::Mutex<Vec<WebhookWorker>>,
}

impl Hooks {
    pub fn new(config: &Config, metrics: Arc<Metrics>, node_name: &str) -> Hooks {
        let client = http::HttpClient::new();
        let proxy = Proxy::new(&config.proxy, client.clone(), metrics.clone()).map(Arc::new);
        let (webhooks, mut workers) =
            match Webhooks::new(&config.webhooks, client.clone(), metrics.clone(), node_name) {
                Some((w, worker)) => (Some(w), vec![worker]),
                None => (None, Vec::new()),
            };
        let (pusher, pusher_workers) =
            pusher_webhook::PusherWebhooks::new(config, &client, &metrics);
        workers.extend(pusher_workers);
        Hooks {
            proxy: arc_swap::ArcSwapOption::new(proxy),
            client,
            metrics,
            webhooks,
            pusher,
            workers: parking_lot::Mutex::new(workers),
        }
    }

    /// The proxy, when any hook is configured.
    pub fn proxy(&self) -> Option<Arc<Proxy>> {
        self.proxy.load_full()
    }

    /// The proxy, when this hook is configured.
    pub fn proxy_for(&self, hook: proxy::Hook) -> Option<Arc<Proxy>> {
        self.proxy().filter(|p| p.has(hook))
    }

    /// Whether this hook is configured, without cloning the proxy (for per-loop checks).
    pub fn has(&self, hook: proxy::Hook) -> bool {
        self.proxy.load().as_ref().is_some_and(|p| p.has(hook))
    }

    /// Puts new `[proxy]` settings in force (a configuration reload).
    pub fn replace_proxy(&self, config: &crate::config::ProxyConfig) {
        let proxy = Proxy::new(config, self.client.clone(), self.metrics.clone()).map(Arc::new);
        self.proxy.store(proxy);
    }

    /// The webhook delivery tasks (Herald's, and one per Pusher app with webhooks), for the
    /// server to spawn (once).
    pub fn take_workers(&self) -> Vec<WebhookWorker> {
        std::mem::take(&mut *self.workers.lock())
    }

    pub fn channel_occupied(&self, channel: &str) {
        if let Some(w) = &self.webhooks {
            w.channel_event(webhook::Event::ChannelOccupied, channel);
        }
        self.pusher.channel(channel, true);
    }

    pub fn channel_vacated(&self, channel: &str) {
        if let Some(w) = &self.webhooks {
            w.channel_event(webhook::Event::ChannelVacated, channel);
        }
        self.pusher.channel(channel, false);
    }

    pub fn join(&self, channel: &str, info: &ClientInfo) {
        if let Some(w) = &self.webhooks {
            w.presence_event(webhook::Event::Join, channel, info);
        }
    }

    pub fn leave(&self, channel: &str, info: &ClientInfo) {
        if let Some(w) = &self.webhooks {
            w.presence_event(webhook::Event::Leave, channel, info);
        }
    }

    pub fn disconnect(&self, client: &str, user: &str, code: u16, reason: &str) {
        if let Some(w) = &self.webhooks {
            w.disconnect_event(client, user, code, reason);
        }
    }
}
