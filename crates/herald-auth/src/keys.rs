//! Loading verification keys: HMAC secrets, RSA and ECDSA public keys in PEM, and JWKS documents.
//!
//! Every key is checked when it is loaded so that configuration mistakes surface at startup
//! and never as "invalid signature" on every connect.

use std::collections::HashSet;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;

/// Smallest RSA modulus accepted, in bits.
pub(crate) const RSA_MIN_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits (the limit of the RSA backend).
pub(crate) const RSA_MAX_BITS: usize = 4096;
/// Largest accepted RSA public exponent (the limit of the RSA backend).
const RSA_MAX_EXPONENT: u64 = (1 << 33) - 1;

/// What a key can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// HS256, HS384, HS512.
    Hmac,
    /// RS256/384/512 and PS256/384/512.
    Rsa,
    /// ES256 for P-256 keys, ES384 for P-384 keys.
    Ec(Algorithm),
    /// EdDSA (Ed25519).
    Ed,
}

/// One verification key.
#[derive(Clone, Debug)]
pub(crate) struct KeyEntry {
    /// `kid` of a JWKS key; `None` for keys from PEM or the HMAC secret.
    pub kid: Option<String>,
    /// `alg` pinned by a JWKS key; tokens must then use exactly this algorithm.
    pub alg: Option<Algorithm>,
    pub kind: KeyKind,
    pub key: DecodingKey,
}

impl KeyEntry {
    /// Whether this key may verify a token signed with `alg`. Keys of one family never verify
    /// another family's tokens: this is what makes algorithm confusion impossible.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|pinned| pinned != alg) {
            return false;
        }
        match self.kind {
            KeyKind::Hmac => alg.family() == AlgorithmFamily::Hmac,
            KeyKind::Rsa => alg.family() == AlgorithmFamily::Rsa,
            KeyKind::Ec(curve_alg) => alg == curve_alg,
            KeyKind::Ed => alg == Algorithm::EdDSA,
        }
    }

    /// Human description for error messages.
    pub fn describe(&self) -> String {
        let what = match self.kind {
            KeyKind::Hmac => "the HMAC secret".to_owned(),
            KeyKind::Rsa => "RSA key".to_owned(),
            KeyKind::Ec(Algorithm::ES384) => "ECDSA P-384 key (ES384 only)".to_owned(),
            KeyKind::Ec(_) => "ECDSA P-256 key (ES256 only)".to_owned(),
            KeyKind::Ed => "Ed25519 key (EdDSA only)".to_owned(),
        };
        match (&self.kid, self.alg) {
            (Some(kid), Some(alg)) => format!("JWKS {what} {kid:?} pinned to {alg:?}"),
            (Some(kid), None) => format!("JWKS {what} {kid:?}"),
            (None, Some(alg)) => format!("JWKS {what} without kid pinned to {alg:?}"),
            (None, None) if self.kind == KeyKind::Hmac => what,
            (None, None) => format!("the configured {what}"),
        }
    }
}

/// The HMAC key for HS256/384/512.
pub(crate) fn hmac_key(secret: &str) -> KeyEntry {
    KeyEntry {
        kid: None,
        alg: None,
        kind: KeyKind::Hmac,
        key: DecodingKey::from_secret(secret.as_bytes()),
    }
}

/// Common mistakes in a PEM value, reported before attempting to parse it.
fn pem_precheck(pem: &str, expected: &str) -> Result<(), String> {
    if !pem.contains("-----BEGIN ") {
        return Err(format!(
            "not a valid {expected} PEM: expected PEM text starting with \"-----BEGIN PUBLIC KEY-----\" \
             (the file holds no PEM block)"
        ));
    }
    if pem.contains("PRIVATE KEY-----") {
        return Err(format!(
            "not a valid {expected} PEM: this is a private key; configure the public key \
             (`openssl pkey -in private.pem -pubout`)"
        ));
    }
    Ok(())
}

/// Parses an RSA public key PEM: `PUBLIC KEY` (SPKI), `RSA PUBLIC KEY` (PKCS#1) or an X.509
/// `CERTIFICATE` holding an RSA key.
pub(crate) fn rsa_key_from_pem(pem: &str) -> Result<KeyEntry, String> {
    pem_precheck(pem, "RSA public key")?;
    let key = DecodingKey::from_rsa_pem(pem.trim().as_bytes())
        .map_err(|e| format!("not a valid RSA public key PEM: {e}"))?;
    let (n, e) = parse_pkcs1_rsa_public(key.as_bytes())
        .map_err(|e| format!("not a valid RSA public key PEM: {e}"))?;
    check_rsa_components(n, e)?;
    Ok(KeyEntry {
        kid: None,
        alg: None,
        kind: KeyKind::Rsa,
        key: DecodingKey::from_rsa_raw_components(n, e),
    })
}

