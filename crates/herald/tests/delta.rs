//! Delta compression (`delta: "fossil"`, docs/protocol.md#delta-compression) through real
//! WebSocket clients: negotiation, patches that rebuild every publication, whole publications after
//! any break, one patch per channel and publication whatever the subscribers and their formats
//! (JSON and Protobuf), and hostile input.

mod support;

use herald::config::NamespaceOptions;
use herald_protocol::delta::apply;
use serde_json::{json, Value};
use std::time::Duration;
use support::protobuf::{wire, Command, PbClient};
use support::*;

/// `docs`: history and delta; `plain`: delta without history; `windowed`: delta with a window.
async fn server() -> TestServer {
    TestServer::with(|c| {
        let delta = vec!["fossil".to_string()];
        c.channel.namespaces.push(NamespaceOptions {
            allowed_delta_types: delta.clone(),
            ..open_namespace("docs")
        });
        c.channel.namespaces.push(NamespaceOptions {
            history_size: 0,
            history_ttl: Duration::ZERO,
            force_recovery: false,
            allowed_delta_types: delta.clone(),
            ..open_namespace("plain")
        });
        c.channel.namespaces.push(NamespaceOptions {
            batch_window: Duration::from_millis(20),
            allowed_delta_types: delta,
            ..open_namespace("windowed")
        });
    })
    .await
}

