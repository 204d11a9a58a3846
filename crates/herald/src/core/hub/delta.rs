//! Delta compression, hub side (docs/protocol.md#delta-compression): for a channel with
//! delta-compression subscribers on this node, the hub remembers the previous publication and, for
//! each new one, computes once for all of them, when the previous publication is the one just
//! before it in the stream (offsets consecutive), a fossil patch against it; then encodes, once
//! per wire format its delta subscribers read, a full push and the patch push. Each
//! session then picks the patch only if its client holds that previous publication
//! (edges/session/delta.rs).
//!
//! Bounded: one publication per channel, kept only while the channel has delta subscribers here,
//! and freed with the channel.

use super::handler::publication_item;
use super::{Hub, PerFormat};
use crate::core::outbox::{DeltaPush, OutItem};
use bytes::Bytes;
use herald_protocol::delta::create;
use herald_protocol::Publication;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A channel's delta state on this node.
#[derive(Default)]
pub(super) struct DeltaState {
    /// Local subscribers with delta compression.
    subscribers: AtomicUsize,
    /// The last publication delivered, the base of the next patch. Its lock also orders the
    /// patches of one channel.
    previous: Mutex<Option<Arc<Publication>>>,
}

impl DeltaState {
    /// Called under the channel's shard lock, like `remove_subscriber`.
    pub(super) fn add_subscriber(&self) {
        self.subscribers.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn remove_subscriber(&self) {
        if self.subscribers.fetch_sub(1, Ordering::Relaxed) == 1 {
            *self.previous.lock() = None;
        }
    }
}

impl Hub {
    /// Offers a publication a delta subscriber was just given (the last of a recovery) as the
    /// channel's base, unless the hub already has that one or a later one: so the next
    /// publication can be a patch even when this node had not seen the previous one.
    pub fn seed_delta(&self, channel: &str, publication: Arc<Publication>) {
        let Some(state) = self
            .shard(channel)
            .read()
            .get(channel)
            .map(|entry| entry.delta.clone())
        else {
            return;
        };
        let mut previous = state.previous.lock();
        if publication.offset != 0
            && previous
                .as_ref()
                .is_none_or(|p| p.offset < publication.offset)
        {
            *previous = Some(publication);
        }
    }

    /// The patch of a publication against the channel's previous one, computed once for every
    /// delta subscriber here whatever its format: outer None when the channel has no delta
    /// subscribers here, inner None when there is no patch to offer (no consecutive previous
    /// publication, or a patch no smaller than the data).
    pub(super) fn delta_patch(
        &self,
        channel: &str,
        publication: &Arc<Publication>,
    ) -> Option<Option<Patch>> {
        let state = self.shard(channel).read().get(channel)?.delta.clone();
        if state.subscribers.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut previous = state.previous.lock();
        let base = previous
            .as_ref()
            .filter(|p| publication.offset != 0 && p.offset + 1 == publication.offset);
        let patch = base.and_then(|base| {
            let data = publication.data.get().as_bytes();
            let patch = create(base.data.get().as_bytes(), data);
            self.metrics.delta_patches.inc();
            // As Centrifugo: a patch no smaller than the data is not worth sending.
            (patch.len() < data.len()).then_some(Patch {
                base: base.offset,
                bytes: patch,
            })
        });
        // Without offsets there is no telling which publication a client holds: no base.
        *previous = (publication.offset != 0).then(|| publication.clone());
        Some(patch)
    }

    /// Queues a publication: the plain push (in the subscriber's format) for ordinary
    /// subscribers, the delta pushes in its format for the others. Each format's delta pushes
    /// are encoded once, on first need; the full one of a format whose full delta push is its
    /// plain push is shared with the plain subscribers.
    pub(super) fn deliver_with_delta(
        &self,
        channel: &str,
        publication: &Publication,
        encoded: &PerFormat<Bytes>,
        conflated: bool,
        patch: Option<Patch>,
    ) {
        let pushes: PerFormat<Arc<DeltaPush>> = PerFormat::new();
        self.fan_out(channel, |sub| {
            // Only Centrifugo connections negotiate delta compression.
            let delta_format = sub.wire.format().filter(|_| sub.delta);
            Some(if let Some(format) = delta_format {
                let push = pushes.get(sub.wire, |wire| {
                    let full = if format.delta_full_is_plain() {
                        encoded
                            .get(wire, |wire| wire.encode_publication(channel, publication))
                            .clone()
                    } else {
                        // Never None without a patch.
                        format
                            .encode_delta_publication_push(channel, publication, None)
                            .unwrap_or_default()
                    };
                    let patch = patch.as_ref().and_then(|patch| {
                        let bytes = format.encode_delta_publication_push(
                            channel,
                            publication,
                            Some(&patch.bytes),
                        )?;
                        Some((patch.base, bytes))
                    });
                    Arc::new(DeltaPush { full, patch })
                });
                OutItem::DeltaPublication {
                    slot: sub.slot,
                    offset: publication.offset,
                    push: push.clone(),
                }
            } else {
                publication_item(sub, channel, publication, encoded, conflated)
            })
        });
    }
}

/// A fossil patch of a publication's data against the previous publication's.
pub(super) struct Patch {
    /// The offset of the publication it applies to.
    base: u64,
    bytes: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ChannelConfig;
    use crate::core::channel::Namespaces;
    use crate::core::delivery::BrokerHandler;
    use crate::core::metrics::Metrics;
    use crate::core::outbox::Outbox;
    use crate::core::session_handle::SessionHandle;
    use serde_json::value::RawValue;
    use std::collections::VecDeque;

