//! One typed configuration: TOML file, then `HERALD_…` environment variables, then `--set` flags.
//!
//! Every error names the field it is about (`client.ping_interval: …`), so a user can fix a file
//! without reading code.

pub mod sample;
pub mod template;

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

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
    pub proxy: ProxyConfig,
    pub webhooks: WebhooksConfig,
    pub broker: BrokerConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Name shown by the `info` API; empty means `<hostname>-<pid>`.
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Public listener: WebSocket endpoint, health, and (unless `internal_listen` is set) API and metrics.
    pub listen: String,
    /// When set, the server API and `/metrics` are served only here.
    pub internal_listen: String,
    /// Bind with SO_REUSEPORT so several Herald processes share one port.
    pub reuse_port: bool,
    /// How long a graceful shutdown waits for clients to leave.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Allowed `Origin` values for WebSocket handshakes (`*` or exact origins); empty allows all.
    /// Required (without `*`) when the proxy hooks forward Cookie or Authorization.
    pub allowed_origins: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "0.0.0.0:8000".into(),
            internal_listen: String::new(),
            reuse_port: false,
            shutdown_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter such as `herald=debug`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientConfig {
    /// A connection must complete `connect` within this time.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Interval between server pings.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long the server waits for the pong before closing with `no pong`.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Connections above this are refused at the handshake with HTTP 503.
    pub max_connections: usize,
    /// Largest accepted WebSocket message in bytes (larger: close 1009).
    pub max_message_size: usize,
    /// Most commands one frame may carry.
    pub max_commands_per_frame: usize,
    /// Most channels one connection may subscribe to.
    pub max_channels: usize,
    /// Bytes queued for one connection before it is disconnected as a slow consumer.
    pub max_outbox_bytes: usize,
    /// Items queued for one connection before the same overflow policy applies (many tiny
    /// messages cost more than their bytes).
    pub max_outbox_messages: usize,
    /// Sustained commands per second per connection (token bucket); 0 disables the limit.
    pub command_rate: u32,
    /// Burst of commands allowed above the sustained rate.
    pub command_burst: u32,
    /// Allow `connect` without a token (user is empty).
    pub allow_anonymous: bool,
    /// Most simultaneous connections of one user on this node (more: 3504); 0 is unlimited.
    pub connections_per_user: usize,
    /// New connections per second from one IP address (token bucket; more: HTTP 429); 0 is unlimited.
    pub connection_rate_per_ip: u32,
    /// Burst of new connections from one IP address above the sustained rate.
    pub connection_burst_per_ip: u32,
    /// Bytes queued in all outboxes of this node together; above it the connections with the
    /// largest outboxes are closed as slow first. 0 disables the node-wide budget.
    pub outbox_budget: usize,
    /// Kernel send buffer per client socket in bytes (SO_SNDBUF); 0 keeps the kernel's autotuning
    /// (up to net.ipv4.tcp_wmem's max, 4 MiB by default). A fixed size bounds the kernel memory a
    /// stalled client can hold (Linux accounts twice the value, overhead included).
    pub send_buffer: usize,
    /// A write to a client that makes no progress for this long closes the connection at once
    /// (reset): the client does not read.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Sustained WebSocket pings per second a client may send (token bucket); more closes the
    /// connection with 1008. 0 disables the limit.
    pub max_ping_rate: u32,
    /// Burst of WebSocket pings allowed above the sustained rate.
    pub ping_burst: u32,
    pub token: TokenConfig,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(8),
            max_connections: 100_000,
            max_message_size: 65_536,
            max_commands_per_frame: 100,
            max_channels: 128,
            max_outbox_bytes: 1 << 20,
            max_outbox_messages: 10_000,
            command_rate: 100,
            command_burst: 200,
            allow_anonymous: false,
            connections_per_user: 0,
            connection_rate_per_ip: 0,
            connection_burst_per_ip: 50,
            outbox_budget: 1 << 30,
            send_buffer: 256 << 10,
            write_timeout: Duration::from_secs(10),
            max_ping_rate: 2,
            ping_burst: 10,
            token: TokenConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// Secret for HS256/384/512 tokens.
    pub hmac_secret: String,
    /// Path of a PEM RSA public key (RS256/384/512).
    pub rsa_public_key: String,
    /// Path of a PEM ECDSA public key (ES256/384).
    pub ecdsa_public_key: String,
    /// Path of a JWKS file; the key is chosen by the token's `kid`.
    pub jwks_file: String,
    /// When set, tokens must carry this audience.
    pub audience: String,
    /// When set, tokens must carry this issuer.
    pub issuer: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Key for `X-API-Key` / `Authorization: apikey …`. Empty: the API (and `/metrics`) answers only
    /// requests made on this host: loopback peer and `Host`, no foreign `Origin`, JSON content type.
    pub key: String,
    /// Most commands one `batch` may carry; a larger batch is refused before any command runs.
    pub max_batch_commands: usize,
}

/// Default of `channel.max_publication_bytes` (with the default 1 MiB outbox).
/// Default of `channel.max_streams`.
pub const DEFAULT_MAX_STREAMS: usize = 1_000_000;

pub const DEFAULT_MAX_PUBLICATION_BYTES: usize = 65_536;

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            key: String::new(),
            max_batch_commands: 1000,
        }
    }
}

impl ApiConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.max_batch_commands == 0 {
            return Err(field("api.max_batch_commands", "must be greater than zero"));
        }
        Ok(())
    }
}

/// Headers a browser adds to a cross-site WebSocket handshake by itself (the visitor's credentials).
const AMBIENT_CREDENTIAL_HEADERS: [&str; 2] = ["cookie", "authorization"];

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
    /// `client.max_outbox_bytes` when that is smaller ([`Config::max_publication_bytes`]).
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

/// Calls to the application backend (`[proxy]`), in Centrifugo's HTTP proxy format; see docs/hooks.md.
/// An empty endpoint turns that hook off.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Called for a `connect` without a token: the backend authenticates the client.
    pub connect_endpoint: String,
    /// Called when a connection authenticated by the backend reaches its `expire_at`.
    pub refresh_endpoint: String,
    /// Called for subscribes in namespaces with `proxy_subscribe = true`.
    pub subscribe_endpoint: String,
    /// Called for client publishes in namespaces with `proxy_publish = true`.
    pub publish_endpoint: String,
    /// Called for every client `rpc`.
    pub rpc_endpoint: String,
    /// Called, without waiting for an answer, for every client `send`.
    pub send_endpoint: String,
    /// Whole-call deadline (connect, request, response body).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Most backend calls in flight per node; a call over it fails at once.
    pub max_concurrent: usize,
    /// WebSocket handshake headers copied to every proxy request (e.g. Cookie, Authorization).
    pub forward_headers: Vec<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_endpoint: String::new(),
            refresh_endpoint: String::new(),
            subscribe_endpoint: String::new(),
            publish_endpoint: String::new(),
            rpc_endpoint: String::new(),
            send_endpoint: String::new(),
            timeout: Duration::from_secs(3),
            max_concurrent: 256,
            forward_headers: vec!["Cookie".into(), "Authorization".into()],
        }
    }
}

