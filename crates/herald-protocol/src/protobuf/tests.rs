//! Cross-checks against bytes produced by the official Protobuf encoder (Python `protobuf` with
//! centrifuge-python 0.7.0's generated `client_pb2`, `SerializeToString(deterministic=True)` behind
//! a varint length), and hostile-input tests.

use super::*;
use crate::command::{DecodeError, Method};
use crate::reply::{
    ClientInfo, ConnectResult, HistoryResult, PresenceResult, Publication, PushBody, ReplyBody,
    SubscribeResult,
};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::Arc;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_string()).unwrap()
}

/// connect, subscribe (with a `tf` filter Herald does not declare), publish, history, ping, rpc,
/// send (id 0), refresh, sub_refresh, presence, presence_stats, unsubscribe, then an empty command.
const COMMANDS: &str = "37080122330a03746f6b12077b2261223a317d1a100a046e65777312081801320265703805220270792a03302e3732080a03782d6b1201763508022a310a04636861741202737418013202653138ac0242055b312c325d4801500158016206666f7373696c6a070a02657112016b1908033a150a0463686174120d7b2274657874223a226869227d16080452120a0463686174380a420608071202653148010408055a001108066a0d0a065b312c20325d120373756d0762050a0322782208080872040a0274320e08097a0a0a0463686174120274330a080a42060a04636861740a080b4a060a04636861740a080c32060a046368617400";

