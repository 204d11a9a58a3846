//! `[channel]`: channel limits and the namespaces.

use super::error::{field, positive, ConfigError};
use super::namespace::NamespaceOptions;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::time::Duration;

/// Default of `channel.max_streams`.
pub const DEFAULT_MAX_STREAMS: usize = 1_000_000;

/// Default of `channel.max_publication_bytes` (with the default 1 MiB outbox).
pub const DEFAULT_MAX_PUBLICATION_BYTES: usize = 65_536;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelConfig {
    /// Longest channel name accepted.
    pub max_length: usize,
    /// How long a channel's stream position (epoch, offset) outlives its last publication.
    #[serde(with = "humantime_serde")]
    pub history_meta_ttl: Duration,
    /// Most history streams one node keeps in memory (memory broker). Only publications create
    /// streams; at the limit the node forgets streams with nothing left to recover first, then the
    /// least recently published to (their clients recover with `recovered: false`).
    pub max_streams: usize,
    /// Largest publication accepted from any source (API, client, feeds, devices), in bytes of
    /// data plus tags and client info. Larger ones are refused (error 106 naming this limit;
    /// feeds count a drop). At most a quarter of `client.max_outbox_bytes`, so one publication
    /// cannot overflow a subscriber's outbox. Unset: 64 KiB, or a quarter of
    /// `client.max_outbox_bytes` when that is smaller ([`super::Config::max_publication_bytes`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_publication_bytes: Option<usize>,
    /// Options of channels without a `ns:` prefix.
    pub without_namespace: NamespaceOptions,
    /// Named namespaces: a channel `chat:room1` uses the namespace named `chat`.
    pub namespaces: Vec<NamespaceOptions>,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            max_length: 255,
            history_meta_ttl: Duration::from_secs(30 * 24 * 3600),
            max_streams: DEFAULT_MAX_STREAMS,
            max_publication_bytes: None,
            without_namespace: NamespaceOptions::default(),
            namespaces: Vec::new(),
        }
    }
}

/// Where errors about `channel.without_namespace` point.
const WITHOUT_NAMESPACE: &str = "channel.without_namespace";

impl ChannelConfig {
    /// Every namespace with the path errors name it by: `without_namespace` first.
    pub(super) fn all_namespaces(&self) -> impl Iterator<Item = (String, &NamespaceOptions)> {
        std::iter::once((WITHOUT_NAMESPACE.to_string(), &self.without_namespace)).chain(
            self.namespaces
                .iter()
                .enumerate()
                .map(|(i, ns)| (format!("channel.namespaces[{i}]"), ns)),
        )
    }

    /// Checks the section; `max_outbox_bytes` bounds what one publication or window may hold.
    pub(super) fn validate(&self, max_outbox_bytes: usize) -> Result<(), ConfigError> {
        for (name, value) in [
            ("channel.max_length", self.max_length),
            ("channel.max_streams", self.max_streams),
            (
                "channel.max_publication_bytes",
                self.max_publication_bytes.unwrap_or(1),
            ),
        ] {
            if value == 0 {
                return Err(positive(name));
            }
        }
        if let Some(max) = self.max_publication_bytes {
            if max > max_outbox_bytes / 4 {
                return Err(field(
                    "channel.max_publication_bytes",
                    format!(
                        "{max} is more than a quarter of client.max_outbox_bytes ({max_outbox_bytes}): a few such publications would close every subscriber as slow"
                    ),
                ));
            }
        }
        if !self.without_namespace.name.is_empty() {
            return Err(field("channel.without_namespace.name", "must be empty"));
        }
        let mut seen = HashSet::new();
        for (i, ns) in self.namespaces.iter().enumerate() {
            let prefix = format!("channel.namespaces[{i}]");
            if !valid_name(&ns.name) {
                return Err(field(
                    format!("{prefix}.name"),
                    format!(
                        "{:?} is not a valid namespace name (letters, digits, _ - .)",
                        ns.name
                    ),
                ));
            }
            if !seen.insert(ns.name.as_str()) {
                return Err(field(
                    format!("{prefix}.name"),
                    format!("namespace {:?} defined twice", ns.name),
                ));
            }
            ns.validate(&prefix)?;
            ns.validate_window(&prefix, max_outbox_bytes)?;
        }
        self.without_namespace.validate(WITHOUT_NAMESPACE)?;
        self.without_namespace
            .validate_window(WITHOUT_NAMESPACE, max_outbox_bytes)
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' || ch == '.')
}

#[cfg(test)]
mod tests {
    use crate::config::load::tests::load_str;

    #[test]
    fn namespaces_are_validated_naming_the_field() {
        let e = load_str("[[channel.namespaces]]\nname = \"bad name\"\n", &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("channel.namespaces[0].name"), "{e}");
        let twice = "[[channel.namespaces]]\nname = \"a\"\n[[channel.namespaces]]\nname = \"a\"\n";
        let e = load_str(twice, &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("channel.namespaces[1].name"), "{e}");
        let e = load_str("[channel.without_namespace]\nhistory_size = 10\n", &[], &[]).unwrap_err();
        assert_eq!(
            e.field(),
            Some("channel.without_namespace.history_ttl"),
            "{e}"
        );
        let e = load_str("[channel]\nmax_publication_bytes = 1000000\n", &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("channel.max_publication_bytes"), "{e}");
        let windowed =
            "[channel.without_namespace]\nbatch_window = \"1s\"\nwindow_max_bytes = 1000000\n";
        let e = load_str(windowed, &[], &[]).unwrap_err();
        assert_eq!(
            e.field(),
            Some("channel.without_namespace.window_max_bytes"),
            "{e}"
        );
    }
}
