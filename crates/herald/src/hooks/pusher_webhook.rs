//! Pusher webhooks: what Pusher tells an app's endpoint (channel occupied and vacated, members
//! added and removed, client events, cache misses), signed with the app's key and secret
//! (`X-Pusher-Key`, `X-Pusher-Signature`), from the same bounded, retried queue as Herald's own
//! webhooks: one queue and one delivery task per app with a `webhook_url`, sized by `[webhooks]`.
//!
//! Channel events are this node's (its first subscriber, its last), as Herald's own channel
//! webhooks are; member events are the cluster's (from the presence store).

use super::http::HttpClient;
use super::webhook::{enqueue, Queued, Signing, WebhookWorker};
use crate::config::{Config, PusherApp};
use crate::core::metrics::Metrics;
use bytes::Bytes;
use herald_pusher::channel::ChannelName;
use herald_pusher::webhook::{WebhookBody, WebhookEvent};
use std::sync::Arc;
use tokio::sync::mpsc;

/// One app's webhooks.
struct AppWebhooks {
    app: PusherApp,
    tx: mpsc::Sender<Queued>,
}

impl AppWebhooks {
    fn wants(&self, event: &str) -> bool {
        self.app.webhook_events.iter().any(|e| e == event)
    }

    /// The app's Pusher name of a Herald channel, if the channel is one it can name.
    fn channel<'a>(&self, herald: &'a str) -> Option<&'a str> {
        self.app
            .pusher_channel(herald)
            .filter(|name| ChannelName::parse(name).is_ok())
    }
}

pub struct PusherWebhooks {
    apps: Vec<AppWebhooks>,
    metrics: Arc<Metrics>,
}

impl PusherWebhooks {
    /// The senders, and the delivery tasks for the server to run.
    pub fn new(
        config: &Config,
        client: &HttpClient,
        metrics: &Arc<Metrics>,
    ) -> (PusherWebhooks, Vec<WebhookWorker>) {
        let mut apps = Vec::new();
        let mut workers = Vec::new();
        for app in &config.pusher.apps {
            let Ok(url) = crate::config::parse_http_url(&app.webhook_url) else {
                continue;
            };
            let signing = Signing::Pusher {
                key: app.key.clone(),
                secret: app.secret.clone(),
            };
            let (tx, worker) = WebhookWorker::new(
                &config.webhooks,
                client.clone(),
                url,
                signing,
                metrics.clone(),
            );
            apps.push(AppWebhooks {
                app: app.clone(),
                tx,
            });
            workers.push(worker);
        }
        let webhooks = PusherWebhooks {
            apps,
            metrics: metrics.clone(),
        };
        (webhooks, workers)
    }

    /// Whether any app wants to hear of members of this Herald channel (the presence store is
    /// read only then).
    pub fn wants_members(&self, herald: &str) -> bool {
        self.apps.iter().any(|a| {
            (a.wants("member_added") || a.wants("member_removed")) && a.channel(herald).is_some()
        })
    }

    /// The channel got its first subscriber on this node (`occupied`), or lost its last.
    pub fn channel(&self, herald: &str, occupied: bool) {
        let name = if occupied {
            "channel_occupied"
        } else {
            "channel_vacated"
        };
        self.send_to_all(herald, name, |channel| {
            if occupied {
                WebhookEvent::ChannelOccupied { channel }
            } else {
                WebhookEvent::ChannelVacated { channel }
            }
        });
    }

    /// A user's first connection joined a presence channel (`added`), or its last one left.
    pub fn member(&self, herald: &str, user_id: &str, added: bool) {
        let name = if added {
            "member_added"
        } else {
            "member_removed"
        };
        self.send_to_all(herald, name, |channel| {
            let user_id = user_id.to_string();
            if added {
                WebhookEvent::MemberAdded { channel, user_id }
            } else {
                WebhookEvent::MemberRemoved { channel, user_id }
            }
        });
    }

    /// A client event a connection of app `app_id` published.
    pub fn client_event(
        &self,
        app_id: &str,
        herald: &str,
        event: &str,
        data: &str,
        socket_id: &str,
        user_id: Option<&str>,
    ) {
        self.send_to_app(app_id, herald, "client_event", |channel| {
            WebhookEvent::ClientEvent {
                channel,
                event: event.to_string(),
                data: data.to_string(),
                socket_id: socket_id.to_string(),
                user_id: user_id.map(str::to_string),
            }
        });
    }

    /// A connection of app `app_id` subscribed to a cache channel that held nothing.
    pub fn cache_miss(&self, app_id: &str, herald: &str) {
        self.send_to_app(app_id, herald, "cache_miss", |channel| {
            WebhookEvent::CacheMiss { channel }
        });
    }

    /// To every app that can name the channel: apps sharing a namespace all hear of it.
    fn send_to_all(
        &self,
        herald: &str,
        name: &'static str,
        event: impl Fn(String) -> WebhookEvent,
    ) {
        for app in &self.apps {
            if let Some(channel) = app.channel(herald).filter(|_| app.wants(name)) {
                self.send(app, name, event(channel.to_string()));
            }
        }
    }

    fn send_to_app(
        &self,
        app_id: &str,
        herald: &str,
        name: &'static str,
        event: impl FnOnce(String) -> WebhookEvent,
    ) {
        let Some(app) = self.apps.iter().find(|a| a.app.id == app_id) else {
            return;
        };
        if let Some(channel) = app.channel(herald).filter(|_| app.wants(name)) {
            self.send(app, name, event(channel.to_string()));
        }
    }

    fn send(&self, app: &AppWebhooks, name: &'static str, event: WebhookEvent) {
        let time_ms = crate::core::clock::unix_millis();
        let body = WebhookBody {
            time_ms: u64::try_from(time_ms).unwrap_or(0),
            events: vec![event],
        };
        let Ok(body) = serde_json::to_vec(&body) else {
            return;
        };
        let queued = Queued {
            name,
            time_secs: time_ms / 1000,
            body: Bytes::from(body),
        };
        enqueue(&app.tx, &self.metrics, queued);
    }
}
