//! One typed configuration: TOML file, then `HERALD_…` environment variables, then `--set` flags.
//!
//! Each section lives in its own file with its defaults and its checks; this module holds the
//! whole (`Config`) and the checks that span sections. Every error names the field it is about
//! and where the value came from (`herald.toml:12: client.ping_interval: …`), so a user can fix
//! a file without reading code.

pub mod sample;
pub mod template;

mod admin;
mod api;
mod broker;
mod channel;
mod client;
mod devices;
mod error;
mod feeds;
mod http;
mod load;
mod locate;
mod log;
mod map;
mod namespace;
mod node;
mod proxy;
mod pusher;
mod token;
mod webhooks;
mod words;

pub use admin::AdminConfig;
pub use api::ApiConfig;
pub use broker::{redis_url, BrokerConfig, BrokerKind};
pub use channel::{ChannelConfig, DEFAULT_MAX_PUBLICATION_BYTES, DEFAULT_MAX_STREAMS};
pub use client::ClientConfig;
pub use devices::{DeviceListenConfig, DevicesConfig, FsyncSetting, StoreSetting};
pub use error::{ConfigError, Origin};
pub use feeds::{FeedConfig, FeedKind, FeedPayload};
pub use http::HttpConfig;
pub use load::ENV_PREFIX;
pub use log::{LogConfig, LogFormat};
pub use map::MapConfig;
pub use namespace::NamespaceOptions;
pub use node::NodeConfig;
pub use proxy::{parse_http_url, ProxyConfig};
pub use pusher::{PusherApp, PusherConfig, PUSHER_WEBHOOK_EVENTS};
pub use token::TokenConfig;
pub use webhooks::{WebhooksConfig, WEBHOOK_EVENTS};

use error::field;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::SocketAddr;

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub client: ClientConfig,
    pub api: ApiConfig,
    pub channel: ChannelConfig,
    pub devices: DevicesConfig,
    /// Upstream WebSocket feeds (`[[feeds]]`), see docs/feeds.md.
    pub feeds: Vec<FeedConfig>,
    pub map: MapConfig,
    pub admin: AdminConfig,
    pub proxy: ProxyConfig,
    pub webhooks: WebhooksConfig,
    /// Pusher Channels apps (`[[pusher.apps]]`), see docs/pusher.md.
    pub pusher: PusherConfig,
    pub broker: BrokerConfig,
}

impl Config {
    /// The largest publication accepted (`channel.max_publication_bytes`, or its default: 64 KiB,
    /// at most a quarter of `client.max_outbox_bytes`).
    pub fn max_publication_bytes(&self) -> usize {
        self.channel
            .max_publication_bytes
            .unwrap_or_else(|| DEFAULT_MAX_PUBLICATION_BYTES.min(self.client.max_outbox_bytes / 4))
            .max(1)
    }

    /// Checks what types alone cannot: each section, then what one section needs of another.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.http.validate()?;
        self.log.validate()?;
        self.client.validate()?;
        self.channel.validate(self.client.max_outbox_bytes)?;
        for (prefix, ns) in self.channel.all_namespaces() {
            self.broker.validate_namespace(&prefix, ns)?;
        }
        self.devices.validate()?;
        self.broker.validate()?;
        self.map.validate()?;
        self.api.validate()?;
        self.admin.validate()?;
        self.proxy.validate()?;
        self.check_origin_policy()?;
        self.webhooks.validate()?;
        let namespaces = self
            .channel
            .namespaces
            .iter()
            .map(|ns| ns.name.as_str())
            .collect();
        self.pusher.validate(&namespaces)?;
        self.check_namespace_hooks()?;
        self.check_feeds()
    }

    /// Forwarding the visitor's credentials to the backend needs an `Origin` policy (see
    /// `ProxyConfig::check_origin_policy`). `Server::start` checks it too.
    pub fn check_origin_policy(&self) -> Result<(), ConfigError> {
        self.proxy.check_origin_policy(&self.http.allowed_origins)
    }

    /// Namespaces that ask the backend need its endpoint.
    fn check_namespace_hooks(&self) -> Result<(), ConfigError> {
        for (prefix, ns) in self.channel.all_namespaces() {
            if ns.proxy_subscribe && self.proxy.subscribe_endpoint.is_empty() {
                return Err(field(
                    format!("{prefix}.proxy_subscribe"),
                    "needs proxy.subscribe_endpoint",
                ));
            }
            if ns.proxy_publish && self.proxy.publish_endpoint.is_empty() {
                return Err(field(
                    format!("{prefix}.proxy_publish"),
                    "needs proxy.publish_endpoint",
                ));
            }
        }
        Ok(())
    }

    fn check_feeds(&self) -> Result<(), ConfigError> {
        if !self.feeds.is_empty()
            && self.broker.kind == BrokerKind::Nats
            && !self.broker.nats_jetstream
        {
            // One consumer per feed needs a lease every node sees; on NATS it lives in a
            // JetStream KV bucket.
            return Err(field(
                "feeds",
                "feeds need a cluster-wide lease, which the nats broker keeps in JetStream; set broker.nats_jetstream = true",
            ));
        }
        let mut names = HashSet::new();
        for (i, feed) in self.feeds.iter().enumerate() {
            let prefix = format!("feeds[{i}]");
            feed.validate(&prefix)?;
            if !names.insert(feed.name.as_str()) {
                return Err(field(
                    format!("{prefix}.name"),
                    format!("feed {:?} defined twice", feed.name),
                ));
            }
        }
        Ok(())
    }

    /// Public listener address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.http.listen_addr()
    }

    /// Internal listener address, when configured.
    pub fn internal_addr(&self) -> Option<SocketAddr> {
        self.http.internal_addr()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load::tests::load_str;

    #[test]
    fn namespaces_that_ask_the_backend_need_its_endpoint() {
        let e = load_str(
            "[channel.without_namespace]\nproxy_publish = true\n",
            &[],
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e.field(),
            Some("channel.without_namespace.proxy_publish"),
            "{e}"
        );
        let e = load_str(
            "[[channel.namespaces]]\nname = \"a\"\nproxy_subscribe = true\n",
            &[],
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e.field(),
            Some("channel.namespaces[0].proxy_subscribe"),
            "{e}"
        );
    }
}
