//! The commented configuration written by `herald genconfig`. Every value shown is the default,
//! except the freshly generated secrets; a test keeps the two in agreement.

const TEMPLATE: &str = r#"# Herald configuration. Every value shown is the default unless marked otherwise.
# Environment variables override this file: HERALD_<SECTION>__<KEY>, e.g. HERALD_CLIENT__PING_INTERVAL=10s.
# Flags override both: herald serve --config herald.toml --set client.max_channels=256
# Durations are written like "10s", "5m", "1h 30m".

[node]
# Name shown by the info API; empty means <hostname>-<pid>.
name = ""

[http]
# Public listener: WebSocket endpoint /connection/websocket, /health, /ready, and (unless
# internal_listen is set) the server API /api/<method> and /metrics.
listen = "0.0.0.0:8000"
# When set, the server API and /metrics move to this listener, e.g. "127.0.0.1:9000".
internal_listen = ""
# SO_REUSEPORT: several Herald processes on one host share one port.
reuse_port = false
# Graceful shutdown waits this long for clients to leave after telling them to reconnect elsewhere.
shutdown_timeout = "10s"
# On a graceful stop, tell clients to reconnect at random moments spread over this period (0s: all
# at once). Worth setting (e.g. "10s") with many clients, so their new node is not hit at once.
drain_period = "0s"
# SIGUSR2 (zero-downtime upgrade): how long the new process may take to become ready.
upgrade_timeout = "30s"
# Allowed Origin values for WebSocket handshakes from browsers; empty allows all. Must list your
# pages' origins (not "*") when [proxy] hooks forward Cookie or Authorization.
allowed_origins = []
# Native TLS (docs/operations.md#tls): PEM certificate chain (leaf first) and private key; the
# public listener then serves https:// and wss://. Reloaded when the files change (and on SIGHUP).
# tls_cert = "/etc/herald/tls/fullchain.pem"
# tls_key = "/etc/herald/tls/privkey.pem"
# The internal listener's own pair; when unset it uses tls_cert/tls_key (if those are set).
# internal_tls_cert = ""
# internal_tls_key = ""
# A TLS client that has not finished its handshake after this is dropped.
tls_handshake_timeout = "10s"

[log]
# error, warn, info, debug, trace, or a filter such as "herald=debug,info".
level = "info"
# "text" or "json".
format = "text"

[client]
# A connection must send connect within this time, or it is closed (3502 stale).
connect_timeout = "10s"
# The server pings every ping_interval; a client that does not answer within pong_timeout is
# closed (3012 no pong). This also finds peers that vanished without closing their socket.
# Only messages count as an answer: WebSocket pings do not keep a connection alive.
ping_interval = "25s"
pong_timeout = "8s"
# Connections above this are refused at the handshake with HTTP 503.
max_connections = 100000
# Largest WebSocket message accepted from a client, bytes (larger: close 1009).
max_message_size = 65536
# Most commands one frame may carry.
max_commands_per_frame = 100
# Most channels one connection may subscribe to (more: error 106 limit exceeded).
max_channels = 128
# Bytes queued for one connection before it is closed as a slow consumer (3008 slow). Replies
# and pongs owed to a client count too: while they are over it, the client's input is not read.
max_outbox_bytes = 1048576
# Items queued for one connection before the same overflow policy applies.
max_outbox_messages = 10000
# Sustained commands per second per connection and the burst above it (excess: error 111);
# command_rate = 0 disables the limit.
command_rate = 100
command_burst = 200
# Allow connect without a token (the user is empty).
allow_anonymous = false
# Most simultaneous connections of one user on this node; one more connect is closed with
# 3504 connection limit (SDKs do not reconnect). Anonymous connections are not counted. 0: unlimited.
connections_per_user = 0
# New WebSocket connections per second from one IP address, and the burst above it (excess: HTTP
# 429). The address is the TCP peer's: behind a reverse proxy, leave it at 0. 0: unlimited.
connection_rate_per_ip = 0
connection_burst_per_ip = 50
# Bytes queued in all outboxes of this node together (1 GiB). Every 100 ms, above it, the
# connections with the largest outboxes are closed as slow (3008) until the rest fits. 0: no budget.
outbox_budget = 1073741824
# Kernel send buffer per client socket in bytes (SO_SNDBUF; 256 KiB, the kernel accounts twice
# that); 0 keeps the kernel's autotuning (up to 4 MiB per socket).
send_buffer = 262144
# A write to a client that makes no progress for this long closes it at once (reset).
write_timeout = "10s"
# WebSocket pings a client may send per second, and the burst above it (more: close 1008).
# max_ping_rate = 0 disables the limit.
max_ping_rate = 2
ping_burst = 10
# After a connection or subscription token expires, how long the client has to send its
# refresh before the connection closes (3005) or the subscription ends (2501).
expired_close_delay = "25s"
expired_sub_close_delay = "25s"

