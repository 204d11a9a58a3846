//! `[client.token]`: the keys that verify connection and subscription tokens (checked when the
//! server builds its verifier, which names these keys in its errors).

use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// Secret for HS256/384/512 tokens.
    pub hmac_secret: String,
    /// Path of a PEM RSA public key (RS256/384/512).
    pub rsa_public_key: String,
    /// Path of a PEM ECDSA public key (ES256/384).
    pub ecdsa_public_key: String,
    /// Path of a JWKS file; the key is chosen by the token's `kid`.
    pub jwks_file: String,
    /// When set, tokens must carry this audience.
    pub audience: String,
    /// When set, tokens must carry this issuer.
    pub issuer: String,
    /// After a reload that changes the keys above, how long the previous keys still verify
    /// (tokens signed before the rotation keep connecting while clients refresh them).
    /// 0s: the old keys stop at once (a leaked key).
    #[serde(with = "humantime_serde")]
    pub rotation_grace: Duration,
}

impl TokenConfig {
    /// No key of any kind is configured (a zero-config run signs with an ephemeral secret).
    pub fn has_no_key(&self) -> bool {
        self.hmac_secret.is_empty()
            && self.rsa_public_key.is_empty()
            && self.ecdsa_public_key.is_empty()
            && self.jwks_file.is_empty()
    }
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            hmac_secret: String::new(),
            rsa_public_key: String::new(),
            ecdsa_public_key: String::new(),
            jwks_file: String::new(),
            audience: String::new(),
            issuer: String::new(),
            rotation_grace: Duration::from_secs(3600),
        }
    }
}

impl TokenConfig {
    /// The same keys and claim checks (`rotation_grace` aside): a reload that keeps them keeps
    /// the running verifier. Key files are compared by path; a reload re-reads them anyway.
    pub fn same_keys(&self, other: &TokenConfig) -> bool {
        self.hmac_secret == other.hmac_secret
            && self.rsa_public_key == other.rsa_public_key
            && self.ecdsa_public_key == other.ecdsa_public_key
            && self.jwks_file == other.jwks_file
            && self.audience == other.audience
            && self.issuer == other.issuer
    }
}
