//! `[[feeds]]`: upstream feeds, each consumed by exactly one node of the cluster (docs/feeds.md).

use super::error::{field, positive, ConfigError};
use super::template::Template;
use super::words::word_setting;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

word_setting! {
    /// `feeds[i].kind`: what the feed reads.
    pub enum FeedKind {
        /// An upstream WebSocket.
        Websocket = "websocket",
        /// Pattern subscriptions on a Redis server.
        Redis = "redis",
        /// NATS subjects.
        Nats = "nats",
    }
}

word_setting! {
    /// `feeds[i].payload`: how upstream messages are read.
    pub enum FeedPayload {
        /// Messages are JSON (others are skipped).
        Json = "json",
        /// Any text, published as a JSON string.
        Text = "text",
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedConfig {
    /// Unique name: names the lease, the metrics and the logs.
    pub name: String,
    pub kind: FeedKind,
    /// `ws://`/`wss://` URL of the upstream, `redis://host:port/`, or `nats://host:port`.
    pub url: String,
    /// Redis channel patterns to PSUBSCRIBE (`ticker:*`) or NATS subjects (`ticks.>`).
    pub subscribe: Vec<String>,
    pub payload: FeedPayload,
    /// Text messages sent after each connect (subscribe requests).
    pub send: Vec<String>,
    /// JSON pointer to an array whose elements are published one by one ("" = the message).
    pub items: String,
    /// Only messages whose JSON pointers equal these strings are published.
    #[serde(rename = "match")]
    pub matches: BTreeMap<String, String>,
    /// Channel template: text with `{/json/pointer}` parts, e.g. `market:{/s}`.
    pub channel: String,
    /// JSON pointer to the published part ("" = the whole message).
    pub data: String,
    /// Publication tags, as templates (`{ symbol = "{/s}" }` feeds `conflation_key = "tag:symbol"`).
    pub tags: BTreeMap<String, String>,
    /// WebSocket ping sent upstream this often.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// No message from upstream for this long: reconnect.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Reconnect backoff, doubling from min to max, with jitter.
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// Leadership lease; another node takes over within about this long after the leader dies.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Larger upstream messages close the connection (and are counted).
    pub max_message_bytes: usize,
}

impl Default for FeedConfig {
    fn default() -> Self {
        FeedConfig {
            name: String::new(),
            kind: FeedKind::Websocket,
            url: String::new(),
            subscribe: Vec::new(),
            payload: FeedPayload::Json,
            send: Vec::new(),
            items: String::new(),
            matches: BTreeMap::new(),
            channel: String::new(),
            data: String::new(),
            tags: BTreeMap::new(),
            heartbeat_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(2),
            max_message_bytes: 1 << 20,
        }
    }
}

impl FeedConfig {
    /// Checks one feed; `prefix` names it in the error (`feeds[0]`).
    pub(super) fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let f = |name: &str| format!("{prefix}.{name}");
        let name_ok = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !name_ok {
            return Err(field(
                f("name"),
                format!(
                    "{:?} is not a valid feed name (letters, digits, _ - .)",
                    self.name
                ),
            ));
        }
        self.validate_source(&f)?;
        Template::parse(&self.channel).map_err(|e| field(f("channel"), e.to_string()))?;
        for (name, template) in &self.tags {
            Template::parse(template)
                .map_err(|e| field(f(&format!("tags.{name}")), e.to_string()))?;
        }
        for pointer in self.matches.keys() {
            if !pointer.starts_with('/') {
                return Err(field(f("match"), not_a_pointer(pointer)));
            }
        }
        for (name, pointer) in [("items", &self.items), ("data", &self.data)] {
            if !pointer.is_empty() && !pointer.starts_with('/') {
                return Err(field(f(name), not_a_pointer(pointer)));
            }
        }
        for (name, value) in [
            ("heartbeat_interval", self.heartbeat_interval),
            ("idle_timeout", self.idle_timeout),
            ("connect_timeout", self.connect_timeout),
            ("reconnect_min", self.reconnect_min),
            ("reconnect_max", self.reconnect_max),
        ] {
            if value.is_zero() {
                return Err(positive(f(name)));
            }
        }
        if self.reconnect_max < self.reconnect_min {
            return Err(field(
                f("reconnect_max"),
                "must not be less than reconnect_min",
            ));
        }
        if self.lease_ttl < Duration::from_millis(300) {
            return Err(field(f("lease_ttl"), "must be at least 300ms"));
        }
        if self.max_message_bytes < 1024 {
            return Err(field(f("max_message_bytes"), "must be at least 1024"));
        }
        Ok(())
    }

    /// The URL, `subscribe` and `send` fit the kind of feed.
    fn validate_source(&self, f: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        match self.kind {
            FeedKind::Websocket => {
                let uri: Result<http::Uri, _> = self.url.parse();
                let scheme = uri.as_ref().ok().and_then(|u| u.host().and(u.scheme_str()));
                if !matches!(scheme, Some("ws" | "wss")) {
                    return Err(field(
                        f("url"),
                        format!("{:?} is not a ws:// or wss:// URL", self.url),
                    ));
                }
                if !self.subscribe.is_empty() {
                    return Err(field(
                        f("subscribe"),
                        "is for kind = \"redis\" or \"nats\"; a websocket feed subscribes with `send`",
                    ));
                }
                return Ok(());
            }
            FeedKind::Nats => {
                if !self.url.starts_with("nats://") && !self.url.starts_with("tls://") {
                    return Err(field(
                        f("url"),
                        format!("{:?} is not a nats:// or tls:// URL", self.url),
                    ));
                }
                if self.subscribe.is_empty() {
                    return Err(field(f("subscribe"), "needs at least one subject"));
                }
            }
            FeedKind::Redis => {
                redis::Client::open(self.url.as_str())
                    .map_err(|e| field(f("url"), format!("{:?}: {e}", self.url)))?;
                if self.subscribe.is_empty() {
                    return Err(field(f("subscribe"), "needs at least one channel pattern"));
                }
            }
        }
        if !self.send.is_empty() {
            return Err(field(f("send"), "is for kind = \"websocket\""));
        }
        Ok(())
    }
}

fn not_a_pointer(pointer: &str) -> String {
    format!("{pointer:?} is not a JSON pointer (it must start with '/')")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::tests::load_str;

    #[test]
    fn feeds_are_validated_with_their_field_named() {
        let ok = "[[feeds]]\nname = \"t\"\nurl = \"wss://x.example/ws\"\nchannel = \"m:{/s}\"\n";
        let c = load_str(ok, &[], &[]).unwrap();
        assert_eq!(c.feeds[0].lease_ttl, Duration::from_secs(2));
        assert_eq!(c.feeds[0].kind, FeedKind::Websocket);
        assert_eq!(c.feeds[0].payload, FeedPayload::Json);
        for (key, value, field) in [
            ("url", "\"http://x/\"", "feeds[0].url"),
            ("channel", "\"m:{s}\"", "feeds[0].channel"),
            ("tags", "{ k = \"{/a\" }", "feeds[0].tags.k"),
            ("match", "{ e = \"x\" }", "feeds[0].match"),
            ("data", "\"p\"", "feeds[0].data"),
            ("lease_ttl", "\"10ms\"", "feeds[0].lease_ttl"),
            ("reconnect_max", "\"1ms\"", "feeds[0].reconnect_max"),
            ("kind", "\"kafka\"", "feeds[0].kind"),
            ("payload", "\"xml\"", "feeds[0].payload"),
        ] {
            let mut entry: Vec<(&str, &str)> = vec![
                ("name", "\"t\""),
                ("url", "\"ws://x/\""),
                ("channel", "\"c\""),
            ];
            entry.retain(|(k, _)| *k != key);
            entry.push((key, value));
            let body: Vec<String> = entry.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            let text = format!("[[feeds]]\n{}\n", body.join("\n"));
            let err = load_str(&text, &[], &[]).unwrap_err();
            assert_eq!(err.field(), Some(field), "{key}: {err}");
        }
        let nats = "[[feeds]]\nname = \"n\"\nkind = \"nats\"\nurl = \"nats://x:4222\"\nchannel = \"c\"\nsubscribe = [\"a.>\"]\npayload = \"text\"\n";
        let c = load_str(nats, &[], &[]).unwrap();
        assert_eq!(c.feeds[0].kind, FeedKind::Nats);
        assert_eq!(c.feeds[0].payload, FeedPayload::Text);
        let e = load_str(&format!("{nats}send = [\"hi\"]\n"), &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("feeds[0].send"), "{e}");
        let on_nats = format!("{ok}[broker]\nkind = \"nats\"\n");
        assert!(load_str(&on_nats, &[], &[]).is_ok());
        let without_js = format!("{on_nats}nats_jetstream = false\n");
        let err = load_str(&without_js, &[], &[]).unwrap_err();
        assert_eq!(err.field(), Some("feeds"), "{err}");
        let twice = format!("{ok}{ok}");
        let err = load_str(&twice, &[], &[]).unwrap_err();
        assert_eq!(err.field(), Some("feeds[1].name"), "{err}");
    }
}