#[test]
fn decodes_every_command_of_an_official_encoder() {
    let commands = decode_frame(&hex(COMMANDS), 100).unwrap();
    let names: Vec<(u32, &str)> = commands.iter().map(|(id, m)| (*id, m.name())).collect();
    assert_eq!(
        names,
        [
            (1, "connect"),
            (2, "subscribe"),
            (3, "publish"),
            (4, "history"),
            (5, "ping"),
            (6, "rpc"),
            (0, "send"),
            (8, "refresh"),
            (9, "sub_refresh"),
            (10, "presence"),
            (11, "presence_stats"),
            (12, "unsubscribe"),
            (0, "pong"),
        ]
    );
    let mut it = commands.into_iter().map(|(_, m)| m);
    let Some(Method::Connect(c)) = it.next() else {
        panic!("connect")
    };
    assert_eq!((c.token.as_str(), c.name.as_str()), ("tok", "py"));
    assert_eq!(c.version, "0.7");
    assert_eq!(c.data.unwrap().get(), r#"{"a":1}"#);
    assert_eq!(c.headers.get("x-k").map(String::as_str), Some("v"));
    let news = &c.subs["news"];
    assert!(news.recover);
    assert_eq!((news.offset, news.epoch.as_str()), (5, "ep"));
    let Some(Method::Subscribe(s)) = it.next() else {
        panic!("subscribe")
    };
    assert_eq!((s.channel.as_str(), s.token.as_str()), ("chat", "st"));
    assert!(s.recover && s.positioned && s.recoverable && s.join_leave);
    assert_eq!((s.offset, s.epoch.as_str()), (300, "e1"));
    assert_eq!(s.data.unwrap().get(), "[1,2]");
    assert_eq!(s.delta, "fossil");
    let Some(Method::Publish(p)) = it.next() else {
        panic!("publish")
    };
    assert_eq!(p.channel, "chat");
    assert_eq!(p.data.unwrap().get(), r#"{"text":"hi"}"#);
    let Some(Method::History(h)) = it.next() else {
        panic!("history")
    };
    assert_eq!((h.limit, h.reverse), (10, true));
    let since = h.since.unwrap();
    assert_eq!((since.offset, since.epoch.as_str()), (7, "e1"));
    assert!(matches!(it.next(), Some(Method::Ping)));
    let Some(Method::Rpc(r)) = it.next() else {
        panic!("rpc")
    };
    assert_eq!(
        (r.method.as_str(), r.data.unwrap().get()),
        ("sum", "[1, 2]")
    );
    let Some(Method::Send(s)) = it.next() else {
        panic!("send")
    };
    assert_eq!(s.data.unwrap().get(), r#""x""#);
    let Some(Method::Refresh(r)) = it.next() else {
        panic!("refresh")
    };
    assert_eq!(r.token, "t2");
    let Some(Method::SubRefresh(r)) = it.next() else {
        panic!("sub_refresh")
    };
    assert_eq!((r.channel.as_str(), r.token.as_str()), ("chat", "t3"));
}

#[test]
fn non_json_data_makes_an_invalid_command_not_a_bad_frame() {
    // publish {channel: "chat", data: b"\xff\x00binary"} with id 13.
    let commands = decode_frame(&hex("14080d3a100a04636861741208ff0062696e617279"), 10).unwrap();
    assert!(matches!(
        commands[0],
        (
            13,
            Method::Invalid {
                method: "publish",
                field: "data"
            }
        )
    ));
    let error = Method::invalid_error("data");
    assert_eq!(error.code, 107);
    assert!(error.message.contains("data"));
    // Valid UTF-8 that is not one JSON value is refused the same way.
    let mut frame = Vec::new();
    let cmd = wire::Command {
        id: 3,
        rpc: Some(wire::RpcRequest {
            data: b"hello".to_vec(),
            method: String::new(),
        }),
        ..Default::default()
    };
    prost::Message::encode_length_delimited(&cmd, &mut frame).unwrap();
    assert!(matches!(
        decode_frame(&frame, 10).unwrap()[0],
        (3, Method::Invalid { method: "rpc", .. })
    ));
}

#[test]
fn pretty_json_data_becomes_one_line_for_json_subscribers() {
    let cmd = wire::Command {
        id: 1,
        publish: Some(wire::PublishRequest {
            channel: "c".into(),
            data: b" {\n \"a\": \"x\\ny\"\n}\n".to_vec(),
        }),
        ..Default::default()
    };
    let frame = prost::Message::encode_length_delimited_to_vec(&cmd);
    let Method::Publish(p) = decode_frame(&frame, 1).unwrap().remove(0).1 else {
        panic!("publish")
    };
    let data = p.data.unwrap();
    assert!(!data.get().contains('\n'));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(data.get()).unwrap(),
        serde_json::json!({"a": "x\ny"})
    );
}

#[test]
fn hostile_frames_get_typed_errors() {
    assert_eq!(decode_frame(b"", 10).unwrap_err(), DecodeError::Empty);
    // A length prefix whose continuation bit runs into the end of the frame.
    assert_eq!(
        decode_frame(&[0x80, 0x80], 10).unwrap_err(),
        DecodeError::TruncatedLength
    );
    // Eleven continuation bytes: no valid varint is that long.
    assert_eq!(
        decode_frame(&[0xff; 11], 10).unwrap_err(),
        DecodeError::MalformedLength
    );
    // Declares 2^63 bytes.
    let huge = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
    assert!(matches!(
        decode_frame(&huge, 10).unwrap_err(),
        DecodeError::LengthExceedsFrame {
            declared: 0x8000_0000_0000_0000,
            remaining: 0
        }
    ));
    // Declares 1 GiB with a few bytes behind.
    assert!(matches!(
        decode_frame(&[0x80, 0x80, 0x80, 0x80, 0x04, 1, 2, 3], 10).unwrap_err(),
        DecodeError::LengthExceedsFrame { remaining: 3, .. }
    ));
    // A well-framed message whose body is not a Command (a field with wire type 7).
    assert!(matches!(
        decode_frame(&[0x02, 0x0f, 0x00], 10).unwrap_err(),
        DecodeError::InvalidProtobuf(_)
    ));
    // A channel that is not UTF-8.
    let bad_string = [0x07, 0x42, 0x05, 0x0a, 0x03, 0xff, 0xfe, 0xfd];
    assert!(matches!(
        decode_frame(&bad_string, 10).unwrap_err(),
        DecodeError::InvalidProtobuf(_)
    ));
    // Two requests in one command.
    let two = wire::Command {
        id: 1,
        ping: Some(wire::Empty {}),
        presence: Some(wire::ChannelRequest {
            channel: "a".into(),
        }),
        ..Default::default()
    };
    assert_eq!(
        decode_frame(&prost::Message::encode_length_delimited_to_vec(&two), 10).unwrap_err(),
        DecodeError::SeveralRequests
    );
    // The command bound applies while decoding: a frame of a million pongs stops at the bound.
    assert_eq!(
        decode_frame(&vec![0u8; 1_000_000], 100).unwrap_err(),
        DecodeError::TooManyCommands(100)
    );
    assert_eq!(decode_frame(&[0, 0], 2).unwrap().len(), 2);
}

#[test]
fn unknown_request_with_id_is_reported() {
    // id 7 and field 16 (not a request of this protocol version).
    let frame = [0x05, 0x08, 0x07, 0x82, 0x01, 0x00];
    assert!(matches!(
        decode_frame(&frame, 10).unwrap()[0],
        (7, Method::Unknown)
    ));
}

/// A tiny deterministic generator: the test needs reproducible noise, not a crypto RNG.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_and_mutated_frames_never_panic() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = (rng.next() % 64) as usize;
        let frame: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = decode_frame(&frame, 10);
    }
    let valid = hex(COMMANDS);
    for len in 0..valid.len() {
        let _ = decode_frame(&valid[..len], 100);
    }
    for _ in 0..20_000 {
        let mut frame = valid.clone();
        for _ in 0..(1 + rng.next() % 4) {
            let at = (rng.next() as usize) % frame.len();
            frame[at] = rng.next() as u8;
        }
        let _ = decode_frame(&frame, 100);
    }
}

