//! Commands sent by clients. One WebSocket text frame may carry several JSON commands separated by
//! newlines (SDKs batch them); an empty object `{}` is the client's pong.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// Raw embedded JSON (`data`, `info`): kept as text so it is forwarded without re-encoding.
pub type Json = Box<RawValue>;

#[derive(Debug, Default, Deserialize)]
pub struct Command {
    #[serde(default)]
    pub id: u32,
    pub connect: Option<ConnectRequest>,
    pub subscribe: Option<SubscribeRequest>,
    pub unsubscribe: Option<ChannelRequest>,
    pub publish: Option<PublishRequest>,
    pub presence: Option<ChannelRequest>,
    pub presence_stats: Option<ChannelRequest>,
    pub history: Option<HistoryRequest>,
    pub ping: Option<Empty>,
    pub send: Option<SendRequest>,
    pub rpc: Option<RpcRequest>,
    pub refresh: Option<RefreshRequest>,
    pub sub_refresh: Option<SubRefreshRequest>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Empty {}

#[derive(Debug, Default, Deserialize)]
pub struct ConnectRequest {
    #[serde(default)]
    pub token: String,
    pub data: Option<Json>,
    #[serde(default)]
    pub subs: BTreeMap<String, SubscribeRequest>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct SubscribeRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub recover: bool,
    #[serde(default)]
    pub epoch: String,
    #[serde(default)]
    pub offset: u64,
    pub data: Option<Json>,
    #[serde(default)]
    pub positioned: bool,
    #[serde(default)]
    pub recoverable: bool,
    #[serde(default)]
    pub join_leave: bool,
    #[serde(default)]
    pub delta: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct ChannelRequest {
    #[serde(default)]
    pub channel: String,
}

#[derive(Debug, Deserialize)]
pub struct PublishRequest {
    #[serde(default)]
    pub channel: String,
    pub data: Option<Json>,
}

#[derive(Debug, Default, Deserialize, Clone, PartialEq, Eq)]
pub struct StreamPosition {
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub epoch: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct HistoryRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub limit: i32,
    pub since: Option<StreamPosition>,
    #[serde(default)]
    pub reverse: bool,
}

#[derive(Debug, Deserialize)]
pub struct SendRequest {
    pub data: Option<Json>,
}

#[derive(Debug, Deserialize)]
pub struct RpcRequest {
    pub data: Option<Json>,
    #[serde(default)]
    pub method: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct RefreshRequest {
    #[serde(default)]
    pub token: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct SubRefreshRequest {
    #[serde(default)]
    pub channel: String,
    #[serde(default)]
    pub token: String,
}

/// The one request a command carries.
#[derive(Debug)]
pub enum Method {
    /// `{}`: the client's answer to a server ping.
    Pong,
    Connect(ConnectRequest),
    Subscribe(SubscribeRequest),
    Unsubscribe(ChannelRequest),
    Publish(PublishRequest),
    Presence(ChannelRequest),
    PresenceStats(ChannelRequest),
    History(HistoryRequest),
    Ping,
    Send(SendRequest),
    Rpc(RpcRequest),
    Refresh(RefreshRequest),
    SubRefresh(SubRefreshRequest),
    /// A command with an id but no request the server knows (newer SDK or a typo).
    Unknown,
    /// A command whose request could not be taken as sent: a Protobuf `bytes` payload that is not
    /// JSON. Answered with error 107 naming `field` ([`Method::invalid_error`]); the connection stays.
    Invalid {
        method: &'static str,
        field: &'static str,
    },
}

impl Method {
    /// Stable name for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Pong => "pong",
            Method::Connect(_) => "connect",
            Method::Subscribe(_) => "subscribe",
            Method::Unsubscribe(_) => "unsubscribe",
            Method::Publish(_) => "publish",
            Method::Presence(_) => "presence",
            Method::PresenceStats(_) => "presence_stats",
            Method::History(_) => "history",
            Method::Ping => "ping",
            Method::Send(_) => "send",
            Method::Rpc(_) => "rpc",
            Method::Refresh(_) => "refresh",
            Method::SubRefresh(_) => "sub_refresh",
            Method::Unknown => "unknown",
            Method::Invalid { method, .. } => method,
        }
    }

