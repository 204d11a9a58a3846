//! Token verification.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, AlgorithmFamily};
use serde::Deserialize;

use crate::claims::{
    parse_payload, ConnectClaims, ConnectRaw, Registered, SubscribeClaims, SubscribeRaw,
};
use crate::error::{ConfigError, ConfigField, TokenError};
use crate::keys::{self, KeyEntry};

/// Default limit on the length of a token, in bytes (see [`Verifier::with_max_token_len`]).
pub const DEFAULT_MAX_TOKEN_LEN: usize = 64 * 1024;

/// Where verification keys come from, and which registered claims to enforce.
///
/// All fields are optional. Empty strings count as unset, like in Centrifugo's configuration.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct VerifierConfig {
    /// Shared secret for HS256/HS384/HS512 tokens.
    pub hmac_secret: Option<String>,
    /// RSA public key PEM text (`PUBLIC KEY`, `RSA PUBLIC KEY` or `CERTIFICATE`) for
    /// RS256/RS384/RS512 (and PS256/PS384/PS512) tokens. 2048 to 4096 bits.
    pub rsa_public_key_pem: Option<String>,
    /// ECDSA public key PEM text (`PUBLIC KEY`) for ES256 (P-256 key) or ES384 (P-384 key).
    pub ecdsa_public_key_pem: Option<String>,
    /// Contents of a JWKS document. When set, tokens are verified with JWKS keys only
    /// (like Centrifugo with a JWKS endpoint): the key is chosen by the token's `kid`
    /// header, or is the only key of the set when the token has no `kid`.
    pub jwks_json: Option<String>,
    /// When set, the token's `aud` (a string or an array) must contain this value.
    pub audience: Option<String>,
    /// When set, the token's `iss` must equal this value.
    pub issuer: Option<String>,
}

impl fmt::Debug for VerifierConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierConfig")
            .field(
                "hmac_secret",
                &self.hmac_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("rsa_public_key_pem", &self.rsa_public_key_pem.is_some())
            .field("ecdsa_public_key_pem", &self.ecdsa_public_key_pem.is_some())
            .field("jwks_json", &self.jwks_json.is_some())
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish()
    }
}

struct Inner {
    hmac: Option<KeyEntry>,
    rsa: Option<KeyEntry>,
    ec: Option<KeyEntry>,
    jwks: Option<Vec<KeyEntry>>,
    audience: Option<String>,
    issuer: Option<String>,
}

/// Verifies connection and subscription tokens. Cheap to clone and share between threads.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
    leeway: i64,
    max_token_len: usize,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("hmac", &self.inner.hmac.is_some())
            .field("rsa", &self.inner.rsa.is_some())
            .field("ecdsa", &self.inner.ec.as_ref().map(|k| k.describe()))
            .field("jwks_keys", &self.inner.jwks.as_ref().map(Vec::len))
            .field("audience", &self.inner.audience)
            .field("issuer", &self.inner.issuer)
            .field("leeway", &self.leeway)
            .field("max_token_len", &self.max_token_len)
            .finish()
    }
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// Shortens and escapes token-provided text for error messages.
fn excerpt(text: &str) -> String {
    const MAX: usize = 40;
    let mut out: String = text.chars().take(MAX).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    format!("{out:?}")
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn b64url(segment: &str, what: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|e| TokenError::Invalid(format!("{what} is not valid base64url: {e}")))
}

impl Verifier {
    /// Builds a verifier, checking every configured key. Errors name the field under the
    /// `client.token` prefix; use [`Verifier::with_prefix`] for other sections.
    pub fn new(cfg: &VerifierConfig) -> Result<Verifier, ConfigError> {
        Self::with_prefix(cfg, "client.token")
    }

    /// Like [`Verifier::new`], with `prefix` (e.g. `client.subscription_token`) used in
    /// [`ConfigError`] messages.
    pub fn with_prefix(cfg: &VerifierConfig, prefix: &str) -> Result<Verifier, ConfigError> {
        let err = |field: ConfigField, reason: String| ConfigError {
            prefix: prefix.to_owned(),
            field,
            reason,
        };
        let hmac = non_empty(&cfg.hmac_secret).map(keys::hmac_key);
        let rsa = non_empty(&cfg.rsa_public_key_pem)
            .map(|pem| keys::rsa_key_from_pem(pem).map_err(|r| err(ConfigField::RsaPublicKey, r)))
            .transpose()?;
        let ec = non_empty(&cfg.ecdsa_public_key_pem)
            .map(|pem| keys::ec_key_from_pem(pem).map_err(|r| err(ConfigField::EcdsaPublicKey, r)))
            .transpose()?;
        let jwks = cfg
            .jwks_json
            .as_deref()
            .filter(|j| !j.trim().is_empty())
            .map(|json| keys::parse_jwks(json).map_err(|r| err(ConfigField::Jwks, r)))
            .transpose()?;
        Ok(Verifier {
            inner: Arc::new(Inner {
                hmac,
                rsa,
                ec,
                jwks,
                audience: non_empty(&cfg.audience).map(str::to_owned),
                issuer: non_empty(&cfg.issuer).map(str::to_owned),
            }),
            leeway: 0,
            max_token_len: DEFAULT_MAX_TOKEN_LEN,
        })
    }