fn encoded(f: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut out = Vec::new();
    f(&mut out);
    out.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn replies_match_the_official_encoder() {
    let mut subs = BTreeMap::new();
    subs.insert(
        "news".to_string(),
        SubscribeResult {
            recoverable: true,
            epoch: "ep".into(),
            offset: 9,
            recovered: true,
            was_recovering: true,
            publications: vec![Arc::new(Publication {
                data: raw(r#"{"n":9}"#),
                info: None,
                offset: 9,
                tags: BTreeMap::new(),
                time: 0,
            })],
            ..Default::default()
        },
    );
    let connect = ConnectResult {
        client: "c1".into(),
        version: "0.1.0".into(),
        expires: true,
        ttl: 60,
        data: Some(raw(r#"{"x":1}"#)),
        subs,
        ping: 25,
        pong: true,
        session: String::new(),
        node: "n1".into(),
        time: 1_700_000_000_000,
    };
    assert_eq!(
        encoded(|out| encode_reply(1, &ReplyBody::Connect(connect), out)),
        "4e08012a4a0a0263311205302e312e301801203c2a077b2278223a317d32210a046e65777312191801320265703a0b22077b226e223a397d30094001480960013819400152026e315880d095ffbc31"
    );
    assert_eq!(
        encoded(|out| encode_reply(
            9,
            &ReplyBody::Error(crate::ErrorCode::TooManyRequests.into()),
            out
        )),
        "1b08091217086f1211746f6f206d616e792072657175657374731801"
    );
    assert_eq!(
        encoded(|out| encode_reply(2, &ReplyBody::Publish, out)),
        "0408024200"
    );
    let history = HistoryResult {
        publications: vec![Arc::new(Publication {
            data: raw("1"),
            info: None,
            offset: 3,
            tags: BTreeMap::new(),
            time: 0,
        })],
        epoch: "e".into(),
        offset: 3,
    };
    assert_eq!(
        encoded(|out| encode_reply(4, &ReplyBody::History(history), out)),
        "1008045a0c0a0522013130031201651803"
    );
    let mut presence = BTreeMap::new();
    presence.insert(
        "c1".to_string(),
        ClientInfo {
            user: "u1".into(),
            client: "c1".into(),
            conn_info: None,
            chan_info: None,
        },
    );
    assert_eq!(
        encoded(|out| encode_reply(10, &ReplyBody::Presence(PresenceResult { presence }), out)),
        "14080a4a100a0e0a02633112080a02753112026331"
    );
    assert_eq!(PING, hex("00").as_slice());
}

#[test]
fn pushes_match_the_official_encoder() {
    let mut tags = BTreeMap::new();
    tags.insert("k".to_string(), "v".to_string());
    let publication = Publication {
        data: raw(r#"{"price":1.5}"#),
        info: Some(ClientInfo {
            user: "u".into(),
            client: "c".into(),
            conn_info: Some(raw("[1]")),
            chan_info: None,
        }),
        offset: 42,
        tags,
        time: 17,
    };
    assert_eq!(
        hex("342232120671756f7465732228220d7b227072696365223a312e357d2a0b0a01751201631a035b315d302a3a060a016b1201764811"),
        encode_publication_push("quotes", &publication).to_vec()
    );
    let info = ClientInfo {
        user: "u".into(),
        client: "c".into(),
        conn_info: None,
        chan_info: None,
    };
    assert_eq!(
        encoded(|out| encode_push("room", &PushBody::Join(&info), out)),
        "1222101204726f6f6d2a080a060a0175120163"
    );
    let unsubscribe = PushBody::Unsubscribe {
        code: 2000,
        reason: "server unsubscribe",
    };
    assert_eq!(
        encoded(|out| encode_push("room", &unsubscribe, out)),
        "21221f1204726f6f6d3a1710d00f1a1273657276657220756e737562736372696265"
    );
    let data = raw(r#""hi""#);
    assert_eq!(
        encoded(|out| encode_push("", &PushBody::Message(&data), out)),
        "0a220842060a0422686922"
    );
    let sub = SubscribeResult {
        recoverable: true,
        epoch: "e".into(),
        offset: 4,
        positioned: true,
        ..Default::default()
    };
    assert_eq!(
        encoded(|out| encode_push("s", &PushBody::Subscribe(&sub), out)),
        "10220e1201734a09080122016528043001"
    );
    assert_eq!(
        encoded(|out| encode_push(
            "",
            &PushBody::Refresh {
                expires: true,
                ttl: 30
            },
            out
        )),
        "08220662040801101e"
    );
}

#[test]
fn merged_messages_are_concatenated_and_split_back() {
    // What a client does with a server frame: read length-delimited replies until the end.
    let mut frame = Vec::new();
    encode_reply(1, &ReplyBody::Ping, &mut frame);
    frame.extend_from_slice(PING);
    encode_reply(2, &ReplyBody::Publish, &mut frame);
    let mut buf = frame.as_slice();
    let mut ids = Vec::new();
    while !buf.is_empty() {
        let reply: wire::Reply = prost::Message::decode_length_delimited(&mut buf).unwrap();
        ids.push(reply.id);
    }
    assert_eq!(ids, [1, 0, 2]);
}

#[test]
fn delta_pushes_carry_the_raw_patch_with_the_delta_flag() {
    use crate::delta::{apply, create};
    use crate::Format;
    let publication = |data: &str, offset| Publication {
        data: raw(data),
        info: None,
        offset,
        tags: BTreeMap::from([("k".to_string(), "v".to_string())]),
        time: 5,
    };
    let first = publication(
        r#"{"n":"é","list":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]}"#,
        1,
    );
    let second = publication(
        r#"{"n":"è","list":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15]}"#,
        2,
    );
    let decode = |bytes: bytes::Bytes| -> wire::Publication {
        let reply: wire::Reply = prost::Message::decode_length_delimited(bytes).unwrap();
        let push = reply.push.unwrap();
        assert_eq!(push.channel, "ch");
        push.r#pub.unwrap()
    };
    let full = Format::Protobuf
        .encode_delta_publication_push("ch", &first, None)
        .unwrap();
    assert_eq!(
        full,
        encode_publication_push("ch", &first),
        "in full: the plain push"
    );
    let full = decode(full);
    assert!(!full.delta);
    assert_eq!(full.data, first.data.get().as_bytes());
    let patch = create(first.data.get().as_bytes(), second.data.get().as_bytes());
    let pushed = decode(
        Format::Protobuf
            .encode_delta_publication_push("ch", &second, Some(&patch))
            .unwrap(),
    );
    assert!(pushed.delta);
    assert_eq!(
        pushed.data, patch,
        "the patch's raw bytes, no string wrapping"
    );
    assert_eq!((pushed.offset, pushed.time), (2, 5));
    assert_eq!(pushed.tags, second.tags);
    assert_eq!(
        apply(&full.data, &pushed.data).unwrap(),
        second.data.get().as_bytes()
    );
    // Bytes need not be UTF-8 in Protobuf: any patch goes as it is (JSON cannot carry it).
    assert!(Format::Protobuf
        .encode_delta_publication_push("ch", &second, Some(&[0xff]))
        .is_some());
    assert!(Format::Json
        .encode_delta_publication_push("ch", &second, Some(&[0xff]))
        .is_none());
    // A subscribe reply's publications: data as it is in Protobuf, a JSON string in JSON.
    let first = Arc::new(first);
    assert!(Arc::ptr_eq(
        &Format::Protobuf.delta_publication(&first),
        &first
    ));
    assert_eq!(
        Format::Json.delta_publication(&first).data.get(),
        serde_json::to_string(first.data.get()).unwrap()
    );
}