/// Event names a webhook may carry.
pub const WEBHOOK_EVENTS: [&str; 5] = [
    "disconnect",
    "channel_occupied",
    "channel_vacated",
    "join",
    "leave",
];

/// Signed event notifications to the backend (`[webhooks]`); see docs/hooks.md.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Where events are POSTed; empty turns webhooks off.
    pub url: String,
    /// HMAC-SHA256 key of the `X-Herald-Signature` header; required with `url`.
    pub secret: String,
    /// Events to send, among `WEBHOOK_EVENTS`.
    pub events: Vec<String>,
    /// Events waiting for delivery; when full, new events are dropped and counted.
    pub queue_size: usize,
    /// Further attempts after a failed delivery.
    pub retries: u32,
    /// Wait before the first retry, doubled for each further one.
    #[serde(with = "humantime_serde")]
    pub retry_backoff: Duration,
    /// Deadline of one delivery attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            url: String::new(),
            secret: String::new(),
            events: WEBHOOK_EVENTS.iter().map(|e| e.to_string()).collect(),
            queue_size: 10_000,
            retries: 3,
            retry_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Checks that `url` is an absolute `http://` URL with a host; returns it parsed.
pub fn parse_http_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("{url:?} is not a URL like http://127.0.0.1:9000/path"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{url:?}: https is not supported; reach the backend over http on a private network or through a local TLS-terminating proxy"
            ))
        }
        _ => return Err(format!("{url:?} must start with http://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(uri)
}

impl ProxyConfig {
    /// (hook name, endpoint) of every hook, configured or not.
    pub fn endpoints(&self) -> [(&'static str, &str); 6] {
        [
            ("connect", &self.connect_endpoint),
            ("refresh", &self.refresh_endpoint),
            ("subscribe", &self.subscribe_endpoint),
            ("publish", &self.publish_endpoint),
            ("rpc", &self.rpc_endpoint),
            ("send", &self.send_endpoint),
        ]
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (hook, endpoint) in self.endpoints() {
            if !endpoint.is_empty() {
                parse_http_url(endpoint).map_err(|m| field(format!("proxy.{hook}_endpoint"), m))?;
            }
        }
        if self.timeout.is_zero() {
            return Err(field("proxy.timeout", "must be greater than zero"));
        }
        if self.max_concurrent == 0 {
            return Err(field("proxy.max_concurrent", "must be greater than zero"));
        }
        for (i, name) in self.forward_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(field(
                    format!("proxy.forward_headers[{i}]"),
                    format!("{name:?} is not a header name"),
                ));
            }
        }
        Ok(())
    }
}

impl WebhooksConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (i, event) in self.events.iter().enumerate() {
            if !WEBHOOK_EVENTS.contains(&event.as_str()) {
                return Err(field(
                    format!("webhooks.events[{i}]"),
                    format!("{event:?} is not one of {}", WEBHOOK_EVENTS.join(", ")),
                ));
            }
        }
        if self.timeout.is_zero() {
            return Err(field("webhooks.timeout", "must be greater than zero"));
        }
        if self.queue_size == 0 {
            return Err(field("webhooks.queue_size", "must be greater than zero"));
        }
        if self.retries > 0 && self.retry_backoff.is_zero() {
            return Err(field(
                "webhooks.retry_backoff",
                "must be greater than zero when retries > 0",
            ));
        }
        if !self.enabled() {
            return Ok(());
        }
        parse_http_url(&self.url).map_err(|m| field("webhooks.url", m))?;
        if self.secret.is_empty() {
            return Err(field(
                "webhooks.secret",
                "must be set when webhooks.url is set (receivers verify the signature with it)",
            ));
        }
        Ok(())
    }
}

/// How nodes share publications, history, presence and the node registry (`[broker]`), see
/// docs/scaling.md.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `memory` (one node), `redis` (several nodes sharing one Redis), `redis_cluster` (several
    /// nodes sharing one Redis Cluster, sharded pub/sub) or `nats` (several nodes sharing one NATS
    /// server or cluster).
    pub kind: String,
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
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            kind: "memory".into(),
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
        }
    }
}

