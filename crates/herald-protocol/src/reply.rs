//! Replies and pushes sent by the server, encoded as JSON into a caller-owned buffer.
//!
//! A publication push is the same bytes for every subscriber of a channel, so callers encode it once
//! ([`encode_publication_push`]) and share the result.

use crate::codes::ErrorCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

pub use crate::command::StreamPosition;

/// Raw embedded JSON owned by the value.
pub type Json = Box<RawValue>;

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

/// Who published, joined or left. Deserializable so brokers can carry it between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientInfo {
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub client: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_info: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chan_info: Option<Json>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publication {
    pub data: Json,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<ClientInfo>,
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Milliseconds since the Unix epoch when the server accepted the publication.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub time: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplyError {
    pub code: u32,
    pub message: String,
    #[serde(skip_serializing_if = "is_false")]
    pub temporary: bool,
}

impl From<ErrorCode> for ReplyError {
    fn from(code: ErrorCode) -> Self {
        ReplyError {
            code: code.code(),
            message: code.message().to_string(),
            temporary: code.temporary(),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct SubscribeResult {
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    #[serde(skip_serializing_if = "is_false")]
    pub recoverable: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<std::sync::Arc<Publication>>,
    #[serde(skip_serializing_if = "is_false")]
    pub recovered: bool,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
    #[serde(skip_serializing_if = "is_false")]
    pub positioned: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Json>,
    #[serde(skip_serializing_if = "is_false")]
    pub was_recovering: bool,
    /// Delta compression was negotiated (the subscribe asked for an allowed `delta` type).
    #[serde(skip_serializing_if = "is_false")]
    pub delta: bool,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct ConnectResult {
    pub client: String,
    pub version: String,
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Json>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub subs: BTreeMap<String, SubscribeResult>,
    /// Seconds between server pings; the client may close the connection when none arrives in time.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ping: u32,
    /// The server expects `{}` back for every ping.
    #[serde(skip_serializing_if = "is_false")]
    pub pong: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub time: i64,
    /// An emulated connection's secret, which its `/emulation` requests carry.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub session: String,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct RefreshResult {
    pub client: String,
    pub version: String,
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct SubRefreshResult {
    #[serde(skip_serializing_if = "is_false")]
    pub expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub ttl: u32,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct PresenceResult {
    pub presence: BTreeMap<String, ClientInfo>,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct PresenceStatsResult {
    pub num_clients: u32,
    pub num_users: u32,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct HistoryResult {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publications: Vec<std::sync::Arc<Publication>>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub offset: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RpcResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Json>,
}

/// The result part of a reply; the variant name is the JSON key.
#[derive(Debug)]
pub enum ReplyBody {
    Connect(ConnectResult),
    Subscribe(SubscribeResult),
    Unsubscribe,
    Publish,
    Presence(PresenceResult),
    PresenceStats(PresenceStatsResult),
    History(HistoryResult),
    Ping,
    Rpc(RpcResult),
    Refresh(RefreshResult),
    SubRefresh(SubRefreshResult),
    Error(ReplyError),
}

/// Appends `{"id":N,"<method>":{...}}` to `out`.
pub fn encode_reply(id: u32, body: &ReplyBody, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"id\":");
    out.extend_from_slice(id.to_string().as_bytes());
    let (key, value): (&str, Option<&dyn erased::Ser>) = match body {
        ReplyBody::Connect(r) => ("connect", Some(r)),
        ReplyBody::Subscribe(r) => ("subscribe", Some(r)),
        ReplyBody::Unsubscribe => ("unsubscribe", None),
        ReplyBody::Publish => ("publish", None),
        ReplyBody::Presence(r) => ("presence", Some(r)),
        ReplyBody::PresenceStats(r) => ("presence_stats", Some(r)),
        ReplyBody::History(r) => ("history", Some(r)),
        ReplyBody::Ping => ("ping", None),
        ReplyBody::Rpc(r) => ("rpc", Some(r)),
        ReplyBody::Refresh(r) => ("refresh", Some(r)),
        ReplyBody::SubRefresh(r) => ("sub_refresh", Some(r)),
        ReplyBody::Error(e) => ("error", Some(e)),
    };
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    match value {
        Some(v) => v.write_json(out),
        None => out.extend_from_slice(b"{}"),
    }
    out.push(b'}');
}

/// The server's ping: an empty reply.
pub const PING: &[u8] = b"{}";

/// What a push carries, besides its channel.
#[derive(Debug)]
pub enum PushBody<'a> {
    Publication(&'a Publication),
    Join(&'a ClientInfo),
    Leave(&'a ClientInfo),
    Unsubscribe { code: u32, reason: &'a str },
    Subscribe(&'a SubscribeResult),
    Message(&'a RawValue),
    Refresh { expires: bool, ttl: u32 },
}

#[derive(Serialize)]
struct InfoWrap<'a> {
    info: &'a ClientInfo,
}

#[derive(Serialize)]
struct UnsubscribeWrap<'a> {
    code: u32,
    reason: &'a str,
}

#[derive(Serialize)]
struct MessageWrap<'a> {
    data: &'a RawValue,
}

#[derive(Serialize)]
struct RefreshWrap {
    #[serde(skip_serializing_if = "is_false")]
    expires: bool,
    #[serde(skip_serializing_if = "is_zero_u32")]
    ttl: u32,
}

/// Appends `{"push":{"channel":"…","<kind>":{...}}}` to `out`. An empty channel is omitted
/// (personal messages have none).
pub fn encode_push(channel: &str, body: &PushBody<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"push\":{");
    if !channel.is_empty() {
        out.extend_from_slice(b"\"channel\":");
        write_json(&channel, out);
        out.push(b',');
    }
    let (key, value): (&str, &dyn erased::Ser) = match body {
        PushBody::Publication(p) => ("pub", *p),
        PushBody::Join(info) => ("join", &InfoWrap { info }),
        PushBody::Leave(info) => ("leave", &InfoWrap { info }),
        PushBody::Unsubscribe { code, reason } => (
            "unsubscribe",
            &UnsubscribeWrap {
                code: *code,
                reason,
            },
        ),
        PushBody::Subscribe(r) => ("subscribe", *r),
        PushBody::Message(data) => ("message", &MessageWrap { data }),
        PushBody::Refresh { expires, ttl } => (
            "refresh",
            &RefreshWrap {
                expires: *expires,
                ttl: *ttl,
            },
        ),
    };
    out.push(b'"');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    value.write_json(out);
    out.extend_from_slice(b"}}");
}

/// Encodes a publication push once, for sharing across all subscribers of the channel.
pub fn encode_publication_push(channel: &str, publication: &Publication) -> bytes::Bytes {
    let mut out = Vec::with_capacity(64 + channel.len() + publication.data.get().len());
    encode_push(channel, &PushBody::Publication(publication), &mut out);
    bytes::Bytes::from(out)
}

fn write_json<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    // Serializing these types into a Vec cannot fail: no maps with non-string keys, no I/O.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

mod erased {
    /// Object-safe "serialize as JSON into this buffer", so encoders can pick the value per variant.
    pub trait Ser {
        fn write_json(&self, out: &mut Vec<u8>);
    }
    impl<T: serde::Serialize> Ser for T {
        fn write_json(&self, out: &mut Vec<u8>) {
            super::write_json(self, out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Json {
        RawValue::from_string(s.to_string()).unwrap()
    }

    fn text(buf: Vec<u8>) -> serde_json::Value {
        serde_json::from_slice(&buf).unwrap()
    }

    #[test]
    fn connect_reply_omits_empty_fields() {
        let mut out = Vec::new();
        let result = ConnectResult {
            client: "c1".into(),
            version: "0.1.0".into(),
            ping: 25,
            pong: true,
            ..Default::default()
        };
        encode_reply(1, &ReplyBody::Connect(result), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id":1,"connect":{"client":"c1","version":"0.1.0","ping":25,"pong":true}}"#
        );
    }

    #[test]
    fn error_and_empty_replies() {
        let mut out = Vec::new();
        encode_reply(
            9,
            &ReplyBody::Error(ErrorCode::TooManyRequests.into()),
            &mut out,
        );
        assert_eq!(
            text(out),
            serde_json::json!({"id":9,"error":{"code":111,"message":"too many requests","temporary":true}})
        );
        let mut out = Vec::new();
        encode_reply(2, &ReplyBody::Publish, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"id":2,"publish":{}}"#);
    }

    #[test]
    fn publication_push_embeds_data_verbatim() {
        let publication = Publication {
            data: raw(r#"{"price":1.5}"#),
            info: Some(ClientInfo {
                user: "u".into(),
                client: "c".into(),
                conn_info: None,
                chan_info: None,
            }),
            offset: 42,
            tags: BTreeMap::new(),
            time: 0,
        };
        let bytes = encode_publication_push("quotes:\"x\"", &publication);
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            r#"{"push":{"channel":"quotes:\"x\"","pub":{"data":{"price":1.5},"info":{"user":"u","client":"c"},"offset":42}}}"#
        );
    }

    #[test]
    fn pushes_for_join_unsubscribe_and_message() {
        let info = ClientInfo {
            user: "u".into(),
            client: "c".into(),
            conn_info: Some(raw("[1]")),
            chan_info: None,
        };
        let mut out = Vec::new();
        encode_push("room", &PushBody::Join(&info), &mut out);
        assert_eq!(
            text(out),
            serde_json::json!({"push":{"channel":"room","join":{"info":{"user":"u","client":"c","conn_info":[1]}}}})
        );
        let mut out = Vec::new();
        encode_push(
            "room",
            &PushBody::Unsubscribe {
                code: 2000,
                reason: "server unsubscribe",
            },
            &mut out,
        );
        assert_eq!(
            text(out),
            serde_json::json!({"push":{"channel":"room","unsubscribe":{"code":2000,"reason":"server unsubscribe"}}})
        );
        let data = raw(r#""hi""#);
        let mut out = Vec::new();
        encode_push("", &PushBody::Message(&data), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"push":{"message":{"data":"hi"}}}"#
        );
    }
}

/// Makes embedded JSON safe for newline-delimited framing: SDKs split frames on `\n` before parsing,
/// so JSON that arrived pretty-printed must not keep its line breaks. Raw line breaks can only be
/// whitespace in valid JSON (strings escape them), so removing them keeps the value identical.
pub fn single_line(raw: Json) -> Json {
    let text = raw.get();
    // Bytes, not chars: this runs on every publication, and decoding each char cost more than
    // the rest of the check. Both bytes are ASCII, so they are never part of a multi-byte char.
    if !has_line_break(text.as_bytes()) {
        return raw;
    }
    let mut line = String::with_capacity(text.len());
    let mut start = 0;
    for (i, byte) in text.bytes().enumerate() {
        if byte == b'\n' || byte == b'\r' {
            line.push_str(&text[start..i]);
            start = i + 1;
        }
    }
    line.push_str(&text[start..]);
    RawValue::from_string(line).unwrap_or(raw)
}

/// Whether `bytes` hold a `\n` or a `\r`, a block at a time: no early exit inside a block lets the
/// compiler compare the whole block at once.
fn has_line_break(bytes: &[u8]) -> bool {
    const BLOCK: usize = 32;
    let is_break = |byte: &u8| *byte == b'\n' || *byte == b'\r';
    let blocks = bytes.chunks_exact(BLOCK);
    let tail = blocks.remainder();
    blocks
        .into_iter()
        .any(|block| block.iter().fold(false, |seen, byte| seen | is_break(byte)))
        || tail.iter().any(is_break)
}

#[cfg(test)]
mod single_line_tests {
    use super::*;

    #[test]
    fn removes_line_breaks_but_keeps_the_value() {
        let raw =
            RawValue::from_string("{\r\n  \"a\": \"x\\ny\",\n  \"b\": [1,\n 2]\n}".to_string())
                .unwrap();
        let line = single_line(raw);
        assert!(!line.get().contains('\n'));
        let value: serde_json::Value = serde_json::from_str(line.get()).unwrap();
        assert_eq!(value, serde_json::json!({"a": "x\ny", "b": [1, 2]}));
    }

    /// What `single_line` did before it scanned bytes: a char at a time.
    fn reference(text: &str) -> String {
        if !text.contains(['\n', '\r']) {
            return text.to_string();
        }
        text.chars().filter(|c| *c != '\n' && *c != '\r').collect()
    }

    fn same_as_reference(text: &str) -> String {
        let raw = RawValue::from_string(text.to_string()).unwrap();
        let line = single_line(raw).get().to_string();
        assert_eq!(line, reference(text), "for {text:?}");
        line
    }

    #[test]
    fn gives_the_same_text_as_the_char_by_char_version() {
        let cases = [
            "{}",
            "1",
            r#""text""#,
            r#"{"device":"359710049000001","lat":52.520008,"lon":-13.404954,"valid":true}"#,
            "{\n}",
            "{\r}",
            "{\r\n}",
            "\n\n{\"a\":1}\r\n\r\n",
            "[\n1,\r2,\r\n3\n\r]",
            // Escaped line breaks are inside strings: they stay.
            r#"{"a":"x\ny\r\nz","b":"\\n"}"#,
            "{\"a\":\"x\\ny\",\n\"b\":\"\\r\"\n}",
            // Multi-byte chars next to line breaks.
            "{\"é\":\n\"漢字\",\r\n\"😀\":\"ü\"\n}",
            "[\"é\"\n,\"€\"]",
            r#"{"name":"Zoë 漢字 😀","note":"ÿ\u00ff"}"#,
        ];
        for case in cases {
            same_as_reference(case);
        }
        // Line breaks at every position of a document longer than a few scan blocks, alone and
        // beside multi-byte chars.
        let long = format!(r#"{{"pad":"{}","k":"é漢😀","n":[1,2,3]}}"#, "x".repeat(150));
        let boundaries: Vec<usize> = (0..=long.len())
            .filter(|&i| long.is_char_boundary(i))
            .collect();
        for &at in &boundaries {
            let (head, tail) = long.split_at(at);
            // Only where JSON allows whitespace, so the input stays valid.
            if serde_json::from_str::<serde_json::Value>(&format!("{head}\n{tail}")).is_ok() {
                for brk in ["\n", "\r", "\r\n", "\n\n\r"] {
                    let line = same_as_reference(&format!("{head}{brk}{tail}"));
                    assert_eq!(line, long);
                }
            }
        }
        assert_eq!(same_as_reference(&long), long);
    }

    #[test]
    fn json_without_line_breaks_is_returned_as_it_is() {
        let raw = RawValue::from_string(r#"{"a":"x\ny","é":1}"#.to_string()).unwrap();
        let before = raw.get().as_ptr();
        let line = single_line(raw);
        assert_eq!(line.get().as_ptr(), before, "not copied");
    }
}
