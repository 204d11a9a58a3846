//! Channel names and what their prefix makes of them.
//!
//! | prefix | kind | cache |
//! | --- | --- | --- |
//! | (none) | [`ChannelKind::Public`] | no |
//! | `cache-` | public | yes |
//! | `private-` | [`ChannelKind::Private`] | no |
//! | `private-cache-` | private | yes |
//! | `private-encrypted-` | [`ChannelKind::PrivateEncrypted`] | no |
//! | `private-encrypted-cache-` | private encrypted | yes |
//! | `presence-` | [`ChannelKind::Presence`] | no |
//! | `presence-cache-` | presence | yes |
//! | `#server-to-user-<user id>` | [`ChannelKind::ServerToUser`] | no |
//!
//! Names are 1 to 200 bytes of `A-Z a-z 0-9 _ - = @ , . ;`. Pusher's channel docs state 164
//! characters, but the official server SDK (pusher-http-node) accepts and sends up to 200, so 200
//! is the default here: refusing what the SDK lets through would break its users. `#` is reserved:
//! the only name holding it is the `#server-to-user-` channel pusher-js subscribes to after
//! `pusher:signin`, whose user id part may hold any printable character (the SDKs only require it
//! to be non-empty).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest channel name accepted by default, in bytes (all allowed characters are ASCII).
pub const MAX_CHANNEL_NAME_LEN: usize = 200;

/// Prefix of the channel that carries events sent to one signed-in user.
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChannelKind {
    Public,
    Private,
    PrivateEncrypted,
    Presence,
    /// `#server-to-user-<id>`: subscribable only by connections signed in as `<id>`.
    ServerToUser,
}

/// A validated channel name with its kind and cache flag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ChannelName {
    name: String,
    kind: ChannelKind,
    cache: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is {len} bytes long, at most {max} are allowed")]
    TooLong { len: usize, max: usize },
    #[error("channel name has {ch:?} at byte {index}; allowed are A-Z a-z 0-9 and _ - = @ , . ;")]
    InvalidChar { ch: char, index: usize },
    #[error("#server-to-user- channel names need a user id")]
    EmptyUserId,
}

impl ChannelName {
    /// Validates `name` with the default length limit ([`MAX_CHANNEL_NAME_LEN`]).
    pub fn parse(name: &str) -> Result<Self, ChannelNameError> {
        Self::parse_with_max_len(name, MAX_CHANNEL_NAME_LEN)
    }

    pub fn parse_with_max_len(name: &str, max_len: usize) -> Result<Self, ChannelNameError> {
        if name.is_empty() {
            return Err(ChannelNameError::Empty);
        }
        if name.len() > max_len {
            return Err(ChannelNameError::TooLong {
                len: name.len(),
                max: max_len,
            });
        }
        if let Some(user_id) = name.strip_prefix(SERVER_TO_USER_PREFIX) {
            if user_id.is_empty() {
                return Err(ChannelNameError::EmptyUserId);
            }
            if let Some((index, ch)) = user_id.char_indices().find(|(_, c)| c.is_control()) {
                return Err(ChannelNameError::InvalidChar {
                    ch,
                    index: index + SERVER_TO_USER_PREFIX.len(),
                });
            }
            return Ok(ChannelName {
                name: name.to_owned(),
                kind: ChannelKind::ServerToUser,
                cache: false,
            });
        }
        if let Some((index, ch)) = name.char_indices().find(|(_, c)| !allowed(*c)) {
            return Err(ChannelNameError::InvalidChar { ch, index });
        }
        let (kind, cache) = classify(name);
        Ok(ChannelName {
            name: name.to_owned(),
            kind,
            cache,
        })
    }

