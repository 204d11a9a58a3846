//! Messages a client sends: one JSON object per WebSocket text frame, `{"event": .., "data": ..,
//! "channel": ..}`.
//!
//! What pusher-js sends (protocol 7):
//!
//! | event | shape |
//! | --- | --- |
//! | `pusher:ping` | `{"event":"pusher:ping","data":{}}` |
//! | `pusher:pong` | `{"event":"pusher:pong","data":{}}` (answering a server `pusher:ping`) |
//! | `pusher:subscribe` | `{"event":"pusher:subscribe","data":{"auth":"..","channel_data":"..","channel":".."}}`; public channels carry `"auth":""`, and `channel_data` only comes with presence |
//! | `pusher:unsubscribe` | `{"event":"pusher:unsubscribe","data":{"channel":".."}}` |
//! | `pusher:signin` | `{"event":"pusher:signin","data":{"auth":"..","user_data":".."}}` |
//! | `client-*` | `{"event":"client-x","data":<any JSON>,"channel":".."}` |
//!
//! `data` of the `pusher:` events is an object; a JSON string holding that object (the form other
//! client libraries double-encode to) is accepted too. A client event's `data` may be any JSON
//! value: [`ClientEvent::data`] keeps it as the string other subscribers must receive (a string
//! as is, anything else as its JSON text, byte for byte as sent).

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::channel::{ChannelName, ChannelNameError};

/// Longest event name, in bytes (the limit the Pusher server SDKs apply).
pub const MAX_EVENT_NAME_LEN: usize = 200;