impl BrokerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        match self.kind.as_str() {
            "memory" => return Ok(()),
            "redis" | "redis_cluster" => self.validate_redis()?,
            "nats" => self.validate_nats()?,
            other => {
                return Err(field(
                    "broker.kind",
                    format!(
                    "expected \"memory\", \"redis\", \"redis_cluster\" or \"nats\", got {other:?}"
                ),
                ))
            }
        }
        for (name, value) in [
            ("broker.connect_timeout", self.connect_timeout),
            ("broker.command_timeout", self.command_timeout),
            ("broker.node_announce_interval", self.node_announce_interval),
            ("broker.max_reconnect_delay", self.max_reconnect_delay),
        ] {
            if value.is_zero() {
                return Err(field(name, "must be greater than zero"));
            }
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
                format!("must list at least one address when kind = {:?}", self.kind),
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
        let token_ok = |t: &str| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !self.prefix.split('.').all(token_ok) {
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
                if !token_ok(value) {
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
    fn validate_namespace(&self, prefix: &str, ns: &NamespaceOptions) -> Result<(), ConfigError> {
        if self.kind != "nats" {
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

/// `host:port` is accepted as shorthand for `redis://host:port`.
pub fn redis_url(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("redis://{address}")
    }
}

/// GPS device ingest (`[devices]`), see docs/devices.md.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DevicesConfig {
    /// Start the device listeners, the spool and the database writer.
    pub enabled: bool,
    /// Listen address per protocol (Traccar's ports by default); "" disables that protocol.
    pub listen: DeviceListenConfig,
    /// Accept devices not in `allowed`.
    pub accept_unknown: bool,
    /// IMEIs (device ids) accepted when `accept_unknown` is false.
    pub allowed: Vec<String>,
    /// Each position is published to `<device_channel_prefix><imei>`.
    pub device_channel_prefix: String,
    /// ... and to this channel ("" disables it).
    pub fleet_channel: String,
    /// Directory of the on-disk spool (positions accepted but not yet in the database).
    pub spool_dir: String,
    /// Upper bound of the spool on disk; when full, devices are not read (TCP backpressure).
    pub spool_max_bytes: u64,
    /// When accepted positions are flushed to disk: "always", "never" or "every <duration>".
    pub fsync: String,
    /// "sqlite:<path>" or a PostgreSQL conninfo "postgres://user:pass@host/db".
    pub store: String,
    /// A new device connection must identify itself (a login, an IMEI handshake, a frame with
    /// the device id) within this time or it is closed.
    #[serde(with = "humantime_serde")]
    pub login_timeout: Duration,
    /// An identified device connection that sends nothing for this long is closed (half-open
    /// sockets; trackers report or send heartbeats every few minutes).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Open connections per device listener (protocol); more are closed at accept.
    pub max_connections: usize,
    /// Open device connections from one source address, over all device listeners; more are
    /// closed at accept. A fleet behind one carrier NAT or APN gateway shares an address: raise
    /// it for such fleets. 0 is unlimited.
    pub max_connections_per_ip: usize,
    /// Device ids kept in the in-memory registry (last position, connection state). When full,
    /// the disconnected devices seen longest ago are forgotten (their positions stay stored);
    /// when every entry is connected, new ids are refused.
    pub max_devices: usize,
}

/// Listen addresses of the device protocols.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceListenConfig {
    pub gt06: String,
    pub h02: String,
    pub teltonika: String,
    /// OsmAnd / Traccar Client (HTTP).
    pub osmand: String,
    /// Herald JSON lines.
    pub jsonl: String,
}

impl Default for DeviceListenConfig {
    fn default() -> Self {
        DeviceListenConfig {
            gt06: "0.0.0.0:5023".into(),
            h02: "0.0.0.0:5013".into(),
            teltonika: "0.0.0.0:5027".into(),
            osmand: "0.0.0.0:5055".into(),
            jsonl: "0.0.0.0:5099".into(),
        }
    }
}

impl Default for DevicesConfig {
    fn default() -> Self {
        DevicesConfig {
            enabled: false,
            listen: DeviceListenConfig::default(),
            accept_unknown: true,
            allowed: Vec::new(),
            device_channel_prefix: "devices:".into(),
            fleet_channel: "devices:fleet".into(),
            spool_dir: "data/spool".into(),
            spool_max_bytes: 1 << 30,
            fsync: "every 100ms".into(),
            store: "sqlite:data/herald.db".into(),
            login_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(15 * 60),
            max_connections: 50_000,
            max_connections_per_ip: 500,
            max_devices: 100_000,
        }
    }
}

/// One upstream WebSocket feed (`[[feeds]]`): exactly one node of the cluster consumes it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeedConfig {
    /// Unique name: names the lease, the metrics and the logs.
    pub name: String,
    /// `websocket` (an upstream WebSocket), `redis` (pattern subscriptions on a Redis server) or
    /// `nats` (NATS subjects).
    pub kind: String,
    /// `ws://`/`wss://` URL of the upstream, `redis://host:port/`, or `nats://host:port`.
    pub url: String,
    /// Redis channel patterns to PSUBSCRIBE (`ticker:*`) or NATS subjects (`ticks.>`).
    pub subscribe: Vec<String>,
    /// `json`: messages are JSON (others are skipped); `text`: any text, published as a JSON string.
    pub payload: String,
    /// Text messages sent after each connect (subscribe requests).
    pub send: Vec<String>,
    /// JSON pointer to an array whose elements are published one by one ("" = the message).
    pub items: String,
    /// Only messages whose JSON pointers equal these strings are published.
    #[serde(rename = "match")]
    pub matches: std::collections::BTreeMap<String, String>,
    /// Channel template: text with `{/json/pointer}` parts, e.g. `market:{/s}`.
    pub channel: String,
    /// JSON pointer to the published part ("" = the whole message).
    pub data: String,
    /// Publication tags, as templates (`{ symbol = "{/s}" }` feeds `conflation_key = "tag:symbol"`).
    pub tags: std::collections::BTreeMap<String, String>,
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
            kind: "websocket".into(),
            url: String::new(),
            subscribe: Vec::new(),
            payload: "json".into(),
            send: Vec::new(),
            items: String::new(),
            matches: Default::default(),
            channel: String::new(),
            data: String::new(),
            tags: Default::default(),
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
    fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let f = |name: &str| format!("{prefix}.{name}");
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(field(
                f("name"),
                format!(
                    "{:?} is not a valid feed name (letters, digits, _ - .)",
                    self.name
                ),
            ));
        }
        let uri: Result<http::Uri, _> = self.url.parse();
        let scheme = uri.as_ref().ok().and_then(|u| u.host().and(u.scheme_str()));
        match (self.kind.as_str(), scheme) {
            ("websocket", Some("ws" | "wss")) => {
                if !self.subscribe.is_empty() {
                    return Err(field(
                        f("subscribe"),
                        "is for kind = \"redis\" or \"nats\"; a websocket feed subscribes with `send`",
                    ));
                }
            }
            ("websocket", _) => {
                return Err(field(
                    f("url"),
                    format!("{:?} is not a ws:// or wss:// URL", self.url),
                ))
            }
            ("nats", _) => {
                if !self.url.starts_with("nats://") && !self.url.starts_with("tls://") {
                    return Err(field(
                        f("url"),
                        format!("{:?} is not a nats:// or tls:// URL", self.url),
                    ));
                }
                if self.subscribe.is_empty() {
                    return Err(field(f("subscribe"), "needs at least one subject"));
                }
                if !self.send.is_empty() {
                    return Err(field(f("send"), "is for kind = \"websocket\""));
                }
            }
            ("redis", _) => {
                redis::Client::open(self.url.as_str())
                    .map_err(|e| field(f("url"), format!("{:?}: {e}", self.url)))?;
                if self.subscribe.is_empty() {
                    return Err(field(f("subscribe"), "needs at least one channel pattern"));
                }
                if !self.send.is_empty() {
                    return Err(field(f("send"), "is for kind = \"websocket\""));
                }
            }
            (other, _) => {
                return Err(field(
                    f("kind"),
                    format!("{other:?} is not one of \"websocket\", \"redis\", \"nats\""),
                ))
            }
        }
        if !matches!(self.payload.as_str(), "json" | "text") {
            return Err(field(
                f("payload"),
                format!("{:?} is not one of \"json\", \"text\"", self.payload),
            ));
        }
        template::Template::parse(&self.channel).map_err(|e| field(f("channel"), e.to_string()))?;
        for (name, template) in &self.tags {
            template::Template::parse(template)
                .map_err(|e| field(f(&format!("tags.{name}")), e.to_string()))?;
        }
        for pointer in self.matches.keys() {
            if !pointer.starts_with('/') {
                return Err(field(
                    f("match"),
                    format!("{pointer:?} is not a JSON pointer (it must start with '/')"),
                ));
            }
        }
        for (name, pointer) in [("items", &self.items), ("data", &self.data)] {
            if !pointer.is_empty() && !pointer.starts_with('/') {
                return Err(field(
                    f(name),
                    format!("{pointer:?} is not a JSON pointer (it must start with '/')"),
                ));
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
                return Err(field(f(name), "must be greater than zero"));
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
}

/// The live map page at `/map` (`[map]`), see docs/map.md.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MapConfig {
    /// Serve `/map` and its data endpoints on the public listener.
    pub enabled: bool,
    /// Tile URL template with `{z}`, `{x}` and `{y}`; "" draws a plain grid (no tiles).
    pub tile_url: String,
    /// Attribution shown in the map's corner (required by most tile providers).
    pub attribution: String,
}

impl Default for MapConfig {
    fn default() -> Self {
        MapConfig {
            enabled: true,
            tile_url: "https://tile.openstreetmap.org/{z}/{x}/{y}.png".into(),
            attribution: "© OpenStreetMap contributors".into(),
        }
    }
}

impl MapConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let url = self.tile_url.trim();
        if url.is_empty() {
            return Ok(());
        }
        if url != self.tile_url {
            return Err(field("map.tile_url", "must not start or end with spaces"));
        }
        if !(url.starts_with("https://") || url.starts_with("http://") || url.starts_with('/')) {
            return Err(field(
                "map.tile_url",
                format!("{url:?} must start with https://, http:// or / (or be \"\" for no tiles)"),
            ));
        }
        for placeholder in ["{z}", "{x}", "{y}"] {
            if !url.contains(placeholder) {
                return Err(field(
                    "map.tile_url",
                    format!("{url:?} lacks {placeholder} (a template like https://tile.example/{{z}}/{{x}}/{{y}}.png)"),
                ));
            }
        }
        if url
            .chars()
            .any(|c| c.is_control() || c == '"' || c == '\\' || c == ' ')
        {
            return Err(field(
                "map.tile_url",
                "must not contain spaces, quotes, backslashes or control characters",
            ));
        }
        if self.attribution.chars().any(char::is_control) {
            return Err(field(
                "map.attribution",
                "must not contain control characters",
            ));
        }
        Ok(())
    }
}