/// Parses an ECDSA public key PEM (`PUBLIC KEY`, SPKI) on curve P-256 or P-384.
pub(crate) fn ec_key_from_pem(pem: &str) -> Result<KeyEntry, String> {
    pem_precheck(pem, "ECDSA public key")?;
    let key = DecodingKey::from_ec_pem(pem.trim().as_bytes())
        .map_err(|e| format!("not a valid ECDSA public key PEM: {e}"))?;
    let alg = ec_curve_alg(&key).ok_or_else(|| {
        "unsupported ECDSA key: only curves P-256 (ES256) and P-384 (ES384) are supported"
            .to_owned()
    })?;
    Ok(KeyEntry {
        kid: None,
        alg: None,
        kind: KeyKind::Ec(alg),
        key,
    })
}

/// Whether the crypto backend can build a verifier for `alg` from `key`. A malformed key fails
/// here, while the dummy signature merely fails to verify.
fn backend_accepts(key: &DecodingKey, alg: Algorithm) -> bool {
    jsonwebtoken::crypto::verify("AA", b"herald key probe", key, alg).is_ok()
}

/// The ECDSA algorithm matching the curve of `key`, if the key is a valid point.
fn ec_curve_alg(key: &DecodingKey) -> Option<Algorithm> {
    [Algorithm::ES256, Algorithm::ES384]
        .into_iter()
        .find(|alg| backend_accepts(key, *alg))
}

/// Reads one DER TLV with the expected tag; returns (content, rest).
fn der_tlv(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), String> {
    let (&t, rest) = input.split_first().ok_or("truncated DER")?;
    if t != tag {
        return Err(format!(
            "unexpected DER tag 0x{t:02x} (expected 0x{tag:02x})"
        ));
    }
    let (&first, rest) = rest.split_first().ok_or("truncated DER length")?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return Err("invalid DER length".to_owned());
        }
        let (bytes, rest) = rest.split_at(count);
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    if rest.len() < len {
        return Err("truncated DER value".to_owned());
    }
    Ok(rest.split_at(len))
}

/// Splits a PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
pub(crate) fn parse_pkcs1_rsa_public(der: &[u8]) -> Result<(&[u8], &[u8]), String> {
    let (seq, trailing) = der_tlv(der, 0x30)?;
    if !trailing.is_empty() {
        return Err("trailing data after RSA public key".to_owned());
    }
    let (n, rest) = der_tlv(seq, 0x02)?;
    let (e, rest) = der_tlv(rest, 0x02)?;
    if !rest.is_empty() {
        return Err("not an RSA public key (unexpected extra fields)".to_owned());
    }
    if n.first().is_some_and(|b| b & 0x80 != 0) || e.first().is_some_and(|b| b & 0x80 != 0) {
        return Err("negative RSA modulus or exponent".to_owned());
    }
    Ok((n, e))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Checks an RSA public key's modulus and exponent (big-endian bytes) so that the backend will
/// accept it at verification time.
pub(crate) fn check_rsa_components(n: &[u8], e: &[u8]) -> Result<(), String> {
    let n = strip_leading_zeros(n);
    let e = strip_leading_zeros(e);
    let n_bits = match n.first() {
        Some(first) => n.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    };
    if n_bits < RSA_MIN_BITS {
        return Err(format!(
            "RSA modulus is {n_bits} bits; at least {RSA_MIN_BITS} bits are required"
        ));
    }
    if n_bits > RSA_MAX_BITS {
        return Err(format!(
            "RSA modulus is {n_bits} bits; at most {RSA_MAX_BITS} bits are supported"
        ));
    }
    if n.last().is_some_and(|b| b & 1 == 0) {
        return Err("RSA modulus is even".to_owned());
    }
    if e.len() > 8 {
        return Err("RSA public exponent is too large".to_owned());
    }
    let e_value = e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    if e_value < 3 || e_value % 2 == 0 || e_value > RSA_MAX_EXPONENT {
        return Err(format!("unsupported RSA public exponent {e_value}"));
    }
    Ok(())
}

/// Decodes a base64url JWK member, tolerating `=` padding.
fn jwk_b64(obj: &serde_json::Map<String, Value>, member: &str) -> Result<Vec<u8>, String> {
    let text = obj
        .get(member)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("missing string member {member:?}"))?;
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|e| format!("member {member:?} is not valid base64url: {e}"))
}

