//! `[client]`: limits and timers of each WebSocket connection.

use super::error::{field, positive, ConfigError};
use super::token::TokenConfig;
use serde::{Deserialize, Serialize};
use std::time::Duration;

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
    /// How long a connection stays open after its token expired, for the client's `refresh` to
    /// arrive (SDKs refresh around the expiry, not before it); then it closes with 3005.
    #[serde(with = "humantime_serde")]
    pub expired_close_delay: Duration,
    /// The same for a subscription token and `sub_refresh`; then the subscription ends with 2501.
    #[serde(with = "humantime_serde")]
    pub expired_sub_close_delay: Duration,
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
            expired_close_delay: Duration::from_secs(25),
            expired_sub_close_delay: Duration::from_secs(25),
            token: TokenConfig::default(),
        }
    }
}

impl ClientConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("client.connect_timeout", self.connect_timeout),
            ("client.ping_interval", self.ping_interval),
            ("client.pong_timeout", self.pong_timeout),
            ("client.write_timeout", self.write_timeout),
        ] {
            if value.is_zero() {
                return Err(positive(name));
            }
        }
        for (name, value) in [
            ("client.max_connections", self.max_connections),
            ("client.max_message_size", self.max_message_size),
            ("client.max_commands_per_frame", self.max_commands_per_frame),
            ("client.max_channels", self.max_channels),
            ("client.max_outbox_bytes", self.max_outbox_bytes),
            ("client.max_outbox_messages", self.max_outbox_messages),
        ] {
            if value == 0 {
                return Err(positive(name));
            }
        }
        // A rate with no burst would refuse everything.
        for (rate, burst, burst_name, rate_name) in [
            (
                self.connection_rate_per_ip,
                self.connection_burst_per_ip,
                "client.connection_burst_per_ip",
                "connection_rate_per_ip",
            ),
            (
                self.max_ping_rate,
                self.ping_burst,
                "client.ping_burst",
                "max_ping_rate",
            ),
            (
                self.command_rate,
                self.command_burst,
                "client.command_burst",
                "command_rate",
            ),
        ] {
            if rate > 0 && burst == 0 {
                return Err(field(
                    burst_name,
                    format!("must be greater than zero when {rate_name} is set"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load::tests::load_str;
    use crate::config::Config;
    use std::time::Duration;

    #[test]
    fn hostile_client_limits_are_validated_naming_the_field() {
        let c = Config::default();
        assert_eq!(c.client.send_buffer, 256 << 10, "bounded by default");
        assert_eq!(c.client.write_timeout, Duration::from_secs(10));
        assert_eq!(c.channel.without_namespace.client_history_max_limit, 300);
        for (text, named) in [
            ("[client]\nwrite_timeout = \"0s\"\n", "client.write_timeout"),
            ("[client]\nping_burst = 0\n", "client.ping_burst"),
            (
                "[channel.without_namespace]\nclient_history_max_limit = 0\n",
                "channel.without_namespace.client_history_max_limit",
            ),
        ] {
            let e = load_str(text, &[], &[]).unwrap_err();
            assert_eq!(e.field(), Some(named), "{e}");
        }
        assert!(load_str("[client]\nmax_ping_rate = 0\nping_burst = 0\n", &[], &[]).is_ok());
    }

    #[test]
    fn durations_and_counts_are_typed() {
        let c = load_str("", &[], &[]).unwrap();
        assert_eq!(c.client.ping_interval, Duration::from_secs(25));
        let e = load_str("[client]\nping_interval = \"soon\"\n", &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("client.ping_interval"), "{e}");
        let e = load_str("[client]\nmax_channels = 0\n", &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("client.max_channels"), "{e}");
    }
}