/// Prefix every event a client publishes must carry.
pub const CLIENT_EVENT_PREFIX: &str = "client-";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    Ping,
    Pong,
    Subscribe(Subscribe),
    Unsubscribe { channel: ChannelName },
    Signin { auth: String, user_data: String },
    ClientEvent(ClientEvent),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub channel: ChannelName,
    /// `None` when absent or empty (pusher-js sends `""` for public channels).
    pub auth: Option<String>,
    /// The presence member, as the JSON string the app server signed.
    pub channel_data: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientEvent {
    pub event: String,
    pub channel: ChannelName,
    /// What subscribers receive as `data`; `None` when the client sent none.
    pub data: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message is not a JSON object with an event name: {0}")]
    Json(String),
    #[error("{event} data is not valid: {reason}")]
    BadData { event: &'static str, reason: String },
    #[error("client event needs a channel")]
    MissingChannel,
    #[error("channel {channel:?}: {source}")]
    Channel {
        channel: String,
        source: ChannelNameError,
    },
    #[error("event name is {len} bytes long, at most 200 are allowed")]
    EventNameTooLong { len: usize },
    #[error("event {0:?} is not accepted from clients: client events must start with client-")]
    UnsupportedEvent(String),
}

#[derive(Deserialize)]
struct Frame<'a> {
    event: String,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct SubscribeData {
    channel: String,
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    channel_data: Option<String>,
}

#[derive(Deserialize)]
struct UnsubscribeData {
    channel: String,
}

#[derive(Deserialize)]
struct SigninData {
    auth: String,
    user_data: String,
}

/// Decodes one text frame from a client.
pub fn decode(text: &str) -> Result<ClientMessage, DecodeError> {
    let frame: Frame<'_> =
        serde_json::from_str(text).map_err(|e| DecodeError::Json(e.to_string()))?;
    match frame.event.as_str() {
        "pusher:ping" => Ok(ClientMessage::Ping),
        "pusher:pong" => Ok(ClientMessage::Pong),
        "pusher:subscribe" => {
            let data: SubscribeData = object_data("pusher:subscribe", frame.data)?;
            Ok(ClientMessage::Subscribe(Subscribe {
                channel: channel(&data.channel)?,
                auth: data.auth.filter(|a| !a.is_empty()),
                channel_data: data.channel_data,
            }))
        }
        "pusher:unsubscribe" => {
            let data: UnsubscribeData = object_data("pusher:unsubscribe", frame.data)?;
            Ok(ClientMessage::Unsubscribe {
                channel: channel(&data.channel)?,
            })
        }
        "pusher:signin" => {
            let data: SigninData = object_data("pusher:signin", frame.data)?;
            Ok(ClientMessage::Signin {
                auth: data.auth,
                user_data: data.user_data,
            })
        }
        name if name.starts_with(CLIENT_EVENT_PREFIX) => {
            if name.len() > MAX_EVENT_NAME_LEN {
                return Err(DecodeError::EventNameTooLong { len: name.len() });
            }
            let name_channel = frame
                .channel
                .as_deref()
                .ok_or(DecodeError::MissingChannel)?;
            let channel = channel(name_channel)?;
            Ok(ClientMessage::ClientEvent(ClientEvent {
                event: name.to_owned(),
                channel,
                data: wire_data(frame.data).map_err(|reason| DecodeError::BadData {
                    event: "client event",
                    reason,
                })?,
            }))
        }
        name => Err(DecodeError::UnsupportedEvent(truncate(name))),
    }
}

/// `data` as the string subscribers receive: strings unwrapped, other JSON values verbatim.
pub(crate) fn wire_data(data: Option<&RawValue>) -> Result<Option<String>, String> {
    match data {
        None => Ok(None),
        Some(raw) if raw.get().starts_with('"') => serde_json::from_str::<String>(raw.get())
            .map(Some)
            .map_err(|e| e.to_string()),
        Some(raw) => Ok(Some(raw.get().to_owned())),
    }
}

fn object_data<T: for<'de> Deserialize<'de>>(
    event: &'static str,
    data: Option<&RawValue>,
) -> Result<T, DecodeError> {
    let bad = |reason: String| DecodeError::BadData { event, reason };
    let raw = data.ok_or_else(|| bad("missing".into()))?.get();
    if raw.starts_with('"') {
        // Double-encoded: a string holding the object.
        let inner: String = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
        serde_json::from_str(&inner).map_err(|e| bad(e.to_string()))
    } else {
        serde_json::from_str(raw).map_err(|e| bad(e.to_string()))
    }
}

fn channel(name: &str) -> Result<ChannelName, DecodeError> {
    ChannelName::parse(name).map_err(|source| DecodeError::Channel {
        channel: truncate(name),
        source,
    })
}

/// Error messages quote client input; this keeps them short.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscribe(text: &str) -> Subscribe {
        match decode(text) {
            Ok(ClientMessage::Subscribe(s)) => s,
            other => panic!("{text}: {other:?}"),
        }
    }

    fn client_event(text: &str) -> ClientEvent {
        match decode(text) {
            Ok(ClientMessage::ClientEvent(e)) => e,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn pings_and_pongs() {
        assert_eq!(
            decode(r#"{"event":"pusher:ping","data":{}}"#),
            Ok(ClientMessage::Ping)
        );
        assert_eq!(
            decode(r#"{"event":"pusher:pong","data":{}}"#),
            Ok(ClientMessage::Pong)
        );
        assert_eq!(
            decode(r#"{"event":"pusher:ping"}"#),
            Ok(ClientMessage::Ping)
        );
    }

    #[test]
    fn public_subscribe_as_pusher_js_sends_it() {
        // pusher-js authorizes public channels with {auth: ""} and channel_data undefined,
        // which JSON.stringify drops.
        let s =
            subscribe(r#"{"event":"pusher:subscribe","data":{"auth":"","channel":"my-channel"}}"#);
        assert_eq!(s.channel.as_str(), "my-channel");
        assert_eq!((s.auth, s.channel_data), (None, None));
    }

    #[test]
    fn presence_subscribe_from_the_protocol_docs() {
        let s = subscribe(
            r#"{"event":"pusher:subscribe","data":{"channel":"presence-example-channel","auth":"<APP_KEY>:<server_generated_signature>","channel_data":"{ \"user_id\": \"<unique_user_id>\", \"user_info\": { \"name\": \"Phil Leggetter\", \"twitter\": \"@leggetter\", \"blogUrl\":\"http://blog.pusher.com\" } }"}}"#,
        );
        assert!(s.channel.is_presence());
        assert_eq!(
            s.auth.as_deref(),
            Some("<APP_KEY>:<server_generated_signature>")
        );
        let data = s.channel_data.expect("channel_data");
        assert!(
            data.starts_with(r#"{ "user_id": "<unique_user_id>""#),
            "{data}"
        );
    }

    #[test]
    fn double_encoded_data_is_accepted() {
        let s = subscribe(
            r#"{"event":"pusher:subscribe","data":"{\"channel\":\"private-a\",\"auth\":\"k:s\"}"}"#,
        );
        assert_eq!(
            (s.channel.as_str(), s.auth.as_deref()),
            ("private-a", Some("k:s"))
        );
    }

    #[test]
    fn unsubscribe_and_signin() {
        assert_eq!(
            decode(r#"{"event":"pusher:unsubscribe","data":{"channel":"my-channel"}}"#),
            Ok(ClientMessage::Unsubscribe {
                channel: ChannelName::parse("my-channel").expect("valid")
            })
        );
        assert_eq!(
            decode(
                r#"{"event":"pusher:signin","data":{"auth":"k:s","user_data":"{\"id\":\"1\"}"}}"#
            ),
            Ok(ClientMessage::Signin {
                auth: "k:s".into(),
                user_data: r#"{"id":"1"}"#.into()
            })
        );
    }

    #[test]
    fn client_event_data_keeps_its_wire_form() {
        // pusher-js: channel.trigger("client-event", {"some": "data"}).
        let e = client_event(
            r#"{"event":"client-event","data":{"some": "data"},"channel":"private-channel"}"#,
        );
        assert_eq!(e.event, "client-event");
        assert_eq!(e.channel.as_str(), "private-channel");
        assert_eq!(e.data.as_deref(), Some(r#"{"some": "data"}"#));
        let e =
            client_event(r#"{"event":"client-x","data":"plain \"text\"","channel":"presence-a"}"#);
        assert_eq!(e.data.as_deref(), Some(r#"plain "text""#));
        let e = client_event(r#"{"event":"client-x","data":42,"channel":"presence-a"}"#);
        assert_eq!(e.data.as_deref(), Some("42"));
        let e = client_event(r#"{"event":"client-x","channel":"presence-a"}"#);
        assert_eq!(e.data, None);
    }

    #[test]
    fn refusals_say_why() {
        assert!(matches!(decode("not json"), Err(DecodeError::Json(_))));
        assert!(matches!(
            decode(r#"{"data":{}}"#),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(decode(r#"[1]"#), Err(DecodeError::Json(_))));
        assert!(matches!(
            decode(r#"{"event":"pusher:subscribe"}"#),
            Err(DecodeError::BadData {
                event: "pusher:subscribe",
                ..
            })
        ));
        assert!(matches!(
            decode(
                r#"{"event":"pusher:subscribe","data":{"channel":"x","channel_data":{"user_id":1}}}"#
            ),
            Err(DecodeError::BadData { .. })
        ));
        assert!(matches!(
            decode(r#"{"event":"pusher:signin","data":{"auth":"k:s"}}"#),
            Err(DecodeError::BadData {
                event: "pusher:signin",
                ..
            })
        ));
        assert!(matches!(
            decode(r#"{"event":"pusher:subscribe","data":{"channel":"bad name"}}"#),
            Err(DecodeError::Channel { ref channel, .. }) if channel == "bad name"
        ));
        assert_eq!(
            decode(r#"{"event":"client-x","data":{}}"#),
            Err(DecodeError::MissingChannel)
        );
        let long = format!(
            r#"{{"event":"client-{}","channel":"private-a"}}"#,
            "x".repeat(200)
        );
        assert_eq!(
            decode(&long),
            Err(DecodeError::EventNameTooLong { len: 207 })
        );
        assert_eq!(
            decode(r#"{"event":"my-event","channel":"private-a","data":{}}"#),
            Err(DecodeError::UnsupportedEvent("my-event".into()))
        );
        assert!(matches!(
            decode(r#"{"event":"pusher_internal:member_added","data":{}}"#),
            Err(DecodeError::UnsupportedEvent(_))
        ));
    }
}