[client.token]
# Connection and subscription tokens are JWTs. Configure at least one key source.
# HS256/384/512 secret (generated for this file by herald genconfig).
hmac_secret = "{{hmac_secret}}"
# Path of a PEM RSA public key (RS256/384/512).
rsa_public_key = ""
# Path of a PEM ECDSA public key (ES256/384).
ecdsa_public_key = ""
# Path of a JWKS file; the key is chosen by the token's kid. When set, it is the only key source.
jwks_file = ""
# When set, tokens must carry this aud / iss.
audience = ""
issuer = ""
# After a reload (SIGHUP) that changes the keys above or a key file's content, the previous
# keys still verify for this long, while clients refresh their tokens. "0s" ends them at once
# (a leaked key).
rotation_grace = "1h"

[api]
# Key for X-API-Key or "Authorization: apikey <key>" (generated for this file by herald genconfig).
# Empty: the API and /metrics answer only requests made on this host (loopback peer and Host,
# no foreign Origin, Content-Type: application/json).
key = "{{api_key}}"
# Most commands in one batch request; a larger batch is refused before any command runs.
max_batch_commands = 1000

[channel]
# Longest channel name accepted.
max_length = 255
# A channel's stream position (epoch, offset) outlives its last publication this long.
history_meta_ttl = "30days"
# Most history streams kept in memory (memory broker). Only publications create streams; at the
# limit, streams with nothing left to recover go first, then the least recently published to.
max_streams = 1000000
# Largest publication accepted from any source (data + tags + client info, bytes); larger ones are
# refused (error 106) or, from feeds, dropped and counted. At most client.max_outbox_bytes / 4.
# Unset: 65536, or client.max_outbox_bytes / 4 when that is smaller.
# max_publication_bytes = 65536

# Options of channels without a namespace prefix. Namespaces below take the same options.
[channel.without_namespace]
# Keep presence information (who is subscribed).
presence = false
# Send join/leave pushes to subscribers that ask for them (force_push_join_leave: to all).
join_leave = false
force_push_join_leave = false
# Publications kept per channel and for how long (both needed for history and recovery).
history_size = 0
history_ttl = "0s"
# Recover missed publications for every subscriber on reconnect.
force_recovery = false
# Who may subscribe without a subscription token ("$" channels always need one).
allow_subscribe_for_client = false
allow_subscribe_for_anonymous = false
# Who may publish, read presence and read history from the client side.
allow_publish_for_subscriber = false
allow_publish_for_client = false
allow_publish_for_anonymous = false
allow_presence_for_subscriber = false
allow_presence_for_client = false
allow_presence_for_anonymous = false
allow_history_for_subscriber = false
allow_history_for_client = false
allow_history_for_anonymous = false
# Most publications one client history call returns (a larger limit, or -1, is capped).
client_history_max_limit = 300
# Most publications one subscribe recovery replays (and at most client.max_outbox_bytes of data);
# a recovery that needs more replays the oldest and answers recovered: false.
recovery_max_publications = 300
# Delta compression a subscriber may ask for (delta: "fossil" in its subscribe): ["fossil"] or [].
allowed_delta_types = []
# Channels "name#alice,bob" may be subscribed to by the listed users only.
allow_user_limited_channels = false
# Storm control (docs/storm-control.md). Deliver each channel's publications in windows: one frame
# per interval, encoded once for all its subscribers on this node. The interval is the larger of
# batch_window (at most "60s") and 1/max_rate (deliveries per second); "0s" and 0: one by one.
batch_window = "0s"
max_rate = 0
# Latest-value conflation: a JSON pointer into the data ("/device") or a tag ("tag:symbol"); empty:
# off. Needs history. Only the latest value per key is delivered per window, a subscribe gets the
# latest value of every key, and a slow subscriber is resynced instead of disconnected.
conflation_key = ""
# Most keys remembered per conflated channel (the least recently updated is forgotten first).
conflation_max_keys = 100000
# A window whose estimated size reaches this many bytes is delivered early. On windowed channels
# without conflation, keep it well below client.max_outbox_bytes.
window_max_bytes = 262144
# Backend hooks (docs/hooks.md): the backend decides subscribes without a subscription token
# (needs proxy.subscribe_endpoint) and checks or rewrites client publishes (proxy.publish_endpoint).
proxy_subscribe = false
proxy_publish = false

