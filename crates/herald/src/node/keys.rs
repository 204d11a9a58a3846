//! The token keys in force. A reload that changes `[client.token]` keeps the previous keys
//! verifying for `client.token.rotation_grace`, so tokens signed before a key rotation still
//! connect while clients refresh them.

use arc_swap::ArcSwap;
use herald_auth::{ConnectClaims, SubscribeClaims, TokenError, Verifier};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct TokenKeys {
    keys: ArcSwap<KeySet>,
}

struct KeySet {
    current: Verifier,
    /// The keys before the last change, and until when they still verify.
    previous: Option<(Verifier, Instant)>,
}

impl TokenKeys {
    pub fn new(current: Verifier) -> TokenKeys {
        TokenKeys {
            keys: ArcSwap::from_pointee(KeySet {
                current,
                previous: None,
            }),
        }
    }

    /// Puts `next` in force; the keys it replaces verify for `grace` more (zero: not at all,
    /// for a key that leaked). Only one generation is kept: a second rotation within the grace
    /// drops the oldest keys.
    pub fn rotate(&self, next: Verifier, grace: Duration) {
        let old = self.keys.load_full();
        let previous = (!grace.is_zero()).then(|| (old.current.clone(), Instant::now() + grace));
        self.keys.store(Arc::new(KeySet {
            current: next,
            previous,
        }));
    }

    pub fn verify_connect(&self, token: &str) -> Result<ConnectClaims, TokenError> {
        self.verify(|v| v.verify_connect(token))
    }

    pub fn verify_subscribe(&self, token: &str) -> Result<SubscribeClaims, TokenError> {
        self.verify(|v| v.verify_subscribe(token))
    }

    /// The current keys first; the previous ones only for a token the current ones call
    /// invalid (an expired token signed with the old key says "expired", so SDKs refresh it).
    fn verify<T>(&self, check: impl Fn(&Verifier) -> Result<T, TokenError>) -> Result<T, TokenError> {
        let keys = self.keys.load();
        let first = check(&keys.current);
        match (&first, &keys.previous) {
            (Err(TokenError::Invalid(_) | TokenError::NotConfigured), Some((old, until)))
                if Instant::now() < *until =>
            {
                match check(old) {
                    Err(TokenError::Invalid(_) | TokenError::NotConfigured) => first,
                    answer => answer,
                }
            }
            _ => first,
        }
    }
}