/// A parsed `devices.fsync` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncSetting {
    Always,
    Never,
    Every(Duration),
}

/// A parsed `devices.store` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSetting {
    Sqlite(String),
    Postgres(String),
}

impl DevicesConfig {
    /// Parses `fsync`: "always", "never" or "every <duration>" ("every 100ms", "every 1s").
    pub fn fsync_setting(&self) -> Result<FsyncSetting, String> {
        let text = self.fsync.trim();
        match text {
            "always" => return Ok(FsyncSetting::Always),
            "never" => return Ok(FsyncSetting::Never),
            _ => {}
        }
        let bad = || {
            format!("{text:?} is not \"always\", \"never\" or \"every <duration>\" (e.g. \"every 100ms\")")
        };
        let rest = text.strip_prefix("every").ok_or_else(bad)?.trim();
        let d = humantime::parse_duration(rest).map_err(|_| bad())?;
        if d.is_zero() {
            return Err(format!(
                "{text:?}: the interval must be greater than zero (or use \"always\")"
            ));
        }
        Ok(FsyncSetting::Every(d))
    }

    /// Parses `store`.
    pub fn store_setting(&self) -> Result<StoreSetting, String> {
        let s = self.store.trim();
        if let Some(path) = s.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err("\"sqlite:\" needs a file path, e.g. \"sqlite:data/herald.db\"".into());
            }
            return Ok(StoreSetting::Sqlite(path.to_string()));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(StoreSetting::Postgres(s.to_string()));
        }
        Err("expected \"sqlite:<path>\" or \"postgres://user:password@host/database\"".into())
    }

    /// (protocol name, field name, address) of every enabled listener.
    pub fn listeners(&self) -> Vec<(&'static str, std::net::SocketAddr)> {
        let l = &self.listen;
        [
            ("gt06", &l.gt06),
            ("h02", &l.h02),
            ("teltonika", &l.teltonika),
            ("osmand", &l.osmand),
            ("jsonl", &l.jsonl),
        ]
        .into_iter()
        .filter(|(_, a)| !a.is_empty())
        .filter_map(|(name, a)| parse_addr(a).ok().map(|addr| (name, addr)))
        .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.listen;
        for (name, value) in [
            ("devices.listen.gt06", &l.gt06),
            ("devices.listen.h02", &l.h02),
            ("devices.listen.teltonika", &l.teltonika),
            ("devices.listen.osmand", &l.osmand),
            ("devices.listen.jsonl", &l.jsonl),
        ] {
            if !value.is_empty() {
                parse_addr(value).map_err(|m| field(name, format!("{m} (or \"\" to disable)")))?;
            }
        }
        self.fsync_setting()
            .map_err(|m| field("devices.fsync", m))?;
        self.store_setting()
            .map_err(|m| field("devices.store", m))?;
        if self.spool_max_bytes == 0 {
            return Err(field(
                "devices.spool_max_bytes",
                "must be greater than zero",
            ));
        }
        if self.spool_dir.trim().is_empty() {
            return Err(field("devices.spool_dir", "must not be empty"));
        }
        if self.device_channel_prefix.is_empty() {
            return Err(field("devices.device_channel_prefix", "must not be empty"));
        }
        if self.login_timeout.is_zero() {
            return Err(field("devices.login_timeout", "must be greater than zero"));
        }
        if self.idle_timeout.is_zero() {
            return Err(field("devices.idle_timeout", "must be greater than zero"));
        }
        if self.max_connections == 0 {
            return Err(field(
                "devices.max_connections",
                "must be greater than zero (disable a protocol with devices.listen.<protocol> = \"\")",
            ));
        }
        if self.max_devices == 0 {
            return Err(field("devices.max_devices", "must be greater than zero"));
        }
        for (i, id) in self.allowed.iter().enumerate() {
            if id.trim().is_empty() || id.trim() != id {
                return Err(field(
                    format!("devices.allowed[{i}]"),
                    format!("{id:?} is not a device id (no spaces, not empty)"),
                ));
            }
        }
        if self.enabled && !self.accept_unknown && self.allowed.is_empty() {
            return Err(field(
                "devices.allowed",
                "is empty while accept_unknown = false: no device could connect",
            ));
        }
        Ok(())
    }
}