    /// Allows `exp` (and `nbf`) to be off by up to `seconds` to absorb clock skew between
    /// the token issuer and Herald. Default 0, like Centrifugo.
    pub fn with_leeway(mut self, seconds: u64) -> Verifier {
        self.leeway = i64::try_from(seconds).unwrap_or(i64::MAX);
        self
    }

    /// Rejects tokens longer than `bytes` before any decoding. Default
    /// [`DEFAULT_MAX_TOKEN_LEN`] (64 KiB, Centrifugo's default WebSocket message limit).
    pub fn with_max_token_len(mut self, bytes: usize) -> Verifier {
        self.max_token_len = bytes;
        self
    }

    /// Whether at least one key source (HMAC secret, RSA key, ECDSA key, JWKS) is configured.
    pub fn is_configured(&self) -> bool {
        let inner = &self.inner;
        inner.hmac.is_some() || inner.rsa.is_some() || inner.ec.is_some() || inner.jwks.is_some()
    }

    /// Verifies a connection token against the current time.
    pub fn verify_connect(&self, token: &str) -> Result<ConnectClaims, TokenError> {
        self.verify_connect_at(token, now_unix())
    }

    /// Verifies a connection token as if the time were `now` (UNIX seconds).
    pub fn verify_connect_at(&self, token: &str, now: i64) -> Result<ConnectClaims, TokenError> {
        let payload = self.verify_signature(token)?;
        let raw: ConnectRaw = parse_payload(&payload)?;
        self.check_audience_issuer(&raw.registered())?;
        if raw.has_channel() {
            return Err(TokenError::Invalid(
                "a connection token must not contain a `channel` claim (only subscription tokens do)"
                    .to_owned(),
            ));
        }
        self.check_times(&raw.registered(), now)?;
        raw.into_claims()
    }

    /// Verifies a subscription token against the current time.
    pub fn verify_subscribe(&self, token: &str) -> Result<SubscribeClaims, TokenError> {
        self.verify_subscribe_at(token, now_unix())
    }

    /// Verifies a subscription token as if the time were `now` (UNIX seconds).
    pub fn verify_subscribe_at(
        &self,
        token: &str,
        now: i64,
    ) -> Result<SubscribeClaims, TokenError> {
        let payload = self.verify_signature(token)?;
        let raw: SubscribeRaw = parse_payload(&payload)?;
        let registered = raw.registered();
        self.check_audience_issuer(&registered)?;
        self.check_times(&registered, now)?;
        if !raw.has_channel() {
            return Err(TokenError::Invalid(
                "a subscription token must contain a non-empty `channel` claim".to_owned(),
            ));
        }
        raw.into_claims()
    }

