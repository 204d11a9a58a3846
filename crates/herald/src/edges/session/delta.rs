//! Delta compression, session side (docs/protocol.md#delta-compression): negotiating it at
//! subscribe, and for each subscription that has it, which publication the client holds — the only
//! base a patch may be applied to. The hub offers each publication in full and, when it can, as a
//! patch against the channel's previous publication (core/hub/delta.rs); the patch goes only when
//! that previous publication is the one this client holds, the full push otherwise (first
//! publication after a subscribe, after a recovery without publications, after anything skipped).

use super::positioning::{unseen, Unseen};
use super::Session;
use crate::config::NamespaceOptions;
use crate::core::metrics::KindLabel;
use crate::core::outbox::DeltaPush;
use herald_protocol::{Disconnect, SubscribeResult};
use rustc_hash::FxHashMap;

/// The delta types a client may ask for.
const KNOWN: &[&str] = &["fossil"];

/// Subscriptions with delta compression, by slot → the offset of the publication the client
/// holds as its base (0: none yet). One entry per subscription, removed with it.
#[derive(Default)]
pub(super) struct DeltaBases(FxHashMap<u32, u64>);

/// Whether a client subscribe asking for `requested` gets delta compression. An unknown type is a
/// bad request (as Centrifugo: the connection is closed); a known one the namespace does not
/// allow is simply not negotiated (`delta` stays false in the reply).
pub(super) fn negotiate(ns: &NamespaceOptions, requested: &str) -> Result<bool, Disconnect> {
    if requested.is_empty() {
        return Ok(false);
    }
    if !KNOWN.contains(&requested) {
        return Err(Disconnect::BAD_REQUEST);
    }
    Ok(ns.delta_allowed(requested))
}

/// Whether a patch against the publication at offset `base` applies for a client holding the
/// publication at offset `held` (0: none).
fn patch_applies(held: u64, base: u64) -> bool {
    held != 0 && held == base
}

impl Session {
    /// A subscription starts with delta compression: the reply says so, carries its publications
    /// in full as a delta subscriber reads them in this connection's format (JSON: `data` as a
    /// JSON string), and the last of them is the client's first base.
    pub(super) fn start_delta(&mut self, channel: &str, slot: u32, result: &mut SubscribeResult) {
        result.delta = true;
        if let Some(last) = result.publications.last() {
            self.node.hub.seed_delta(channel, last.clone());
        }
        for publication in &mut result.publications {
            *publication = self.format.delta_publication(publication);
        }
        let base = result.publications.last().map_or(0, |p| p.offset);
        self.deltas.0.insert(slot, base);
    }

    pub(super) fn end_delta(&mut self, slot: u32) {
        self.deltas.0.remove(&slot);
    }

    /// Queues a publication of a delta subscription: the patch when its base is the publication
    /// this client holds, the full push otherwise; either way the client then holds this one.
    pub(super) fn queue_delta_publication(&mut self, slot: u32, offset: u64, push: &DeltaPush) {
        let seen = self.slots.get(&slot).copied();
        if unseen(seen, offset, None) == Unseen::Nothing {
            return;
        }
        let held = self.deltas.0.get(&slot).copied().unwrap_or(0);
        let (kind, bytes) = match &push.patch {
            Some((base, patch)) if patch_applies(held, *base) => ("delta", patch.clone()),
            _ => ("full", push.full.clone()),
        };
        if let Some(base) = self.deltas.0.get_mut(&slot) {
            *base = offset;
        }
        self.node
            .metrics
            .delta_publications
            .get_or_create(&KindLabel { kind })
            .inc();
        self.queue(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_goes_only_to_a_client_holding_its_base() {
        assert!(patch_applies(7, 7));
        assert!(!patch_applies(0, 7), "holds nothing yet");
        assert!(!patch_applies(6, 7), "holds an older publication");
        assert!(!patch_applies(8, 7), "holds a newer one (after a recovery)");
        assert!(!patch_applies(0, 0));
    }

    #[test]
    fn negotiation_follows_centrifugo() {
        let mut ns = NamespaceOptions::default();
        assert_eq!(negotiate(&ns, ""), Ok(false));
        assert_eq!(negotiate(&ns, "fossil"), Ok(false), "not allowed: no delta");
        assert_eq!(negotiate(&ns, "xdelta"), Err(Disconnect::BAD_REQUEST));
        ns.allowed_delta_types = vec!["fossil".into()];
        assert_eq!(negotiate(&ns, "fossil"), Ok(true));
        assert_eq!(negotiate(&ns, "FOSSIL"), Err(Disconnect::BAD_REQUEST));
        ns.batch_window = std::time::Duration::from_millis(100);
        assert_eq!(negotiate(&ns, "fossil"), Ok(false), "windowed: no delta");
    }
}