/// Per-namespace rules, named as in Centrifugo so existing configs translate directly.
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
}

/// A configuration problem, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: invalid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("{field}: {message}")]
    Field { field: String, message: String },
}

fn field(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        message: message.into(),
    }
}

/// Environment variables that override the file: `HERALD_CLIENT__PING_INTERVAL=10s` sets
/// `client.ping_interval` (sections separated by a double underscore).
pub const ENV_PREFIX: &str = "HERALD_";

impl Config {
    /// Loads the optional file, then environment overrides, then `key.path=value` overrides.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<Config, ConfigError> {
        let mut root = match file {
            Some(path) => {
                let display = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: display.clone(),
                    source,
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| ConfigError::Syntax {
                    path: display,
                    message: e.to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        let defaults = toml::Value::try_from(Config::default())
            .unwrap_or(toml::Value::Table(toml::Table::new()));
        for (key, value) in env {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // HERALD_CONFIG and other single-word variables belong to the command line, not the file.
            if !rest.contains("__") {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            set_path(&mut root, &defaults, &path, &value).map_err(|m| field(path.join("."), m))?;
        }
        for set in sets {
            let (key, value) = set
                .split_once('=')
                .ok_or_else(|| field(set.clone(), "--set expects key.path=value"))?;
            let path: Vec<String> = key.trim().split('.').map(str::to_string).collect();
            set_path(&mut root, &defaults, &path, value.trim())
                .map_err(|m| field(key.trim(), m))?;
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(root)).map_err(|e| {
                let path = e.path().to_string();
                field(path, e.into_inner().to_string())
            })?;
        config.validate()?;
        Ok(config)
    }

    /// The largest publication accepted (`channel.max_publication_bytes`, or its default: 64 KiB,
    /// at most a quarter of `client.max_outbox_bytes`).
    pub fn max_publication_bytes(&self) -> usize {
        self.channel
            .max_publication_bytes
            .unwrap_or_else(|| DEFAULT_MAX_PUBLICATION_BYTES.min(self.client.max_outbox_bytes / 4))
            .max(1)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_addr(&self.http.listen).map_err(|m| field("http.listen", m))?;
        if !self.http.internal_listen.is_empty() {
            parse_addr(&self.http.internal_listen).map_err(|m| field("http.internal_listen", m))?;
        }
        match self.log.format.as_str() {
            "text" | "json" => {}
            other => {
                return Err(field(
                    "log.format",
                    format!("expected \"text\" or \"json\", got {other:?}"),
                ))
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| field("log.level", e.to_string()))?;
        // A bare word is read as a target name by tracing, so a typo would silently disable logs.
        let level = self.log.level.trim();
        if !level.contains(['=', ','])
            && !["error", "warn", "info", "debug", "trace", "off"]
                .contains(&level.to_ascii_lowercase().as_str())
        {
            return Err(field("log.level", format!("{level:?} is not a level (error, warn, info, debug, trace, off) or a filter like \"herald=debug\"")));
        }
        let c = &self.client;
        for (name, value) in [
            ("client.connect_timeout", c.connect_timeout),
            ("client.ping_interval", c.ping_interval),
            ("client.pong_timeout", c.pong_timeout),
            ("client.write_timeout", c.write_timeout),
        ] {
            if value.is_zero() {
                return Err(field(name, "must be greater than zero"));
            }
        }
        for (name, value) in [
            ("client.max_connections", c.max_connections),
            ("client.max_message_size", c.max_message_size),
            ("client.max_commands_per_frame", c.max_commands_per_frame),
            ("client.max_channels", c.max_channels),
            ("client.max_outbox_bytes", c.max_outbox_bytes),
            ("client.max_outbox_messages", c.max_outbox_messages),
            ("channel.max_length", self.channel.max_length),
            ("channel.max_streams", self.channel.max_streams),
            (
                "channel.max_publication_bytes",
                self.channel.max_publication_bytes.unwrap_or(1),
            ),
        ] {
            if value == 0 {
                return Err(field(name, "must be greater than zero"));
            }
        }
        if c.connection_rate_per_ip > 0 && c.connection_burst_per_ip == 0 {
            return Err(field(
                "client.connection_burst_per_ip",
                "must be greater than zero when connection_rate_per_ip is set",
            ));
        }
        if c.max_ping_rate > 0 && c.ping_burst == 0 {
            return Err(field(
                "client.ping_burst",
                "must be greater than zero when max_ping_rate is set",
            ));
        }
        if c.command_rate > 0 && c.command_burst == 0 {
            return Err(field(
                "client.command_burst",
                "must be greater than zero when command_rate is set",
            ));
        }
        if let Some(max) = self.channel.max_publication_bytes {
            if max > c.max_outbox_bytes / 4 {
                return Err(field(
                    "channel.max_publication_bytes",
                    format!(
                        "{max} is more than a quarter of client.max_outbox_bytes ({}): a few such publications would close every subscriber as slow",
                        c.max_outbox_bytes
                    ),
                ));
            }
        }
        if !self.channel.without_namespace.name.is_empty() {
            return Err(field("channel.without_namespace.name", "must be empty"));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, ns) in self.channel.namespaces.iter().enumerate() {
            let prefix = format!("channel.namespaces[{i}]");
            if ns.name.is_empty()
                || !ns
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' || ch == '.')
            {
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
            validate_namespace(&prefix, ns)?;
            self.broker.validate_namespace(&prefix, ns)?;
            validate_window(&prefix, ns, c.max_outbox_bytes)?;
        }
        validate_namespace("channel.without_namespace", &self.channel.without_namespace)?;
        self.broker
            .validate_namespace("channel.without_namespace", &self.channel.without_namespace)?;
        validate_window(
            "channel.without_namespace",
            &self.channel.without_namespace,
            c.max_outbox_bytes,
        )?;
        self.devices.validate()?;
        self.broker.validate()?;
        self.map.validate()?;
        self.api.validate()?;
        self.proxy.validate()?;
        self.check_origin_policy()?;
        self.webhooks.validate()?;
        let all = std::iter::once((
            "channel.without_namespace".to_string(),
            &self.channel.without_namespace,
        ))
        .chain(
            self.channel
                .namespaces
                .iter()
                .enumerate()
                .map(|(i, ns)| (format!("channel.namespaces[{i}]"), ns)),
        );
        for (prefix, ns) in all {
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
        if !self.feeds.is_empty() && self.broker.kind == "nats" && !self.broker.nats_jetstream {
            // One consumer per feed needs a lease every node sees; on NATS it lives in a
            // JetStream KV bucket (nats_leases.rs).
            return Err(field(
                "feeds",
                "feeds need a cluster-wide lease, which the nats broker keeps in JetStream; set broker.nats_jetstream = true",
            ));
        }
        let mut names = std::collections::HashSet::new();
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

    /// A browser sends the visitor's cookies (and cached HTTP credentials) with a WebSocket
    /// handshake made by any site's page. Forwarded to the backend, they would authenticate that
    /// page as the visitor (cross-site WebSocket hijacking), so forwarding them needs an `Origin`
    /// policy that names the application's own pages. `Server::start` checks it too.
    pub fn check_origin_policy(&self) -> Result<(), ConfigError> {
        let hooked = self.proxy.endpoints().iter().any(|(_, e)| !e.is_empty());
        let credentials: Vec<&str> = self
            .proxy
            .forward_headers
            .iter()
            .filter(|h| AMBIENT_CREDENTIAL_HEADERS.contains(&h.to_ascii_lowercase().as_str()))
            .map(String::as_str)
            .collect();
        if !hooked || credentials.is_empty() {
            return Ok(());
        }
        let origins = &self.http.allowed_origins;
        if origins.is_empty() || origins.iter().any(|o| o == "*") {
            return Err(field(
                "http.allowed_origins",
                format!(
                    "proxy.forward_headers forwards {} to the backend, which a browser sends along with a handshake from any web site; \
                     list your pages' origins in http.allowed_origins (not \"*\"), or remove {} from proxy.forward_headers",
                    credentials.join(" and "),
                    credentials.join(" and ")
                ),
            ));
        }
        Ok(())
    }

    /// Public listener address.
    pub fn listen_addr(&self) -> std::net::SocketAddr {
        parse_addr(&self.http.listen)
            .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 8000)))
    }

    /// Internal listener address, when configured.
    pub fn internal_addr(&self) -> Option<std::net::SocketAddr> {
        if self.http.internal_listen.is_empty() {
            return None;
        }
        parse_addr(&self.http.internal_listen).ok()
    }
}

fn validate_namespace(prefix: &str, ns: &NamespaceOptions) -> Result<(), ConfigError> {
    if ns.history_size > 0 && ns.history_ttl.is_zero() {
        return Err(field(
            format!("{prefix}.history_ttl"),
            "must be set when history_size > 0",
        ));
    }
    if ns.history_size > 1_000_000 {
        return Err(field(format!("{prefix}.history_size"), "at most 1000000"));
    }
    if ns.force_recovery && !ns.history_enabled() {
        return Err(field(
            format!("{prefix}.force_recovery"),
            "needs history_size and history_ttl",
        ));
    }
    if ns.conflated() {
        let key = &ns.conflation_key;
        let valid = key.starts_with('/') || key.strip_prefix("tag:").is_some_and(|t| !t.is_empty());
        if !valid {
            return Err(field(
                format!("{prefix}.conflation_key"),
                format!("{key:?} is neither a JSON pointer (\"/id\") nor a tag (\"tag:symbol\")"),
            ));
        }
        if !ns.history_enabled() {
            return Err(field(
                format!("{prefix}.conflation_key"),
                "needs history_size and history_ttl (latest values and recovery live in the stream)",
            ));
        }
        if ns.conflation_max_keys == 0 {
            return Err(field(
                format!("{prefix}.conflation_max_keys"),
                "must be greater than zero",
            ));
        }
    }
    if ns.client_history_max_limit == 0 {
        return Err(field(
            format!("{prefix}.client_history_max_limit"),
            "must be greater than zero (allow_history_* = false turns client history off)",
        ));
    }
    if ns.window_max_bytes == 0 {
        return Err(field(
            format!("{prefix}.window_max_bytes"),
            "must be greater than zero",
        ));
    }
    if ns.batch_window > Duration::from_secs(60) {
        return Err(field(format!("{prefix}.batch_window"), "at most 60s"));
    }
    Ok(())
}

/// A window is delivered to every subscriber at once, so it must fit an outbox with room to spare.
fn validate_window(
    prefix: &str,
    ns: &NamespaceOptions,
    max_outbox_bytes: usize,
) -> Result<(), ConfigError> {
    if !ns.delivery_interval().is_zero() && ns.window_max_bytes > max_outbox_bytes / 2 {
        return Err(field(
            format!("{prefix}.window_max_bytes"),
            format!(
                "{} is more than half of client.max_outbox_bytes ({max_outbox_bytes}): a full window would overflow every subscriber",
                ns.window_max_bytes
            ),
        ));
    }
    Ok(())
}

fn parse_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an address like 0.0.0.0:8000"))
}

/// Sets `path` in the table to `raw`. Where the setting is a string, `raw` is taken as is (a key
/// `12345` stays a string); otherwise it is typed like TOML would type it (number, bool, array,
/// quoted string), falling back to a string.
fn set_path(
    root: &mut toml::Table,
    defaults: &toml::Value,
    path: &[String],
    raw: &str,
) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".into());
    };
    let mut table = root;
    for part in parents {
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("{part} is not a section"))?;
    }
    let default = path
        .iter()
        .try_fold(defaults, |v, part| v.get(part.as_str()));
    let as_typed = || {
        toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
    };
    let value = match default {
        Some(toml::Value::String(_)) => match as_typed() {
            Some(quoted @ toml::Value::String(_)) => quoted,
            _ => toml::Value::String(raw.to_string()),
        },
        _ => as_typed().unwrap_or_else(|| toml::Value::String(raw.to_string())),
    };
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, env: &[(&str, &str)], sets: &[&str]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("herald-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("herald.toml");
        std::fs::write(&path, text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let result = Config::load(Some(&path), env, &sets);
        std::fs::remove_dir_all(&dir).ok();
        result
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
            let error = load_str(&format!("{nats}{extra}"), &[], &[])
                .expect_err(extra)
                .to_string();
            assert!(error.starts_with(field), "{extra}: {error}");
        }
        // History lives in a JetStream stream: accepted with JetStream, refused without.
        let history =
            "[[channel.namespaces]]\nname = \"h\"\nhistory_size = 10\nhistory_ttl = \"1m\"\n";
        assert!(load_str(&format!("{nats}{history}"), &[], &[]).is_ok());
        let error = load_str(
            &format!("{nats}nats_jetstream = false\n{history}"),
            &[],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("channel.namespaces[0].history_size"),
            "{error}"
        );
        // Latest values per key are not kept on NATS.
        let conflated = format!("{nats}{history}conflation_key = \"/symbol\"\n");
        let error = load_str(&conflated, &[], &[]).unwrap_err().to_string();
        assert!(
            error.starts_with("channel.namespaces[0].conflation_key"),
            "{error}"
        );
        let presence =
            format!("{nats}nats_jetstream = false\n[channel.without_namespace]\npresence = true\n");
        let error = load_str(&presence, &[], &[]).unwrap_err().to_string();
        assert!(
            error.starts_with("channel.without_namespace.presence"),
            "{error}"
        );
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = load_str("", &[], &[]).unwrap();
        assert_eq!(c.http.listen, "0.0.0.0:8000");
        assert_eq!(c.client.ping_interval, Duration::from_secs(25));
    }

