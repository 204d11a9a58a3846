//! The digests every Pusher signature is made of: HMAC-SHA256 as lowercase hex, checked in
//! constant time, and the MD5 of HTTP API bodies.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// HMAC-SHA256 of `message` keyed by `secret`, as lowercase hex (what every Pusher SDK sends).
pub fn hmac_sha256_hex(secret: &[u8], message: &[u8]) -> String {
    match hmac_sha256(secret, message) {
        Some(mac) => hex(&mac),
        None => String::new(),
    }
}

/// Checks a hex HMAC-SHA256 signature in constant time. Upper-case hex is accepted; anything that
/// is not 64 hex digits fails.
pub fn verify_hmac_sha256_hex(secret: &[u8], message: &[u8], signature: &str) -> bool {
    let (Some(expected), Some(given)) = (hmac_sha256(secret, message), unhex32(signature)) else {
        return false;
    };
    expected.ct_eq(&given).into()
}

/// MD5 of `body` as lowercase hex: the HTTP API's `body_md5`.
pub fn md5_hex(body: &[u8]) -> String {
    hex(&Md5::digest(body))
}

fn hmac_sha256(secret: &[u8], message: &[u8]) -> Option<[u8; 32]> {
    // HMAC takes keys of any length, so this never fails; no panic path all the same.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(message);
    let mut out = [0u8; 32];
    out.copy_from_slice(&mac.finalize().into_bytes());
    Some(out)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// The value of one hex digit, either case.
pub(crate) fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // RFC 4231, test case 2.
        let mac = hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            mac,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify_hmac_sha256_hex(
            b"Jefe",
            b"what do ya want for nothing?",
            &mac
        ));
        assert!(verify_hmac_sha256_hex(
            b"Jefe",
            b"what do ya want for nothing?",
            &mac.to_uppercase()
        ));
        assert!(!verify_hmac_sha256_hex(
            b"Jefe",
            b"what do ya want for nothing!",
            &mac
        ));
        assert!(!verify_hmac_sha256_hex(
            b"Jefe",
            b"what do ya want for nothing?",
            &mac[..62]
        ));
        assert!(!verify_hmac_sha256_hex(b"Jefe", b"x", &"g".repeat(64)));
        assert!(!verify_hmac_sha256_hex(b"Jefe", b"x", "é"));
    }

    #[test]
    fn md5_matches_rfc_1321() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }
}
