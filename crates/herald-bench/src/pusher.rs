//! The Pusher Channels client protocol (version 7) as the load generator speaks it: the handshake
//! of a subscriber (`pusher:connection_established`, then `pusher:subscribe` with a channel
//! signature computed from the app secret for `private-` channels), client events, and the HTTP
//! API's signed `batch_events`. Any Pusher server: Herald's Pusher edge (`/app/<key>`) or
//! Sockudo.

use crate::wsclient::Ws;
use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_websockets::Message;

/// Events per `batch_events` request: the Pusher HTTP API's limit.
pub const MAX_BATCH_EVENTS: usize = 10;

/// The event name of the bench's publications (a client event must start with `client-`).
pub const CLIENT_EVENT: &str = "client-bench";
pub const API_EVENT: &str = "bench";

/// The Pusher app the subscribers connect to.
#[derive(clap::Args, Clone, Debug)]
pub struct PusherArgs {
    /// Pusher app id (the HTTP API's `/apps/<id>/...`).
    #[arg(
        id = "pusher_app_id",
        long = "pusher-app-id",
        default_value = "bench-app"
    )]
    pub app_id: String,
    /// Pusher app key (the WebSocket path `/app/<key>` and signatures).
    #[arg(
        id = "pusher_key",
        long = "pusher-key",
        default_value = "bench-app-key"
    )]
    pub key: String,
    /// Pusher app secret: signs `private-` subscriptions and API requests.
    #[arg(
        id = "pusher_secret",
        long = "pusher-secret",
        default_value = "bench-app-secret"
    )]
    pub secret: String,
}

impl Default for PusherArgs {
    fn default() -> Self {
        PusherArgs {
            app_id: "bench-app".into(),
            key: "bench-app-key".into(),
            secret: "bench-app-secret".into(),
        }
    }
}

/// The WebSocket path of an app, as pusher-js 8.6 asks for it.
pub fn path(key: &str) -> String {
    format!("/app/{key}?protocol=7&client=js&version=8.6.0")
}

/// Reads `pusher:connection_established`, subscribes to every channel (signing `private-` and
/// `private-encrypted-` ones), and waits for each `pusher_internal:subscription_succeeded`.
/// Returns the socket id.
pub async fn handshake(
    ws: &mut Ws,
    app: &PusherArgs,
    channels: &[String],
) -> anyhow::Result<String> {
    let established = next_event(ws).await?;
    if established["event"] != "pusher:connection_established" {
        bail!("expected pusher:connection_established, got {established}");
    }
    let data = string_or_object(&established["data"])?;
    let socket_id = data["socket_id"]
        .as_str()
        .context("connection_established without a socket_id")?
        .to_string();
    for channel in channels {
        ws.send(Message::text(subscribe(app, &socket_id, channel)))
            .await?;
    }
    let mut pending = channels.len();
    while pending > 0 {
        let event = next_event(ws).await?;
        match event["event"].as_str().unwrap_or("") {
            "pusher_internal:subscription_succeeded" => pending -= 1,
            "pusher:error" | "pusher:subscription_error" => bail!("subscribe failed: {event}"),
            _ => {}
        }
    }
    Ok(socket_id)
}

/// `pusher:subscribe`; `auth` is signed for channels that need it, empty otherwise (as pusher-js
/// sends it for public channels).
pub fn subscribe(app: &PusherArgs, socket_id: &str, channel: &str) -> String {
    let auth = if channel.starts_with("private-") {
        herald_pusher::auth::channel_auth(&app.key, &app.secret, socket_id, channel, None)
    } else {
        String::new()
    };
    json!({"event": "pusher:subscribe", "data": {"auth": auth, "channel": channel}}).to_string()
}

/// A client event carrying `data` as a JSON object (what pusher-js's `channel.trigger` sends).
pub fn client_event(channel: &str, data: &Value) -> String {
    json!({"event": CLIENT_EVENT, "channel": channel, "data": data}).to_string()
}

/// The answer to a server's `pusher:ping` (WebSocket pings are answered by the WebSocket layer).
pub fn heartbeat_reply(payload: &[u8]) -> Option<Message> {
    (payload.len() < 96 && memchr::memmem::find(payload, b"\"pusher:ping\"").is_some())
        .then(|| Message::text(r#"{"event":"pusher:pong","data":{}}"#))
}

/// A refusal the server sent on this connection (`pusher:error`), if the frame is one.
pub fn error(payload: &[u8]) -> Option<String> {
    memchr::memmem::find(payload, b"\"pusher:error\"")
        .map(|_| String::from_utf8_lossy(payload).into_owned())
}

/// The body and signed path of one `POST /apps/<id>/batch_events` holding `items`
/// (`(channel, data)`, at most [`MAX_BATCH_EVENTS`]): each event's `data` is the JSON text of the
/// publication, as the server SDKs send it.
pub fn batch_request(
    app: &PusherArgs,
    items: &[(String, Value)],
    timestamp: u64,
) -> (String, String) {
    let batch: Vec<Value> = items
        .iter()
        .map(|(channel, data)| json!({"name": API_EVENT, "channel": channel, "data": data.to_string()}))
        .collect();
    let body = json!({ "batch": batch }).to_string();
    let path = format!("/apps/{}/batch_events", app.app_id);
    let query = herald_pusher::http_auth::sign_request(
        &app.key,
        &app.secret,
        "POST",
        &path,
        &[],
        body.as_bytes(),
        timestamp,
    );
    (format!("{path}?{query}"), body)
}

async fn next_event(ws: &mut Ws) -> anyhow::Result<Value> {
    loop {
        let Some(message) = ws.next().await else {
            bail!("closed during the Pusher handshake")
        };
        let message = message?;
        if let Some(text) = message.as_text() {
            return serde_json::from_str(text)
                .with_context(|| format!("not a Pusher message: {text:.120}"));
        }
    }
}

/// Pusher sends the `data` of its own events as a string holding JSON; accept an object too.
fn string_or_object(data: &Value) -> anyhow::Result<Value> {
    match data {
        Value::String(text) => Ok(serde_json::from_str(text)?),
        other => Ok(other.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_subscriptions_are_signed_with_the_app_secret() {
        let app = PusherArgs {
            app_id: "1".into(),
            key: "278d425bdf160c739803".into(),
            secret: "7ad3773142a6692b25b8".into(),
        };
        // The worked example of Pusher's channel authorization documentation.
        let v: Value =
            serde_json::from_str(&subscribe(&app, "1234.1234", "private-foobar")).unwrap();
        assert_eq!(
            v["data"]["auth"],
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        let v: Value = serde_json::from_str(&subscribe(&app, "1234.1234", "public")).unwrap();
        assert_eq!(v["data"]["auth"], "");
    }

    #[test]
    fn pings_are_answered_and_errors_noticed() {
        assert!(heartbeat_reply(br#"{"event":"pusher:ping","data":{}}"#).is_some());
        assert!(
            heartbeat_reply(br#"{"event":"client-bench","channel":"c","data":"{}"}"#).is_none()
        );
        assert!(error(br#"{"event":"pusher:error","data":{"code":4301}}"#).is_some());
    }

    #[test]
    fn batches_are_signed_over_their_body() {
        let app = PusherArgs::default();
        let items = vec![("c".to_string(), json!({"t": 1}))];
        let (path, body) = batch_request(&app, &items, 1_700_000_000);
        assert!(path.starts_with("/apps/bench-app/batch_events?auth_key=bench-app-key&"));
        assert!(path.contains("&auth_signature="));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["batch"][0]["data"], "{\"t\":1}");
    }
}
