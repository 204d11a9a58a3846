//! Error types of the crate.

/// Why a token was refused.
///
/// Map it onto the Centrifugo client protocol like Centrifugo does: [`TokenError::Expired`] is
/// error 109 "token expired" (SDKs refresh the token and retry), everything else is an invalid
/// token (disconnect 3500 "invalid token" for connection tokens, a permission error for
/// subscription tokens).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The signature is valid but `exp` is in the past (after the configured leeway).
    #[error("token expired")]
    Expired,
    /// The token is malformed, its signature does not verify, or a claim check failed.
    /// The text says why; it never contains key material and quotes token content only
    /// in short, escaped excerpts, so it is safe to log.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// No key source is configured, so no token can be verified.
    #[error(
        "token verification is not configured (no HMAC secret, RSA or ECDSA public key, or JWKS)"
    )]
    NotConfigured,
}

/// The [`crate::VerifierConfig`] field that a [`ConfigError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConfigField {
    /// [`crate::VerifierConfig::hmac_secret`]
    HmacSecret,
    /// [`crate::VerifierConfig::rsa_public_key_pem`]
    RsaPublicKey,
    /// [`crate::VerifierConfig::ecdsa_public_key_pem`]
    EcdsaPublicKey,
    /// [`crate::VerifierConfig::jwks_json`]
    Jwks,
}

impl ConfigField {
    /// The configuration key this field is read from (the Centrifugo v6 option name where
    /// there is one), used after the prefix in [`ConfigError`]'s message.
    pub fn config_name(self) -> &'static str {
        match self {
            ConfigField::HmacSecret => "hmac_secret",
            ConfigField::RsaPublicKey => "rsa_public_key",
            ConfigField::EcdsaPublicKey => "ecdsa_public_key",
            ConfigField::Jwks => "jwks_file",
        }
    }
}

/// A [`crate::VerifierConfig`] value that cannot be used.
///
/// Displays as `"{prefix}.{field}: {reason}"`, e.g.
/// `client.token.rsa_public_key: not a valid RSA public key PEM: ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}.{}: {}", .prefix, .field.config_name(), .reason)]
pub struct ConfigError {
    /// The configuration section, e.g. `client.token` or `client.subscription_token`.
    pub prefix: String,
    /// Which field is wrong.
    pub field: ConfigField,
    /// What is wrong with it.
    pub reason: String,
}

/// Why [`crate::sign`] or [`crate::sign_hs256`] could not produce a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The claims value is not a JSON object.
    #[error("claims must be a JSON object")]
    ClaimsNotObject,
    /// The algorithm name is unknown, `none`, or not supported for signing.
    #[error("unsupported signing algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// The key does not suit the algorithm or cannot be parsed.
    #[error("invalid signing key: {0}")]
    InvalidKey(String),
    /// The signing backend failed.
    #[error("signing failed: {0}")]
    Failed(String),
}