    /// Checks the token's shape, header and signature; returns the decoded payload bytes.
    fn verify_signature(&self, token: &str) -> Result<Vec<u8>, TokenError> {
        if !self.is_configured() {
            return Err(TokenError::NotConfigured);
        }
        if token.is_empty() {
            return Err(TokenError::Invalid("empty token".to_owned()));
        }
        if token.len() > self.max_token_len {
            return Err(TokenError::Invalid(format!(
                "token is {} bytes, more than the {} byte limit",
                token.len(),
                self.max_token_len
            )));
        }
        if let Some(bad) = token
            .bytes()
            .find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')))
        {
            let hint = if token.starts_with("Bearer ") {
                " (send the bare JWT, without \"Bearer \")"
            } else {
                ""
            };
            return Err(TokenError::Invalid(format!(
                "token contains a character outside base64url and '.' ({:?}){hint}",
                char::from(bad)
            )));
        }
        let segments: Vec<&str> = token.split('.').collect();
        let (header_b64, payload_b64, signature_b64) = match segments.as_slice() {
            [h, p, s] => (*h, *p, *s),
            parts if parts.len() == 5 => {
                return Err(TokenError::Invalid(
                    "encrypted tokens (JWE) are not supported".to_owned(),
                ))
            }
            parts => {
                return Err(TokenError::Invalid(format!(
                    "expected 3 '.'-separated segments, found {}",
                    parts.len()
                )))
            }
        };

        let header_bytes = b64url(header_b64, "header")?;
        if header_bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(TokenError::Invalid(
                "header is not a JSON object".to_owned(),
            ));
        }
        let header: Header = serde_json::from_slice(&header_bytes)
            .map_err(|e| TokenError::Invalid(format!("malformed header: {e}")))?;
        if header.alg.eq_ignore_ascii_case("none") {
            return Err(TokenError::Invalid(
                "alg \"none\" is not allowed: unsigned tokens are rejected".to_owned(),
            ));
        }
        let alg = Algorithm::from_str(&header.alg).map_err(|_| {
            TokenError::Invalid(format!("unsupported alg {}", excerpt(&header.alg)))
        })?;
        match &header.crit {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Array(items)) if items.is_empty() => {}
            Some(_) => {
                return Err(TokenError::Invalid(
                    "unsupported critical header parameters (`crit`)".to_owned(),
                ))
            }
        }

        let key = self.select_key(alg, header.kid.as_deref())?;

        if signature_b64.is_empty() {
            return Err(TokenError::Invalid(
                "token has an empty signature".to_owned(),
            ));
        }
        b64url(signature_b64, "signature")?;
        // The signed message is everything before the last '.'.
        let message = token.rsplit_once('.').map_or("", |(message, _)| message);
        match jsonwebtoken::crypto::verify(signature_b64, message.as_bytes(), &key.key, alg) {
            Ok(true) => {}
            Ok(false) => {
                return Err(TokenError::Invalid(format!(
                    "signature does not verify with {}",
                    key.describe()
                )))
            }
            Err(e) => {
                return Err(TokenError::Invalid(format!(
                    "cannot verify {alg:?} with {}: {e}",
                    key.describe()
                )))
            }
        }
        b64url(payload_b64, "payload")
    }

    /// Picks the key for a token. JWKS, when configured, is the only source; otherwise the
    /// algorithm family picks the HMAC secret, the RSA key or the ECDSA key. A key never
    /// verifies another family's algorithm.
    fn select_key(&self, alg: Algorithm, kid: Option<&str>) -> Result<&KeyEntry, TokenError> {
        let inner = &self.inner;
        let key = if let Some(jwks) = &inner.jwks {
            match kid {
                Some(kid) => jwks
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .ok_or_else(|| {
                        TokenError::Invalid(format!("no JWKS key with kid {}", excerpt(kid)))
                    })?,
                None => match jwks.as_slice() {
                    [only] => only,
                    keys => {
                        return Err(TokenError::Invalid(format!(
                            "token has no `kid` header and the JWKS holds {} keys",
                            keys.len()
                        )))
                    }
                },
            }
        } else {
            let (slot, what) = match alg.family() {
                AlgorithmFamily::Hmac => (inner.hmac.as_ref(), "HMAC secret"),
                AlgorithmFamily::Rsa => (inner.rsa.as_ref(), "RSA public key"),
                AlgorithmFamily::Ec => (inner.ec.as_ref(), "ECDSA public key"),
                AlgorithmFamily::Ed => (None, "JWKS with an Ed25519 key"),
            };
            slot.ok_or_else(|| {
                TokenError::Invalid(format!(
                    "{alg:?} tokens are not accepted: no {what} is configured"
                ))
            })?
        };
        if !key.accepts(alg) {
            return Err(TokenError::Invalid(format!(
                "{alg:?} tokens cannot be verified with {}",
                key.describe()
            )));
        }
        Ok(key)
    }

    fn check_audience_issuer(&self, claims: &Registered) -> Result<(), TokenError> {
        if let Some(expected) = &self.inner.audience {
            match &claims.aud {
                None => {
                    return Err(TokenError::Invalid(format!(
                        "token has no `aud` claim; audience {expected:?} is required"
                    )))
                }
                Some(aud) if !aud.iter().any(|a| a == expected) => {
                    return Err(TokenError::Invalid(format!(
                        "`aud` does not contain the required audience {expected:?}"
                    )))
                }
                Some(_) => {}
            }
        }
        if let Some(expected) = &self.inner.issuer {
            match &claims.iss {
                None => {
                    return Err(TokenError::Invalid(format!(
                        "token has no `iss` claim; issuer {expected:?} is required"
                    )))
                }
                Some(iss) if iss != expected => {
                    return Err(TokenError::Invalid(format!(
                        "`iss` is {}, not the required issuer {expected:?}",
                        excerpt(iss)
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn check_times(&self, claims: &Registered, now: i64) -> Result<(), TokenError> {
        if let Some(exp) = claims.exp {
            if now >= exp.saturating_add(self.leeway) {
                return Err(TokenError::Expired);
            }
        }
        if let Some(nbf) = claims.nbf {
            if nbf > now.saturating_add(self.leeway) {
                return Err(TokenError::Invalid(format!(
                    "token is not valid yet (`nbf` is {} seconds in the future)",
                    nbf.saturating_sub(now)
                )));
            }
        }
        Ok(())
    }
}
