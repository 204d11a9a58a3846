//! The wire format of the proxy hooks, which is Centrifugo's HTTP proxy format: the JSON request
//! Herald sends, the answers it accepts, and how an answer becomes what the session needs.

use super::HookError;
use base64::Engine as _;
use herald_protocol::ReplyError;
use http::{HeaderName, HeaderValue};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// Who is asking: the connection's identity and the handshake headers to forward.
pub struct HookCtx<'a> {
    pub client: &'a str,
    pub user: &'a str,
    pub meta: Option<&'a RawValue>,
    pub headers: &'a [(HeaderName, HeaderValue)],
}

type Json = Box<RawValue>;

/// The request body; which fields are present depends on the hook, as in Centrifugo.
#[derive(Serialize)]
pub(super) struct Request<'a> {
    pub(super) client: &'a str,
    pub(super) transport: &'static str,
    pub(super) protocol: &'static str,
    pub(super) encoding: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) method: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) data: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) meta: Option<&'a RawValue>,
}

impl<'a> Request<'a> {
    pub(super) fn new(ctx: &HookCtx<'a>, with_user: bool) -> Request<'a> {
        Request {
            client: ctx.client,
            transport: "websocket",
            protocol: "json",
            encoding: "json",
            user: with_user.then_some(ctx.user),
            name: None,
            version: None,
            channel: None,
            method: None,
            data: None,
            meta: ctx.meta,
        }
    }
}

#[derive(Deserialize)]
struct Response {
    /// Decoded per hook in `decode`, after the empty-array check.
    #[serde(default)]
    result: Option<Json>,
    #[serde(default)]
    error: Option<BackendError>,
    #[serde(default)]
    disconnect: Option<BackendDisconnect>,
}

#[derive(Deserialize)]
struct BackendError {
    code: u32,
    #[serde(default)]
    message: String,
    #[serde(default)]
    temporary: bool,
}

#[derive(Deserialize)]
struct BackendDisconnect {
    code: u16,
    #[serde(default)]
    reason: String,
}

/// What the backend decided.
#[derive(Debug)]
pub enum Outcome<T> {
    /// Allowed, with the (possibly empty) result.
    Ok(T),
    /// Refused: this error goes to the client as the command's reply.
    Error(ReplyError),
    /// The connection is closed with this code and reason.
    Disconnect(u16, String),
}

/// The backend's `result` for connect.
#[derive(Debug, Default, Deserialize)]
pub struct ConnectResult {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub expire_at: i64,
    pub info: Option<Json>,
    pub b64info: Option<String>,
    pub data: Option<Json>,
    pub b64data: Option<String>,
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub subs: BTreeMap<String, SubOptions>,
    pub meta: Option<Json>,
}

/// Per-channel options of a connect result's `subs`. `override` is accepted and ignored.
#[derive(Debug, Default, Deserialize)]
pub struct SubOptions {
    pub info: Option<Json>,
    pub b64info: Option<String>,
    pub data: Option<Json>,
    pub b64data: Option<String>,
}

/// The backend's `result` for subscribe. `override` is accepted and ignored.
#[derive(Debug, Default, Deserialize)]
pub struct SubscribeResult {
    pub info: Option<Json>,
    pub b64info: Option<String>,
    pub data: Option<Json>,
    pub b64data: Option<String>,
    #[serde(default)]
    pub expire_at: i64,
}

/// The backend's `result` for publish: `data` replaces what the client sent.
#[derive(Debug, Default, Deserialize)]
pub struct PublishResult {
    pub data: Option<Json>,
    pub b64data: Option<String>,
    #[serde(default)]
    pub skip_history: bool,
}

/// The backend's `result` for rpc: `data` is the reply to the client.
#[derive(Debug, Default, Deserialize)]
pub struct RpcResult {
    pub data: Option<Json>,
    pub b64data: Option<String>,
}

/// The backend's `result` for refresh.
#[derive(Debug, Default, Deserialize)]
pub struct RefreshResult {
    #[serde(default)]
    pub expired: bool,
    #[serde(default)]
    pub expire_at: i64,
    pub info: Option<Json>,
    pub b64info: Option<String>,
}

/// A hook's `result` type and what the session gets from it: embedded JSON decoded and checked
/// here, so a bad `b64info` counts as a failed call like any other bad answer.
pub trait Answer: DeserializeOwned + Default {
    type Out;
    fn finish(self) -> Result<Self::Out, HookError>;
}

/// What a subscribe hook granted.
#[derive(Debug, Default)]
pub struct Subscribed {
    pub info: Option<Json>,
    pub data: Option<Json>,
    pub expire_at: Option<i64>,
}

/// What a publish hook allowed: replacement data, and whether to keep it out of history.
#[derive(Debug, Default)]
pub struct Published {
    pub data: Option<Json>,
    pub skip_history: bool,
}

/// What a refresh hook decided.
#[derive(Debug, Default)]
pub struct Refreshed {
    pub expired: bool,
    pub expire_at: Option<i64>,
    pub info: Option<Json>,
}

impl Answer for ConnectResult {
    type Out = Identity;
    fn finish(self) -> Result<Identity, HookError> {
        self.into_identity()
    }
}

impl Answer for SubscribeResult {
    type Out = Subscribed;
    fn finish(self) -> Result<Subscribed, HookError> {
        Ok(Subscribed {
            info: embedded(self.info, self.b64info, "info")?,
            data: embedded(self.data, self.b64data, "data")?,
            expire_at: (self.expire_at > 0).then_some(self.expire_at),
        })
    }
}

impl Answer for PublishResult {
    type Out = Published;
    fn finish(self) -> Result<Published, HookError> {
        Ok(Published {
            data: embedded(self.data, self.b64data, "data")?,
            skip_history: self.skip_history,
        })
    }
}

impl Answer for RpcResult {
    type Out = Option<Json>;
    fn finish(self) -> Result<Option<Json>, HookError> {
        embedded(self.data, self.b64data, "data")
    }
}

impl Answer for RefreshResult {
    type Out = Refreshed;
    fn finish(self) -> Result<Refreshed, HookError> {
        Ok(Refreshed {
            expired: self.expired,
            expire_at: (self.expire_at > 0).then_some(self.expire_at),
            info: embedded(self.info, self.b64info, "info")?,
        })
    }
}

/// `send` answers are read (so the connection can be reused) and ignored.
impl Answer for serde_json::Value {
    type Out = ();
    fn finish(self) -> Result<(), HookError> {
        Ok(())
    }
}

/// Embedded JSON from `info`/`data` or their base64 forms. The client protocol here is JSON, so a
/// base64 value must decode to JSON text.
pub fn embedded(
    json: Option<Json>,
    b64: Option<String>,
    field: &str,
) -> Result<Option<Json>, HookError> {
    if let Some(json) = json {
        return Ok(Some(herald_protocol::single_line(json)));
    }
    let Some(b64) = b64 else {
        return Ok(None);
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|_| HookError::BadResponse(format!("b64{field} is not base64")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| HookError::BadResponse(format!("b64{field} is not UTF-8 JSON")))?;
    RawValue::from_string(text)
        .map(|v| Some(herald_protocol::single_line(v)))
        .map_err(|_| {
            HookError::BadResponse(format!(
                "b64{field} is not JSON (the client protocol is JSON)"
            ))
        })
}

/// Decodes an answer: exactly what Centrifugo backends send. A body that is not a JSON object is a
/// bad response; an object without `result`, `error` or `disconnect` allows with an empty result.
pub(super) fn decode<T: Answer>(answer: &[u8]) -> Result<Outcome<T::Out>, HookError> {
    let response: Response = serde_json::from_slice(answer)
        .map_err(|e| HookError::BadResponse(format!("not the expected JSON: {e}")))?;
    if let Some(d) = response.disconnect {
        if !(3000..=4999).contains(&d.code) {
            return Err(HookError::BadResponse(format!(
                "disconnect code {} is outside 3000..=4999",
                d.code
            )));
        }
        return Ok(Outcome::Disconnect(d.code, d.reason));
    }
    if let Some(e) = response.error {
        return Ok(Outcome::Error(ReplyError {
            code: e.code,
            message: e.message,
            temporary: e.temporary,
        }));
    }
    let result = match response.result {
        // PHP's json_encode writes an empty array for `['result' => []]`: read it as `{}`.
        Some(raw) if raw.get().trim() != "[]" && raw.get().trim() != "null" => {
            serde_json::from_str::<T>(raw.get())
                .map_err(|e| HookError::BadResponse(format!("result: {e}")))?
        }
        _ => T::default(),
    };
    Ok(Outcome::Ok(result.finish()?))
}

/// A connection as the connect hook described it, with embedded JSON decoded.
#[derive(Debug, Default)]
pub struct Identity {
    pub user: String,
    pub info: Option<Json>,
    pub data: Option<Json>,
    pub expire_at: Option<i64>,
    /// Server-side subscriptions: (channel, channel info, subscribe data).
    pub channels: Vec<(String, Option<Json>, Option<Json>)>,
    pub meta: Option<Json>,
}

impl ConnectResult {
    pub fn into_identity(self) -> Result<Identity, HookError> {
        let mut channels: Vec<(String, Option<Json>, Option<Json>)> =
            self.channels.into_iter().map(|c| (c, None, None)).collect();
        for (channel, options) in self.subs {
            let info = embedded(options.info, options.b64info, "info")?;
            let data = embedded(options.data, options.b64data, "data")?;
            channels.retain(|(c, _, _)| *c != channel);
            channels.push((channel, info, data));
        }
        Ok(Identity {
            user: self.user,
            info: embedded(self.info, self.b64info, "info")?,
            data: embedded(self.data, self.b64data, "data")?,
            expire_at: (self.expire_at > 0).then_some(self.expire_at),
            channels,
            meta: self.meta.map(herald_protocol::single_line),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_answer_shape() {
        let ok = decode::<ConnectResult>(
            br#"{"result":{"user":"42","expire_at":1700000000,"b64info":"eyJhIjoxfQ==","channels":["a"],"subs":{"b":{"data":{"x":1}}}}}"#,
        )
        .unwrap();
        let Outcome::Ok(id) = ok else {
            panic!("{ok:?}")
        };
        assert_eq!(id.user, "42");
        assert_eq!(id.expire_at, Some(1700000000));
        assert_eq!(id.info.unwrap().get(), r#"{"a":1}"#);
        assert_eq!(id.channels.len(), 2);
        let err = decode::<RpcResult>(br#"{"error":{"code":1000,"message":"nope"}}"#).unwrap();
        assert!(matches!(err, Outcome::Error(ReplyError { code: 1000, .. })));
        let d = decode::<RpcResult>(br#"{"disconnect":{"code":4501,"reason":"bye"}}"#).unwrap();
        assert!(matches!(d, Outcome::Disconnect(4501, _)));
        assert!(decode::<RpcResult>(br#"{"disconnect":{"code":1,"reason":"x"}}"#).is_err());
        assert!(decode::<RpcResult>(b"<html>").is_err());
        assert!(decode::<RpcResult>(b"[1]").is_err());
        assert!(decode::<RpcResult>(br#"{"result":{"b64data":"%%%"}}"#).is_err());
        assert!(decode::<RpcResult>(br#"{"result":{"b64data":"bm90IGpzb24="}}"#).is_err());
        let php_empty = decode::<SubscribeResult>(br#"{"result":[]}"#).unwrap();
        assert!(matches!(
            php_empty,
            Outcome::Ok(Subscribed { info: None, .. })
        ));
        assert!(decode::<SubscribeResult>(br#"{"result":[1]}"#).is_err());
        let empty = decode::<PublishResult>(b"{}").unwrap();
        assert!(matches!(empty, Outcome::Ok(Published { data: None, .. })));
    }
}
