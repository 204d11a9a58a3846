//! Token signing, for `herald token` and tests.

use std::str::FromStr;

use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};

use crate::error::SignError;

/// Signs `claims` (a JSON object) as an HS256 JWT with `secret`.
///
/// ```
/// let token = herald_auth::sign_hs256(&serde_json::json!({"sub": "42"}), "secret").unwrap();
/// assert_eq!(token.split('.').count(), 3);
/// ```
pub fn sign_hs256(claims: &serde_json::Value, secret: &str) -> Result<String, SignError> {
    sign(claims, "HS256", secret, None)
}

/// Signs `claims` (a JSON object) as a JWT.
///
/// `alg` is a JOSE algorithm name: `HS256`/`HS384`/`HS512` (then `key` is the shared secret),
/// `RS*`/`PS*` (an RSA private key PEM, PKCS#1 or PKCS#8), `ES256`/`ES384` (a PKCS#8
/// `PRIVATE KEY` PEM on P-256/P-384) or `EdDSA` (a PKCS#8 Ed25519 PEM). `kid`, when given, is
/// put in the header so that a JWKS-configured verifier can pick the key.
pub fn sign(
    claims: &serde_json::Value,
    alg: &str,
    key: &str,
    kid: Option<&str>,
) -> Result<String, SignError> {
    if !claims.is_object() {
        return Err(SignError::ClaimsNotObject);
    }
    let algorithm =
        Algorithm::from_str(alg).map_err(|_| SignError::UnsupportedAlgorithm(alg.to_owned()))?;
    let pem = key.trim().as_bytes();
    let encoding_key = match algorithm.family() {
        AlgorithmFamily::Hmac => {
            if key.is_empty() {
                return Err(SignError::InvalidKey("the HMAC secret is empty".to_owned()));
            }
            EncodingKey::from_secret(key.as_bytes())
        }
        AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem)
            .map_err(|e| SignError::InvalidKey(format!("expected an RSA private key PEM: {e}")))?,
        AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem).map_err(|e| {
            SignError::InvalidKey(format!(
                "expected a PKCS#8 EC private key PEM (-----BEGIN PRIVATE KEY-----): {e}"
            ))
        })?,
        AlgorithmFamily::Ed => EncodingKey::from_ed_pem(pem).map_err(|e| {
            SignError::InvalidKey(format!("expected a PKCS#8 Ed25519 private key PEM: {e}"))
        })?,
    };
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &encoding_key)
        .map_err(|e| SignError::Failed(e.to_string()))
}
