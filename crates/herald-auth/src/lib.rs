//! JWT verification and signing for Herald connection and subscription tokens.
//!
//! Tokens carry the same claims as Centrifugo v5/v6 tokens, so an application backend that
//! issues tokens for Centrifugo works with Herald unchanged.
//!
//! # Connection tokens ([`Verifier::verify_connect`] → [`ConnectClaims`])
//!
//! | claim | meaning |
//! |---|---|
//! | `sub` | user ID (string); missing or `""` means an anonymous connection |
//! | `exp` | token expiry, UNIX seconds (integer or fraction); missing: never expires |
//! | `expire_at` | integer; when present it sets the *connection* expiry instead of `exp` (`0`: never), while `exp` still decides whether the token itself is accepted. See [`ConnectClaims::connection_expires_at`] |
//! | `info` | connection info, any JSON, shown to other clients (presence, join/leave, publications) |
//! | `b64info` | `info` as standard base64; wins over `info`. Must decode to JSON: Herald speaks the JSON protocol only |
//! | `channels` | server-side channels to subscribe to |
//! | `subs` | server-side subscriptions with options: `{"chan": {"info", "b64info", "data", "b64data", "override"}}`; `override` holds `presence`, `join_leave`, `force_push_join_leave`, `force_recovery`, `force_positioning`, each `{"value": bool}` ([`SubOptions`], [`SubOverrides`]) |
//! | `meta` | private connection metadata, any JSON, never sent to clients |
//! | `channel` | must be absent or empty: a token with a channel is a subscription token, and Centrifugo rejects it as a connection token too |
//!
//! # Subscription tokens ([`Verifier::verify_subscribe`] → [`SubscribeClaims`])
//!
//! | claim | meaning |
//! |---|---|
//! | `sub` | user ID the token is for; the caller must check it equals the connection's user |
//! | `channel` | required, non-empty; the caller must check it equals the channel subscribed to |
//! | `exp`, `expire_at` | as for connection tokens, applied to the subscription ([`SubscribeClaims::subscription_expires_at`]) |
//! | `info`/`b64info` | channel info for this connection |
//! | `data`/`b64data` | data returned in the subscribe reply |
//! | `override` | channel option overrides, as in `subs` above |
//!
//! # Registered claims and checks (both kinds)
//!
//! - `exp`: the token is [`TokenError::Expired`] once `now >= exp + leeway`; the leeway is 0
//!   by default ([`Verifier::with_leeway`]). A token without `exp` never expires.
//! - `nbf`: if present, the token is invalid while `nbf > now + leeway`.
//! - `aud`: checked only when [`VerifierConfig::audience`] is set; then it must be present and
//!   equal to (string) or contain (array) the configured audience.
//! - `iss`: checked only when [`VerifierConfig::issuer`] is set; then it must be equal.
//! - `iat`, `jti` and unknown claims are ignored. A claim of the wrong JSON type is an error
//!   naming the claim; `null` counts as absent.
//!
//! # Algorithms and keys
//!
//! - `HS256`, `HS384`, `HS512` with [`VerifierConfig::hmac_secret`];
//! - `RS256`, `RS384`, `RS512` (and `PS256`, `PS384`, `PS512`) with
//!   [`VerifierConfig::rsa_public_key_pem`] (2048–4096 bit keys);
//! - `ES256` with a P-256 and `ES384` with a P-384 [`VerifierConfig::ecdsa_public_key_pem`]
//!   (`ES512`/P-521 is not supported by the crypto backend);
//! - any of the above plus `EdDSA` (Ed25519) with keys from [`VerifierConfig::jwks_json`].
//!   When a JWKS is configured it is the only key source, as in Centrifugo: the token's `kid`
//!   header picks the key (a token without `kid` is verified with the set's only key), and a
//!   key's `alg`, when present, pins the algorithm. Symmetric `oct` keys are refused.
//!
//! The token's `alg` header selects the key *family*, and a key only ever verifies its own
//! family's algorithms, so algorithm confusion (an `HS256` token "signed" with a public key)
//! is impossible. `alg: none`, empty signatures, `crit` headers, JWE, tokens over 64 KiB
//! ([`Verifier::with_max_token_len`]) and any malformed input yield
//! [`TokenError::Invalid`] with a reason; verification never panics.
//!
//! # Example
//!
//! ```
//! use herald_auth::{sign_hs256, Verifier, VerifierConfig};
//!
//! let verifier = Verifier::new(&VerifierConfig {
//!     hmac_secret: Some("secret".into()),
//!     ..Default::default()
//! })
//! .unwrap();
//! let token = sign_hs256(&serde_json::json!({"sub": "42", "info": {"name": "Ann"}}), "secret").unwrap();
//! let claims = verifier.verify_connect(&token).unwrap();
//! assert_eq!(claims.sub, "42");
//! assert_eq!(claims.info.unwrap().get(), r#"{"name":"Ann"}"#);
//! ```

#![forbid(unsafe_code)]

mod claims;
mod error;
mod keys;
mod sign;
mod verify;

pub use claims::{ConnectClaims, SubOptions, SubOverrides, SubscribeClaims};
pub use error::{ConfigError, ConfigField, SignError, TokenError};
pub use sign::{sign, sign_hs256};
pub use verify::{Verifier, VerifierConfig, DEFAULT_MAX_TOKEN_LEN};
