//! `[broker]`: how nodes share publications, history, presence and the node registry
//! (docs/scaling.md).

use super::error::{field, positive, ConfigError};
use super::namespace::NamespaceOptions;
use super::words::word_setting;
use serde::{Deserialize, Serialize};
use std::time::Duration;

word_setting! {
    /// `broker.kind`: where the node's publications, history and presence live.
    pub enum BrokerKind {
        /// One node, everything in process.
        Memory = "memory",
        /// Several nodes sharing one Redis.
        Redis = "redis",
        /// Several nodes sharing one Redis Cluster (sharded pub/sub).
        RedisCluster = "redis_cluster",
        /// Several nodes sharing one NATS server or cluster.
        Nats = "nats",
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    pub kind: BrokerKind,
    /// Redis addresses (`redis://[:password@]host:port[/db]` or `host:port`), tried in order when
    /// (re)connecting, so a replica promoted by Sentinel or a proxy can be listed after the primary.
    /// With `kind = "redis_cluster"`: seed nodes of the cluster (any reachable one is enough).
    pub redis_addresses: Vec<String>,
    /// NATS servers (`nats://[user:password@]host:port` or `host:port`); async-nats picks among
    /// them when (re)connecting.
    pub nats_urls: Vec<String>,
    /// Whether the NATS broker uses JetStream (KV buckets for presence and the node registry).
    /// Without it presence cannot be cluster-wide, so namespaces with presence are refused.
    pub nats_jetstream: bool,
    /// JetStream KV bucket of presence entries (`nats_jetstream = true`).
    pub nats_presence_bucket: String,
    /// JetStream KV bucket of the node registry (`nats_jetstream = true`).
    pub nats_nodes_bucket: String,
    /// Prefix of every key and pub/sub channel (Redis) or subject (NATS), so several clusters (or
    /// tests) share one server.
    pub prefix: String,
    /// How long to wait for a TCP connection to Redis.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long one Redis command may take before the broker counts Redis as unreachable.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// A node's presence entries outlive it by at most this long (refreshed every third of it).
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// How often a node writes its registry entry; the entry lives three intervals.
    #[serde(with = "humantime_serde")]
    pub node_announce_interval: Duration,
    /// Longest pause between reconnection attempts (the backoff starts at 50 ms and doubles).
    #[serde(with = "humantime_serde")]
    pub max_reconnect_delay: Duration,
    /// Redis: messages a pub/sub connection queues for the node's reader. A reader that falls
    /// this far behind gives the connection up: the node reconnects and the subscribers of what
    /// it missed recover from history, instead of the queue growing without bound.
    pub max_queued_messages: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            kind: BrokerKind::Memory,
            redis_addresses: vec!["redis://127.0.0.1:6379".into()],
            nats_urls: vec!["nats://127.0.0.1:4222".into()],
            nats_jetstream: true,
            nats_presence_bucket: "herald_presence".into(),
            nats_nodes_bucket: "herald_nodes".into(),
            prefix: "herald".into(),
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            presence_ttl: Duration::from_secs(60),
            node_announce_interval: Duration::from_secs(3),
            max_reconnect_delay: Duration::from_secs(2),
            max_queued_messages: 65_536,
        }
    }
}

