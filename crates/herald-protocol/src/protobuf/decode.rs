//! Client frames → commands: varint-length-delimited `Command`s, decoded into the same [`Method`]s
//! the JSON decoder produces.

use super::wire;
use crate::command::{
    ChannelRequest, ConnectRequest, DecodeError, HistoryRequest, Json, Method, PublishRequest,
    RefreshRequest, RpcRequest, SendRequest, StreamPosition, SubRefreshRequest, SubscribeRequest,
};
use prost::Message as _;
use serde_json::value::RawValue;

/// Longest varint: 10 bytes carry 64 bits.
const MAX_VARINT_BYTES: usize = 10;

/// Decodes every command of one binary frame. `max_commands` bounds the work one frame can cause:
/// the frame is refused as soon as one more command starts.
pub fn decode_frame(frame: &[u8], max_commands: usize) -> Result<Vec<(u32, Method)>, DecodeError> {
    if frame.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut out = Vec::new();
    let mut rest = frame;
    while !rest.is_empty() {
        if out.len() == max_commands {
            return Err(DecodeError::TooManyCommands(max_commands));
        }
        let (len, prefix) = read_length(rest)?;
        let body = &rest[prefix..];
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len <= body.len())
            .ok_or(DecodeError::LengthExceedsFrame {
                declared: len,
                remaining: body.len(),
            })?;
        let command = wire::Command::decode(&body[..len])
            .map_err(|e| DecodeError::InvalidProtobuf(e.to_string()))?;
        out.push(into_method(command)?);
        rest = &body[len..];
    }
    Ok(out)
}

/// Reads a message's length prefix: the length and how many bytes the prefix took.
fn read_length(buf: &[u8]) -> Result<(u64, usize), DecodeError> {
    let mut value: u64 = 0;
    for (i, byte) in buf.iter().take(MAX_VARINT_BYTES).enumerate() {
        let bits = u64::from(byte & 0x7f);
        // The tenth byte may only carry the 64th bit.
        if i == MAX_VARINT_BYTES - 1 && (bits > 1 || byte & 0x80 != 0) {
            return Err(DecodeError::MalformedLength);
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(DecodeError::TruncatedLength)
}

/// A payload that must be JSON, or the name of the field that is not.
fn json(bytes: Vec<u8>, field: &'static str) -> Result<Option<Json>, &'static str> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let text = String::from_utf8(bytes).map_err(|_| field)?;
    let raw = RawValue::from_string(text).map_err(|_| field)?;
    // JSON subscribers receive this payload in newline-delimited frames.
    Ok(Some(crate::single_line(raw)))
}

fn subscribe_request(
    r: wire::SubscribeRequest,
    field: &'static str,
) -> Result<SubscribeRequest, &'static str> {
    Ok(SubscribeRequest {
        data: json(r.data, field)?,
        channel: r.channel,
        token: r.token,
        recover: r.recover,
        epoch: r.epoch,
        offset: r.offset,
        positioned: r.positioned,
        recoverable: r.recoverable,
        join_leave: r.join_leave,
        delta: r.delta,
    })
}

fn connect_request(r: wire::ConnectRequest) -> Result<ConnectRequest, &'static str> {
    let mut subs = std::collections::BTreeMap::new();
    for (channel, sub) in r.subs {
        subs.insert(channel, subscribe_request(sub, "subs.data")?);
    }
    Ok(ConnectRequest {
        token: r.token,
        data: json(r.data, "data")?,
        subs,
        name: r.name,
        version: r.version,
        headers: r.headers,
    })
}

/// The command's id and its single request, as [`crate::Command::into_method`] does for JSON.
fn into_method(command: wire::Command) -> Result<(u32, Method), DecodeError> {
    let wire::Command {
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
    } = command;
    let channel = |r: wire::ChannelRequest| ChannelRequest { channel: r.channel };
    let mut found: Vec<Result<Method, (&'static str, &'static str)>> = Vec::with_capacity(1);
    found.extend(connect.map(|r| {
        connect_request(r)
            .map(Method::Connect)
            .map_err(|f| ("connect", f))
    }));
    found.extend(subscribe.map(|r| {
        subscribe_request(r, "data")
            .map(Method::Subscribe)
            .map_err(|f| ("subscribe", f))
    }));
    found.extend(unsubscribe.map(|r| Ok(Method::Unsubscribe(channel(r)))));
    found.extend(publish.map(|r| {
        json(r.data, "data")
            .map(|data| {
                Method::Publish(PublishRequest {
                    channel: r.channel,
                    data,
                })
            })
            .map_err(|f| ("publish", f))
    }));
    found.extend(presence.map(|r| Ok(Method::Presence(channel(r)))));
    found.extend(presence_stats.map(|r| Ok(Method::PresenceStats(channel(r)))));
    found.extend(history.map(|r| {
        Ok(Method::History(HistoryRequest {
            channel: r.channel,
            limit: r.limit,
            since: r.since.map(|s| StreamPosition {
                offset: s.offset,
                epoch: s.epoch,
            }),
            reverse: r.reverse,
        }))
    }));
    found.extend(ping.map(|_| Ok(Method::Ping)));
    found.extend(send.map(|r| {
        json(r.data, "data")
            .map(|data| Method::Send(SendRequest { data }))
            .map_err(|f| ("send", f))
    }));
    found.extend(rpc.map(|r| {
        json(r.data, "data")
            .map(|data| {
                Method::Rpc(RpcRequest {
                    data,
                    method: r.method,
                })
            })
            .map_err(|f| ("rpc", f))
    }));
    found.extend(refresh.map(|r| Ok(Method::Refresh(RefreshRequest { token: r.token }))));
    found.extend(sub_refresh.map(|r| {
        Ok(Method::SubRefresh(SubRefreshRequest {
            channel: r.channel,
            token: r.token,
        }))
    }));
    match (found.pop(), found.is_empty(), id) {
        (None, _, 0) => Ok((0, Method::Pong)),
        (None, _, _) => Ok((id, Method::Unknown)),
        (Some(Ok(method)), true, _) => Ok((id, method)),
        (Some(Err((method, field))), true, _) => Ok((id, Method::Invalid { method, field })),
        (Some(_), false, _) => Err(DecodeError::SeveralRequests),
    }
}
