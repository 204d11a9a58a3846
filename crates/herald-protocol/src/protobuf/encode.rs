//! Replies and pushes → length-delimited `Reply` messages appended to a caller-owned buffer, so
//! messages merged into one frame are simply concatenated.

use super::wire;
use crate::reply::{
    ClientInfo, ConnectResult, HistoryResult, Publication, PushBody, ReplyBody, ReplyError,
    SubscribeResult,
};
use prost::Message as _;
use serde_json::value::RawValue;

/// The server's ping: an empty `Reply`, length-prefixed.
pub const PING: &[u8] = &[0];

fn bytes(raw: Option<&RawValue>) -> Vec<u8> {
    raw.map_or_else(Vec::new, |raw| raw.get().as_bytes().to_vec())
}

fn client_info(info: &ClientInfo) -> wire::ClientInfo {
    wire::ClientInfo {
        user: info.user.clone(),
        client: info.client.clone(),
        conn_info: bytes(info.conn_info.as_deref()),
        chan_info: bytes(info.chan_info.as_deref()),
    }
}

fn publication(p: &Publication) -> wire::Publication {
    wire::Publication {
        data: p.data.get().as_bytes().to_vec(),
        info: p.info.as_ref().map(client_info),
        offset: p.offset,
        tags: p.tags.clone(),
        delta: false,
        time: p.time,
    }
}

fn subscribe_result(r: &SubscribeResult) -> wire::SubscribeResult {
    wire::SubscribeResult {
        expires: r.expires,
        ttl: r.ttl,
        recoverable: r.recoverable,
        epoch: r.epoch.clone(),
        publications: r.publications.iter().map(|p| publication(p)).collect(),
        recovered: r.recovered,
        offset: r.offset,
        positioned: r.positioned,
        data: bytes(r.data.as_deref()),
        was_recovering: r.was_recovering,
        delta: r.delta,
    }
}

fn connect_result(r: &ConnectResult) -> wire::ConnectResult {
    wire::ConnectResult {
        client: r.client.clone(),
        version: r.version.clone(),
        expires: r.expires,
        ttl: r.ttl,
        data: bytes(r.data.as_deref()),
        subs: r
            .subs
            .iter()
            .map(|(channel, sub)| (channel.clone(), subscribe_result(sub)))
            .collect(),
        ping: r.ping,
        pong: r.pong,
        session: r.session.clone(),
        node: r.node.clone(),
        time: r.time,
    }
}

fn history_result(r: &HistoryResult) -> wire::HistoryResult {
    wire::HistoryResult {
        publications: r.publications.iter().map(|p| publication(p)).collect(),
        epoch: r.epoch.clone(),
        offset: r.offset,
    }
}

fn error(e: &ReplyError) -> wire::Error {
    wire::Error {
        code: e.code,
        message: e.message.clone(),
        temporary: e.temporary,
    }
}

fn append(reply: &wire::Reply, out: &mut Vec<u8>) {
    // A Vec grows as needed: encoding into it cannot run out of space.
    let _ = reply.encode_length_delimited(out);
}