# A namespace: channels named "chat:<anything>" use these options. Copy the block per namespace.
# [[channel.namespaces]]
# name = "chat"
# presence = true
# join_leave = true
# history_size = 100
# history_ttl = "5m"
# force_recovery = true
# allow_subscribe_for_client = true
# allow_publish_for_subscriber = true
# allow_presence_for_subscriber = true
# allow_history_for_subscriber = true
#
# A live map: at most one frame per second, with the latest position of each device.
# [[channel.namespaces]]
# name = "fleet"
# history_size = 1000
# history_ttl = "1m"
# allow_subscribe_for_client = true
# batch_window = "1s"
# conflation_key = "/device"

[broker]
# How nodes share publications, history, presence and the node registry (docs/scaling.md).
# "memory": one node. "redis": every node with the same redis_addresses and prefix is one cluster.
# "redis_cluster": the same over a Redis Cluster (sharded pub/sub); redis_addresses are seed nodes.
# "nats": every node with the same nats_urls and prefix is one cluster (history in JetStream,
# no conflation, see docs).
kind = "memory"
# Tried in order when (re)connecting: "redis://[:password@]host:port[/db]" or "host:port"
# (redis_cluster: any reachable seed is enough).
redis_addresses = ["redis://127.0.0.1:6379"]
# NATS servers: "nats://[user:password@]host:port" or "host:port".
nats_urls = ["nats://127.0.0.1:4222"]
# JetStream KV buckets hold presence and the node registry; without JetStream presence is refused.
nats_jetstream = true
nats_presence_bucket = "herald_presence"
nats_nodes_bucket = "herald_nodes"
# Prefix of every Redis key and pub/sub channel, or of every NATS subject; one per cluster (or test).
prefix = "herald"
connect_timeout = "1s"
# A command slower than this counts as Redis unreachable: the node reports not ready and reconnects.
command_timeout = "1s"
# Presence entries of a node that died vanish within this time.
presence_ttl = "1m"
# Each node writes its registry entry (info API) this often; the entry lives three intervals.
node_announce_interval = "3s"
# Reconnection backoff starts at 50ms and doubles up to this.
max_reconnect_delay = "2s"
# Redis: messages a pub/sub connection queues for the node; a node this far behind reconnects and
# the subscribers of what it missed recover from history (instead of memory growing).
max_queued_messages = 65536

[proxy]
# Calls to your application backend in Centrifugo's HTTP proxy format (docs/hooks.md). Each hook is
# off while its endpoint is empty. Endpoints are http:// URLs (https is not supported).
# connect: a client connecting without a token is authenticated by the backend.
connect_endpoint = ""
# refresh: called when a connection the backend authenticated reaches its expire_at.
refresh_endpoint = ""
# subscribe / publish: for namespaces with proxy_subscribe / proxy_publish = true.
subscribe_endpoint = ""
publish_endpoint = ""
# rpc: every client rpc (without it: error 108). send: every client send, not waited for.
rpc_endpoint = ""
send_endpoint = ""
# Deadline of one call, connect to last byte. A late backend gives the client error 100
# "backend timeout" (connect: close 3004).
timeout = "3s"
# Most calls in flight per node; one more fails at once with "backend busy".
max_concurrent = 256
# WebSocket handshake headers copied to every call. Cookie and Authorization are sent by a browser
# for any site's page, so forwarding them with a hook configured needs http.allowed_origins.
forward_headers = ["Cookie", "Authorization"]