async fn delta_subscribe(client: &mut Client, channel: &str, extra: Value) -> Value {
    let mut params = json!({"channel": channel, "delta": "fossil"});
    if let (Some(p), Some(e)) = (params.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    let reply = client.call("subscribe", params).await;
    reply
        .get("subscribe")
        .unwrap_or_else(|| panic!("subscribe {channel} failed: {reply}"))
        .clone()
}

/// A document of `n` similar fields, one of which changes with `version`.
fn document(version: u64, fields: usize) -> Value {
    let mut doc = serde_json::Map::new();
    for i in 0..fields {
        doc.insert(format!("field_{i}"), json!(format!("value number {i} é€")));
    }
    doc.insert("version".into(), json!(version));
    Value::Object(doc)
}

/// What a delta subscriber reconstructs, as the SDK does: the previous data text patched, or the
/// string itself.
struct Decoder {
    previous: Vec<u8>,
    patches: usize,
    wire: usize,
}

impl Decoder {
    fn new() -> Decoder {
        Decoder {
            previous: Vec::new(),
            patches: 0,
            wire: 0,
        }
    }

    fn take(&mut self, publication: &Value) -> Value {
        let text = publication["data"]
            .as_str()
            .unwrap_or_else(|| panic!("data is a JSON string with delta on: {publication}"));
        self.wire += text.len();
        let data = if publication["delta"] == json!(true) {
            self.patches += 1;
            apply(&self.previous, text.as_bytes()).expect("the patch applies")
        } else {
            text.as_bytes().to_vec()
        };
        let value = serde_json::from_slice(&data).expect("the data is JSON");
        self.previous = data;
        value
    }
}

#[tokio::test]
async fn similar_publications_arrive_as_patches_that_rebuild_each_one() {
    let ts = server().await;
    let channel = "docs:report";
    let mut delta = ts.client("alice").await;
    let mut plain = ts.client("bob").await;
    let reply = delta_subscribe(&mut delta, channel, json!({})).await;
    assert_eq!(reply["delta"], json!(true), "{reply}");
    let reply = plain.subscribe(channel).await;
    assert!(reply.get("delta").is_none(), "{reply}");

    let mut decoder = Decoder::new();
    let mut full_bytes = 0;
    for version in 1..=10 {
        let doc = document(version, 30);
        full_bytes += doc.to_string().len();
        ts.api_ok("publish", json!({"channel": channel, "data": doc}))
            .await;
        let got = delta.publication(channel).await;
        assert_eq!(got["offset"], json!(version));
        assert_eq!(got.get("delta").is_some(), version > 1, "{got}");
        assert_eq!(decoder.take(&got), doc);
        let other = plain.publication(channel).await;
        assert_eq!(
            other["data"], doc,
            "an ordinary subscriber gets the data as it was"
        );
        assert!(other.get("delta").is_none());
    }
    assert_eq!(decoder.patches, 9);
    assert!(
        decoder.wire * 4 < full_bytes,
        "patches are small: {} bytes on the wire for {full_bytes}",
        decoder.wire
    );
    let metrics = ts.metrics().await;
    assert_eq!(metric(&metrics, "herald_delta_patches_total"), 9.0);
    assert_eq!(
        metric(&metrics, "herald_delta_publications_total{kind=\"delta\"}"),
        9.0
    );
    assert_eq!(
        metric(&metrics, "herald_delta_publications_total{kind=\"full\"}"),
        1.0
    );
}

#[tokio::test]
async fn negotiation_answers_as_centrifugo() {
    let ts = server().await;
    // Not allowed in the namespace: no delta, publications as usual.
    let mut client = ts.client("alice").await;
    let reply = delta_subscribe(&mut client, "chat:room", json!({})).await;
    assert!(reply.get("delta").is_none(), "{reply}");
    ts.api_ok("publish", json!({"channel": "chat:room", "data": {"a": 1}}))
        .await;
    assert_eq!(
        client.publication("chat:room").await["data"],
        json!({"a": 1})
    );
    // A window merges publications: no delta.
    let reply = delta_subscribe(&mut client, "windowed:x", json!({})).await;
    assert!(reply.get("delta").is_none(), "{reply}");
    // No history: negotiated, but every publication is whole (no offsets to name a base).
    let reply = delta_subscribe(&mut client, "plain:x", json!({})).await;
    assert_eq!(reply["delta"], json!(true));
    let mut decoder = Decoder::new();
    for version in 1..=3 {
        let doc = document(version, 20);
        ts.api_ok("publish", json!({"channel": "plain:x", "data": doc}))
            .await;
        assert_eq!(decoder.take(&client.publication("plain:x").await), doc);
    }
    assert_eq!(decoder.patches, 0);
    // An unknown delta type is a bad request: the connection is closed (3501).
    client
        .send(json!({"id": 99, "subscribe": {"channel": "docs:x", "delta": "xdelta"}}))
        .await;
    let (_, closed) = client.read_until_closed(WAIT).await;
    assert_eq!(closed, Some(Closed::Code(3501, "bad request".into())));
}

async fn publish(ts: &TestServer, channel: &str, version: u64) {
    let doc = document(version, 25);
    ts.api_ok("publish", json!({"channel": channel, "data": doc}))
        .await;
}

#[tokio::test]
async fn after_any_break_the_next_publication_is_whole() {
    let ts = server().await;
    let channel = "docs:breaks";
    // Stays subscribed throughout: the node keeps patching against the previous publication,
    // which the other client does not always hold.
    let mut witness = ts.client("bob").await;
    delta_subscribe(&mut witness, channel, json!({})).await;
    let mut client = ts.client("alice").await;
    let reply = delta_subscribe(&mut client, channel, json!({"recoverable": true})).await;
    let epoch = reply["epoch"].as_str().unwrap().to_string();
    let mut decoder = Decoder::new();
    publish(&ts, channel, 1).await;
    publish(&ts, channel, 2).await;
    let first = client.publication(channel).await;
    assert!(first.get("delta").is_none(), "{first}");
    assert_eq!(decoder.take(&first), document(1, 25));
    let second = client.publication(channel).await;
    assert_eq!(second["delta"], json!(true), "{second}");
    assert_eq!(decoder.take(&second), document(2, 25));

    // Gone while 3 is published; a fresh subscribe holds nothing: 4 comes whole.
    client
        .call("unsubscribe", json!({"channel": channel}))
        .await;
    publish(&ts, channel, 3).await;
    delta_subscribe(&mut client, channel, json!({})).await;
    publish(&ts, channel, 4).await;
    let fourth = client.publication(channel).await;
    assert!(fourth.get("delta").is_none(), "{fourth}");
    assert_eq!(decoder.take(&fourth), document(4, 25));

    // Gone again while 5 is published; a recovery from 4 carries 5 whole, then 6 is a patch
    // against it.
    client
        .call("unsubscribe", json!({"channel": channel}))
        .await;
    publish(&ts, channel, 5).await;
    let reply = delta_subscribe(
        &mut client,
        channel,
        json!({"recover": true, "offset": 4, "epoch": epoch}),
    )
    .await;
    assert_eq!(reply["recovered"], json!(true), "{reply}");
    let recovered = reply["publications"].as_array().unwrap();
    assert_eq!(recovered.len(), 1);
    assert!(recovered[0].get("delta").is_none());
    assert_eq!(decoder.take(&recovered[0]), document(5, 25));
    publish(&ts, channel, 6).await;
    let sixth = client.publication(channel).await;
    assert_eq!(sixth["delta"], json!(true), "{sixth}");
    assert_eq!(decoder.take(&sixth), document(6, 25));

    // The witness got every publication but the first as a patch.
    let mut witnessed = Decoder::new();
    for version in 1..=6 {
        let got = witness.publication(channel).await;
        assert_eq!(witnessed.take(&got), document(version, 25));
    }
    assert_eq!(witnessed.patches, 5);
}

#[tokio::test]
async fn one_patch_per_channel_and_publication_whatever_the_subscribers() {
    let ts = server().await;
    let channel = "docs:crowd";
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut client = ts.client(&format!("user{i}")).await;
        delta_subscribe(&mut client, channel, json!({})).await;
        clients.push(client);
    }
    for version in 1..=5 {
        ts.api_ok(
            "publish",
            json!({"channel": channel, "data": document(version, 30)}),
        )
        .await;
    }
    for client in &mut clients {
        let mut decoder = Decoder::new();
        for version in 1..=5 {
            let got = client.publication(channel).await;
            assert_eq!(decoder.take(&got), document(version, 30));
        }
        assert_eq!(decoder.patches, 4);
    }
    let metrics = ts.metrics().await;
    assert_eq!(metric(&metrics, "herald_delta_patches_total"), 4.0);
    assert_eq!(
        metric(&metrics, "herald_delta_publications_total{kind=\"delta\"}"),
        80.0
    );
}

