//! Channel names and the namespace rules that apply to them.
//!
//! `chat:room` belongs to namespace `chat`; `room` to the channels without namespace. A channel whose
//! name ends with `#user1,user2` is user-limited: only those users may subscribe (when the namespace
//! allows user-limited channels). `#alice` is alice's personal channel. Names starting with `$` are
//! private: only a subscription token (or the server) can subscribe.

use crate::config::{ChannelConfig, NamespaceOptions};
use herald_protocol::ErrorCode;
use std::collections::HashMap;
use std::sync::Arc;

pub const NAMESPACE_BOUNDARY: char = ':';
pub const USER_BOUNDARY: char = '#';
pub const USER_SEPARATOR: char = ',';
pub const PRIVATE_PREFIX: char = '$';

/// The personal channel of a user, to which the server subscribes each of the user's connections.
pub fn personal_channel(user: &str) -> String {
    format!("{USER_BOUNDARY}{user}")
}

/// The namespace rules in force; a configuration reload replaces them whole.
pub struct Namespaces {
    table: arc_swap::ArcSwap<Table>,
}

struct Table {
    default: Arc<NamespaceOptions>,
    named: HashMap<String, Arc<NamespaceOptions>>,
    max_length: usize,
}

impl Table {
    fn new(config: &ChannelConfig) -> Table {
        Table {
            default: Arc::new(config.without_namespace.clone()),
            named: config
                .namespaces
                .iter()
                .map(|ns| (ns.name.clone(), Arc::new(ns.clone())))
                .collect(),
            max_length: config.max_length,
        }
    }
}

impl Namespaces {
    pub fn new(config: &ChannelConfig) -> Namespaces {
        Namespaces {
            table: arc_swap::ArcSwap::from_pointee(Table::new(config)),
        }
    }

    /// Puts new rules in force. Subscriptions made under the old ones keep the options they
    /// resolved; the next resolve sees the new ones.
    pub fn replace(&self, config: &ChannelConfig) {
        self.table.store(Arc::new(Table::new(config)));
    }

    /// The options of a channel's namespace, or the error the client gets for an invalid name.
    pub fn resolve(&self, channel: &str) -> Result<Arc<NamespaceOptions>, ErrorCode> {
        let table = self.table.load();
        validate_name(channel, table.max_length)?;
        let name = channel.strip_prefix(PRIVATE_PREFIX).unwrap_or(channel);
        // Personal channels (`#user`) have no namespace, whatever characters the user id holds.
        if name.starts_with(USER_BOUNDARY) {
            return Ok(table.default.clone());
        }
        match name.split_once(NAMESPACE_BOUNDARY) {
            Some((ns, _)) => table
                .named
                .get(ns)
                .cloned()
                .ok_or(ErrorCode::UnknownChannel),
            None => Ok(table.default.clone()),
        }
    }
}

/// Rejects names no client should use: empty, too long, or with control characters.
pub fn validate_name(channel: &str, max_length: usize) -> Result<(), ErrorCode> {
    if channel.is_empty() || channel.len() > max_length || channel.chars().any(|c| c.is_control()) {
        return Err(ErrorCode::BadRequest);
    }
    Ok(())
}

pub fn is_private(channel: &str) -> bool {
    channel.starts_with(PRIVATE_PREFIX)
}

/// Subscribe permission without a token. A channel limited to users (`name#alice,bob`, and
/// personal channels `#alice`) admits exactly its listed users; other channels follow the
/// namespace's `allow_subscribe_for_client` (plus `_for_anonymous` for anonymous users).
/// Private (`$`) channels need a subscription token.
pub fn may_subscribe_without_token(ns: &NamespaceOptions, channel: &str, user: &str) -> bool {
    if is_private(channel) {
        return false;
    }
    let personal_form = channel.starts_with(USER_BOUNDARY);
    if personal_form || (ns.allow_user_limited_channels && channel.contains(USER_BOUNDARY)) {
        return user_allowed(channel, user);
    }
    ns.allow_subscribe_for_client && (!user.is_empty() || ns.allow_subscribe_for_anonymous)
}

/// Users allowed on a user-limited channel (`news#alice,bob` → alice, bob), if the name has a list.
pub fn limited_users(channel: &str) -> Option<impl Iterator<Item = &str>> {
    channel
        .rsplit_once(USER_BOUNDARY)
        .map(|(_, users)| users.split(USER_SEPARATOR).filter(|u| !u.is_empty()))
}

/// Whether `user` is one of the users a channel name is limited to.
pub fn user_allowed(channel: &str, user: &str) -> bool {
    !user.is_empty() && limited_users(channel).is_some_and(|mut users| users.any(|u| u == user))
}

/// Glob match for the `channels` API filter: `*` matches any run of characters.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    if pattern.is_empty() {
        return true;
    }
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(pos) => rest = &rest[pos + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespaces() -> Namespaces {
        let mut config = ChannelConfig::default();
        config.namespaces.push(NamespaceOptions {
            name: "chat".into(),
            presence: true,
            ..Default::default()
        });
        Namespaces::new(&config)
    }

    #[test]
    fn resolves_namespaces_and_rejects_bad_names() {
        let ns = namespaces();
        assert!(ns.resolve("chat:room").unwrap().presence);
        assert!(ns.resolve("$chat:secret").unwrap().presence);
        assert!(!ns.resolve("room").unwrap().presence);
        assert!(
            !ns.resolve("#user:with:colons").unwrap().presence,
            "personal channels have no namespace"
        );
        assert_eq!(
            ns.resolve("nope:room").unwrap_err(),
            ErrorCode::UnknownChannel
        );
        assert_eq!(ns.resolve("").unwrap_err(), ErrorCode::BadRequest);
        assert_eq!(ns.resolve("a\nb").unwrap_err(), ErrorCode::BadRequest);
        assert_eq!(
            ns.resolve(&"x".repeat(256)).unwrap_err(),
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn user_limited_channels() {
        assert!(user_allowed("#alice", "alice"));
        assert!(user_allowed("dialog#alice,bob", "bob"));
        assert!(!user_allowed("dialog#alice,bob", "eve"));
        assert!(!user_allowed("dialog", "alice"));
        assert!(!user_allowed("#alice", ""));
        assert_eq!(personal_channel("alice"), "#alice");
    }

    #[test]
    fn glob_patterns() {
        assert!(pattern_matches("", "x"));
        assert!(pattern_matches("chat:*", "chat:room"));
        assert!(!pattern_matches("chat:*", "news:room"));
        assert!(pattern_matches("*room*", "chat:room1"));
        assert!(pattern_matches("a*c*e", "abcde"));
        assert!(!pattern_matches("a*c*e", "abcdf"));
        assert!(pattern_matches("exact", "exact"));
    }
}
