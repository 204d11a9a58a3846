//! Subject names of the NATS broker. Channel names may hold `.`, `*`, `>`, spaces…: base64url
//! makes each one a single token of subject-safe characters.

use base64::Engine;

/// A broker prefix's subjects.
pub(super) struct Subjects {
    pub(super) prefix: String,
}

/// One subject token (or KV key token) for any string.
pub(super) fn encode_token(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s.as_bytes())
}

/// The core subject a channel's frames travel on, for a broker prefix.
pub fn delivery_subject(prefix: &str, channel: &str) -> String {
    format!("{prefix}.ch.{}", encode_token(channel))
}

/// The JetStream subject a channel's history is stored under, for a broker prefix.
pub fn history_subject(prefix: &str, channel: &str) -> String {
    format!("{prefix}.h.{}", encode_token(channel))
}

impl Subjects {
    pub(super) fn channel(&self, channel: &str) -> String {
        delivery_subject(&self.prefix, channel)
    }
    pub(super) fn control(&self) -> String {
        format!("{}.control", self.prefix)
    }
    pub(super) fn probe(&self, uid: &str) -> String {
        format!("{}.probe.{uid}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_subjects_are_one_safe_token() {
        let subjects = Subjects {
            prefix: "herald.t1".into(),
        };
        for channel in ["a.b", "*", ">", "with space", "ns:#$x", ""] {
            let subject = subjects.channel(channel);
            let token = subject.strip_prefix("herald.t1.ch.").unwrap_or("");
            assert!(token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        }
        assert_ne!(subjects.channel("a"), subjects.channel("b"));
    }
}
