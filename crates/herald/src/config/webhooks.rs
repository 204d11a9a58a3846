//! `[webhooks]`: signed event notifications to the backend (docs/hooks.md).

use super::error::{field, positive, ConfigError};
use super::proxy::parse_http_url;
use super::words::not_one_of;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Event names a webhook may carry.
pub const WEBHOOK_EVENTS: [&str; 5] = [
    "disconnect",
    "channel_occupied",
    "channel_vacated",
    "join",
    "leave",
];

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

impl WebhooksConfig {
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (i, event) in self.events.iter().enumerate() {
            if !WEBHOOK_EVENTS.contains(&event.as_str()) {
                return Err(field(
                    format!("webhooks.events[{i}]"),
                    not_one_of(event, &WEBHOOK_EVENTS),
                ));
            }
        }
        if self.timeout.is_zero() {
            return Err(positive("webhooks.timeout"));
        }
        if self.queue_size == 0 {
            return Err(positive("webhooks.queue_size"));
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

#[cfg(test)]
mod tests {
    use crate::config::load::tests::load_str;

    #[test]
    fn webhooks_are_validated_naming_the_field() {
        let e = load_str("[webhooks]\nevents = [\"join\", \"jion\"]\n", &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("webhooks.events[1]"), "{e}");
        assert!(
            e.to_string()
                .contains("\"jion\" is not one of \"disconnect\""),
            "{e}"
        );
        let e = load_str("[webhooks]\nurl = \"http://127.0.0.1:9/hook\"\n", &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("webhooks.secret"), "{e}");
    }
}
