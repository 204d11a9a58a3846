//! Messages the server sends, encoded as the text of one WebSocket frame.
//!
//! The `data` encoding follows what Pusher documents and pusher-js expects:
//!
//! | event | `data` |
//! | --- | --- |
//! | `pusher:connection_established` | string holding `{"socket_id","activity_timeout"}` |
//! | `pusher_internal:subscription_succeeded` | string: `{}`, or `{"presence":{"ids","hash","count"}}` |
//! | `pusher_internal:member_added` / `_removed` | string: `{"user_id","user_info"}` / `{"user_id"}` |
//! | `pusher_internal:subscription_count` | string: `{"subscription_count"}` |
//! | channel events (API triggers, client events) | the event's data string, as triggered |
//! | `pusher:error` | object `{"code","message"}` |
//! | `pusher:signin_success` | object `{"user_data"}` (user_data itself a string) |
//! | `pusher:subscription_error` | object `{"type","error","status"}` |
//! | `pusher:ping` / `pusher:pong` | object `{}` |
//! | `pusher:cache_miss` | none |
//!
//! pusher-js parses any string `data` as JSON when it can and otherwise keeps the string, so the
//! string form of the `pusher_internal:` events is what lets clients read their fields.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::codes::ErrorCode;
use crate::socket_id::SocketId;
use crate::user::PresenceMember;

/// Seconds of silence after which a client should ping, told in `connection_established`. 120 is
/// the protocol's recommended value and pusher-js's default; the client uses the smaller of this
/// and its own setting.
pub const DEFAULT_ACTIVITY_TIMEOUT_SECS: u32 = 120;

/// `pusher:connection_established`. pusher-js refuses a handshake whose activity timeout is 0, so
/// 0 is sent as 1.
pub fn connection_established(socket_id: &SocketId, activity_timeout_secs: u32) -> String {
    let data = json!({
        "socket_id": socket_id.as_str(),
        "activity_timeout": activity_timeout_secs.max(1),
    });
    frame(
        "pusher:connection_established",
        None,
        Some(&data.to_string()),
        None,
    )
}

/// `pusher:error`. The code is optional in the protocol.
pub fn error(code: Option<ErrorCode>, message: &str) -> String {
    let data = match code {
        Some(code) => json!({"code": code.code(), "message": message}),
        None => json!({"message": message}),
    };
    object_frame("pusher:error", None, &data)
}

/// A server-initiated `pusher:ping`, for clients that do not answer WebSocket pings.
pub fn ping() -> String {
    object_frame("pusher:ping", None, &json!({}))
}

/// The answer to a client's `pusher:ping`.
pub fn pong() -> String {
    object_frame("pusher:pong", None, &json!({}))
}

/// `pusher_internal:subscription_succeeded` for any channel but presence.
pub fn subscription_succeeded(channel: &str) -> String {
    frame(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        Some("{}"),
        None,
    )
}

/// `pusher_internal:subscription_succeeded` for a presence channel: the members present,
/// including the new one. A user with several connections is listed once (the first entry wins).
pub fn presence_subscription_succeeded<'a>(
    channel: &str,
    members: impl IntoIterator<Item = &'a PresenceMember>,
) -> String {
    let mut ids = Vec::new();
    let mut hash = BTreeMap::new();
    for member in members {
        if !hash.contains_key(member.user_id.as_str()) {
            ids.push(member.user_id.as_str());
            let info = member.user_info.clone().unwrap_or(Value::Null);
            hash.insert(member.user_id.as_str(), info);
        }
    }
    let data = json!({"presence": {"ids": ids, "hash": hash, "count": ids.len()}});
    frame(
        "pusher_internal:subscription_succeeded",
        Some(channel),
        Some(&data.to_string()),
        None,
    )
}

/// `pusher_internal:member_added`, sent to the other subscribers when a user's first connection
/// joins a presence channel.
pub fn member_added(channel: &str, member: &PresenceMember) -> String {
    let data = match &member.user_info {
        Some(info) => json!({"user_id": member.user_id, "user_info": info}),
        None => json!({"user_id": member.user_id}),
    };
    frame(
        "pusher_internal:member_added",
        Some(channel),
        Some(&data.to_string()),
        None,
    )
}

/// `pusher_internal:member_removed`, when a user's last connection leaves a presence channel.
pub fn member_removed(channel: &str, user_id: &str) -> String {
    let data = json!({"user_id": user_id});
    frame(
        "pusher_internal:member_removed",
        Some(channel),
        Some(&data.to_string()),
        None,
    )
}