[webhooks]
# Signed event notifications POSTed to url (docs/hooks.md); empty url: off.
url = ""
# HMAC-SHA256 key of the X-Herald-Signature header; required when url is set.
secret = ""
# Any of disconnect, channel_occupied, channel_vacated, join, leave.
events = ["disconnect", "channel_occupied", "channel_vacated", "join", "leave"]
# Events waiting for delivery; when full, new events are dropped (herald_webhooks_dropped).
queue_size = 10000
# Further attempts after a failure (non-2xx, timeout, refused), waiting retry_backoff, then doubling.
retries = 3
retry_backoff = "500ms"
# Deadline of one attempt.
timeout = "5s"

[pusher]
# Pusher Channels for the apps below (docs/pusher.md): the WebSocket protocol (pusher-js,
# Laravel Echo) at /app/<key> where clients connect, and the HTTP API where the server API is:
# POST /apps/<id>/events and /apps/<id>/batch_events, GET /apps/<id>/channels[/<name>[/users]],
# POST /apps/<id>/users/<user>/terminate_connections.
# Largest data of one event (API or client event), in bytes.
max_event_bytes = 10240
# Signed requests further than this from the server's clock are refused.
timestamp_window = "10m"
# Told to WebSocket clients: each side pings after this long without a message; a client that
# does not answer within client.pong_timeout is closed (4201).
activity_timeout = "2m"
# Client events one connection may send per second; the excess gets a pusher:error 4301.
client_event_rate = 10
# One [[pusher.apps]] table per app:
# [[pusher.apps]]
# id = "1"
# key = "app-key"
# secret = "app-secret"
# # Pusher channel "orders" is Herald channel "<namespace>:orders" ("" for none).
# namespace = ""
# # Clients may send client-* events on private and presence channels.
# client_events = false
# # WebSocket connections of this app on one node (0: only the node's limits).
# max_connections = 0
# # Distinct users on one presence channel.
# max_presence_members = 100
# # Pusher webhooks of this app, signed with its key and secret ("" for none); the queue,
# # retries and timeouts are [webhooks]'s.
# webhook_url = ""
# webhook_events = ["channel_occupied", "channel_vacated", "member_added", "member_removed", "cache_miss"]

[devices]
# GPS device ingest (docs/devices.md): tracker listeners, an on-disk spool and a database writer.
enabled = false
# Accept any device; when false only the ids in allowed may connect (others are disconnected).
accept_unknown = true
allowed = []
# Each position is published to <device_channel_prefix><imei> and to fleet_channel ("" disables it).
# Configure a namespace for them (e.g. "devices", batch_window and conflation_key = "/device").
device_channel_prefix = "devices:"
fleet_channel = "devices:fleet"
# Accepted positions go to this spool first; devices are acknowledged only after that.
# Positions the database rejects are moved to quarantine.jsonl in this directory.
spool_dir = "data/spool"
# When the spool reaches this size, devices are no longer read (TCP backpressure).
spool_max_bytes = 1073741824
# "always" (fsync before every acknowledgement), "every <duration>" or "never".
fsync = "every 100ms"
# "sqlite:<path>" or "postgres://user:password@host/database".
store = "sqlite:data/herald.db"
# A new connection must identify itself (login, IMEI handshake, a frame with its id) within this.
login_timeout = "30s"
# An identified connection silent for this long is closed.
idle_timeout = "15m"
# Open connections per device listener; more are closed at accept (counted in
# herald_device_connections_refused).
max_connections = 50000
# Open device connections from one address over all device listeners; 0 is unlimited.
# A fleet behind one carrier NAT / APN gateway shares an address: raise it for such fleets.
max_connections_per_ip = 500
# Device ids kept in memory; when full the disconnected ones seen longest ago are forgotten.
max_devices = 100000

[devices.listen]
# Traccar's ports; "" disables a protocol.
gt06 = "0.0.0.0:5023"
h02 = "0.0.0.0:5013"
teltonika = "0.0.0.0:5027"
# OsmAnd / Traccar Client, HTTP.
osmand = "0.0.0.0:5055"
# Herald JSON lines.
jsonl = "0.0.0.0:5099"