impl BrokerConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        match self.kind {
            BrokerKind::Memory => return Ok(()),
            BrokerKind::Redis | BrokerKind::RedisCluster => self.validate_redis()?,
            BrokerKind::Nats => self.validate_nats()?,
        }
        for (name, value) in [
            ("broker.connect_timeout", self.connect_timeout),
            ("broker.command_timeout", self.command_timeout),
            ("broker.node_announce_interval", self.node_announce_interval),
            ("broker.max_reconnect_delay", self.max_reconnect_delay),
        ] {
            if value.is_zero() {
                return Err(positive(name));
            }
        }
        if self.max_queued_messages == 0 {
            return Err(positive("broker.max_queued_messages"));
        }
        if self.presence_ttl < Duration::from_secs(1) {
            return Err(field("broker.presence_ttl", "must be at least 1s"));
        }
        Ok(())
    }

    fn validate_redis(&self) -> Result<(), ConfigError> {
        if self.redis_addresses.is_empty() {
            return Err(field(
                "broker.redis_addresses",
                format!(
                    "must list at least one address when kind = {:?}",
                    self.kind.as_str()
                ),
            ));
        }
        for (i, address) in self.redis_addresses.iter().enumerate() {
            redis::Client::open(redis_url(address).as_str()).map_err(|e| {
                field(
                    format!("broker.redis_addresses[{i}]"),
                    format!("{address:?}: {e}"),
                )
            })?;
        }
        if self.prefix.is_empty() || self.prefix.contains(['{', '}', ' ']) {
            return Err(field(
                "broker.prefix",
                "must be non-empty, without spaces or braces",
            ));
        }
        Ok(())
    }

    fn validate_nats(&self) -> Result<(), ConfigError> {
        if self.nats_urls.is_empty() {
            return Err(field(
                "broker.nats_urls",
                "must list at least one address when kind = \"nats\"",
            ));
        }
        for (i, url) in self.nats_urls.iter().enumerate() {
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| field(format!("broker.nats_urls[{i}]"), format!("{url:?}: {e}")))?;
        }
        // The prefix becomes the first tokens of every subject: tokens must be non-empty and free
        // of wildcards and whitespace.
        if !self.prefix.split('.').all(nats_token) {
            return Err(field(
                "broker.prefix",
                "must be dot-separated non-empty tokens of letters, digits, _ and - when kind = \"nats\"",
            ));
        }
        if self.nats_jetstream {
            // JetStream bucket names: letters, digits, _ and - only.
            for (name, value) in [
                ("broker.nats_presence_bucket", &self.nats_presence_bucket),
                ("broker.nats_nodes_bucket", &self.nats_nodes_bucket),
            ] {
                if !nats_token(value) {
                    return Err(field(
                        name,
                        format!("{value:?}: must be non-empty letters, digits, _ and -"),
                    ));
                }
            }
            if self.nats_presence_bucket == self.nats_nodes_bucket {
                return Err(field(
                    "broker.nats_nodes_bucket",
                    "must differ from broker.nats_presence_bucket",
                ));
            }
        }
        Ok(())
    }

    /// What a namespace needs that this broker cannot give (conflation on NATS, history or
    /// presence on NATS without JetStream); `prefix` names the namespace in the error.
    pub(super) fn validate_namespace(
        &self,
        prefix: &str,
        ns: &NamespaceOptions,
    ) -> Result<(), ConfigError> {
        if self.kind != BrokerKind::Nats {
            return Ok(());
        }
        if ns.conflated() {
            return Err(field(
                format!("{prefix}.conflation_key"),
                "conflation is not supported with broker.kind = \"nats\" (docs/scaling.md); use \"redis\" for conflated channels",
            ));
        }
        if ns.history_size > 0 && !self.nats_jetstream {
            return Err(field(
                format!("{prefix}.history_size"),
                "history on NATS needs broker.nats_jetstream = true (it lives in a JetStream stream)",
            ));
        }
        if ns.presence && !self.nats_jetstream {
            return Err(field(
                format!("{prefix}.presence"),
                "cluster-wide presence needs broker.nats_jetstream = true",
            ));
        }
        Ok(())
    }
}

/// One token of a NATS subject or a JetStream bucket name: letters, digits, `_` and `-`.
fn nats_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `host:port` is accepted as shorthand for `redis://host:port`.
pub fn redis_url(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("redis://{address}")
    }
}

#[cfg(test)]
mod tests {
    use super::BrokerKind;
    use crate::config::load::tests::load_str;