/// `pusher_internal:subscription_count`; pusher-js turns it into `pusher:subscription_count`.
pub fn subscription_count(channel: &str, count: u64) -> String {
    let data = json!({"subscription_count": count});
    frame(
        "pusher_internal:subscription_count",
        Some(channel),
        Some(&data.to_string()),
        None,
    )
}

/// `pusher:subscription_error` on a channel: pusher-js hands it to the channel's
/// `pusher:subscription_error` bindings (Laravel Echo's `error()` callback). `error_type` is
/// what pusher-js itself reports for authorization failures, `AuthError`.
pub fn subscription_error(channel: &str, error_type: &str, error: &str, status: u16) -> String {
    let data = json!({"type": error_type, "error": error, "status": status});
    object_frame("pusher:subscription_error", Some(channel), &data)
}

/// `pusher:cache_miss`: a cache channel was subscribed to while it had nothing cached.
pub fn cache_miss(channel: &str) -> String {
    frame("pusher:cache_miss", Some(channel), None, None)
}

/// `pusher:signin_success`, echoing the `user_data` string that was signed.
pub fn signin_success(user_data: &str) -> String {
    object_frame(
        "pusher:signin_success",
        None,
        &json!({"user_data": user_data}),
    )
}

/// A channel event: an API trigger, a replayed cache event or a client event. `data` is sent as
/// a JSON string; `user_id` is the sender of a client event on a presence channel.
pub fn event(event: &str, channel: &str, data: Option<&str>, user_id: Option<&str>) -> String {
    frame(event, Some(channel), data, user_id)
}

/// `{"event":..,"channel":..,"data":<string>,"user_id":..}` with absent parts left out.
fn frame(event: &str, channel: Option<&str>, data: Option<&str>, user_id: Option<&str>) -> String {
    let len = event.len()
        + channel.map_or(0, str::len)
        + data.map_or(0, |d| d.len() + d.len() / 8)
        + user_id.map_or(0, str::len)
        + 48;
    let mut out = String::with_capacity(len);
    out.push_str("{\"event\":");
    push_json_string(&mut out, event);
    if let Some(channel) = channel {
        out.push_str(",\"channel\":");
        push_json_string(&mut out, channel);
    }
    if let Some(data) = data {
        out.push_str(",\"data\":");
        push_json_string(&mut out, data);
    }
    if let Some(user_id) = user_id {
        out.push_str(",\"user_id\":");
        push_json_string(&mut out, user_id);
    }
    out.push('}');
    out
}

/// A frame whose `data` is a JSON object rather than a string.
fn object_frame(event: &str, channel: Option<&str>, data: &Value) -> String {
    let mut out = String::from("{\"event\":");
    push_json_string(&mut out, event);
    if let Some(channel) = channel {
        out.push_str(",\"channel\":");
        push_json_string(&mut out, channel);
    }
    out.push_str(",\"data\":");
    out.push_str(&data.to_string());
    out.push('}');
    out
}