#[tokio::test]
async fn hostile_huge_unlike_and_interleaved_publications() {
    let ts = server().await;
    let mut client = ts.client("alice").await;
    let (a, b) = ("docs:a", "docs:b");
    delta_subscribe(&mut client, a, json!({})).await;
    delta_subscribe(&mut client, b, json!({})).await;
    let mut decoders = [Decoder::new(), Decoder::new()];
    // Huge, nearly equal publications: small patches, rebuilt exactly.
    let big = |version: u64| json!({"blob": "x".repeat(60_000), "version": version});
    // Unrelated publications: a patch would not be smaller, so they go whole.
    let noise = |version: u64| json!({"noise": format!("{:x}", version.wrapping_mul(0x9e37_79b9_7f4a_7c15)), "v": version});
    for version in 1..=4 {
        ts.api_ok("publish", json!({"channel": a, "data": big(version)}))
            .await;
        ts.api_ok("publish", json!({"channel": b, "data": noise(version)}))
            .await;
    }
    for version in 1..=4 {
        let got = client.publication(a).await;
        if version > 1 {
            let patch = got["data"].as_str().unwrap();
            assert!(patch.len() < 100, "a small patch of a huge document");
        }
        assert_eq!(decoders[0].take(&got), big(version));
        let got = client.publication(b).await;
        assert_eq!(decoders[1].take(&got), noise(version));
    }
    assert_eq!(decoders[0].patches, 3, "channels keep their own base");
    assert_eq!(decoders[1].patches, 0, "no patch larger than the data");
    client.assert_alive().await;
}

