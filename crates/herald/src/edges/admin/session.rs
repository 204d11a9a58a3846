//! Signed console sessions and their CSRF tokens, without server-side state: a session cookie is
//! `<expiry>.<nonce>.<mac>`, valid on every node that shares `admin.secret`, and its CSRF token is
//! a MAC of the cookie, so a page can only act for the session it was served to.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Why a session cookie was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("session expired")]
    Expired,
    #[error("invalid session")]
    Invalid,
}

impl SessionError {
    /// The reason label of `herald_admin_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            SessionError::Expired => "expired",
            SessionError::Invalid => "invalid",
        }
    }
}

/// Issues and checks sessions with one key.
pub struct Signer {
    key: [u8; 32],
}

impl Signer {
    /// The key is derived from `secret` and the password, so changing the password ends every
    /// session. An empty `secret` gives a random key: sessions then live in this process only.
    pub fn new(secret: &str, password: &str) -> Signer {
        let mut base = [0u8; 32];
        if secret.is_empty() {
            rand::rng().fill_bytes(&mut base);
        } else {
            base = Sha256::digest(secret.as_bytes()).into();
        }
        let mut mac = HmacSha256::new_from_slice(&base).expect("HMAC takes any key length");
        mac.update(b"herald admin session key\0");
        mac.update(password.as_bytes());
        Signer {
            key: mac.finalize().into_bytes().into(),
        }
    }

    fn mac(&self, purpose: &str, text: &str) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(purpose.as_bytes());
        mac.update(b"\0");
        mac.update(text.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// A new session valid until `expires_at` (Unix seconds).
    pub fn issue(&self, expires_at: u64) -> String {
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        let body = format!("{expires_at}.{}", URL_SAFE_NO_PAD.encode(nonce));
        let mac = URL_SAFE_NO_PAD.encode(self.mac("session", &body));
        format!("{body}.{mac}")
    }

    /// Checks a session cookie's signature, then its expiry.
    pub fn verify(&self, cookie: &str, now: u64) -> Result<(), SessionError> {
        let (body, mac) = cookie.rsplit_once('.').ok_or(SessionError::Invalid)?;
        let given = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| SessionError::Invalid)?;
        if !bool::from(given.ct_eq(&self.mac("session", body))) {
            return Err(SessionError::Invalid);
        }
        let expires_at: u64 = body
            .split_once('.')
            .and_then(|(expiry, _)| expiry.parse().ok())
            .ok_or(SessionError::Invalid)?;
        if expires_at <= now {
            return Err(SessionError::Expired);
        }
        Ok(())
    }

    /// The CSRF token of a session.
    pub fn csrf(&self, cookie: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac("csrf", cookie))
    }

    /// Whether `token` is the CSRF token of the session `cookie` (compared in constant time).
    pub fn csrf_matches(&self, cookie: &str, token: &str) -> bool {
        bool::from(self.csrf(cookie).as_bytes().ct_eq(token.as_bytes()))
    }
}

/// Whether two secrets are equal, in time independent of where they differ (and of their lengths:
/// both are hashed first).
pub fn secrets_equal(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    bool::from(a.ct_eq(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_verify_expire_and_refuse_tampering() {
        let signer = Signer::new("a shared secret of the whole cluster", "pw");
        let cookie = signer.issue(1000);
        assert_eq!(signer.verify(&cookie, 999), Ok(()));
        assert_eq!(signer.verify(&cookie, 1000), Err(SessionError::Expired));
        // Another node with the same secret and password accepts it.
        let other = Signer::new("a shared secret of the whole cluster", "pw");
        assert_eq!(other.verify(&cookie, 999), Ok(()));
        // A new password or another secret does not.
        let changed = Signer::new("a shared secret of the whole cluster", "new pw");
        assert_eq!(changed.verify(&cookie, 999), Err(SessionError::Invalid));
        let foreign = Signer::new("another secret", "pw");
        assert_eq!(foreign.verify(&cookie, 999), Err(SessionError::Invalid));
        // A later expiry with the old signature is refused.
        let (_, rest) = cookie.split_once('.').unwrap();
        let extended = format!("99999.{rest}");
        assert_eq!(signer.verify(&extended, 999), Err(SessionError::Invalid));
        for junk in ["", ".", "1000", "1000.x.y", "a.b.%%%"] {
            assert_eq!(signer.verify(junk, 0), Err(SessionError::Invalid), "{junk}");
        }
    }

    #[test]
    fn csrf_tokens_are_bound_to_their_session() {
        let signer = Signer::new("a shared secret of the whole cluster", "pw");
        let (a, b) = (signer.issue(1000), signer.issue(1000));
        assert!(signer.csrf_matches(&a, &signer.csrf(&a)));
        assert!(!signer.csrf_matches(&a, &signer.csrf(&b)));
        assert!(!signer.csrf_matches(&a, ""));
    }

    #[test]
    fn random_keys_differ_per_process() {
        let cookie = Signer::new("", "pw").issue(1000);
        assert_eq!(
            Signer::new("", "pw").verify(&cookie, 0),
            Err(SessionError::Invalid)
        );
    }

    #[test]
    fn secrets_compare() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
    }
}