    /// The reply to [`Method::Invalid`]: bad request (107), naming the field.
    pub fn invalid_error(field: &str) -> crate::ReplyError {
        crate::ReplyError {
            code: crate::ErrorCode::BadRequest.code(),
            message: format!("bad request: {field} must be JSON (UTF-8 text of one JSON value)"),
            temporary: false,
        }
    }
}

impl Command {
    /// Splits the command into its id and its single request.
    pub fn into_method(self) -> Result<(u32, Method), DecodeError> {
        let mut found: Vec<Method> = Vec::with_capacity(1);
        let Command {
            id,
            connect,
            subscribe,
            unsubscribe,
            publish,
            presence,
            presence_stats,
            history,
            ping,
            send,
            rpc,
            refresh,
            sub_refresh,
        } = self;
        found.extend(connect.map(Method::Connect));
        found.extend(subscribe.map(Method::Subscribe));
        found.extend(unsubscribe.map(Method::Unsubscribe));
        found.extend(publish.map(Method::Publish));
        found.extend(presence.map(Method::Presence));
        found.extend(presence_stats.map(Method::PresenceStats));
        found.extend(history.map(Method::History));
        found.extend(ping.map(|_| Method::Ping));
        found.extend(send.map(Method::Send));
        found.extend(rpc.map(Method::Rpc));
        found.extend(refresh.map(Method::Refresh));
        found.extend(sub_refresh.map(Method::SubRefresh));
        match (found.len(), id) {
            (0, 0) => Ok((0, Method::Pong)),
            (0, _) => Ok((id, Method::Unknown)),
            (1, _) => Ok((id, found.pop().unwrap_or(Method::Unknown))),
            _ => Err(DecodeError::SeveralRequests),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("frame is not valid UTF-8")]
    InvalidUtf8,
    #[error("invalid JSON command: {0}")]
    InvalidJson(String),
    #[error("a command carries more than one request")]
    SeveralRequests,
    #[error("a frame carries more than {0} commands")]
    TooManyCommands(usize),
    #[error("empty frame")]
    Empty,
    #[error("a message's length prefix is cut off by the end of the frame")]
    TruncatedLength,
    #[error("a message's length prefix is not a valid varint")]
    MalformedLength,
    #[error("a message declares {declared} bytes but the frame has {remaining} left")]
    LengthExceedsFrame { declared: u64, remaining: usize },
    #[error("invalid Protobuf command: {0}")]
    InvalidProtobuf(String),
}

/// Decodes every command of one frame. `max_commands` bounds the work one frame can cause.
pub fn decode_frame(frame: &[u8], max_commands: usize) -> Result<Vec<(u32, Method)>, DecodeError> {
    let text = std::str::from_utf8(frame).map_err(|_| DecodeError::InvalidUtf8)?;
    let mut out = Vec::new();
    for item in serde_json::Deserializer::from_str(text).into_iter::<Command>() {
        let command = item.map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
        if out.len() == max_commands {
            return Err(DecodeError::TooManyCommands(max_commands));
        }
        out.push(command.into_method()?);
    }
    if out.is_empty() {
        return Err(DecodeError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_several_commands_per_frame() {
        let frame = br#"{"id":1,"connect":{"token":"t","name":"js"}}
{"id":2,"subscribe":{"channel":"news","recover":true,"offset":5,"epoch":"ab"}}
{}"#;
        let cmds = decode_frame(frame, 100).unwrap();
        assert_eq!(cmds.len(), 3);
        match &cmds[0] {
            (1, Method::Connect(c)) => assert_eq!((c.token.as_str(), c.name.as_str()), ("t", "js")),
            other => panic!("unexpected {other:?}"),
        }
        match &cmds[1] {
            (2, Method::Subscribe(s)) => {
                assert!(s.recover);
                assert_eq!(s.offset, 5);
                assert_eq!(s.epoch.as_str(), "ab");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(cmds[2], (0, Method::Pong)));
    }

    #[test]
    fn publish_keeps_data_verbatim() {
        let cmds = decode_frame(
            br#"{"id":3,"publish":{"channel":"c","data":{"a": [1, 2]}}}"#,
            10,
        )
        .unwrap();
        match &cmds[0] {
            (3, Method::Publish(p)) => {
                assert_eq!(p.data.as_ref().unwrap().get(), r#"{"a": [1, 2]}"#)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_bad_input_with_typed_errors() {
        assert_eq!(
            decode_frame(b"\xff\xfe", 10).unwrap_err(),
            DecodeError::InvalidUtf8
        );
        assert!(matches!(
            decode_frame(b"{not json", 10),
            Err(DecodeError::InvalidJson(_))
        ));
        assert!(matches!(
            decode_frame(b"[1,2]", 10),
            Err(DecodeError::InvalidJson(_))
        ));
        assert!(matches!(
            decode_frame(br#"{"id":"x"}"#, 10),
            Err(DecodeError::InvalidJson(_))
        ));
        assert_eq!(decode_frame(b"  ", 10).unwrap_err(), DecodeError::Empty);
        assert_eq!(
            decode_frame(br#"{"id":1,"ping":{},"presence":{"channel":"a"}}"#, 10).unwrap_err(),
            DecodeError::SeveralRequests
        );
        assert_eq!(
            decode_frame(b"{}\n{}\n{}", 2).unwrap_err(),
            DecodeError::TooManyCommands(2)
        );
    }

    #[test]
    fn unknown_method_with_id_is_reported_not_dropped() {
        let cmds = decode_frame(br#"{"id":7,"teleport":{}}"#, 10).unwrap();
        assert!(matches!(cmds[0], (7, Method::Unknown)));
    }

    #[test]
    fn never_panics_on_truncated_frames() {
        let frame = br#"{"id":1,"connect":{"token":"t","subs":{"a":{"recover":true,"offset":1}}}}"#;
        for len in 0..frame.len() {
            let _ = decode_frame(&frame[..len], 10);
        }
    }
}