    fn publication(offset: u64, text: &str) -> Arc<Publication> {
        Arc::new(Publication {
            data: RawValue::from_string(format!("{{\"text\":\"{text}\"}}")).unwrap(),
            info: None,
            offset,
            tags: Default::default(),
            time: 0,
        })
    }

    fn previous(hub: &Hub, channel: &str) -> Option<u64> {
        let state = hub.shard(channel).read().get(channel)?.delta.clone();
        let previous = state.previous.lock();
        previous.as_ref().map(|p| p.offset)
    }

    #[test]
    fn the_base_is_kept_only_while_the_channel_has_delta_subscribers() {
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(
            metrics.clone(),
            Arc::new(Namespaces::new(&ChannelConfig::default())),
        );
        let handle = |seq| {
            Arc::new(SessionHandle {
                seq,
                client: format!("c{seq}"),
                user: "u".into(),
                wire: crate::core::wire::Wire::Json,
                transport: "websocket",
                outbox: Outbox::new(1 << 20, 1000, metrics.outbox_bytes.clone(), 0),
            })
        };
        let (plain, delta) = (handle(1), handle(2));
        let text = "a fairly long text that stays the same from one publication to the next";
        hub.add_subscriber("ch", &plain, 1, false, false);
        hub.handle_publication("ch", publication(1, text), None);
        assert_eq!(
            previous(&hub, "ch"),
            None,
            "no delta subscriber: no base kept"
        );
        hub.add_subscriber("ch", &delta, 1, false, true);
        hub.handle_publication("ch", publication(2, text), None);
        hub.handle_publication("ch", publication(3, &format!("{text}!")), None);
        assert_eq!(previous(&hub, "ch"), Some(3));
        assert_eq!(metrics.delta_patches.get(), 1);
        let mut items = VecDeque::new();
        delta.outbox.drain(&mut items);
        let patches: Vec<bool> = items
            .iter()
            .map(|item| match item {
                OutItem::DeltaPublication { push, .. } => push.patch.is_some(),
                other => panic!("a delta subscriber gets delta items: {other:?}"),
            })
            .collect();
        assert_eq!(patches, [false, true]);
        items.clear();
        plain.outbox.drain(&mut items);
        assert_eq!(items.len(), 3);
        assert!(items
            .iter()
            .all(|item| matches!(item, OutItem::Publication { .. })));
        assert!(!hub.remove_subscriber("ch", delta.seq));
        assert_eq!(previous(&hub, "ch"), None, "the last delta subscriber left");
        assert!(hub.remove_subscriber("ch", plain.seq));
        assert!(
            hub.shard("ch").read().get("ch").is_none(),
            "freed with the channel"
        );
    }

    #[test]
    fn one_patch_encoded_once_per_format_and_the_protobuf_full_push_shared() {
        use herald_protocol::Format;
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(
            metrics.clone(),
            Arc::new(Namespaces::new(&ChannelConfig::default())),
        );
        let handle = |seq, format: Format| {
            Arc::new(SessionHandle {
                seq,
                client: format!("c{seq}"),
                user: "u".into(),
                wire: format.into(),
                transport: "websocket",
                outbox: Outbox::new(1 << 20, 1000, metrics.outbox_bytes.clone(), 0),
            })
        };
        let plain = handle(1, Format::Protobuf);
        let pb = [handle(2, Format::Protobuf), handle(3, Format::Protobuf)];
        let json = handle(4, Format::Json);
        hub.add_subscriber("ch", &plain, 1, false, false);
        for sub in pb.iter().chain([&json]) {
            hub.add_subscriber("ch", sub, 1, false, true);
        }
        let text = "a fairly long text that stays the same from one publication to the next";
        hub.handle_publication("ch", publication(1, text), None);
        hub.handle_publication("ch", publication(2, &format!("{text}!")), None);
        assert_eq!(metrics.delta_patches.get(), 1, "one patch for every format");
        let drain = |handle: &SessionHandle| {
            let mut items = VecDeque::new();
            handle.outbox.drain(&mut items);
            items
        };
        let pushes = |handle: &SessionHandle| -> Vec<Arc<DeltaPush>> {
            drain(handle)
                .into_iter()
                .map(|item| match item {
                    OutItem::DeltaPublication { push, .. } => push,
                    other => panic!("a delta item: {other:?}"),
                })
                .collect()
        };
        let (first, second, json) = (pushes(&pb[0]), pushes(&pb[1]), pushes(&json));
        for (a, b) in first.iter().zip(&second) {
            assert!(
                Arc::ptr_eq(a, b),
                "encoded once for both Protobuf subscribers"
            );
        }
        assert!(
            !Arc::ptr_eq(&first[1], &json[1]),
            "JSON has its own encoding"
        );
        assert!(first[1].patch.is_some() && json[1].patch.is_some());
        let plain: Vec<Bytes> = drain(&plain)
            .into_iter()
            .map(|item| match item {
                OutItem::Publication { bytes, .. } => bytes,
                other => panic!("a plain item: {other:?}"),
            })
            .collect();
        for (push, plain) in first.iter().zip(&plain) {
            assert_eq!(push.full.as_ptr(), plain.as_ptr(), "the plain push, shared");
        }
    }
}
