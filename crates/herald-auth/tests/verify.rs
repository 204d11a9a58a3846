//! Integration tests for `herald-auth`. Keys under `tests/keys/` were generated with OpenSSL
//! for these tests only.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use herald_auth::{sign, sign_hs256, ConfigField, SignError, TokenError, Verifier, VerifierConfig};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

const SECRET: &str = "test-secret-please-ignore";
const NOW: i64 = 1_700_000_000;

fn key(name: &str) -> String {
    let path = format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn hmac_verifier() -> Verifier {
    Verifier::new(&VerifierConfig {
        hmac_secret: Some(SECRET.into()),
        ..Default::default()
    })
    .unwrap()
}

fn rsa_verifier() -> Verifier {
    Verifier::new(&VerifierConfig {
        rsa_public_key_pem: Some(key("rsa_public.pem")),
        ..Default::default()
    })
    .unwrap()
}

fn ec_verifier(file: &str) -> Verifier {
    Verifier::new(&VerifierConfig {
        ecdsa_public_key_pem: Some(key(file)),
        ..Default::default()
    })
    .unwrap()
}

fn jwks_verifier(file: &str) -> Verifier {
    Verifier::new(&VerifierConfig {
        jwks_json: Some(key(file)),
        ..Default::default()
    })
    .unwrap()
}

fn hs256(claims: Value) -> String {
    sign_hs256(&claims, SECRET).unwrap()
}

/// Builds a token from raw header and payload text, signed with `alg` and `key`, so tests
/// can produce headers and payloads that a JWT library would refuse to create.
fn raw_token(header: &str, payload: &str, alg: Algorithm, key: &EncodingKey) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

fn raw_hs256(header: &str, payload: &str) -> String {
    raw_token(
        header,
        payload,
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

fn invalid(result: Result<impl std::fmt::Debug, TokenError>) -> String {
    match result {
        Err(TokenError::Invalid(reason)) => reason,
        other => panic!("expected TokenError::Invalid, got {other:?}"),
    }
}

fn assert_invalid_with(result: Result<impl std::fmt::Debug, TokenError>, needle: &str) {
    let reason = invalid(result);
    assert!(
        reason.contains(needle),
        "reason {reason:?} does not contain {needle:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// HMAC

#[test]
fn hs256_valid_connect_token_with_all_claims() {
    let token = hs256(json!({
        "sub": "42",
        "exp": NOW + 600,
        "expire_at": NOW + 3600,
        "info": {"name": "Ann"},
        "channels": ["news", "$private"],
        "subs": {
            "chat": {"info": {"role": "admin"}, "data": {"welcome": true},
                     "override": {"presence": {"value": false}, "force_recovery": {"value": true}}},
            "plain": {}
        },
        "meta": {"tenant": 7},
        "iat": NOW,
        "jti": "abc",
        "unknown_claim": [1, 2, 3]
    }));
    let claims = hmac_verifier().verify_connect_at(&token, NOW).unwrap();
    assert_eq!(claims.sub, "42");
    assert_eq!(claims.exp, Some(NOW + 600));
    assert_eq!(claims.expire_at, Some(NOW + 3600));
    assert_eq!(claims.connection_expires_at(), Some(NOW + 3600));
    assert_eq!(claims.info.as_ref().unwrap().get(), r#"{"name":"Ann"}"#);
    assert_eq!(claims.channels, vec!["news", "$private"]);
    assert_eq!(claims.meta.as_ref().unwrap().get(), r#"{"tenant":7}"#);
    let chat = &claims.subs["chat"];
    assert_eq!(chat.info.as_ref().unwrap().get(), r#"{"role":"admin"}"#);
    assert_eq!(chat.data.as_ref().unwrap().get(), r#"{"welcome":true}"#);
    assert_eq!(chat.overrides.presence, Some(false));
    assert_eq!(chat.overrides.force_recovery, Some(true));
    assert_eq!(chat.overrides.join_leave, None);
    assert!(claims.subs["plain"].info.is_none());
}

#[test]
fn minimal_and_anonymous_tokens() {
    let claims = hmac_verifier().verify_connect(&hs256(json!({}))).unwrap();
    assert_eq!(claims.sub, "");
    assert_eq!(claims.exp, None);
    assert_eq!(claims.connection_expires_at(), None);
    assert!(claims.info.is_none() && claims.meta.is_none());
    assert!(claims.channels.is_empty() && claims.subs.is_empty());

    let claims = hmac_verifier()
        .verify_connect(&hs256(json!({"sub": null, "info": null, "channels": null})))
        .unwrap();
    assert_eq!(claims.sub, "");
    assert!(claims.info.is_none());
}

#[test]
fn hs384_and_hs512() {
    for alg in ["HS384", "HS512"] {
        let token = sign(&json!({"sub": "1"}), alg, SECRET, None).unwrap();
        assert_eq!(
            hmac_verifier().verify_connect(&token).unwrap().sub,
            "1",
            "{alg}"
        );
    }
}

#[test]
fn expiry() {
    let v = hmac_verifier();
    let token = hs256(json!({"sub": "1", "exp": NOW}));
    assert_eq!(v.verify_connect_at(&token, NOW - 1).unwrap().exp, Some(NOW));
    assert_eq!(
        v.verify_connect_at(&token, NOW).unwrap_err(),
        TokenError::Expired
    );
    assert_eq!(
        v.verify_connect_at(&token, NOW + 100).unwrap_err(),
        TokenError::Expired
    );
    // Against the real clock.
    let past = hs256(json!({"sub": "1", "exp": 1_000_000_000}));
    assert_eq!(v.verify_connect(&past).unwrap_err(), TokenError::Expired);
    let future = hs256(json!({"sub": "1", "exp": 4_000_000_000i64}));
    assert!(v.verify_connect(&future).is_ok());
    // Fractional and negative dates.
    let fractional = hs256(json!({"exp": NOW as f64 + 0.5}));
    assert!(v.verify_connect_at(&fractional, NOW - 1).is_ok());
    assert_eq!(
        v.verify_connect_at(&fractional, NOW).unwrap_err(),
        TokenError::Expired
    );
    let negative = hs256(json!({"exp": -5}));
    assert_eq!(
        v.verify_connect_at(&negative, NOW).unwrap_err(),
        TokenError::Expired
    );
    // A malformed exp is invalid, not expired.
    assert_invalid_with(
        v.verify_connect_at(&hs256(json!({"exp": "soon"})), NOW),
        "`exp`",
    );
}

#[test]
fn leeway() {
    let token = hs256(json!({"sub": "1", "exp": NOW - 5, "nbf": NOW + 5}));
    let strict = hmac_verifier();
    assert_eq!(
        strict.verify_connect_at(&token, NOW).unwrap_err(),
        TokenError::Expired
    );
    let lenient = hmac_verifier().with_leeway(10);
    assert!(lenient.verify_connect_at(&token, NOW).is_ok());
    assert_eq!(
        lenient.verify_connect_at(&token, NOW + 5).unwrap_err(),
        TokenError::Expired
    );
    let huge = hmac_verifier().with_leeway(u64::MAX);
    assert!(huge.verify_connect_at(&token, NOW).is_ok());
}

#[test]
fn not_before() {
    let v = hmac_verifier();
    let token = hs256(json!({"sub": "1", "nbf": NOW + 60}));
    assert_invalid_with(v.verify_connect_at(&token, NOW), "not valid yet");
    assert!(v.verify_connect_at(&token, NOW + 60).is_ok());
}

#[test]
fn expire_at_semantics() {
    let v = hmac_verifier();
    let zero = v
        .verify_connect_at(&hs256(json!({"exp": NOW + 10, "expire_at": 0})), NOW)
        .unwrap();
    assert_eq!(zero.expire_at, Some(0));
    assert_eq!(zero.connection_expires_at(), None);
    let only_exp = v
        .verify_connect_at(&hs256(json!({"exp": NOW + 10})), NOW)
        .unwrap();
    assert_eq!(only_exp.connection_expires_at(), Some(NOW + 10));
    // `exp` is still enforced when `expire_at` is set.
    let expired = hs256(json!({"exp": NOW - 1, "expire_at": NOW + 1000}));
    assert_eq!(
        v.verify_connect_at(&expired, NOW).unwrap_err(),
        TokenError::Expired
    );
}

#[test]
fn wrong_secret() {
    let token = sign_hs256(&json!({"sub": "1"}), "another-secret").unwrap();
    assert_invalid_with(
        hmac_verifier().verify_connect(&token),
        "signature does not verify",
    );
}

#[test]
fn forged_signature_and_tampered_payload() {
    let v = hmac_verifier();
    let token = hs256(json!({"sub": "1"}));
    let parts: Vec<&str> = token.split('.').collect();

    let evil_payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"admin"}"#);
    let tampered = format!("{}.{}.{}", parts[0], evil_payload, parts[2]);
    assert_invalid_with(v.verify_connect(&tampered), "signature does not verify");

    let zero_sig = URL_SAFE_NO_PAD.encode([0u8; 32]);
    let forged = format!("{}.{}.{}", parts[0], parts[1], zero_sig);
    assert_invalid_with(v.verify_connect(&forged), "signature does not verify");

    let truncated = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20]);
    assert!(matches!(
        v.verify_connect(&truncated),
        Err(TokenError::Invalid(_))
    ));
}

#[test]
fn every_single_character_mutation_is_rejected() {
    let v = hmac_verifier();
    let token = hs256(json!({"sub": "1", "info": {"a": "b"}}));
    assert!(v.verify_connect(&token).is_ok());
    let replacements = ['A', 'z', '0', '-', '_', '.', '=', ' ', 'é'];
    for i in 0..token.len() {
        for r in replacements {
            let mut mutated = String::with_capacity(token.len() + 1);
            mutated.push_str(&token[..i]);
            mutated.push(r);
            mutated.push_str(&token[i + 1..]);
            if mutated == token {
                continue;
            }
            assert!(
                v.verify_connect(&mutated).is_err(),
                "mutation at {i} to {r:?} accepted"
            );
        }
    }
}

#[test]
fn alg_none_is_rejected() {
    let v = hmac_verifier();
    for alg in ["none", "None", "NONE"] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(r#"{"sub":"admin"}"#)
        );
        assert_invalid_with(v.verify_connect(&unsigned), "\"none\" is not allowed");
        // Even with a valid HMAC over the message.
        let signed = raw_hs256(&format!(r#"{{"alg":"{alg}"}}"#), r#"{"sub":"admin"}"#);
        assert_invalid_with(v.verify_connect(&signed), "\"none\" is not allowed");
    }
    // A real HS256 header with the signature stripped.
    let token = hs256(json!({"sub": "1"}));
    let stripped = &token[..token.rfind('.').unwrap() + 1];
    assert_invalid_with(v.verify_connect(stripped), "empty signature");
}

#[test]
fn algorithm_confusion_is_impossible() {
    // Classic attack: HS256 "signed" with the RSA public key text as the HMAC secret.
    let public_pem = key("rsa_public.pem");
    let forged = sign(&json!({"sub": "admin"}), "HS256", &public_pem, None).unwrap();
    assert_invalid_with(rsa_verifier().verify_connect(&forged), "no HMAC secret");

    // Same with both an HMAC secret and an RSA key configured.
    let both = Verifier::new(&VerifierConfig {
        hmac_secret: Some(SECRET.into()),
        rsa_public_key_pem: Some(public_pem.clone()),
        ..Default::default()
    })
    .unwrap();
    assert_invalid_with(both.verify_connect(&forged), "signature does not verify");

    // And against a JWKS whose RSA key has the attacked kid.
    let forged_kid = sign(
        &json!({"sub": "admin"}),
        "HS256",
        &public_pem,
        Some("rsa-2"),
    )
    .unwrap();
    assert_invalid_with(
        jwks_verifier("jwks.json").verify_connect(&forged_kid),
        "cannot be verified with",
    );

    // An RSA token is not accepted by an HMAC-only verifier, nor ES by an RSA key.
    let rs = sign(&json!({}), "RS256", &key("rsa_private.pem"), None).unwrap();
    assert_invalid_with(hmac_verifier().verify_connect(&rs), "no RSA public key");
    let es = sign(&json!({}), "ES256", &key("ec_private.pem"), None).unwrap();
    assert_invalid_with(rsa_verifier().verify_connect(&es), "no ECDSA public key");
    let ed = sign(&json!({}), "EdDSA", &key("ed25519_private.pem"), None).unwrap();
    assert_invalid_with(rsa_verifier().verify_connect(&ed), "EdDSA");
}

// ---------------------------------------------------------------------------------------------
// RSA and ECDSA

#[test]
fn rs256_and_friends() {
    let private = key("rsa_private.pem");
    let v = rsa_verifier();
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        let token = sign(&json!({"sub": alg}), alg, &private, None).unwrap();
        assert_eq!(v.verify_connect(&token).unwrap().sub, alg);
    }
    // PKCS#1 "RSA PUBLIC KEY" form of the same key.
    let pkcs1 = Verifier::new(&VerifierConfig {
        rsa_public_key_pem: Some(key("rsa_public_pkcs1.pem")),
        ..Default::default()
    })
    .unwrap();
    let token = sign(&json!({"sub": "p"}), "RS256", &private, None).unwrap();
    assert_eq!(pkcs1.verify_connect(&token).unwrap().sub, "p");
    // Signed by another RSA key.
    let other = sign(
        &json!({"sub": "x"}),
        "RS256",
        &key("rsa2_private.pem"),
        None,
    )
    .unwrap();
    assert_invalid_with(v.verify_connect(&other), "signature does not verify");
}

#[test]
fn es256_and_es384() {
    let token = sign(&json!({"sub": "e"}), "ES256", &key("ec_private.pem"), None).unwrap();
    assert_eq!(
        ec_verifier("ec_public.pem")
            .verify_connect(&token)
            .unwrap()
            .sub,
        "e"
    );
    let t384 = sign(
        &json!({"sub": "f"}),
        "ES384",
        &key("ec384_private.pem"),
        None,
    )
    .unwrap();
    assert_eq!(
        ec_verifier("ec384_public.pem")
            .verify_connect(&t384)
            .unwrap()
            .sub,
        "f"
    );
    // Curve/algorithm mismatch and wrong key.
    assert_invalid_with(ec_verifier("ec_public.pem").verify_connect(&t384), "P-256");
    assert_invalid_with(
        ec_verifier("ec384_public.pem").verify_connect(&token),
        "P-384",
    );
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(br#"{"sub":"admin"}"#);
    assert_invalid_with(
        ec_verifier("ec_public.pem").verify_connect(&parts.join(".")),
        "signature does not verify",
    );
}

// ---------------------------------------------------------------------------------------------
// JWKS

#[test]
fn jwks_key_chosen_by_kid() {
    let v = jwks_verifier("jwks.json");
    let rsa1 = sign(
        &json!({"sub": "1"}),
        "RS256",
        &key("rsa_private.pem"),
        Some("rsa-1"),
    )
    .unwrap();
    assert_eq!(v.verify_connect(&rsa1).unwrap().sub, "1");
    let rsa2 = sign(
        &json!({"sub": "2"}),
        "RS512",
        &key("rsa2_private.pem"),
        Some("rsa-2"),
    )
    .unwrap();
    assert_eq!(v.verify_connect(&rsa2).unwrap().sub, "2");
    let ec = sign(
        &json!({"sub": "3"}),
        "ES256",
        &key("ec_private.pem"),
        Some("ec-1"),
    )
    .unwrap();
    assert_eq!(v.verify_connect(&ec).unwrap().sub, "3");
    let ed = sign(
        &json!({"sub": "4"}),
        "EdDSA",
        &key("ed25519_private.pem"),
        Some("ed-1"),
    )
    .unwrap();
    assert_eq!(v.verify_connect(&ed).unwrap().sub, "4");

    // The kid decides the key: rsa2's signature under kid rsa-1 fails.
    let swapped = sign(&json!({}), "RS256", &key("rsa2_private.pem"), Some("rsa-1")).unwrap();
    assert_invalid_with(v.verify_connect(&swapped), "signature does not verify");
    // rsa-1 pins RS256.
    let wrong_alg = sign(&json!({}), "RS384", &key("rsa_private.pem"), Some("rsa-1")).unwrap();
    assert_invalid_with(v.verify_connect(&wrong_alg), "pinned to RS256");
    // Unknown kid, missing kid with several keys.
    let unknown = sign(&json!({}), "RS256", &key("rsa_private.pem"), Some("nope")).unwrap();
    assert_invalid_with(v.verify_connect(&unknown), "no JWKS key with kid \"nope\"");
    let no_kid = sign(&json!({}), "RS256", &key("rsa_private.pem"), None).unwrap();
    assert_invalid_with(v.verify_connect(&no_kid), "no `kid`");
}

#[test]
fn jwks_single_key_without_kid() {
    let v = jwks_verifier("jwks_single.json");
    let token = sign(
        &json!({"sub": "s"}),
        "RS256",
        &key("rsa2_private.pem"),
        None,
    )
    .unwrap();
    assert_eq!(v.verify_connect(&token).unwrap().sub, "s");
    let with_kid = sign(&json!({}), "RS256", &key("rsa2_private.pem"), Some("x")).unwrap();
    assert_invalid_with(v.verify_connect(&with_kid), "no JWKS key with kid");
}

#[test]
fn jwks_is_exclusive_when_configured() {
    let v = Verifier::new(&VerifierConfig {
        hmac_secret: Some(SECRET.into()),
        jwks_json: Some(key("jwks.json")),
        ..Default::default()
    })
    .unwrap();
    assert_invalid_with(v.verify_connect(&hs256(json!({}))), "no `kid`");
}

// ---------------------------------------------------------------------------------------------
// aud / iss

#[test]
fn audience_and_issuer() {
    let v = Verifier::new(&VerifierConfig {
        hmac_secret: Some(SECRET.into()),
        audience: Some("herald".into()),
        issuer: Some("https://auth.example".into()),
        ..Default::default()
    })
    .unwrap();
    let iss = "https://auth.example";
    assert!(v
        .verify_connect(&hs256(json!({"aud": "herald", "iss": iss})))
        .is_ok());
    assert!(v
        .verify_connect(&hs256(json!({"aud": ["other", "herald"], "iss": iss})))
        .is_ok());
    assert_invalid_with(v.verify_connect(&hs256(json!({"iss": iss}))), "no `aud`");
    assert_invalid_with(
        v.verify_connect(&hs256(json!({"aud": "other", "iss": iss}))),
        "does not contain",
    );
    assert_invalid_with(
        v.verify_connect(&hs256(json!({"aud": [], "iss": iss}))),
        "does not contain",
    );
    assert_invalid_with(
        v.verify_connect(&hs256(json!({"aud": "herald"}))),
        "no `iss`",
    );
    assert_invalid_with(
        v.verify_connect(&hs256(json!({"aud": "herald", "iss": "https://evil"}))),
        "not the required issuer",
    );
    // The same checks apply to subscription tokens.
    assert_invalid_with(
        v.verify_subscribe(&hs256(json!({"channel": "c", "iss": iss}))),
        "no `aud`",
    );

    // Without configured audience/issuer the claims are not checked.
    let plain = hmac_verifier();
    assert!(plain
        .verify_connect(&hs256(json!({"aud": "anything", "iss": "anyone"})))
        .is_ok());
}

// ---------------------------------------------------------------------------------------------
// b64info / b64data

#[test]
fn b64info_decoding() {
    let v = hmac_verifier();
    let b64 = STANDARD.encode(br#"{"name":"Bob"}"#);
    let claims = v
        .verify_connect(&hs256(json!({"b64info": b64, "info": {"ignored": true}})))
        .unwrap();
    assert_eq!(claims.info.unwrap().get(), r#"{"name":"Bob"}"#);

    let claims = v
        .verify_connect(&hs256(json!({"b64info": "", "info": {"kept": 1}})))
        .unwrap();
    assert_eq!(claims.info.unwrap().get(), r#"{"kept":1}"#);

    let sub_b64 = STANDARD.encode(b"[1,2]");
    let claims = v
        .verify_connect(&hs256(
            json!({"subs": {"c": {"b64info": sub_b64, "b64data": sub_b64}}}),
        ))
        .unwrap();
    assert_eq!(claims.subs["c"].info.as_ref().unwrap().get(), "[1,2]");
    assert_eq!(claims.subs["c"].data.as_ref().unwrap().get(), "[1,2]");

    assert_invalid_with(
        v.verify_connect(&hs256(json!({"b64info": "%%%"}))),
        "not valid base64",
    );
    let binary = STANDARD.encode([0xff, 0x00, 0x13]);
    assert_invalid_with(
        v.verify_connect(&hs256(json!({"b64info": binary}))),
        "does not decode to JSON",
    );
    let not_json = STANDARD.encode(b"hello");
    assert_invalid_with(
        v.verify_connect(&hs256(json!({"b64info": not_json}))),
        "does not decode to JSON",
    );
    assert_invalid_with(v.verify_connect(&hs256(json!({"b64info": 5}))), "`b64info`");
}

// ---------------------------------------------------------------------------------------------
// Subscription tokens

#[test]
fn subscription_token_claims() {
    let v = hmac_verifier();
    let token = hs256(json!({
        "sub": "42",
        "channel": "$gossips",
        "exp": NOW + 60,
        "expire_at": NOW + 120,
        "info": {"color": "red"},
        "b64data": STANDARD.encode(br#"{"hello":"world"}"#),
        "override": {"join_leave": {"value": true}, "force_positioning": {"value": false}}
    }));
    let claims = v.verify_subscribe_at(&token, NOW).unwrap();
    assert_eq!(claims.sub, "42");
    assert_eq!(claims.channel, "$gossips");
    assert_eq!(claims.exp, Some(NOW + 60));
    assert_eq!(claims.expire_at, Some(NOW + 120));
    assert_eq!(claims.subscription_expires_at(), Some(NOW + 120));
    assert_eq!(claims.info.as_ref().unwrap().get(), r#"{"color":"red"}"#);
    assert_eq!(claims.data.as_ref().unwrap().get(), r#"{"hello":"world"}"#);
    assert_eq!(claims.overrides.join_leave, Some(true));
    assert_eq!(claims.overrides.force_positioning, Some(false));
    assert_eq!(claims.overrides.presence, None);

    assert_eq!(
        v.verify_subscribe_at(&token, NOW + 60).unwrap_err(),
        TokenError::Expired
    );

    let anonymous = v
        .verify_subscribe(&hs256(json!({"channel": "public"})))
        .unwrap();
    assert_eq!(anonymous.sub, "");
    assert_eq!(anonymous.subscription_expires_at(), None);

    assert_invalid_with(
        v.verify_subscribe(&hs256(json!({"sub": "42"}))),
        "`channel`",
    );
    assert_invalid_with(
        v.verify_subscribe(&hs256(json!({"sub": "42", "channel": ""}))),
        "`channel`",
    );
    assert_invalid_with(
        v.verify_subscribe(&hs256(json!({"sub": "42", "channel": ["a"]}))),
        "`channel`",
    );
}

#[test]
fn token_kinds_are_not_interchangeable() {
    let v = hmac_verifier();
    let subscription = hs256(json!({"sub": "42", "channel": "$secret"}));
    assert_invalid_with(
        v.verify_connect(&subscription),
        "must not contain a `channel`",
    );
    // An empty channel claim is tolerated in a connection token, as in Centrifugo.
    assert!(v
        .verify_connect(&hs256(json!({"sub": "1", "channel": ""})))
        .is_ok());
    let connection = hs256(json!({"sub": "42"}));
    assert_invalid_with(v.verify_subscribe(&connection), "`channel`");
}

// ---------------------------------------------------------------------------------------------
// Garbage

#[test]
fn garbage_inputs() {
    let v = hmac_verifier();
    let b = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let valid = hs256(json!({"sub": "1"}));
    let sig = valid.rsplit('.').next().unwrap().to_owned();
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "empty token"),
        ("abc".into(), "found 1"),
        ("a.b".into(), "found 2"),
        ("a.b.c.d".into(), "found 4"),
        ("a.b.c.d.e".into(), "JWE"),
        ("....".into(), "JWE"),
        ("!!!.x.y".into(), "outside base64url"),
        (format!("Bearer {valid}"), "without \"Bearer \""),
        (format!("{valid}\n"), "outside base64url"),
        ("a.b.c".into(), "header is not valid base64url"),
        (
            format!("{}.{}.{sig}", b("not json"), b("{}")),
            "header is not a JSON object",
        ),
        (
            format!("{}.{}.{sig}", b("[1]"), b("{}")),
            "header is not a JSON object",
        ),
        (
            format!("{}.{}.{sig}", b("{}"), b("{}")),
            "missing field `alg`",
        ),
        (
            format!("{}.{}.{sig}", b(r#"{"alg":5}"#), b("{}")),
            "malformed header",
        ),
        (
            format!("{}.{}.{sig}", b(r#"{"alg":"XX256"}"#), b("{}")),
            "unsupported alg",
        ),
        (
            format!("{}.{}.{sig}", b(r#"{"alg":"ES512"}"#), b("{}")),
            "unsupported alg",
        ),
        (
            format!(
                "{}.{}.{sig}",
                b(&format!(r#"{{"alg":"{}"}}"#, "A".repeat(5000))),
                b("{}")
            ),
            "unsupported alg",
        ),
        (
            format!(
                "{}.{}.{sig}",
                b(r#"{"alg":"HS256","alg":"HS256"}"#),
                b("{}")
            ),
            "duplicate field",
        ),
        (
            format!("{}.{}.a", b(r#"{"alg":"HS256"}"#), b("{}")),
            "signature is not valid base64url",
        ),
        (
            format!("{}.{}.{sig}", b(r#"{"alg":"HS256"}"#), "%%"),
            "outside base64url",
        ),
        (
            format!("{}.{}.{sig}", b(r#"{"alg":"HS256"}"#), b("{}") + "A"),
            "signature does not verify",
        ),
    ];
    for (token, needle) in cases {
        let reason = invalid(v.verify_connect(&token));
        assert!(
            reason.contains(needle),
            "{token:.80}: {reason:?} lacks {needle:?}"
        );
        assert!(reason.len() < 300, "reason too long: {reason}");
    }
}

#[test]
fn validly_signed_garbage_payloads() {
    let v = hmac_verifier();
    let header = r#"{"alg":"HS256","typ":"JWT"}"#;
    for (payload, needle) in [
        ("[]", "not a JSON object"),
        ("42", "not a JSON object"),
        ("\"str\"", "not a JSON object"),
        ("null", "not a JSON object"),
        ("", "not a JSON object"),
        ("{", "malformed claims"),
        ("{\"sub\":\"1\"} trailing", "malformed claims"),
        ("{\"sub\":\"1\",\"sub\":\"2\"}", "duplicate field"),
        ("{\"sub\": 1}", "`sub`"),
        ("{\"info\": }", "malformed claims"),
    ] {
        let token = raw_hs256(header, payload);
        assert_invalid_with(v.verify_connect(&token), needle);
        assert_invalid_with(v.verify_subscribe(&token), needle);
    }
    // Invalid UTF-8 in the payload.
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode([b'{', 0xff, b'}'])
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    assert_invalid_with(
        v.verify_connect(&format!("{message}.{signature}")),
        "malformed claims",
    );
    // A critical header extension.
    let crit = raw_hs256(r#"{"alg":"HS256","crit":["b64"],"b64":false}"#, "{}");
    assert_invalid_with(v.verify_connect(&crit), "crit");
    // A deeply nested info value.
    let deep = format!(r#"{{"info":{}{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
    assert!(matches!(
        v.verify_connect(&raw_hs256(header, &deep)),
        Err(TokenError::Invalid(_))
    ));
}

#[test]
fn huge_tokens_are_rejected_early() {
    let v = hmac_verifier();
    let huge = "A".repeat(10 * 1024 * 1024);
    assert_invalid_with(v.verify_connect(&huge), "byte limit");
    let info = "x".repeat(100 * 1024);
    let big = hs256(json!({"sub": "1", "info": info}));
    assert_invalid_with(v.verify_connect(&big), "byte limit");
    assert!(hmac_verifier()
        .with_max_token_len(1 << 20)
        .verify_connect(&big)
        .is_ok());
}

#[test]
fn pseudo_random_garbage_never_panics() {
    let v = hmac_verifier();
    let rsa = rsa_verifier();
    let jwks = jwks_verifier("jwks.json");
    let alphabet = b"ABCxyz019-_.=+/ {}\"";
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..5000 {
        let len = (next() % 200) as usize;
        let token: String = (0..len)
            .map(|_| char::from(alphabet[(next() % alphabet.len() as u64) as usize]))
            .collect();
        for verifier in [&v, &rsa, &jwks] {
            assert!(verifier.verify_connect(&token).is_err());
            assert!(verifier.verify_subscribe(&token).is_err());
        }
    }
    // Random but well-formed segments.
    for _ in 0..2000 {
        let segment = |n: &mut dyn FnMut() -> u64| {
            let bytes: Vec<u8> = (0..(n() % 64)).map(|_| n() as u8).collect();
            URL_SAFE_NO_PAD.encode(bytes)
        };
        let token = format!(
            "{}.{}.{}",
            segment(&mut next),
            segment(&mut next),
            segment(&mut next)
        );
        assert!(v.verify_connect(&token).is_err());
        assert!(jwks.verify_subscribe(&token).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

#[test]
fn not_configured() {
    let v = Verifier::new(&VerifierConfig::default()).unwrap();
    assert!(!v.is_configured());
    assert_eq!(
        v.verify_connect("a.b.c").unwrap_err(),
        TokenError::NotConfigured
    );
    assert_eq!(
        v.verify_subscribe("").unwrap_err(),
        TokenError::NotConfigured
    );
    let empty = Verifier::new(&VerifierConfig {
        hmac_secret: Some(String::new()),
        rsa_public_key_pem: Some(String::new()),
        jwks_json: Some("  \n".into()),
        audience: Some(String::new()),
        ..Default::default()
    })
    .unwrap();
    assert!(!empty.is_configured());
    assert!(hmac_verifier().is_configured());
    assert!(rsa_verifier().is_configured());
    assert!(ec_verifier("ec_public.pem").is_configured());
    assert!(jwks_verifier("jwks.json").is_configured());
}

#[test]
fn config_errors_name_the_field() {
    let rsa = |pem: String| VerifierConfig {
        rsa_public_key_pem: Some(pem),
        ..Default::default()
    };
    let err = Verifier::new(&rsa("garbage".into())).unwrap_err();
    assert_eq!(err.field, ConfigField::RsaPublicKey);
    assert!(
        err.to_string()
            .starts_with("client.token.rsa_public_key: not a valid RSA public key PEM"),
        "{err}"
    );
    assert!(err.to_string().contains("holds no PEM block"), "{err}");

    let err = Verifier::new(&rsa(key("rsa_private.pem"))).unwrap_err();
    assert!(err.to_string().contains("private key"), "{err}");
    let err = Verifier::new(&rsa(key("ec_public.pem"))).unwrap_err();
    assert!(
        err.to_string().contains("not a valid RSA public key PEM"),
        "{err}"
    );
    let truncated = key("rsa_public.pem")
        .replace("\n", "")
        .replacen("MII", "MIA", 1);
    assert!(Verifier::new(&rsa(truncated)).is_err());

    let ec = |pem: String| VerifierConfig {
        ecdsa_public_key_pem: Some(pem),
        ..Default::default()
    };
    let err =
        Verifier::with_prefix(&ec(key("rsa_public.pem")), "client.subscription_token").unwrap_err();
    assert_eq!(err.field, ConfigField::EcdsaPublicKey);
    assert!(
        err.to_string().starts_with(
            "client.subscription_token.ecdsa_public_key: not a valid ECDSA public key PEM"
        ),
        "{err}"
    );
    let err = Verifier::new(&ec(key("ec521_public.pem"))).unwrap_err();
    assert!(err.to_string().contains("P-256"), "{err}");

    let jwks = |json: &str| VerifierConfig {
        jwks_json: Some(json.into()),
        ..Default::default()
    };
    let err = Verifier::new(&jwks("{not json")).unwrap_err();
    assert_eq!(err.field, ConfigField::Jwks);
    assert!(
        err.to_string()
            .starts_with("client.token.jwks_file: not valid JSON"),
        "{err}"
    );
    let doc = key("jwks.json").replace("\"rsa-2\"", "\"rsa-1\"");
    let err = Verifier::new(&jwks(&doc)).unwrap_err();
    assert!(err.to_string().contains("duplicate kid"), "{err}");
}

#[test]
fn verifier_is_cheap_to_share_and_does_not_leak_secrets() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<Verifier>();
    let v = hmac_verifier();
    let debug = format!("{v:?}");
    assert!(!debug.contains(SECRET), "{debug}");
    let cfg = VerifierConfig {
        hmac_secret: Some(SECRET.into()),
        ..Default::default()
    };
    assert!(!format!("{cfg:?}").contains(SECRET));
    let token = hs256(json!({"sub": "t"}));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let v = v.clone();
            let token = token.clone();
            std::thread::spawn(move || v.verify_connect(&token).map(|c| c.sub))
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().unwrap(), "t");
    }
}

// ---------------------------------------------------------------------------------------------
// Signing

#[test]
fn signing_errors() {
    assert_eq!(
        sign_hs256(&json!([1]), SECRET).unwrap_err(),
        SignError::ClaimsNotObject
    );
    assert_eq!(
        sign_hs256(&json!("x"), SECRET).unwrap_err(),
        SignError::ClaimsNotObject
    );
    assert!(matches!(
        sign_hs256(&json!({}), "").unwrap_err(),
        SignError::InvalidKey(_)
    ));
    assert!(matches!(
        sign(&json!({}), "none", SECRET, None).unwrap_err(),
        SignError::UnsupportedAlgorithm(_)
    ));
    assert!(matches!(
        sign(&json!({}), "RS256", "not a pem", None).unwrap_err(),
        SignError::InvalidKey(_)
    ));
    assert!(sign(&json!({}), "ES256", &key("ec384_private.pem"), None).is_err());
}

#[test]
fn signed_header_shape() {
    let token = sign(&json!({"sub": "1"}), "HS256", SECRET, Some("k1")).unwrap();
    let header = URL_SAFE_NO_PAD
        .decode(token.split('.').next().unwrap())
        .unwrap();
    let header: Value = serde_json::from_slice(&header).unwrap();
    assert_eq!(header, json!({"alg": "HS256", "typ": "JWT", "kid": "k1"}));
}
