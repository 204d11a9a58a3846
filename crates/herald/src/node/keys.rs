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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hmac(secret: &str) -> VerifierConfig {
        VerifierConfig {
            hmac_secret: Some(secret.into()),
            ..VerifierConfig::default()
        }
    }

    fn signed(secret: &str, exp_in: i64) -> String {
        let exp = crate::core::clock::unix_secs() + exp_in;
        herald_auth::sign_hs256(&json!({"sub": "u", "exp": exp}), secret).expect("sign")
    }

    #[test]
    fn old_keys_verify_during_the_grace_only() {
        let keys = TokenKeys::new(&hmac("old-secret-old-secret-old-secret")).expect("keys");
        let old = signed("old-secret-old-secret-old-secret", 3600);
        let new = signed("new-secret-new-secret-new-secret", 3600);
        assert!(keys.verify_connect(&new).is_err());
        let rotated = keys
            .rotate(
                &hmac("new-secret-new-secret-new-secret"),
                Duration::from_millis(200),
            )
            .expect("rotate");
        assert!(rotated);
        assert!(keys.verify_connect(&new).is_ok());
        assert!(keys.verify_connect(&old).is_ok(), "within the grace");
        std::thread::sleep(Duration::from_millis(300));
        assert!(matches!(
            keys.verify_connect(&old),
            Err(TokenError::Invalid(_))
        ));
        assert!(keys.verify_connect(&new).is_ok());
    }

    #[test]
    fn the_same_keys_are_no_rotation_and_zero_grace_ends_the_old_keys() {
        let keys = TokenKeys::new(&hmac("old-secret-old-secret-old-secret")).expect("keys");
        let old = signed("old-secret-old-secret-old-secret", 3600);
        assert!(!keys
            .rotate(&hmac("old-secret-old-secret-old-secret"), Duration::ZERO)
            .expect("same keys"));
        assert!(keys.verify_connect(&old).is_ok());
        assert!(keys
            .rotate(&hmac("new-secret-new-secret-new-secret"), Duration::ZERO)
            .expect("rotate"));
        assert!(keys.verify_connect(&old).is_err(), "no grace");
    }

    #[test]
    fn an_expired_token_of_the_old_key_says_expired() {
        let keys = TokenKeys::new(&hmac("old-secret-old-secret-old-secret")).expect("keys");
        keys.rotate(
            &hmac("new-secret-new-secret-new-secret"),
            Duration::from_secs(60),
        )
        .expect("rotate");
        let expired = signed("old-secret-old-secret-old-secret", -10);
        assert_eq!(
            keys.verify_connect(&expired).err(),
            Some(TokenError::Expired)
        );
        let foreign = signed("other-secret-other-secret-other", 3600);
        assert!(matches!(
            keys.verify_connect(&foreign),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn a_key_that_does_not_build_changes_nothing() {
        let keys = TokenKeys::new(&hmac("old-secret-old-secret-old-secret")).expect("keys");
        let bad = VerifierConfig {
            rsa_public_key_pem: Some("not a pem".into()),
            ..VerifierConfig::default()
        };
        let e = keys.rotate(&bad, Duration::from_secs(60)).unwrap_err();
        assert!(
            e.to_string().starts_with("client.token.rsa_public_key"),
            "{e}"
        );
        assert!(keys
            .verify_connect(&signed("old-secret-old-secret-old-secret", 3600))
            .is_ok());
    }
}
