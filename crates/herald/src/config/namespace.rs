//! Per-namespace options (`[channel.without_namespace]`, `[[channel.namespaces]]`), named as in
//! Centrifugo so existing configs translate directly.

use super::error::{field, positive, ConfigError};
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NamespaceOptions {
    /// Namespace name (only in `channel.namespaces`).
    pub name: String,
    /// Keep presence (who is subscribed).
    pub presence: bool,
    /// Send join/leave pushes to subscribers that ask for them.
    pub join_leave: bool,
    /// Send join/leave pushes to every subscriber.
    pub force_push_join_leave: bool,
    /// Publications kept per channel (0: no history).
    pub history_size: usize,
    /// How long publications stay in history.
    #[serde(with = "humantime_serde")]
    pub history_ttl: Duration,
    /// Recover missed publications for every subscriber, even if it did not ask.
    pub force_recovery: bool,
    /// Clients may subscribe without a subscription token.
    pub allow_subscribe_for_client: bool,
    /// Anonymous clients may subscribe without a subscription token.
    pub allow_subscribe_for_anonymous: bool,
    pub allow_publish_for_subscriber: bool,
    pub allow_publish_for_client: bool,
    pub allow_publish_for_anonymous: bool,
    pub allow_presence_for_subscriber: bool,
    pub allow_presence_for_client: bool,
    pub allow_presence_for_anonymous: bool,
    pub allow_history_for_subscriber: bool,
    pub allow_history_for_client: bool,
    pub allow_history_for_anonymous: bool,
    /// Channels `name#user1,user2` may be subscribed to by the listed users only.
    pub allow_user_limited_channels: bool,
    /// Deliver a channel's publications together once per window (one frame per subscriber per
    /// window) instead of one by one. 0s delivers at once.
    #[serde(with = "humantime_serde")]
    pub batch_window: Duration,
    /// At most this many deliveries (frames) per second per subscriber of a channel; excess waits
    /// for the next slot, merged (or conflated when a key is set). 0 is unlimited.
    pub max_rate: u32,
    /// Latest-value conflation: a JSON pointer into the publication data (`/symbol`) or a
    /// publication tag (`tag:symbol`) naming the key. Within a window only the latest value per key
    /// is delivered; subscribers get the latest value of every key on subscribe.
    pub conflation_key: String,
    /// Most keys remembered per conflated channel (least recently updated are forgotten first).
    pub conflation_max_keys: usize,
    /// Most bytes buffered per channel within one window; a fuller window is delivered early.
    pub window_max_bytes: usize,
    /// Subscribes without a subscription token are decided by the backend (`proxy.subscribe_endpoint`).
    pub proxy_subscribe: bool,
    /// Client publishes are checked (and may be rewritten) by the backend (`proxy.publish_endpoint`).
    pub proxy_publish: bool,
    /// Most publications one client `history` call returns; a larger `limit`, or -1 (all), is
    /// capped to it. The server API is not limited.
    pub client_history_max_limit: usize,
    /// Most publications one subscribe recovery replays (also at most `client.max_outbox_bytes`
    /// of their data); a recovery that needs more replays the oldest and answers
    /// `recovered: false`, as Centrifugo's `client.recovery_max_publication_limit` does.
    pub recovery_max_publications: usize,
    /// Delta types a subscriber may ask for (`delta` in its subscribe request): `["fossil"]` or
    /// none. Deltas go only where publications carry offsets (history on), as in Centrifugo.
    pub allowed_delta_types: Vec<String>,
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        NamespaceOptions {
            name: String::new(),
            presence: false,
            join_leave: false,
            force_push_join_leave: false,
            history_size: 0,
            history_ttl: Duration::ZERO,
            force_recovery: false,
            allow_subscribe_for_client: false,
            allow_subscribe_for_anonymous: false,
            allow_publish_for_subscriber: false,
            allow_publish_for_client: false,
            allow_publish_for_anonymous: false,
            allow_presence_for_subscriber: false,
            allow_presence_for_client: false,
            allow_presence_for_anonymous: false,
            allow_history_for_subscriber: false,
            allow_history_for_client: false,
            allow_history_for_anonymous: false,
            allow_user_limited_channels: false,
            batch_window: Duration::ZERO,
            max_rate: 0,
            conflation_key: String::new(),
            conflation_max_keys: 100_000,
            window_max_bytes: 256 << 10,
            proxy_subscribe: false,
            proxy_publish: false,
            client_history_max_limit: 300,
            recovery_max_publications: 300,
            allowed_delta_types: Vec::new(),
        }
    }
}

