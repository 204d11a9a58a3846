//! `[pusher]`: apps served through the Pusher Channels HTTP API (docs/pusher.md).

use super::error::{field, positive, ConfigError};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PusherConfig {
    /// The apps; none turns the Pusher endpoints off.
    pub apps: Vec<PusherApp>,
    /// Largest `data` of one event, in bytes (Pusher's own limit is 10 KiB).
    pub max_event_bytes: usize,
    /// Signed requests whose `auth_timestamp` is further than this from the server's clock are
    /// refused (Pusher: 600 s).
    #[serde(with = "humantime_serde")]
    pub timestamp_window: Duration,
    /// Told to WebSocket clients in `pusher:connection_established`: a client pings after this
    /// long without a message, and the server pings a client silent for this long, closing it
    /// (4201) when no answer comes within `client.pong_timeout`.
    #[serde(with = "humantime_serde")]
    pub activity_timeout: Duration,
    /// Client events one connection may send per second (Pusher: 10); the excess is refused
    /// with a `pusher:error` 4301.
    pub client_event_rate: u32,
}

impl Default for PusherConfig {
    fn default() -> Self {
        PusherConfig {
            apps: Vec::new(),
            max_event_bytes: 10 * 1024,
            timestamp_window: Duration::from_secs(600),
            activity_timeout: Duration::from_secs(120),
            client_event_rate: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PusherApp {
    /// The app id in `/apps/<id>/…` (Laravel: `PUSHER_APP_ID`).
    pub id: String,
    /// The public key clients and signed requests name (`PUSHER_APP_KEY`).
    pub key: String,
    /// Signs and verifies requests (`PUSHER_APP_SECRET`).
    pub secret: String,
    /// The Herald namespace the app's channels live in: Pusher channel `orders` is Herald
    /// channel `<namespace>:orders`; empty puts them outside any namespace.
    pub namespace: String,
    /// Whether WebSocket clients may send client events (`client-*`) on private and presence
    /// channels.
    pub client_events: bool,
    /// WebSocket connections of this app on one node (0: only the node's limits).
    pub max_connections: usize,
    /// Distinct users on one presence channel (Pusher: 100); a subscriber past it is refused.
    pub max_presence_members: usize,
    /// Where Pusher webhooks of this app are POSTed, signed with its key and secret; empty: none.
    /// Queue, retries and timeouts are `[webhooks]`'s.
    pub webhook_url: String,
    /// Events sent, among [`PUSHER_WEBHOOK_EVENTS`].
    pub webhook_events: Vec<String>,
}

/// The Pusher webhook events Herald sends.
pub const PUSHER_WEBHOOK_EVENTS: [&str; 6] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
];

impl Default for PusherApp {
    fn default() -> Self {
        PusherApp {
            id: String::new(),
            key: String::new(),
            secret: String::new(),
            namespace: String::new(),
            client_events: false,
            max_connections: 0,
            max_presence_members: 100,
            webhook_url: String::new(),
            // Client events can be many: sent only when asked for, as Pusher does.
            webhook_events: PUSHER_WEBHOOK_EVENTS
                .iter()
                .filter(|e| **e != "client_event")
                .map(|e| e.to_string())
                .collect(),
        }
    }
}

impl PusherApp {
    /// The Herald channel of this app's Pusher channel `name`.
    pub fn herald_channel(&self, name: &str) -> String {
        if self.namespace.is_empty() {
            name.to_string()
        } else {
            format!("{}:{name}", self.namespace)
        }
    }

    /// The Pusher name of a Herald channel, when it is one of this app's.
    pub fn pusher_channel<'a>(&self, herald: &'a str) -> Option<&'a str> {
        if self.namespace.is_empty() {
            // Outside any namespace: Herald channels with a namespace belong to someone else.
            return (!herald.contains(':')).then_some(herald);
        }
        herald
            .strip_prefix(self.namespace.as_str())
            .and_then(|rest| rest.strip_prefix(':'))
    }
}

impl PusherConfig {
    pub fn enabled(&self) -> bool {
        !self.apps.is_empty()
    }

    pub fn app_by_id(&self, id: &str) -> Option<&PusherApp> {
        self.apps.iter().find(|app| app.id == id)
    }

    pub fn app_by_key(&self, key: &str) -> Option<&PusherApp> {
        self.apps.iter().find(|app| app.key == key)
    }