/// Parses a JWKS document (`{"keys": [...]}`) into verification keys.
///
/// Accepted: `RSA` keys (2048–4096 bits), `EC` keys on P-256/P-384 and `OKP` Ed25519 keys.
/// Keys with `"use": "enc"` are skipped. Symmetric (`oct`) keys, unknown key types, unknown
/// `alg` values, duplicate `kid`s and documents without usable keys are errors.
pub(crate) fn parse_jwks(json: &str) -> Result<Vec<KeyEntry>, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| format!("not valid JSON: {e}"))?;
    let keys = doc
        .as_object()
        .and_then(|o| o.get("keys"))
        .and_then(Value::as_array)
        .ok_or("expected a JSON object with a \"keys\" array")?;
    let mut out = Vec::with_capacity(keys.len());
    let mut kids = HashSet::new();
    for (index, jwk) in keys.iter().enumerate() {
        let label = match jwk.get("kid").and_then(Value::as_str) {
            Some(kid) => format!("key #{index} (kid {kid:?})"),
            None => format!("key #{index}"),
        };
        match parse_jwk(jwk) {
            Ok(Some(entry)) => {
                if let Some(kid) = &entry.kid {
                    if !kids.insert(kid.clone()) {
                        return Err(format!("{label}: duplicate kid"));
                    }
                }
                out.push(entry);
            }
            Ok(None) => {}
            Err(reason) => return Err(format!("{label}: {reason}")),
        }
    }
    if out.is_empty() {
        return Err("the JWKS contains no signature verification keys".to_owned());
    }
    Ok(out)
}