    #[test]
    fn errors_name_the_field() {
        let e = load_str("[client]\nping_interval = \"soon\"\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("client.ping_interval:"), "{e}");
        let e = load_str("[client]\npingg = 1\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("pingg"), "{e}");
        let e = load_str("[http]\nlisten = \"nowhere\"\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("http.listen:"), "{e}");
        let e = load_str("[[channel.namespaces]]\nname = \"bad name\"\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("channel.namespaces[0].name:"), "{e}");
        let e = load_str("[channel.without_namespace]\nhistory_size = 10\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("channel.without_namespace.history_ttl:"),
            "{e}"
        );
        let e = load_str("[client\n", &[], &[]).unwrap_err().to_string();
        assert!(e.contains("invalid TOML"), "{e}");
    }

    #[test]
    fn hostile_client_limits_are_validated_naming_the_field() {
        let c = Config::default();
        assert_eq!(c.client.send_buffer, 256 << 10, "bounded by default");
        assert_eq!(c.client.write_timeout, Duration::from_secs(10));
        assert_eq!(c.channel.without_namespace.client_history_max_limit, 300);
        for (text, named) in [
            (
                "[client]\nwrite_timeout = \"0s\"\n",
                "client.write_timeout:",
            ),
            ("[client]\nping_burst = 0\n", "client.ping_burst:"),
            (
                "[channel.without_namespace]\nclient_history_max_limit = 0\n",
                "channel.without_namespace.client_history_max_limit:",
            ),
        ] {
            let e = load_str(text, &[], &[]).unwrap_err().to_string();
            assert!(e.starts_with(named), "{e}");
        }
        assert!(load_str("[client]\nmax_ping_rate = 0\nping_burst = 0\n", &[], &[]).is_ok());
    }

    #[test]
    fn env_then_flags_override_the_file() {
        let c = load_str(
            "[client]\nping_interval = \"5s\"\nmax_channels = 3\n",
            &[
                ("HERALD_CLIENT__PING_INTERVAL", "7s"),
                ("HERALD_HTTP__LISTEN", "127.0.0.1:9000"),
                ("HOME", "/x"),
            ],
            &["client.max_channels=9"],
        )
        .unwrap();
        assert_eq!(c.client.ping_interval, Duration::from_secs(7));
        assert_eq!(c.client.max_channels, 9);
        assert_eq!(c.http.listen, "127.0.0.1:9000");
        let e = load_str("", &[("HERALD_CLIENT__MAX_CHANNELS", "many")], &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("client.max_channels:"), "{e}");
        let c = load_str(
            "",
            &[("HERALD_API__KEY", "12345")],
            &["client.token.hmac_secret=true"],
        )
        .unwrap();
        assert_eq!(
            c.api.key, "12345",
            "string settings keep numeric-looking values as text"
        );
        assert_eq!(c.client.token.hmac_secret, "true");
        let c = load_str(
            "",
            &[],
            &[
                "http.allowed_origins=[\"https://a.example\"]",
                "log.level=\"debug\"",
            ],
        )
        .unwrap();
        assert_eq!(
            c.http.allowed_origins,
            vec!["https://a.example".to_string()]
        );
        assert_eq!(c.log.level, "debug");
        let e = load_str("[log]\nlevel = \"debugg\"\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("log.level:"), "{e}");
        assert!(load_str("[log]\nlevel = \"herald=debug,info\"\n", &[], &[]).is_ok());
    }

    #[test]
    fn forwarding_credentials_to_hooks_needs_an_origin_policy() {
        let hooked = "[proxy]\nconnect_endpoint = \"http://127.0.0.1:9/connect\"\n";
        let e = load_str(hooked, &[], &[]).unwrap_err().to_string();
        assert!(e.starts_with("http.allowed_origins:"), "{e}");
        assert!(
            e.contains("proxy.forward_headers") && e.contains("Cookie"),
            "{e}"
        );
        let star = load_str(hooked, &[], &["http.allowed_origins=[\"*\"]"]).unwrap_err();
        assert!(
            star.to_string().starts_with("http.allowed_origins:"),
            "{star}"
        );
        let listed = ["http.allowed_origins=[\"https://app.example\"]"];
        assert!(load_str(hooked, &[], &listed).is_ok());
        let no_credentials = ["proxy.forward_headers=[\"User-Agent\"]"];
        assert!(load_str(hooked, &[], &no_credentials).is_ok());
        assert!(
            load_str("", &[], &[]).is_ok(),
            "no hook: nothing is forwarded"
        );
        let e = load_str("", &[], &["api.max_batch_commands=0"]).unwrap_err();
        assert!(e.to_string().starts_with("api.max_batch_commands:"), "{e}");
    }

    #[test]
    fn feeds_are_validated_with_their_field_named() {
        let ok = "[[feeds]]\nname = \"t\"\nurl = \"wss://x.example/ws\"\nchannel = \"m:{/s}\"\n";
        let c = load_str(ok, &[], &[]).unwrap();
        assert_eq!(c.feeds[0].lease_ttl, Duration::from_secs(2));
        for (key, value, field) in [
            ("url", "\"http://x/\"", "feeds[0].url"),
            ("channel", "\"m:{s}\"", "feeds[0].channel"),
            ("tags", "{ k = \"{/a\" }", "feeds[0].tags.k"),
            ("match", "{ e = \"x\" }", "feeds[0].match"),
            ("data", "\"p\"", "feeds[0].data"),
            ("lease_ttl", "\"10ms\"", "feeds[0].lease_ttl"),
            ("reconnect_max", "\"1ms\"", "feeds[0].reconnect_max"),
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
            let err = load_str(&text, &[], &[]).unwrap_err().to_string();
            assert!(err.contains(field), "{key}: {err}");
        }
        let on_nats = format!("{ok}[broker]\nkind = \"nats\"\n");
        assert!(load_str(&on_nats, &[], &[]).is_ok());
        let without_js = format!("{on_nats}nats_jetstream = false\n");
        let err = load_str(&without_js, &[], &[]).unwrap_err().to_string();
        assert!(err.starts_with("feeds:"), "{err}");
        let twice = format!("{ok}{ok}");
        let err = load_str(&twice, &[], &[]).unwrap_err().to_string();
        assert!(err.contains("feeds[1].name"), "{err}");
    }

    #[test]
    fn broker_settings_are_validated() {
        let config = load_str("", &[], &[]).unwrap();
        assert_eq!(config.broker.kind, "memory");
        let err = |sets: &[&str]| load_str("", &[], sets).unwrap_err().to_string();
        assert!(err(&["broker.kind=kafka"]).starts_with("broker.kind:"));
        assert!(
            err(&["broker.kind=redis", "broker.prefix=a b"]).starts_with("broker.prefix:"),
            "{}",
            err(&["broker.kind=redis", "broker.prefix=a b"])
        );
        let text =
            "[broker]\nkind = \"redis\"\nredis_addresses = [\"redis://ok:6379\", \"bad://x\"]\n";
        assert!(load_str(text, &[], &[])
            .unwrap_err()
            .to_string()
            .starts_with("broker.redis_addresses[1]:"));
        let text = "[broker]\nkind = \"redis\"\nredis_addresses = []\n";
        assert!(load_str(text, &[], &[])
            .unwrap_err()
            .to_string()
            .starts_with("broker.redis_addresses:"));
        assert!(err(&["broker.kind=redis", "broker.command_timeout=0s"])
            .starts_with("broker.command_timeout:"));
        let ok = load_str("", &[("HERALD_BROKER__KIND", "redis")], &[]).unwrap();
        assert_eq!(ok.broker.kind, "redis");
        // A Redis Cluster takes seed addresses and the same prefix rules.
        let text = "[broker]\nkind = \"redis_cluster\"\nredis_addresses = []\n";
        let e = load_str(text, &[], &[]).unwrap_err().to_string();
        assert!(
            e.starts_with("broker.redis_addresses:") && e.contains("redis_cluster"),
            "{e}"
        );
        assert!(
            err(&["broker.kind=redis_cluster", "broker.prefix=a{b}"]).starts_with("broker.prefix:")
        );
        let ok = load_str("", &[("HERALD_BROKER__KIND", "redis_cluster")], &[]).unwrap();
        assert_eq!(ok.broker.kind, "redis_cluster");
    }

    #[test]
    fn devices_settings_are_validated() {
        let c = load_str("", &[], &[]).unwrap();
        assert_eq!(
            c.devices.fsync_setting(),
            Ok(FsyncSetting::Every(Duration::from_millis(100)))
        );
        assert_eq!(
            c.devices.store_setting(),
            Ok(StoreSetting::Sqlite("data/herald.db".into()))
        );
        assert_eq!(c.devices.listeners().len(), 5);
        for (text, want) in [
            ("always", FsyncSetting::Always),
            ("never", FsyncSetting::Never),
            ("every 1s", FsyncSetting::Every(Duration::from_secs(1))),
        ] {
            let c = load_str(&format!("[devices]\nfsync = \"{text}\"\n"), &[], &[]).unwrap();
            assert_eq!(c.devices.fsync_setting(), Ok(want));
        }
        for bad in ["sometimes", "every", "every 0s", "100ms"] {
            let e = load_str(&format!("[devices]\nfsync = \"{bad}\"\n"), &[], &[])
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("devices.fsync:"), "{e}");
        }
        let e = load_str("[devices]\nstore = \"mysql://x\"\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("devices.store:"), "{e}");
        let c = load_str("[devices]\nstore = \"postgres://u@h/db\"\n", &[], &[]).unwrap();
        assert_eq!(
            c.devices.store_setting(),
            Ok(StoreSetting::Postgres("postgres://u@h/db".into()))
        );
        let e = load_str("[devices.listen]\ngt06 = \"port 5023\"\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("devices.listen.gt06:"), "{e}");
        let c = load_str("[devices.listen]\ngt06 = \"\"\n", &[], &[]).unwrap();
        assert_eq!(c.devices.listeners().len(), 4);
        let e = load_str("[devices]\nspool_max_bytes = 0\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("devices.spool_max_bytes:"), "{e}");
        let e = load_str(
            "[devices]\nenabled = true\naccept_unknown = false\n",
            &[],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("devices.allowed:"), "{e}");
        for (text, name) in [
            ("login_timeout = \"0s\"", "devices.login_timeout:"),
            ("idle_timeout = \"0s\"", "devices.idle_timeout:"),
            ("max_connections = 0", "devices.max_connections:"),
            ("max_devices = 0", "devices.max_devices:"),
        ] {
            let e = load_str(&format!("[devices]\n{text}\n"), &[], &[])
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(name), "{e}");
        }
        let c = load_str("[devices]\nmax_connections_per_ip = 0\n", &[], &[]).unwrap();
        assert_eq!(c.devices.max_connections_per_ip, 0, "0 is unlimited");
        assert_eq!(c.devices.login_timeout, Duration::from_secs(30));
    }

    #[test]
    fn map_settings_are_validated() {
        let c = load_str("", &[], &[]).unwrap();
        assert!(c.map.enabled);
        assert_eq!(
            c.map.tile_url,
            "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
        );
        let c = load_str("[map]\ntile_url = \"\"\nenabled = false\n", &[], &[]).unwrap();
        assert!(!c.map.enabled);
        assert!(c.map.tile_url.is_empty());
        for bad in [
            "ftp://tiles/{z}/{x}/{y}.png",
            "https://tiles.example/{z}/{x}.png",
            "https://tiles.example/{z}/{x}/{y}.png\\\"",
        ] {
            let text = format!("[map]\ntile_url = {}\n", toml::Value::String(bad.into()));
            let e = load_str(&text, &[], &[]).unwrap_err().to_string();
            assert!(e.starts_with("map.tile_url:"), "{bad}: {e}");
        }
        let e = load_str("", &[], &["map.enabled=maybe"])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("map.enabled:"), "{e}");
        let e = load_str("[map]\nattribution = \"a\\nb\"\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("map.attribution:"), "{e}");
    }
}
