//! Webhook signatures: `sha256=<hex of HMAC-SHA256(secret, body)>`, the format GitHub-style receivers
//! already know how to check.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The value of the `X-Herald-Signature` header for `body`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", to_hex(&mac.finalize().into_bytes()))
}

/// Checks a signature header in constant time.
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let expected = signature(secret, body);
    !expected.is_empty()
        && subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), header.as_bytes()).into()
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_known_hmac() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify(
            b"Jefe",
            b"what do ya want for nothing?",
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        ));
        assert!(!verify(
            b"Jefe",
            b"what do ya want for nothing!",
            "sha256=5bdc"
        ));
    }
}