/// Parses one JWK; `Ok(None)` for keys that are not for signatures.
fn parse_jwk(jwk: &Value) -> Result<Option<KeyEntry>, String> {
    let obj = jwk.as_object().ok_or("not a JSON object")?;
    match obj.get("use") {
        None | Some(Value::Null) => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(Value::String(u)) if u == "enc" => return Ok(None),
        Some(other) => return Err(format!("unsupported \"use\" {other}")),
    }
    let kid = match obj.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err("\"kid\" must be a string".to_owned()),
    };
    let alg = match obj.get("alg") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) => Some(
            Algorithm::from_str(name)
                .map_err(|_| format!("unsupported signature algorithm {name:?}"))?,
        ),
        Some(_) => return Err("\"alg\" must be a string".to_owned()),
    };
    let kty = obj
        .get("kty")
        .and_then(Value::as_str)
        .ok_or("missing string member \"kty\"")?;
    let (kind, key) =
        match kty {
            "RSA" => {
                let n = jwk_b64(obj, "n")?;
                let e = jwk_b64(obj, "e")?;
                check_rsa_components(&n, &e)?;
                (KeyKind::Rsa, DecodingKey::from_rsa_raw_components(&n, &e))
            }
            "EC" => {
                let crv = obj.get("crv").and_then(Value::as_str).unwrap_or("");
                let (curve_alg, size) = match crv {
                    "P-256" => (Algorithm::ES256, 32),
                    "P-384" => (Algorithm::ES384, 48),
                    other => {
                        return Err(format!(
                            "unsupported EC curve {other:?}: only P-256 and P-384 are supported"
                        ))
                    }
                };
                let x = jwk_b64(obj, "x")?;
                let y = jwk_b64(obj, "y")?;
                if x.len() != size || y.len() != size {
                    return Err(format!("coordinates must be {size} bytes for {crv}"));
                }
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                let key = DecodingKey::from_ec_der(&point);
                if !backend_accepts(&key, curve_alg) {
                    return Err(format!("not a valid point on {crv}"));
                }
                (KeyKind::Ec(curve_alg), key)
            }
            "OKP" => {
                let crv = obj.get("crv").and_then(Value::as_str).unwrap_or("");
                if crv != "Ed25519" {
                    return Err(format!(
                        "unsupported OKP curve {crv:?}: only Ed25519 is supported"
                    ));
                }
                let x = jwk_b64(obj, "x")?;
                if x.len() != 32 {
                    return Err("Ed25519 public key must be 32 bytes".to_owned());
                }
                let key = DecodingKey::from_ed_der(&x);
                if !backend_accepts(&key, Algorithm::EdDSA) {
                    return Err("not a valid Ed25519 public key".to_owned());
                }
                (KeyKind::Ed, key)
            }
            "oct" => return Err(
                "symmetric (oct) keys are not accepted in a JWKS; configure hmac_secret instead"
                    .to_owned(),
            ),
            other => return Err(format!("unsupported key type {other:?}")),
        };
    let entry = KeyEntry {
        kid,
        alg: None,
        kind,
        key,
    };
    if let Some(alg) = alg {
        if !entry.accepts(alg) {
            return Err(format!("\"alg\" {alg:?} does not match a {kty} key"));
        }
    }
    Ok(Some(KeyEntry { alg, ..entry }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_parser_rejects_garbage() {
        assert!(parse_pkcs1_rsa_public(&[]).is_err());
        assert!(parse_pkcs1_rsa_public(&[0x30]).is_err());
        assert!(parse_pkcs1_rsa_public(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_err());
        assert!(parse_pkcs1_rsa_public(&[0x30, 0x82, 0xff, 0xff]).is_err());
        assert!(parse_pkcs1_rsa_public(&[0x30, 0x03, 0x02, 0x01, 0x05]).is_err());
        // SEQUENCE { INTEGER 5, INTEGER 3 } parses; the size check then rejects it.
        let (n, e) =
            parse_pkcs1_rsa_public(&[0x30, 0x06, 0x02, 0x01, 0x05, 0x02, 0x01, 0x03]).unwrap();
        assert_eq!((n, e), (&[5u8][..], &[3u8][..]));
        assert!(check_rsa_components(n, e)
            .unwrap_err()
            .contains("at least 2048"));
    }

    #[test]
    fn rsa_component_checks() {
        let mut n = vec![0u8; 257];
        n[1] = 0x80;
        n[256] = 1;
        assert!(check_rsa_components(&n, &[1, 0, 1]).is_ok());
        assert!(check_rsa_components(&n, &[2]).is_err());
        assert!(check_rsa_components(&n, &[1]).is_err());
        assert!(check_rsa_components(&n, &[1, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
        n[256] = 2;
        assert!(check_rsa_components(&n, &[1, 0, 1]).is_err());
        let big = vec![0xffu8; 513];
        assert!(check_rsa_components(&big, &[1, 0, 1])
            .unwrap_err()
            .contains("at most"));
    }

    #[test]
    fn jwks_rejections() {
        let cases = [
            ("[]", "\"keys\""),
            ("{\"keys\": []}", "no signature"),
            ("{\"keys\": [{\"kty\": \"oct\", \"k\": \"AAAA\"}]}", "oct"),
            ("{\"keys\": [{\"kty\": \"XYZ\"}]}", "unsupported key type"),
            (
                "{\"keys\": [{\"kty\": \"OKP\", \"crv\": \"Ed25519\", \"x\": \"AAAA\"}]}",
                "32 bytes",
            ),
            (
                "{\"keys\": [{\"kty\": \"EC\", \"crv\": \"P-521\", \"x\": \"AA\", \"y\": \"AA\"}]}",
                "P-521",
            ),
            (
                "{\"keys\": [{\"kty\": \"EC\", \"crv\": \"P-256\", \"x\": \"AA\", \"y\": \"AA\"}]}",
                "32 bytes",
            ),
            (
                "{\"keys\": [{\"kty\": \"RSA\", \"n\": \"AQAB\", \"e\": \"AQAB\"}]}",
                "2048",
            ),
            (
                "{\"keys\": [{\"kty\": \"RSA\", \"alg\": \"none\"}]}",
                "unsupported signature",
            ),
            ("{\"keys\": [{\"kty\": \"RSA\", \"e\": \"AQAB\"}]}", "\"n\""),
            (
                "{\"keys\": [{\"kty\": \"RSA\", \"use\": \"enc\"}]}",
                "no signature",
            ),
        ];
        for (doc, needle) in cases {
            let err = match parse_jwks(doc) {
                Ok(_) => panic!("{doc} was accepted"),
                Err(e) => e,
            };
            assert!(err.contains(needle), "{doc}: {err}");
        }
    }

    #[test]
    fn ec_point_validation() {
        // 32 zero bytes for x and y is not a point on P-256.
        let zero = URL_SAFE_NO_PAD.encode([0u8; 32]);
        let doc = format!(
            "{{\"keys\": [{{\"kty\": \"EC\", \"crv\": \"P-256\", \"x\": \"{zero}\", \"y\": \"{zero}\"}}]}}"
        );
        assert!(parse_jwks(&doc).unwrap_err().contains("not a valid point"));
    }
}
