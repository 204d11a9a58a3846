//! `[client.token]`: the keys that verify connection and subscription tokens (checked when the
//! server builds its verifier, which names these keys in its errors).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
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
}