    /// Checks the section; `namespaces` are the names `[[channel.namespaces]]` defines.
    pub(super) fn validate(&self, namespaces: &HashSet<&str>) -> Result<(), ConfigError> {
        if self.max_event_bytes == 0 {
            return Err(positive("pusher.max_event_bytes"));
        }
        if self.timestamp_window.is_zero() {
            return Err(positive("pusher.timestamp_window"));
        }
        if self.activity_timeout < Duration::from_secs(1) {
            return Err(field("pusher.activity_timeout", "must be at least 1s"));
        }
        if self.client_event_rate == 0 {
            return Err(positive("pusher.client_event_rate"));
        }
        let (mut ids, mut keys) = (HashSet::new(), HashSet::new());
        for (i, app) in self.apps.iter().enumerate() {
            let name = |f: &str| format!("pusher.apps[{i}].{f}");
            for (f, value) in [("id", &app.id), ("key", &app.key), ("secret", &app.secret)] {
                if value.is_empty() {
                    return Err(field(name(f), "must be set"));
                }
            }
            // Ids and keys are read from paths and query strings: keep them to URL-safe words.
            for (f, value) in [("id", &app.id), ("key", &app.key)] {
                if !value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    return Err(field(
                        name(f),
                        format!("{value:?} may hold only letters, digits, '-', '_' and '.'"),
                    ));
                }
            }
            if !app.webhook_url.is_empty() {
                super::proxy::parse_http_url(&app.webhook_url)
                    .map_err(|m| field(name("webhook_url"), m))?;
            }
            for (j, event) in app.webhook_events.iter().enumerate() {
                if !PUSHER_WEBHOOK_EVENTS.contains(&event.as_str()) {
                    return Err(field(
                        name(&format!("webhook_events[{j}]")),
                        format!(
                            "{event:?} is not one of {}",
                            PUSHER_WEBHOOK_EVENTS.join(", ")
                        ),
                    ));
                }
            }
            if app.max_presence_members == 0 {
                return Err(positive(name("max_presence_members")));
            }
            if !ids.insert(app.id.as_str()) {
                return Err(field(name("id"), format!("{:?} is used twice", app.id)));
            }
            if !keys.insert(app.key.as_str()) {
                return Err(field(name("key"), format!("{:?} is used twice", app.key)));
            }
            if !app.namespace.is_empty() && !namespaces.contains(app.namespace.as_str()) {
                return Err(field(
                    name("namespace"),
                    format!(
                        "{:?} is not one of [[channel.namespaces]]: define it there (its options apply to the app's channels)",
                        app.namespace
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::PusherApp;
    use crate::config::load::tests::load_str;

    const APP: &str = "[[pusher.apps]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s\"\n";

    #[test]
    fn apps_are_validated_naming_the_field() {
        let e = load_str("[[pusher.apps]]\nid = \"1\"\nkey = \"k\"\n", &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("pusher.apps[0].secret"), "{e}");
        let e = load_str(&format!("{APP}{APP}"), &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("pusher.apps[1].id"), "{e}");
        let e = load_str(&format!("{APP}namespace = \"shop\"\n"), &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("pusher.apps[0].namespace"), "{e}");
        let e = load_str(
            "[[pusher.apps]]\nid = \"a/b\"\nkey = \"k\"\nsecret = \"s\"\n",
            &[],
            &[],
        )
        .unwrap_err();
        assert_eq!(e.field(), Some("pusher.apps[0].id"), "{e}");
        let config = load_str(
            &format!("[[channel.namespaces]]\nname = \"shop\"\n\n{APP}namespace = \"shop\"\n"),
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(config.pusher.apps[0].namespace, "shop");
    }

    #[test]
    fn websocket_and_webhook_options_are_validated_naming_the_field() {
        for (toml, field) in [
            (
                format!("{APP}webhook_url = \"ftp://x\"\n"),
                "pusher.apps[0].webhook_url",
            ),
            (
                format!("{APP}webhook_url = \"http://127.0.0.1:9/h\"\nwebhook_events = [\"member_added\", \"join\"]\n"),
                "pusher.apps[0].webhook_events[1]",
            ),
            (
                format!("{APP}max_presence_members = 0\n"),
                "pusher.apps[0].max_presence_members",
            ),
            (
                "[pusher]\nactivity_timeout = \"100ms\"\n".to_string(),
                "pusher.activity_timeout",
            ),
            (
                "[pusher]\nclient_event_rate = 0\n".to_string(),
                "pusher.client_event_rate",
            ),
        ] {
            let e = load_str(&toml, &[], &[]).unwrap_err();
            assert_eq!(e.field(), Some(field), "{e}");
        }
        let config = load_str(&format!("{APP}client_events = true\n"), &[], &[]).unwrap();
        let app = &config.pusher.apps[0];
        assert!(app.client_events);
        assert_eq!((app.max_connections, app.max_presence_members), (0, 100));
        assert!(!app.webhook_events.iter().any(|e| e == "client_event"));
        assert_eq!(app.webhook_events.len(), 5);
    }

    #[test]
    fn channels_map_into_the_namespace_and_back() {
        let app = PusherApp {
            namespace: "shop".into(),
            ..Default::default()
        };
        assert_eq!(app.herald_channel("presence-room"), "shop:presence-room");
        assert_eq!(
            app.pusher_channel("shop:presence-room"),
            Some("presence-room")
        );
        assert_eq!(app.pusher_channel("shopping:x"), None);
        assert_eq!(app.pusher_channel("other:x"), None);
        let bare = PusherApp::default();
        assert_eq!(bare.herald_channel("orders"), "orders");
        assert_eq!(bare.pusher_channel("orders"), Some("orders"));
        assert_eq!(bare.pusher_channel("shop:orders"), None);
    }
}
