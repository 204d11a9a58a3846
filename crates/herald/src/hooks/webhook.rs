//! Event webhooks: each event is encoded and signed once, queued in a bounded channel, and POSTed by
//! one delivery task in order, with retries and exponential backoff.
//!
//! When the queue is full the **new** event is dropped and counted (`herald_webhooks_dropped{reason=
//! "queue_full"}`): a receiver that is down must not make the node hold unbounded memory, and the
//! events already queued are older and were promised first. An event that fails every attempt is
//! dropped too (`reason="failed"`). At shutdown the events still queued, the disconnects of the
//! closing connections among them, are delivered within the shutdown budget; what is left when it
//! runs out is counted (`reason="shutdown"`).

use super::http::HttpClient;
use super::sign::signature;
use crate::config::WebhooksConfig;
use crate::core::metrics::{EventLabel, Metrics, ReasonLabel};
use bytes::Bytes;
use herald_protocol::ClientInfo;
use http::{HeaderName, HeaderValue, Uri};
use serde::Serialize;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Header carrying `sha256=<hex HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "x-herald-signature";
/// Header carrying the event's time in seconds since the UNIX epoch (also in the body, signed).
pub const TIMESTAMP_HEADER: &str = "x-herald-timestamp";
/// Header naming the event, so receivers can route before parsing.
pub const EVENT_HEADER: &str = "x-herald-event";
/// The longest wait between two attempts, however many retries are configured.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Disconnect,
    ChannelOccupied,
    ChannelVacated,
    Join,
    Leave,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::Disconnect => "disconnect",
            Event::ChannelOccupied => "channel_occupied",
            Event::ChannelVacated => "channel_vacated",
            Event::Join => "join",
            Event::Leave => "leave",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    fn from_name(name: &str) -> Option<Event> {
        [
            Event::Disconnect,
            Event::ChannelOccupied,
            Event::ChannelVacated,
            Event::Join,
            Event::Leave,
        ]
        .into_iter()
        .find(|e| e.name() == name)
    }
}

/// The JSON body of every event; fields that do not apply to an event are left out.
#[derive(Serialize)]
struct Body<'a> {
    event: &'static str,
    /// Milliseconds since the UNIX epoch when the event happened.
    time: i64,
    node: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    conn_info: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chan_info: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

pub(super) struct Queued {
    /// The event's name: the metrics' label and the `X-Herald-Event` header.
    pub(super) name: &'static str,
    pub(super) time_secs: i64,
    pub(super) body: Bytes,
}

/// How a delivery is signed: with Herald's headers, or as Pusher signs an app's webhooks.
pub(super) enum Signing {
    Herald { secret: Vec<u8> },
    Pusher { key: String, secret: String },
}

/// The sending side, held by the node.
pub struct Webhooks {
    tx: mpsc::Sender<Queued>,
    events: u8,
    metrics: Arc<Metrics>,
    node: String,
}

/// The delivery task's state; `run` it once.
pub struct WebhookWorker {
    rx: mpsc::Receiver<Queued>,
    client: HttpClient,
    url: Uri,
    signing: Signing,
    retries: u32,
    backoff: Duration,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Webhooks {
    /// `None` when `webhooks.url` is empty (or invalid, which validation already refused).
    pub fn new(
        config: &WebhooksConfig,
        client: HttpClient,
        metrics: Arc<Metrics>,
        node: &str,
    ) -> Option<(Webhooks, WebhookWorker)> {
        if !config.enabled() {
            return None;
        }
        let url = crate::config::parse_http_url(&config.url).ok()?;
        let events = config
            .events
            .iter()
            .filter_map(|e| Event::from_name(e))
            .fold(0, |bits, e| bits | e.bit());
        let signing = Signing::Herald {
            secret: config.secret.as_bytes().to_vec(),
        };
        let (tx, worker) = WebhookWorker::new(config, client, url, signing, metrics.clone());
        Some((
            Webhooks {
                tx,
                events,
                metrics,
                node: node.to_string(),
            },
            worker,
        ))
    }

    pub fn wants(&self, event: Event) -> bool {
        self.events & event.bit() != 0
    }

    fn body(&self, event: Event, time: i64) -> Body<'_> {
        Body {
            event: event.name(),
            time,
            node: &self.node,
            channel: None,
            client: None,
            user: None,
            conn_info: None,
            chan_info: None,
            code: None,
            reason: None,
        }
    }

    pub fn channel_event(&self, event: Event, channel: &str) {
        if !self.wants(event) {
            return;
        }
        let time = crate::core::clock::unix_millis();
        let body = Body {
            channel: Some(channel),
            ..self.body(event, time)
        };
        self.enqueue(event, time, &body);
    }

    pub fn presence_event(&self, event: Event, channel: &str, info: &ClientInfo) {
        if !self.wants(event) {
            return;
        }
        let time = crate::core::clock::unix_millis();
        let body = Body {
            channel: Some(channel),
            client: Some(&info.client),
            user: Some(&info.user),
            conn_info: info.conn_info.as_deref(),
            chan_info: info.chan_info.as_deref(),
            ..self.body(event, time)
        };
        self.enqueue(event, time, &body);
    }

    pub fn disconnect_event(&self, client: &str, user: &str, code: u16, reason: &str) {
        if !self.wants(Event::Disconnect) {
            return;
        }
        let time = crate::core::clock::unix_millis();
        let body = Body {
            client: Some(client),
            user: Some(user),
            code: Some(code),
            reason: Some(reason),
            ..self.body(Event::Disconnect, time)
        };
        self.enqueue(Event::Disconnect, time, &body);
    }

    fn enqueue(&self, event: Event, time_ms: i64, body: &Body<'_>) {
        let Ok(body) = serde_json::to_vec(body) else {
            return;
        };
        let queued = Queued {
            name: event.name(),
            time_secs: time_ms / 1000,
            body: Bytes::from(body),
        };
        enqueue(&self.tx, &self.metrics, queued);
    }
}

/// Queues an event for its worker. Never waits: a session must not stall because the receiver
/// is slow; a full queue drops the new event and counts it.
pub(super) fn enqueue(tx: &mpsc::Sender<Queued>, metrics: &Metrics, queued: Queued) {
    let name = queued.name;
    match tx.try_send(queued) {
        Ok(()) => {
            metrics.webhook_queue_length.inc();
            metrics
                .webhooks_queued
                .get_or_create(&EventLabel { event: name })
                .inc();
        }
        Err(_) => {
            metrics
                .webhooks_dropped
                .get_or_create(&ReasonLabel {
                    reason: "queue_full",
                })
                .inc();
        }
    }
}

impl WebhookWorker {
    /// A worker delivering to `url` with the queue, retries and timeout of `[webhooks]`, and the
    /// sender that queues for it.
    pub(super) fn new(
        config: &WebhooksConfig,
        client: HttpClient,
        url: Uri,
        signing: Signing,
        metrics: Arc<Metrics>,
    ) -> (mpsc::Sender<Queued>, WebhookWorker) {
        let (tx, rx) = mpsc::channel(config.queue_size.max(1));
        let worker = WebhookWorker {
            rx,
            client,
            url,
            signing,
            retries: config.retries,
            backoff: config.retry_backoff,
            timeout: config.timeout,
            metrics,
        };
        (tx, worker)
    }

    /// Delivers queued events one at a time, in order. Once `finish` is cancelled (the node's
    /// connections have closed), what is still queued is delivered within `budget`; the rest is
    /// dropped and counted.
    pub async fn run(mut self, finish: CancellationToken, budget: Duration) {
        let mut deadline = None;
        loop {
            let queued = match deadline {
                None => tokio::select! {
                    _ = finish.cancelled() => {
                        deadline = Some(tokio::time::Instant::now() + budget);
                        continue;
                    }
                    queued = self.rx.recv() => match queued {
                        Some(q) => q,
                        None => return,
                    },
                },
                // Finishing: only what is queued already, until the budget runs out.
                Some(_) => match self.rx.try_recv() {
                    Ok(q) => q,
                    Err(_) => return,
                },
            };
            self.metrics.webhook_queue_length.dec();
            let delivered = {
                let delivery = self.deliver(&queued);
                tokio::pin!(delivery);
                match deadline {
                    None => tokio::select! {
                        _ = &mut delivery => true,
                        // An event started before the finish may run on into the budget.
                        _ = finish.cancelled() => {
                            let end = tokio::time::Instant::now() + budget;
                            deadline = Some(end);
                            tokio::time::timeout_at(end, &mut delivery).await.is_ok()
                        }
                    },
                    Some(end) => tokio::time::timeout_at(end, &mut delivery).await.is_ok(),
                }
            };
            if !delivered {
                // The budget ran out: this event and every one still queued are lost.
                let left = 1 + std::iter::from_fn(|| self.rx.try_recv().ok()).count();
                self.metrics.webhook_queue_length.dec_by(left as i64 - 1);
                self.metrics
                    .webhooks_dropped
                    .get_or_create(&ReasonLabel { reason: "shutdown" })
                    .inc_by(left as u64);
                tracing::warn!(
                    left,
                    "webhooks still queued when the shutdown budget ran out"
                );
                return;
            }
        }
    }

    async fn deliver(&self, queued: &Queued) {
        let label = EventLabel { event: queued.name };
        let headers = self.headers(queued);
        let mut backoff = self.backoff;
        for attempt in 0..=self.retries {
            if attempt > 0 {
                self.metrics.webhooks_retried.get_or_create(&label).inc();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            match self
                .client
                .post_json(&self.url, &headers, queued.body.clone(), self.timeout)
                .await
            {
                Ok(_) => {
                    self.metrics.webhooks_delivered.get_or_create(&label).inc();
                    return;
                }
                Err(e) => {
                    tracing::debug!(event = label.event, attempt, error = %e, "webhook delivery failed")
                }
            }
        }
        tracing::warn!(
            event = label.event,
            "webhook dropped after {} attempts",
            self.retries + 1
        );
        self.metrics
            .webhooks_dropped
            .get_or_create(&ReasonLabel { reason: "failed" })
            .inc();
    }

    fn headers(&self, queued: &Queued) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = Vec::with_capacity(3);
        match &self.signing {
            Signing::Herald { secret } => {
                let signature = signature(secret, &queued.body);
                if let Ok(value) = HeaderValue::from_str(&signature) {
                    headers.push((HeaderName::from_static(SIGNATURE_HEADER), value));
                }
                headers.push((
                    HeaderName::from_static(TIMESTAMP_HEADER),
                    HeaderValue::from(queued.time_secs),
                ));
                headers.push((
                    HeaderName::from_static(EVENT_HEADER),
                    HeaderValue::from_static(queued.name),
                ));
            }
            Signing::Pusher { key, secret } => {
                let signature = herald_pusher::webhook::signature(secret, &queued.body);
                for (name, value) in [
                    (herald_pusher::webhook::KEY_HEADER, key.as_str()),
                    (herald_pusher::webhook::SIGNATURE_HEADER, signature.as_str()),
                ] {
                    if let (Ok(name), Ok(value)) = (
                        HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()),
                        HeaderValue::from_str(value),
                    ) {
                        headers.push((name, value));
                    }
                }
            }
        }
        headers
    }
}
