//! The token keys in force. A reload that changes them (`[client.token]`, or the content of a
//! key file) keeps the previous keys verifying for `client.token.rotation_grace`, so tokens
//! signed before a key rotation still connect while clients refresh them.

use arc_swap::ArcSwap;
use herald_auth::{
    ConfigError, ConnectClaims, SubscribeClaims, TokenError, Verifier, VerifierConfig,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct TokenKeys {
    keys: ArcSwap<KeySet>,
}

struct KeySet {
    /// What `current` was built from, to tell whether a reload changes anything.
    source: VerifierConfig,
    current: Verifier,
    /// The keys before the last change, and until when they still verify.
    previous: Option<(Verifier, Instant)>,
}

impl TokenKeys {
    pub fn new(source: &VerifierConfig) -> Result<TokenKeys, ConfigError> {
        Ok(TokenKeys {
            keys: ArcSwap::from_pointee(KeySet {
                current: Verifier::new(source)?,
                source: source.clone(),
                previous: None,
            }),
        })
    }

    /// Puts the keys of `next` in force when they differ from the running ones; those they
    /// replace verify for `grace` more (zero: not at all, for a key that leaked). One generation
    /// is kept: a second rotation within the grace drops the oldest keys. Returns whether the keys
    /// changed; on error nothing changed.
    pub fn rotate(&self, next: &VerifierConfig, grace: Duration) -> Result<bool, ConfigError> {
        let old = self.keys.load_full();
        if old.source == *next {
            return Ok(false);
        }
        let current = Verifier::new(next)?;
        let previous = (!grace.is_zero()).then(|| (old.current.clone(), Instant::now() + grace));
        self.keys.store(Arc::new(KeySet {
            source: next.clone(),
            current,
            previous,
        }));
        Ok(true)
    }

    pub fn verify_connect(&self, token: &str) -> Result<ConnectClaims, TokenError> {
        self.verify(|v| v.verify_connect(token))
    }

    pub fn verify_subscribe(&self, token: &str) -> Result<SubscribeClaims, TokenError> {
        self.verify(|v| v.verify_subscribe(token))
    }

    /// The current keys first; the previous ones only for a token the current ones call
    /// invalid (an expired token signed with the old key says "expired", so SDKs refresh it).
    fn verify<T>(
        &self,
        check: impl Fn(&Verifier) -> Result<T, TokenError>,
    ) -> Result<T, TokenError> {
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