/// A Protobuf delta subscribe (`delta: "fossil"`), with `recover` from `offset` when given.
async fn pb_delta_subscribe(
    client: &mut PbClient,
    channel: &str,
    recover: Option<(u64, &str)>,
) -> wire::SubscribeResult {
    let (offset, epoch) = recover.unwrap_or_default();
    let reply = client
        .call(Command {
            subscribe: Some(wire::SubscribeRequest {
                channel: channel.into(),
                delta: "fossil".into(),
                recoverable: true,
                recover: recover.is_some(),
                offset,
                epoch: epoch.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await;
    reply
        .subscribe
        .unwrap_or_else(|| panic!("subscribe {channel} failed: {:?}", reply.error))
}

/// What a Protobuf delta subscriber reconstructs, as centrifuge-js's protobuf build does: `data`
/// is raw bytes, the previous data patched when `delta` is set.
#[derive(Default)]
struct PbDecoder {
    previous: Vec<u8>,
    patches: usize,
    wire: usize,
}

impl PbDecoder {
    fn take(&mut self, publication: &wire::Publication) -> Value {
        self.wire += publication.data.len();
        let data = if publication.delta {
            self.patches += 1;
            apply(&self.previous, &publication.data).expect("the patch applies")
        } else {
            publication.data.clone()
        };
        let value = serde_json::from_slice(&data).expect("the data is JSON bytes");
        self.previous = data;
        value
    }
}

#[tokio::test]
async fn protobuf_subscribers_get_raw_patches_and_json_ones_string_patches_of_one_channel() {
    let ts = server().await;
    let channel = "docs:formats";
    let mut proto = PbClient::connected(&ts, "alice").await;
    let mut json_delta = ts.client("bob").await;
    let mut proto_plain = PbClient::connected(&ts, "carol").await;
    let reply = pb_delta_subscribe(&mut proto, channel, None).await;
    assert!(reply.delta, "negotiated over Protobuf: {reply:?}");
    let reply = delta_subscribe(&mut json_delta, channel, json!({})).await;
    assert_eq!(reply["delta"], json!(true), "{reply}");
    assert!(!proto_plain.subscribe(channel).await.delta);

    let (mut pb, mut js) = (PbDecoder::default(), Decoder::new());
    let mut full_bytes = 0;
    for version in 1..=10 {
        let doc = document(version, 30);
        full_bytes += doc.to_string().len();
        ts.api_ok("publish", json!({"channel": channel, "data": doc}))
            .await;
        let got = proto.publication(channel).await;
        assert_eq!(got.offset, version);
        assert_eq!(got.delta, version > 1, "the first one whole: {got:?}");
        if got.delta {
            assert!(got.data.ends_with(b";"), "a fossil patch, not wrapped");
        }
        assert_eq!(pb.take(&got), doc);
        assert_eq!(js.take(&json_delta.publication(channel).await), doc);
        let plain = proto_plain.publication(channel).await;
        assert!(!plain.delta);
        assert_eq!(serde_json::from_slice::<Value>(&plain.data).unwrap(), doc);
    }
    assert_eq!((pb.patches, js.patches), (9, 9));
    assert!(
        pb.wire * 4 < full_bytes,
        "patches are small: {} bytes on the wire for {full_bytes}",
        pb.wire
    );
    let metrics = ts.metrics().await;
    assert_eq!(
        metric(&metrics, "herald_delta_patches_total"),
        9.0,
        "one patch per publication for both formats"
    );
    assert_eq!(
        metric(&metrics, "herald_delta_publications_total{kind=\"delta\"}"),
        18.0
    );
    assert_eq!(
        metric(&metrics, "herald_delta_publications_total{kind=\"full\"}"),
        2.0
    );
}

#[tokio::test]
async fn a_protobuf_recovery_carries_raw_data_and_the_next_publication_patches_it() {
    let ts = server().await;
    let channel = "docs:pbrecover";
    let mut client = PbClient::connected(&ts, "alice").await;
    let reply = pb_delta_subscribe(&mut client, channel, None).await;
    let epoch = reply.epoch.clone();
    let mut decoder = PbDecoder::default();
    publish(&ts, channel, 1).await;
    publish(&ts, channel, 2).await;
    for version in 1..=2 {
        let got = client.publication(channel).await;
        assert_eq!(got.delta, version == 2);
        assert_eq!(decoder.take(&got), document(version, 25));
    }
    let unsubscribe = Command {
        unsubscribe: Some(wire::ChannelRequest {
            channel: channel.into(),
        }),
        ..Default::default()
    };
    client.call(unsubscribe).await;
    publish(&ts, channel, 3).await;
    publish(&ts, channel, 4).await;
    let reply = pb_delta_subscribe(&mut client, channel, Some((2, &epoch))).await;
    assert!(reply.recovered && reply.delta, "{reply:?}");
    assert_eq!(reply.publications.len(), 2);
    for (publication, version) in reply.publications.iter().zip(3..) {
        assert!(!publication.delta);
        // The data's JSON bytes as they are, not the JSON-string form JSON subscribers get.
        assert_eq!(publication.data.first(), Some(&b'{'));
        assert_eq!(decoder.take(publication), document(version, 25));
    }
    publish(&ts, channel, 5).await;
    let fifth = client.publication(channel).await;
    assert!(fifth.delta, "a patch against the last recovered one");
    assert_eq!(decoder.take(&fifth), document(5, 25));
}