/// Appends `s` as a JSON string literal.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).expect("valid JSON")
    }

    /// What pusher-js's decodeMessage does: parse the frame, then parse `data` if it is a string
    /// holding JSON.
    fn as_pusher_js_sees_it(text: &str) -> Value {
        let mut v = parse(text);
        if let Some(Value::String(s)) = v.get("data") {
            if let Ok(inner) = serde_json::from_str::<Value>(s) {
                v["data"] = inner;
            }
        }
        v
    }

    #[test]
    fn connection_established_double_encodes_data() {
        let id = SocketId::parse("123.456").expect("valid");
        let text = connection_established(&id, 120);
        let v = parse(&text);
        assert_eq!(v["event"], "pusher:connection_established");
        assert!(v["data"].is_string(), "data must be a JSON string: {text}");
        assert_eq!(
            as_pusher_js_sees_it(&text)["data"],
            json!({"socket_id": "123.456", "activity_timeout": 120})
        );
        let zero = as_pusher_js_sees_it(&connection_established(&id, 0));
        assert_eq!(zero["data"]["activity_timeout"], 1);
    }

    #[test]
    fn errors_carry_code_and_message() {
        let v = parse(&error(Some(ErrorCode::Unauthorized), "Invalid signature"));
        assert_eq!(
            v,
            json!({"event": "pusher:error", "data": {"code": 4009, "message": "Invalid signature"}})
        );
        let v = parse(&error(None, "x"));
        assert_eq!(v["data"], json!({"message": "x"}));
    }

    #[test]
    fn ping_pong() {
        assert_eq!(parse(&pong()), json!({"event": "pusher:pong", "data": {}}));
        assert_eq!(parse(&ping()), json!({"event": "pusher:ping", "data": {}}));
    }

    #[test]
    fn subscription_succeeded_public_and_presence() {
        let v = as_pusher_js_sees_it(&subscription_succeeded("my-channel"));
        assert_eq!(
            v,
            json!({"event": "pusher_internal:subscription_succeeded", "channel": "my-channel", "data": {}})
        );

        // The members of the protocol doc's example, one of them connected twice.
        let phil = PresenceMember {
            user_id: "11814b369700141b222a3f3791cec2d9".into(),
            user_info: Some(json!({"name": "Phil Leggetter", "twitter": "@leggetter"})),
        };
        let max = PresenceMember {
            user_id: "71dd6a29da2a4833336d2a964becf820".into(),
            user_info: Some(json!({"name": "Max Williams", "twitter": "@maxthelion"})),
        };
        let text =
            presence_subscription_succeeded("presence-example-channel", [&phil, &max, &phil]);
        assert!(parse(&text)["data"].is_string());
        assert_eq!(
            as_pusher_js_sees_it(&text),
            json!({
                "event": "pusher_internal:subscription_succeeded",
                "channel": "presence-example-channel",
                "data": {"presence": {
                    "ids": ["11814b369700141b222a3f3791cec2d9", "71dd6a29da2a4833336d2a964becf820"],
                    "hash": {
                        "11814b369700141b222a3f3791cec2d9": {"name": "Phil Leggetter", "twitter": "@leggetter"},
                        "71dd6a29da2a4833336d2a964becf820": {"name": "Max Williams", "twitter": "@maxthelion"}
                    },
                    "count": 2
                }}
            })
        );
    }

    #[test]
    fn member_events() {
        let m = PresenceMember {
            user_id: "11814b369700141b222a3f3791cec2d9".into(),
            user_info: Some(json!({"name": "Phil Leggetter"})),
        };
        let v = as_pusher_js_sees_it(&member_added("presence-example-channel", &m));
        assert_eq!(
            v,
            json!({
                "event": "pusher_internal:member_added",
                "channel": "presence-example-channel",
                "data": {"user_id": "11814b369700141b222a3f3791cec2d9", "user_info": {"name": "Phil Leggetter"}}
            })
        );
        let v = as_pusher_js_sees_it(&member_removed("presence-example-channel", "11814b"));
        assert_eq!(v["data"], json!({"user_id": "11814b"}));
        assert_eq!(v["event"], "pusher_internal:member_removed");
    }

    #[test]
    fn counts_cache_misses_and_sign_in() {
        let v = as_pusher_js_sees_it(&subscription_count("my-channel", 3));
        assert_eq!(v["data"], json!({"subscription_count": 3}));
        assert_eq!(
            parse(&cache_miss("cache-x")),
            json!({"event": "pusher:cache_miss", "channel": "cache-x"})
        );
        let v = parse(&signin_success(r#"{"id":"1"}"#));
        assert_eq!(
            v,
            json!({"event": "pusher:signin_success", "data": {"user_data": "{\"id\":\"1\"}"}})
        );
        let v = parse(&subscription_error(
            "private-a",
            "AuthError",
            "Invalid signature",
            401,
        ));
        assert_eq!(v["channel"], "private-a");
        assert_eq!(
            v["data"],
            json!({"type": "AuthError", "error": "Invalid signature", "status": 401})
        );
    }

    #[test]
    fn channel_events_send_data_as_a_string() {
        // The HTTP API worked example's event, as a subscriber receives it.
        let text = event("foo", "project-3", Some(r#"{"some":"data"}"#), None);
        assert_eq!(
            text,
            r#"{"event":"foo","channel":"project-3","data":"{\"some\":\"data\"}"}"#
        );
        let text = event(
            "client-x",
            "presence-a",
            Some("line\nbreak \u{1}"),
            Some("u1"),
        );
        assert_eq!(
            parse(&text),
            json!({"event": "client-x", "channel": "presence-a", "data": "line\nbreak \u{1}", "user_id": "u1"})
        );
        assert_eq!(
            parse(&event("e", "c", None, None)),
            json!({"event": "e", "channel": "c"})
        );
    }
}