    /// The channel of events sent to one signed-in user (`#server-to-user-<user_id>`).
    pub fn server_to_user(user_id: &str) -> Result<Self, ChannelNameError> {
        Self::parse(&format!("{SERVER_TO_USER_PREFIX}{user_id}"))
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    /// Cache channels keep their last event and replay it to each new subscriber.
    pub fn is_cache(&self) -> bool {
        self.cache
    }

    pub fn is_presence(&self) -> bool {
        self.kind == ChannelKind::Presence
    }

    pub fn is_encrypted(&self) -> bool {
        self.kind == ChannelKind::PrivateEncrypted
    }

    /// Private, encrypted and presence subscriptions carry an `auth` signed by the app server.
    pub fn requires_auth(&self) -> bool {
        matches!(
            self.kind,
            ChannelKind::Private | ChannelKind::PrivateEncrypted | ChannelKind::Presence
        )
    }

    /// Channels a client may publish `client-` events on (when the app enables them). The
    /// protocol does not forbid encrypted channels, though the client libraries cannot encrypt
    /// and so never send there.
    pub fn allows_client_events(&self) -> bool {
        self.requires_auth()
    }

    /// The user id of a `#server-to-user-` channel.
    pub fn server_to_user_id(&self) -> Option<&str> {
        match self.kind {
            ChannelKind::ServerToUser => self.name.strip_prefix(SERVER_TO_USER_PREFIX),
            _ => None,
        }
    }
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=' | '@' | ',' | '.' | ';')
}

fn classify(name: &str) -> (ChannelKind, bool) {
    // Longest prefixes first: `private-encrypted-` also starts with `private-`.
    const PREFIXES: [(&str, ChannelKind, bool); 7] = [
        (
            "private-encrypted-cache-",
            ChannelKind::PrivateEncrypted,
            true,
        ),
        ("private-encrypted-", ChannelKind::PrivateEncrypted, false),
        ("private-cache-", ChannelKind::Private, true),
        ("private-", ChannelKind::Private, false),
        ("presence-cache-", ChannelKind::Presence, true),
        ("presence-", ChannelKind::Presence, false),
        ("cache-", ChannelKind::Public, true),
    ];
    PREFIXES
        .iter()
        .find(|(prefix, _, _)| name.starts_with(prefix))
        .map(|&(_, kind, cache)| (kind, cache))
        .unwrap_or((ChannelKind::Public, false))
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

impl TryFrom<String> for ChannelName {
    type Error = ChannelNameError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        ChannelName::parse(&name)
    }
}

impl From<ChannelName> for String {
    fn from(channel: ChannelName) -> String {
        channel.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(name: &str) -> (ChannelKind, bool) {
        let c = ChannelName::parse(name).expect(name);
        (c.kind(), c.is_cache())
    }

    #[test]
    fn prefixes_give_kind_and_cache() {
        assert_eq!(kind("my-channel"), (ChannelKind::Public, false));
        assert_eq!(kind("cache-location"), (ChannelKind::Public, true));
        assert_eq!(kind("private-foobar"), (ChannelKind::Private, false));
        assert_eq!(kind("private-cache-x"), (ChannelKind::Private, true));
        assert_eq!(
            kind("private-encrypted-x"),
            (ChannelKind::PrivateEncrypted, false)
        );
        assert_eq!(
            kind("private-encrypted-cache-x"),
            (ChannelKind::PrivateEncrypted, true)
        );
        assert_eq!(kind("presence-foobar"), (ChannelKind::Presence, false));
        assert_eq!(kind("presence-cache-x"), (ChannelKind::Presence, true));
        // A prefix only counts at the start, and matching is case-sensitive as in pusher-js.
        assert_eq!(kind("my-private-channel"), (ChannelKind::Public, false));
        assert_eq!(kind("Private-x"), (ChannelKind::Public, false));
    }

    #[test]
    fn the_documented_example_name_is_valid() {
        assert_eq!(kind("foo-bar_1234@=,.;"), (ChannelKind::Public, false));
    }

    #[test]
    fn invalid_names_say_why() {
        assert_eq!(ChannelName::parse(""), Err(ChannelNameError::Empty));
        assert_eq!(
            ChannelName::parse("a b"),
            Err(ChannelNameError::InvalidChar { ch: ' ', index: 1 })
        );
        assert_eq!(
            ChannelName::parse("private-é"),
            Err(ChannelNameError::InvalidChar { ch: 'é', index: 8 })
        );
        assert_eq!(
            ChannelName::parse("#other"),
            Err(ChannelNameError::InvalidChar { ch: '#', index: 0 })
        );
        let long = "a".repeat(201);
        assert_eq!(
            ChannelName::parse(&long),
            Err(ChannelNameError::TooLong { len: 201, max: 200 })
        );
        assert!(ChannelName::parse(&"a".repeat(200)).is_ok());
        assert!(ChannelName::parse_with_max_len(&"a".repeat(165), 164).is_err());
        let err = ChannelName::parse("a b").unwrap_err().to_string();
        assert!(err.contains("allowed"), "{err}");
    }

    #[test]
    fn server_to_user_channels() {
        let c = ChannelName::server_to_user("user 42").expect("any printable id");
        assert_eq!(c.as_str(), "#server-to-user-user 42");
        assert_eq!(c.kind(), ChannelKind::ServerToUser);
        assert_eq!(c.server_to_user_id(), Some("user 42"));
        assert!(!c.requires_auth());
        assert!(!c.allows_client_events());
        assert_eq!(
            ChannelName::parse("#server-to-user-"),
            Err(ChannelNameError::EmptyUserId)
        );
        assert!(ChannelName::parse("#server-to-user-a\nb").is_err());
        assert_eq!(
            ChannelName::parse("private-x")
                .expect("valid")
                .server_to_user_id(),
            None
        );
    }

    #[test]
    fn auth_and_client_events() {
        let public = ChannelName::parse("cache-x").expect("valid");
        assert!(!public.requires_auth() && !public.allows_client_events());
        for name in [
            "private-x",
            "private-encrypted-x",
            "presence-x",
            "presence-cache-x",
        ] {
            let c = ChannelName::parse(name).expect(name);
            assert!(c.requires_auth() && c.allows_client_events(), "{name}");
        }
    }

    #[test]
    fn serde_validates() {
        let c: ChannelName = serde_json::from_str("\"presence-room\"").expect("valid");
        assert!(c.is_presence());
        assert_eq!(
            serde_json::to_string(&c).expect("serializes"),
            "\"presence-room\""
        );
        assert!(serde_json::from_str::<ChannelName>("\"bad name\"").is_err());
    }
}