impl NamespaceOptions {
    pub fn history_enabled(&self) -> bool {
        self.history_size > 0 && !self.history_ttl.is_zero()
    }

    /// The interval between two deliveries of a channel: the batch window, stretched to respect
    /// `max_rate`. Zero: publications are delivered as they come.
    pub fn delivery_interval(&self) -> Duration {
        let rate_interval = if self.max_rate > 0 {
            Duration::from_secs_f64(1.0 / f64::from(self.max_rate))
        } else {
            Duration::ZERO
        };
        self.batch_window.max(rate_interval)
    }

    pub fn conflated(&self) -> bool {
        !self.conflation_key.is_empty()
    }

    /// Whether a subscriber asking for `delta` gets it: the type is allowed, and publications
    /// reach subscribers one by one (a window or conflation merges and drops them, so a
    /// subscriber's previous publication is not the channel's).
    pub fn delta_allowed(&self, delta: &str) -> bool {
        self.allowed_delta_types.iter().any(|t| t == delta)
            && self.delivery_interval().is_zero()
            && !self.conflated()
    }

    /// Checks the options on their own; `prefix` names the namespace in the error
    /// (`channel.namespaces[0]`).
    pub(super) fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let f = |name: &str| format!("{prefix}.{name}");
        if self.history_size > 0 && self.history_ttl.is_zero() {
            return Err(field(f("history_ttl"), "must be set when history_size > 0"));
        }
        if self.history_size > 1_000_000 {
            return Err(field(f("history_size"), "at most 1000000"));
        }
        if self.force_recovery && !self.history_enabled() {
            return Err(field(
                f("force_recovery"),
                "needs history_size and history_ttl",
            ));
        }
        if self.conflated() {
            let key = &self.conflation_key;
            let valid =
                key.starts_with('/') || key.strip_prefix("tag:").is_some_and(|t| !t.is_empty());
            if !valid {
                return Err(field(
                    f("conflation_key"),
                    format!(
                        "{key:?} is neither a JSON pointer (\"/id\") nor a tag (\"tag:symbol\")"
                    ),
                ));
            }
            if !self.history_enabled() {
                return Err(field(
                    f("conflation_key"),
                    "needs history_size and history_ttl (latest values and recovery live in the stream)",
                ));
            }
            if self.conflation_max_keys == 0 {
                return Err(positive(f("conflation_max_keys")));
            }
        }
        if self.client_history_max_limit == 0 {
            return Err(field(
                f("client_history_max_limit"),
                "must be greater than zero (allow_history_* = false turns client history off)",
            ));
        }
        if self.recovery_max_publications == 0 {
            return Err(positive(f("recovery_max_publications")));
        }
        if let Some(unknown) = self
            .allowed_delta_types
            .iter()
            .find(|t| t.as_str() != "fossil")
        {
            return Err(field(
                f("allowed_delta_types"),
                format!("unknown delta type {unknown:?} (known: \"fossil\")"),
            ));
        }
        if self.window_max_bytes == 0 {
            return Err(positive(f("window_max_bytes")));
        }
        if self.batch_window > Duration::from_secs(60) {
            return Err(field(f("batch_window"), "at most 60s"));
        }
        Ok(())
    }

    /// A window is delivered to every subscriber at once, so it must fit an outbox with room to
    /// spare.
    pub(super) fn validate_window(
        &self,
        prefix: &str,
        max_outbox_bytes: usize,
    ) -> Result<(), ConfigError> {
        if !self.delivery_interval().is_zero() && self.window_max_bytes > max_outbox_bytes / 2 {
            return Err(field(
                format!("{prefix}.window_max_bytes"),
                format!(
                    "{} is more than half of client.max_outbox_bytes ({max_outbox_bytes}): a full window would overflow every subscriber",
                    self.window_max_bytes
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load::tests::load_str;

    #[test]
    fn delta_types_are_checked_and_negotiated_only_where_publications_go_one_by_one() {
        let e = load_str(
            "[[channel.namespaces]]\nname = \"a\"\nallowed_delta_types = [\"xdelta\"]\n",
            &[],
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e.field(),
            Some("channel.namespaces[0].allowed_delta_types"),
            "{e}"
        );
        let c = load_str(
            "[channel.without_namespace]\nallowed_delta_types = [\"fossil\"]\n",
            &[],
            &[],
        )
        .unwrap();
        let mut ns = c.channel.without_namespace;
        assert!(ns.delta_allowed("fossil"));
        assert!(!ns.delta_allowed("xdelta"));
        ns.max_rate = 10;
        assert!(
            !ns.delta_allowed("fossil"),
            "a windowed channel merges publications"
        );
    }
}