    #[test]
    fn broker_settings_are_validated() {
        let config = load_str("", &[], &[]).unwrap();
        assert_eq!(config.broker.kind, BrokerKind::Memory);
        let err = |sets: &[&str]| load_str("", &[], sets).unwrap_err();
        assert_eq!(err(&["broker.kind=kafka"]).field(), Some("broker.kind"));
        let e = err(&["broker.kind=redis", "broker.prefix=a b"]);
        assert_eq!(e.field(), Some("broker.prefix"), "{e}");
        let text =
            "[broker]\nkind = \"redis\"\nredis_addresses = [\"redis://ok:6379\", \"bad://x\"]\n";
        let e = load_str(text, &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("broker.redis_addresses[1]"), "{e}");
        let text = "[broker]\nkind = \"redis\"\nredis_addresses = []\n";
        let e = load_str(text, &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("broker.redis_addresses"), "{e}");
        let e = err(&["broker.kind=redis", "broker.command_timeout=0s"]);
        assert_eq!(e.field(), Some("broker.command_timeout"), "{e}");
        let ok = load_str("", &[("HERALD_BROKER__KIND", "redis")], &[]).unwrap();
        assert_eq!(ok.broker.kind, BrokerKind::Redis);
        // A Redis Cluster takes seed addresses and the same prefix rules.
        let text = "[broker]\nkind = \"redis_cluster\"\nredis_addresses = []\n";
        let e = load_str(text, &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("broker.redis_addresses"), "{e}");
        assert!(e.to_string().contains("redis_cluster"), "{e}");
        let e = err(&["broker.kind=redis_cluster", "broker.prefix=a{b}"]);
        assert_eq!(e.field(), Some("broker.prefix"), "{e}");
        let ok = load_str("", &[("HERALD_BROKER__KIND", "redis_cluster")], &[]).unwrap();
        assert_eq!(ok.broker.kind, BrokerKind::RedisCluster);
    }

    #[test]
    fn nats_broker_settings_are_validated_naming_the_field() {
        let nats = "[broker]\nkind = \"nats\"\n";
        assert!(load_str(nats, &[], &[]).is_ok());
        for (extra, field) in [
            ("nats_urls = []\n", "broker.nats_urls"),
            (
                "nats_urls = [\"nats://ok:4222\", \"nats://:x:y\"]\n",
                "broker.nats_urls[1]",
            ),
            ("prefix = \"a..b\"\n", "broker.prefix"),
            ("prefix = \"a*\"\n", "broker.prefix"),
            (
                "nats_presence_bucket = \"a.b\"\n",
                "broker.nats_presence_bucket",
            ),
            (
                "nats_nodes_bucket = \"herald_presence\"\n",
                "broker.nats_nodes_bucket",
            ),
        ] {
            let e = load_str(&format!("{nats}{extra}"), &[], &[]).expect_err(extra);
            assert_eq!(e.field(), Some(field), "{extra}: {e}");
        }
        // History lives in a JetStream stream: accepted with JetStream, refused without.
        let history =
            "[[channel.namespaces]]\nname = \"h\"\nhistory_size = 10\nhistory_ttl = \"1m\"\n";
        assert!(load_str(&format!("{nats}{history}"), &[], &[]).is_ok());
        let without_js = format!("{nats}nats_jetstream = false\n{history}");
        let e = load_str(&without_js, &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("channel.namespaces[0].history_size"), "{e}");
        // Latest values per key are not kept on NATS.
        let conflated = format!("{nats}{history}conflation_key = \"/symbol\"\n");
        let e = load_str(&conflated, &[], &[]).unwrap_err();
        assert_eq!(
            e.field(),
            Some("channel.namespaces[0].conflation_key"),
            "{e}"
        );
        let presence =
            format!("{nats}nats_jetstream = false\n[channel.without_namespace]\npresence = true\n");
        let e = load_str(&presence, &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("channel.without_namespace.presence"), "{e}");
    }
}