/// Appends the length-delimited reply to command `id`.
pub fn encode_reply(id: u32, body: &ReplyBody, out: &mut Vec<u8>) {
    let mut reply = wire::Reply {
        id,
        ..Default::default()
    };
    let empty = || Some(wire::Empty {});
    match body {
        ReplyBody::Connect(r) => reply.connect = Some(connect_result(r)),
        ReplyBody::Subscribe(r) => reply.subscribe = Some(subscribe_result(r)),
        ReplyBody::Unsubscribe => reply.unsubscribe = empty(),
        ReplyBody::Publish => reply.publish = empty(),
        ReplyBody::Presence(r) => {
            reply.presence = Some(wire::PresenceResult {
                presence: r
                    .presence
                    .iter()
                    .map(|(client, info)| (client.clone(), client_info(info)))
                    .collect(),
            })
        }
        ReplyBody::PresenceStats(r) => {
            reply.presence_stats = Some(wire::PresenceStatsResult {
                num_clients: r.num_clients,
                num_users: r.num_users,
            })
        }
        ReplyBody::History(r) => reply.history = Some(history_result(r)),
        ReplyBody::Ping => reply.ping = empty(),
        ReplyBody::Rpc(r) => {
            reply.rpc = Some(wire::RpcResult {
                data: bytes(r.data.as_deref()),
            })
        }
        ReplyBody::Refresh(r) => {
            reply.refresh = Some(wire::RefreshResult {
                client: r.client.clone(),
                version: r.version.clone(),
                expires: r.expires,
                ttl: r.ttl,
            })
        }
        ReplyBody::SubRefresh(r) => {
            reply.sub_refresh = Some(wire::SubRefreshResult {
                expires: r.expires,
                ttl: r.ttl,
            })
        }
        ReplyBody::Error(e) => reply.error = Some(error(e)),
    }
    append(&reply, out);
}

/// Appends a length-delimited push (a `Reply` with id 0). An empty channel is left out, as in JSON
/// (personal messages have none).
pub fn encode_push(channel: &str, body: &PushBody<'_>, out: &mut Vec<u8>) {
    let mut push = wire::Push {
        channel: channel.to_string(),
        ..Default::default()
    };
    match body {
        PushBody::Publication(p) => push.r#pub = Some(publication(p)),
        PushBody::Join(info) => {
            push.join = Some(wire::InfoEvent {
                info: Some(client_info(info)),
            })
        }
        PushBody::Leave(info) => {
            push.leave = Some(wire::InfoEvent {
                info: Some(client_info(info)),
            })
        }
        PushBody::Unsubscribe { code, reason } => {
            push.unsubscribe = Some(wire::Unsubscribe {
                code: *code,
                reason: reason.to_string(),
            })
        }
        PushBody::Subscribe(r) => {
            push.subscribe = Some(wire::Subscribe {
                recoverable: r.recoverable,
                epoch: r.epoch.clone(),
                offset: r.offset,
                positioned: r.positioned,
                data: bytes(r.data.as_deref()),
            })
        }
        PushBody::Message(data) => {
            push.message = Some(wire::Message {
                data: data.get().as_bytes().to_vec(),
            })
        }
        PushBody::Refresh { expires, ttl } => {
            push.refresh = Some(wire::Refresh {
                expires: *expires,
                ttl: *ttl,
            })
        }
    }
    let reply = wire::Reply {
        push: Some(push),
        ..Default::default()
    };
    append(&reply, out);
}

/// Encodes a publication push once, for sharing across all Protobuf subscribers of the channel.
pub fn encode_publication_push(channel: &str, publication: &Publication) -> bytes::Bytes {
    let mut out = Vec::with_capacity(32 + channel.len() + publication.data.get().len());
    encode_push(channel, &PushBody::Publication(publication), &mut out);
    bytes::Bytes::from(out)
}

/// A publication push for a delta-compression subscriber carrying `patch`, a fossil patch against
/// the previous publication's data: `data` is the patch's raw bytes and `delta` is true (the SDK
/// applies it to the bytes it holds). In full, such a subscriber gets the ordinary push.
pub fn encode_delta_publication_push(channel: &str, p: &Publication, patch: &[u8]) -> bytes::Bytes {
    let patched = wire::Publication {
        data: patch.to_vec(),
        info: p.info.as_ref().map(client_info),
        offset: p.offset,
        tags: p.tags.clone(),
        delta: true,
        time: p.time,
    };
    let reply = wire::Reply {
        push: Some(wire::Push {
            channel: channel.to_string(),
            r#pub: Some(patched),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(32 + channel.len() + patch.len());
    append(&reply, &mut out);
    bytes::Bytes::from(out)
}
