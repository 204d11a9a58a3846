//! Whether a client may subscribe to, publish to, or read the presence or history of a channel,
//! from the channel's namespace options, who the client is (its user, empty when anonymous) and
//! whether it is subscribed. Pure: the session calls these with plain values; the backend, when
//! the namespace hands a decision to it, is passed in and handed back untouched.

use super::Refusal;
use crate::config::NamespaceOptions;
use crate::core::channel::{is_private, may_subscribe_without_token};
use herald_protocol::ErrorCode;

/// Why a client may not do something on a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Denial {
    /// The namespace keeps no presence, or no history, for this channel (error 108).
    NotAvailable,
    /// Anonymous clients need the namespace's `_for_anonymous` option.
    Anonymous,
    /// Private (`$`) channels are open to their subscribers only, and need a token to subscribe.
    PrivateChannel,
    /// Open to the channel's subscribers only, and this client is not one.
    NotSubscribed,
    /// The namespace does not open this to clients (or the channel is limited to other users).
    NotPermitted,
}

impl From<Denial> for ErrorCode {
    fn from(denial: Denial) -> Self {
        match denial {
            Denial::NotAvailable => ErrorCode::NotAvailable,
            _ => ErrorCode::PermissionDenied,
        }
    }
}

impl From<Denial> for Refusal {
    fn from(denial: Denial) -> Self {
        ErrorCode::from(denial).into()
    }
}

/// A decision that the namespace may hand to the backend (`proxy_subscribe`, `proxy_publish`).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Access<P> {
    Allowed,
    /// The backend decides, through this proxy.
    AskBackend(P),
    Denied(Denial),
}

/// Who a namespace opens one client action to (publish, presence, history).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Rule {
    pub for_anonymous: bool,
    pub for_client: bool,
    pub for_subscriber: bool,
}

impl Rule {
    pub fn publish(ns: &NamespaceOptions) -> Rule {
        Rule {
            for_anonymous: ns.allow_publish_for_anonymous,
            for_client: ns.allow_publish_for_client,
            for_subscriber: ns.allow_publish_for_subscriber,
        }
    }

    pub fn presence(ns: &NamespaceOptions) -> Rule {
        Rule {
            for_anonymous: ns.allow_presence_for_anonymous,
            for_client: ns.allow_presence_for_client,
            for_subscriber: ns.allow_presence_for_subscriber,
        }
    }

    pub fn history(ns: &NamespaceOptions) -> Rule {
        Rule {
            for_anonymous: ns.allow_history_for_anonymous,
            for_client: ns.allow_history_for_client,
            for_subscriber: ns.allow_history_for_subscriber,
        }
    }
}

/// Client-side permission for publish, presence and history: open to every client, or to
/// subscribers of the channel; anonymous clients need the namespace's `_for_anonymous` as well.
/// Private (`$`) channels are open to their subscribers only.
pub(super) fn may_use(
    rule: Rule,
    user: &str,
    subscribed: bool,
    channel: &str,
) -> Result<(), Denial> {
    if user.is_empty() && !rule.for_anonymous {
        return Err(Denial::Anonymous);
    }
    if is_private(channel) {
        return match (subscribed, rule.for_client || rule.for_subscriber) {
            (false, _) => Err(Denial::PrivateChannel),
            (true, false) => Err(Denial::NotPermitted),
            (true, true) => Ok(()),
        };
    }
    if rule.for_client || (rule.for_subscriber && subscribed) {
        Ok(())
    } else if rule.for_subscriber {
        Err(Denial::NotSubscribed)
    } else {
        Err(Denial::NotPermitted)
    }
}

/// A subscribe without a token: the backend decides when the namespace has `proxy_subscribe`
/// and a proxy is configured; otherwise the channel's name and the namespace's options do.
pub(super) fn subscribe_access<P>(
    ns: &NamespaceOptions,
    proxy: Option<P>,
    user: &str,
    channel: &str,
) -> Access<P> {
    if let Some(proxy) = proxy.filter(|_| ns.proxy_subscribe) {
        return Access::AskBackend(proxy);
    }
    if is_private(channel) {
        Access::Denied(Denial::PrivateChannel)
    } else if may_subscribe_without_token(ns, channel, user) {
        Access::Allowed
    } else {
        Access::Denied(Denial::NotPermitted)
    }
}

