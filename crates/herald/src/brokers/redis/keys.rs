//! Key and pub/sub channel names of the Redis broker. Every name of a channel carries the
//! channel as hash tag, so on a Redis Cluster all of them share one slot.

pub(super) struct Keys {
    pub(super) prefix: String,
}

/// A channel's hash tag: every key and the pub/sub channel of a channel carry it in braces, so on
/// a Redis Cluster they share one slot (a script touches them together, and `SPUBLISH` from a
/// script must stay in the script's slot). Braces and `%` are percent-encoded so any channel name
/// yields a valid, distinct tag; an empty name gets `%` (which no encoded name is).
pub(crate) fn hash_tag(channel: &str) -> String {
    if channel.is_empty() {
        return "%".into();
    }
    let mut tag = String::with_capacity(channel.len());
    for c in channel.chars() {
        match c {
            '%' => tag.push_str("%25"),
            '{' => tag.push_str("%7B"),
            '}' => tag.push_str("%7D"),
            c => tag.push(c),
        }
    }
    tag
}

/// The channel a [`hash_tag`] came from.
fn channel_of_tag(tag: &str) -> String {
    if tag == "%" {
        return String::new();
    }
    tag.replace("%7B", "{")
        .replace("%7D", "}")
        .replace("%25", "%")
}

impl Keys {
    pub(super) fn stream(&self, channel: &str) -> String {
        format!("{}.stream.{{{}}}", self.prefix, hash_tag(channel))
    }
    pub(super) fn meta(&self, channel: &str) -> String {
        format!("{}.meta.{{{}}}", self.prefix, hash_tag(channel))
    }
    pub(super) fn latest_keys(&self, channel: &str) -> String {
        format!("{}.latest_keys.{{{}}}", self.prefix, hash_tag(channel))
    }
    pub(super) fn latest(&self, channel: &str) -> String {
        format!("{}.latest.{{{}}}", self.prefix, hash_tag(channel))
    }
    pub(super) fn presence(&self, channel: &str) -> String {
        format!("{}.presence.{{{}}}", self.prefix, hash_tag(channel))
    }
    pub(super) fn presence_expiry(&self, channel: &str) -> String {
        format!("{}.presence_exp.{{{}}}", self.prefix, hash_tag(channel))
    }
    // The registry's two keys share the prefix as their tag (one slot on a cluster).
    pub(super) fn nodes(&self) -> String {
        format!("{{{}}}.nodes", self.prefix)
    }
    pub(super) fn nodes_expiry(&self) -> String {
        format!("{{{}}}.nodes_exp", self.prefix)
    }
    pub(super) fn pubsub(&self, channel: &str) -> String {
        format!("{}.ch.{{{}}}", self.prefix, hash_tag(channel))
    }
    pub(super) fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }
    pub(super) fn channel_of(&self, pubsub: &str) -> Option<String> {
        let tag = pubsub
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".ch.{")?
            .strip_suffix('}')?;
        Some(channel_of_tag(tag))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_key_of_a_channel_shares_one_hash_tag_and_names_decode() {
        let keys = Keys { prefix: "p".into() };
        for channel in ["chat", "a{b}c", "}x{", "100%", "%7B", "", "%", "{}"] {
            let tag = hash_tag(channel);
            assert!(!tag.contains(['{', '}']), "{channel:?} -> {tag:?}");
            assert!(!tag.is_empty());
            let expected = format!("{{{tag}}}");
            for key in [
                keys.stream(channel),
                keys.meta(channel),
                keys.latest_keys(channel),
                keys.latest(channel),
                keys.presence(channel),
                keys.presence_expiry(channel),
                keys.pubsub(channel),
            ] {
                assert!(key.ends_with(&expected), "{key}");
                assert_eq!(key.matches('{').count(), 1, "{key}");
            }
            assert_eq!(
                keys.channel_of(&keys.pubsub(channel)).as_deref(),
                Some(channel)
            );
        }
        // Distinct channels never share keys.
        let tags: HashSet<String> = ["%", "", "%25", "%7B", "{", "%257B"]
            .iter()
            .map(|c| hash_tag(c))
            .collect();
        assert_eq!(tags.len(), 6);
        assert_eq!(keys.channel_of("p.control"), None);
        assert_eq!(keys.channel_of("other.ch.{x}"), None);
    }
}
