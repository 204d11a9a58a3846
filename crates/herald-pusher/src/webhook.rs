//! Webhooks: the body Pusher POSTs to an app's endpoint and its signature headers.
//!
//! Body: `{"time_ms": <unix ms>, "events": [{"name": .., ...}]}`; headers `X-Pusher-Key` (the app
//! key) and `X-Pusher-Signature` (hex HMAC-SHA256 of the exact body bytes, keyed by the app
//! secret), with `Content-Type: application/json` exactly: pusher-http-node's `WebHook` only
//! parses a body whose content type is that string, with no `charset` parameter.

use serde::{Deserialize, Serialize};

use crate::sign::{hmac_sha256_hex, verify_hmac_sha256_hex};

pub const KEY_HEADER: &str = "X-Pusher-Key";
pub const SIGNATURE_HEADER: &str = "X-Pusher-Signature";
pub const CONTENT_TYPE: &str = "application/json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookBody {
    /// When the webhook was made, unix milliseconds.
    pub time_ms: u64,
    pub events: Vec<WebhookEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum WebhookEvent {
    /// A channel got its first subscriber.
    ChannelOccupied { channel: String },
    /// A channel lost its last subscriber.
    ChannelVacated { channel: String },
    /// A user's first connection joined a presence channel.
    MemberAdded { channel: String, user_id: String },
    /// A user's last connection left a presence channel.
    MemberRemoved { channel: String, user_id: String },
    /// A client published an event; `user_id` only on presence channels.
    ClientEvent {
        channel: String,
        event: String,
        data: String,
        socket_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
    },
    /// A cache channel was subscribed to while it held nothing.
    CacheMiss { channel: String },
    /// A channel's subscription count changed (when the app enables subscription counting).
    SubscriptionCount {
        channel: String,
        subscription_count: u64,
    },
}

/// A webhook ready to POST: the body and its two headers' values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedWebhook {
    pub body: String,
    /// Value of [`KEY_HEADER`].
    pub key: String,
    /// Value of [`SIGNATURE_HEADER`].
    pub signature: String,
}

impl WebhookBody {
    /// Serializes and signs the body for the app with `key` and `secret`.
    pub fn sign(&self, key: &str, secret: &str) -> Result<SignedWebhook, serde_json::Error> {
        let body = serde_json::to_string(self)?;
        let signature = signature(secret, body.as_bytes());
        Ok(SignedWebhook {
            body,
            key: key.to_owned(),
            signature,
        })
    }
}

/// The `X-Pusher-Signature` of a webhook body.
pub fn signature(secret: &str, body: &[u8]) -> String {
    hmac_sha256_hex(secret.as_bytes(), body)
}

/// Checks an `X-Pusher-Signature`, in constant time.
pub fn verify(secret: &str, body: &[u8], signature: &str) -> bool {
    verify_hmac_sha256_hex(secret.as_bytes(), body, signature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn events_serialize_as_documented() {
        let body = WebhookBody {
            time_ms: 1327078148132,
            events: vec![
                WebhookEvent::ChannelOccupied {
                    channel: "my-channel".into(),
                },
                WebhookEvent::ChannelVacated {
                    channel: "my-channel".into(),
                },
                WebhookEvent::MemberAdded {
                    channel: "presence-your_channel_name".into(),
                    user_id: "a_user_id".into(),
                },
                WebhookEvent::MemberRemoved {
                    channel: "presence-your_channel_name".into(),
                    user_id: "a_user_id".into(),
                },
                WebhookEvent::ClientEvent {
                    channel: "private-a".into(),
                    event: "client-x".into(),
                    data: "{\"a\":1}".into(),
                    socket_id: "1.2".into(),
                    user_id: None,
                },
                WebhookEvent::CacheMiss {
                    channel: "cache-a".into(),
                },
                WebhookEvent::SubscriptionCount {
                    channel: "a".into(),
                    subscription_count: 2,
                },
            ],
        };
        let value: Value = serde_json::to_value(&body).expect("json");
        assert_eq!(
            value,
            json!({"time_ms": 1327078148132u64, "events": [
                {"name": "channel_occupied", "channel": "my-channel"},
                {"name": "channel_vacated", "channel": "my-channel"},
                {"name": "member_added", "channel": "presence-your_channel_name", "user_id": "a_user_id"},
                {"name": "member_removed", "channel": "presence-your_channel_name", "user_id": "a_user_id"},
                {"name": "client_event", "channel": "private-a", "event": "client-x", "data": "{\"a\":1}", "socket_id": "1.2"},
                {"name": "cache_miss", "channel": "cache-a"},
                {"name": "subscription_count", "channel": "a", "subscription_count": 2}
            ]})
        );
        let back: WebhookBody = serde_json::from_value(value).expect("round trip");
        assert_eq!(back, body);
    }

    #[test]
    fn presence_client_events_carry_the_user() {
        let e = WebhookEvent::ClientEvent {
            channel: "presence-a".into(),
            event: "client-x".into(),
            data: "d".into(),
            socket_id: "1.2".into(),
            user_id: Some("u".into()),
        };
        assert_eq!(serde_json::to_value(&e).expect("json")["user_id"], "u");
    }

    #[test]
    fn signed_webhooks_verify() {
        let body = WebhookBody {
            time_ms: 1,
            events: vec![WebhookEvent::ChannelOccupied {
                channel: "a".into(),
            }],
        };
        let signed = body.sign("key", "secret").expect("json");
        assert_eq!(signed.key, "key");
        assert_eq!(
            signed.signature,
            signature("secret", signed.body.as_bytes())
        );
        assert!(verify("secret", signed.body.as_bytes(), &signed.signature));
        assert!(!verify("other", signed.body.as_bytes(), &signed.signature));
        assert!(!verify("secret", b"{}", &signed.signature));
        // RFC 4231 test case 2: the signature is a plain HMAC-SHA256 of the body.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