# [devices.tls]
# TLS on chosen TCP device listeners (gt06, h02, teltonika, jsonl); the others stay plain.
# The handshake counts against login_timeout.
# cert = "/etc/herald/tls/devices-fullchain.pem"
# key = "/etc/herald/tls/devices-privkey.pem"
# protocols = ["gt06", "teltonika"]

[map]
# The live map page at /map (docs/map.md): device positions, trails and track replay. It reads
# the fleet channel, so it needs [devices] and a token allowed to see devices.fleet_channel.
enabled = true
# Tile URL template with {z}, {x} and {y}; "" draws a plain grid without tiles. The browser
# fetches the tiles, so it needs access to this server, not Herald.
tile_url = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
# Shown in the corner of the map; most tile providers require it.
attribution = "© OpenStreetMap contributors"

[admin]
# The admin console at /admin (docs/operations.md#admin-console), on the internal listener when
# http.internal_listen is set. Served only when password or token is set (generated for this file
# by herald genconfig); set enabled = false to turn it off anyway.
enabled = true
# Password of the login form (at least 12 characters).
password = "{{admin_password}}"
# Bearer token for scripts (Authorization: Bearer <token>); "" accepts none.
token = ""
# Signs session cookies and CSRF tokens. Use the same value on every node behind one load balancer;
# "" uses a random key per process (sessions then end at restart and work on one node only).
secret = "{{admin_secret}}"
# A session lasts this long after login.
session_ttl = "12h"
# Login attempts per minute from one IP address; more are refused (429).
login_attempts_per_minute = 10

# Upstream WebSocket feeds (none by default), each consumed by exactly one node; see docs/feeds.md.
# [[feeds]]
# name = "trades"
# kind = "websocket"             # or "redis" (PSUBSCRIBE patterns) or "nats" (subjects)
# url = "wss://stream.example.com/ws"
# subscribe = []                 # redis patterns ["ticker:*"] or nats subjects ["ticks.>"]
# payload = "json"               # or "text": any text, published as a JSON string
# send = ['{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}']
# match = { "/e" = "trade" }
# channel = "market:{/s}"
# data = ""
# tags = { symbol = "{/s}" }
# heartbeat_interval = "15s"
# idle_timeout = "60s"
# connect_timeout = "10s"
# reconnect_min = "200ms"
# reconnect_max = "10s"
# lease_ttl = "2s"
# max_message_bytes = 1048576
"#;

/// The template with placeholders replaced by the given secrets, and a fresh admin password and
/// session secret.
pub fn render(hmac_secret: &str, api_key: &str) -> String {
    render_all(hmac_secret, api_key, &random_secret(), &random_secret())
}

/// The template with every placeholder replaced by the given secrets.
pub fn render_all(
    hmac_secret: &str,
    api_key: &str,
    admin_password: &str,
    admin_secret: &str,
) -> String {
    TEMPLATE
        .replace("{{hmac_secret}}", hmac_secret)
        .replace("{{api_key}}", api_key)
        .replace("{{admin_password}}", admin_password)
        .replace("{{admin_secret}}", admin_secret)
}

/// A random URL-safe secret of 32 bytes.
pub fn random_secret() -> String {
    use base64::Engine as _;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn template_states_the_real_defaults() {
        let rendered = render_all("s3cret", "k3y", "admin-passw0rd", &"z".repeat(43));
        let dir = std::env::temp_dir().join(format!("herald-template-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("herald.toml");
        std::fs::write(&path, &rendered).unwrap();
        let parsed = Config::load(Some(&path), std::iter::empty(), &[]).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let mut expected = Config::default();
        expected.client.token.hmac_secret = "s3cret".into();
        expected.api.key = "k3y".into();
        expected.admin.password = "admin-passw0rd".into();
        expected.admin.secret = "z".repeat(43);
        assert_eq!(
            toml::to_string(&parsed).unwrap(),
            toml::to_string(&expected).unwrap()
        );
    }

    #[test]
    fn secrets_are_random() {
        assert_ne!(random_secret(), random_secret());
        assert!(random_secret().len() >= 43);
        let a = render("s", "k");
        let b = render("s", "k");
        assert_ne!(a, b, "each file gets its own admin password and secret");
        assert!(!a.contains("{{"), "a placeholder is left");
    }
}