/// A publish: the backend decides when the namespace has `proxy_publish` and a proxy is
/// configured, instead of the namespace's `allow_publish_*` options.
pub(super) fn publish_access<P>(
    ns: &NamespaceOptions,
    proxy: Option<P>,
    user: &str,
    subscribed: bool,
    channel: &str,
) -> Access<P> {
    if let Some(proxy) = proxy.filter(|_| ns.proxy_publish) {
        return Access::AskBackend(proxy);
    }
    match may_use(Rule::publish(ns), user, subscribed, channel) {
        Ok(()) => Access::Allowed,
        Err(denial) => Access::Denied(denial),
    }
}

/// A presence or presence stats read: only where the namespace keeps presence.
pub(super) fn presence_access(
    ns: &NamespaceOptions,
    user: &str,
    subscribed: bool,
    channel: &str,
) -> Result<(), Denial> {
    if !ns.presence {
        return Err(Denial::NotAvailable);
    }
    may_use(Rule::presence(ns), user, subscribed, channel)
}

/// A history read: only where the namespace keeps history (`history` is how it keeps it, handed
/// back when the read is allowed).
pub(super) fn history_access<H>(
    ns: &NamespaceOptions,
    history: Option<H>,
    user: &str,
    subscribed: bool,
    channel: &str,
) -> Result<H, Denial> {
    let history = history.ok_or(Denial::NotAvailable)?;
    may_use(Rule::history(ns), user, subscribed, channel)?;
    Ok(history)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: Rule = Rule {
        for_anonymous: true,
        for_client: true,
        for_subscriber: true,
    };
    const CLIENTS: Rule = Rule {
        for_anonymous: false,
        for_client: true,
        for_subscriber: false,
    };
    const SUBSCRIBERS: Rule = Rule {
        for_anonymous: false,
        for_client: false,
        for_subscriber: true,
    };
    const CLOSED: Rule = Rule {
        for_anonymous: false,
        for_client: false,
        for_subscriber: false,
    };

    #[test]
    fn anonymous_clients_need_for_anonymous() {
        assert_eq!(may_use(CLIENTS, "", true, "news"), Err(Denial::Anonymous));
        assert_eq!(may_use(OPEN, "", false, "news"), Ok(()));
        // With it, the other options still apply.
        let anonymous_subscribers = Rule {
            for_anonymous: true,
            ..SUBSCRIBERS
        };
        assert_eq!(
            may_use(anonymous_subscribers, "", false, "news"),
            Err(Denial::NotSubscribed)
        );
    }

    #[test]
    fn for_client_opens_a_channel_to_every_user() {
        assert_eq!(may_use(CLIENTS, "alice", false, "news"), Ok(()));
        assert_eq!(may_use(CLIENTS, "alice", true, "news"), Ok(()));
    }

    #[test]
    fn for_subscriber_opens_a_channel_to_its_subscribers_only() {
        assert_eq!(may_use(SUBSCRIBERS, "alice", true, "news"), Ok(()));
        assert_eq!(
            may_use(SUBSCRIBERS, "alice", false, "news"),
            Err(Denial::NotSubscribed)
        );
    }

    #[test]
    fn a_closed_rule_denies_everyone() {
        assert_eq!(
            may_use(CLOSED, "alice", true, "news"),
            Err(Denial::NotPermitted)
        );
        assert_eq!(
            may_use(CLOSED, "alice", false, "news"),
            Err(Denial::NotPermitted)
        );
    }

    #[test]
    fn private_channels_are_for_their_subscribers_only() {
        assert_eq!(
            may_use(CLIENTS, "alice", false, "$secret"),
            Err(Denial::PrivateChannel)
        );
        assert_eq!(may_use(CLIENTS, "alice", true, "$secret"), Ok(()));
        assert_eq!(may_use(SUBSCRIBERS, "alice", true, "$secret"), Ok(()));
        assert_eq!(
            may_use(CLOSED, "alice", true, "$secret"),
            Err(Denial::NotPermitted)
        );
    }

    #[test]
    fn rules_come_from_the_namespace() {
        let ns = NamespaceOptions {
            allow_publish_for_client: true,
            allow_presence_for_subscriber: true,
            allow_history_for_anonymous: true,
            ..Default::default()
        };
        let publish = Rule::publish(&ns);
        assert!(publish.for_client && !publish.for_subscriber && !publish.for_anonymous);
        let presence = Rule::presence(&ns);
        assert!(presence.for_subscriber && !presence.for_client && !presence.for_anonymous);
        let history = Rule::history(&ns);
        assert!(history.for_anonymous && !history.for_client && !history.for_subscriber);
    }

    #[test]
    fn subscribe_goes_to_the_backend_with_proxy_subscribe_and_a_proxy() {
        let ns = NamespaceOptions {
            proxy_subscribe: true,
            ..Default::default()
        };
        assert_eq!(
            subscribe_access(&ns, Some("proxy"), "", "$secret"),
            Access::AskBackend("proxy")
        );
        // Without a proxy the namespace's options decide.
        assert_eq!(
            subscribe_access::<&str>(&ns, None, "alice", "$secret"),
            Access::Denied(Denial::PrivateChannel)
        );
    }

    #[test]
    fn subscribe_without_a_token_follows_the_namespace() {
        let open = NamespaceOptions {
            allow_subscribe_for_client: true,
            ..Default::default()
        };
        let closed = NamespaceOptions {
            allow_subscribe_for_client: false,
            ..Default::default()
        };
        // A proxy alone does not decide: the namespace must hand the decision to it.
        assert_eq!(
            subscribe_access(&open, Some("proxy"), "alice", "news"),
            Access::Allowed
        );
        assert_eq!(
            subscribe_access(&closed, Some("proxy"), "alice", "news"),
            Access::Denied(Denial::NotPermitted)
        );
        assert_eq!(
            subscribe_access::<()>(&open, None, "alice", "$secret"),
            Access::Denied(Denial::PrivateChannel)
        );
        // Personal channels admit their user only, whatever the namespace says.
        assert_eq!(
            subscribe_access::<()>(&closed, None, "alice", "#alice"),
            Access::Allowed
        );
        assert_eq!(
            subscribe_access::<()>(&open, None, "bob", "#alice"),
            Access::Denied(Denial::NotPermitted)
        );
    }

    #[test]
    fn publish_goes_to_the_backend_with_proxy_publish_and_a_proxy() {
        let ns = NamespaceOptions {
            proxy_publish: true,
            ..Default::default()
        };
        assert_eq!(
            publish_access(&ns, Some("proxy"), "", false, "$secret"),
            Access::AskBackend("proxy")
        );
        assert_eq!(
            publish_access::<()>(&ns, None, "alice", false, "news"),
            Access::Denied(Denial::NotPermitted)
        );
    }

    #[test]
    fn publish_without_the_backend_follows_allow_publish() {
        let ns = NamespaceOptions {
            allow_publish_for_subscriber: true,
            ..Default::default()
        };
        assert_eq!(
            publish_access(&ns, Some("proxy"), "alice", true, "news"),
            Access::Allowed
        );
        assert_eq!(
            publish_access::<()>(&ns, None, "alice", false, "news"),
            Access::Denied(Denial::NotSubscribed)
        );
        assert_eq!(
            publish_access::<()>(&ns, None, "", true, "news"),
            Access::Denied(Denial::Anonymous)
        );
    }

    #[test]
    fn presence_needs_presence_in_the_namespace_then_permission() {
        let without = NamespaceOptions {
            presence: false,
            allow_presence_for_client: true,
            ..Default::default()
        };
        assert_eq!(
            presence_access(&without, "alice", true, "news"),
            Err(Denial::NotAvailable)
        );
        let with = NamespaceOptions {
            presence: true,
            allow_presence_for_subscriber: true,
            ..Default::default()
        };
        assert_eq!(presence_access(&with, "alice", true, "news"), Ok(()));
        assert_eq!(
            presence_access(&with, "alice", false, "news"),
            Err(Denial::NotSubscribed)
        );
    }

    #[test]
    fn history_needs_history_in_the_namespace_then_permission() {
        let ns = NamespaceOptions {
            allow_history_for_client: true,
            ..Default::default()
        };
        assert_eq!(
            history_access::<u8>(&ns, None, "alice", true, "news"),
            Err(Denial::NotAvailable)
        );
        assert_eq!(history_access(&ns, Some(7), "alice", false, "news"), Ok(7));
        assert_eq!(
            history_access(&ns, Some(7), "", false, "news"),
            Err(Denial::Anonymous)
        );
    }

    #[test]
    fn denials_map_to_their_error_codes() {
        assert_eq!(
            ErrorCode::from(Denial::NotAvailable),
            ErrorCode::NotAvailable
        );
        for denial in [
            Denial::Anonymous,
            Denial::PrivateChannel,
            Denial::NotSubscribed,
            Denial::NotPermitted,
        ] {
            assert_eq!(ErrorCode::from(denial), ErrorCode::PermissionDenied);
        }
        match Refusal::from(Denial::NotSubscribed) {
            Refusal::Reply(error) => assert_eq!(error.code, 103),
            Refusal::Close(close) => panic!("a denial is a reply, not a close: {close:?}"),
        }
    }
}
