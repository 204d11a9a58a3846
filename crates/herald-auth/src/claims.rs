//! Claim types of connection and subscription tokens, and their JSON parsing.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::TokenError;

/// Claims of a verified connection token.
#[derive(Debug, Clone)]
pub struct ConnectClaims {
    /// User ID (`sub`). Empty for anonymous connections (missing or empty `sub`).
    pub sub: String,
    /// Token expiration (`exp`), UNIX seconds. `None`: the token never expires.
    pub exp: Option<i64>,
    /// Centrifugo's `expire_at`: when set it decides when the *connection* expires instead
    /// of `exp` (`0` or negative: never). See [`ConnectClaims::connection_expires_at`].
    pub expire_at: Option<i64>,
    /// Connection info (`info`, or `b64info` decoded from base64). Always valid JSON.
    pub info: Option<Box<RawValue>>,
    /// Server-side channels to subscribe the connection to (`channels`).
    pub channels: Vec<String>,
    /// Server-side subscriptions with options (`subs`). Centrifugo uses `subs` when it is
    /// non-empty and falls back to `channels` otherwise.
    pub subs: BTreeMap<String, SubOptions>,
    /// Private connection metadata (`meta`), never sent to clients.
    pub meta: Option<Box<RawValue>>,
}

impl ConnectClaims {
    /// When the connection expires (UNIX seconds), following Centrifugo: `expire_at` if the
    /// claim is present (`<= 0` meaning never), otherwise `exp`; `None` means never.
    pub fn connection_expires_at(&self) -> Option<i64> {
        effective_expiry(self.exp, self.expire_at)
    }
}

/// Options of one server-side subscription in a connection token's `subs` claim.
#[derive(Debug, Clone, Default)]
pub struct SubOptions {
    /// Channel info for this connection (`info`, or `b64info` decoded). Valid JSON.
    pub info: Option<Box<RawValue>>,
    /// Data sent with the subscribe push (`data`, or `b64data` decoded). Valid JSON.
    pub data: Option<Box<RawValue>>,
    /// Per-subscription channel option overrides (`override`).
    pub overrides: SubOverrides,
}

/// Channel option overrides from an `override` object: `{"presence": {"value": true}, ...}`.
/// `None` means "not overridden, use the channel's configuration".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubOverrides {
    /// `override.presence`
    pub presence: Option<bool>,
    /// `override.join_leave`
    pub join_leave: Option<bool>,
    /// `override.force_push_join_leave`
    pub force_push_join_leave: Option<bool>,
    /// `override.force_recovery`
    pub force_recovery: Option<bool>,
    /// `override.force_positioning`
    pub force_positioning: Option<bool>,
}

/// Claims of a verified subscription token.
#[derive(Debug, Clone)]
pub struct SubscribeClaims {
    /// User ID the token was issued for (`sub`; empty for anonymous). The caller must check
    /// that it equals the connection's user.
    pub sub: String,
    /// The channel the token grants (`channel`); never empty. The caller must check that it
    /// equals the channel being subscribed to.
    pub channel: String,
    /// Token expiration (`exp`), UNIX seconds. `None`: the token never expires.
    pub exp: Option<i64>,
    /// Centrifugo's `expire_at`: when set it decides when the *subscription* expires
    /// (`0` or negative: never). See [`SubscribeClaims::subscription_expires_at`].
    pub expire_at: Option<i64>,
    /// Channel info for this connection (`info`, or `b64info` decoded). Valid JSON.
    pub info: Option<Box<RawValue>>,
    /// Data sent with the subscribe reply (`data`, or `b64data` decoded). Valid JSON.
    pub data: Option<Box<RawValue>>,
    /// Channel option overrides (`override`).
    pub overrides: SubOverrides,
}

impl SubscribeClaims {
    /// When the subscription expires (UNIX seconds), following Centrifugo: `expire_at` if
    /// present (`<= 0` meaning never), otherwise `exp`; `None` means never.
    pub fn subscription_expires_at(&self) -> Option<i64> {
        effective_expiry(self.exp, self.expire_at)
    }
}

fn effective_expiry(exp: Option<i64>, expire_at: Option<i64>) -> Option<i64> {
    match expire_at {
        Some(at) if at > 0 => Some(at),
        Some(_) => None,
        None => exp,
    }
}

// ---------------------------------------------------------------------------------------------
// Raw JSON shapes. `flatten` is avoided on purpose: it does not work with `RawValue`.

/// Registered claims checked by the verifier, shared by both token kinds.
pub(crate) struct Registered {
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
    pub aud: Option<Vec<String>>,
    pub iss: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct ConnectRaw {
    #[serde(default, deserialize_with = "de_sub")]
    sub: Option<String>,
    #[serde(default, deserialize_with = "de_exp")]
    exp: Option<i64>,
    #[serde(default, deserialize_with = "de_nbf")]
    nbf: Option<i64>,
    #[serde(default, deserialize_with = "de_aud")]
    aud: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_iss")]
    iss: Option<String>,
    #[serde(default, deserialize_with = "de_expire_at")]
    expire_at: Option<i64>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "de_b64info")]
    b64info: Option<String>,
    #[serde(default, deserialize_with = "de_channels")]
    channels: Option<Vec<String>>,
    #[serde(default)]
    subs: Option<BTreeMap<String, Option<SubOptionsRaw>>>,
    #[serde(default)]
    meta: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "de_channel")]
    channel: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct SubscribeRaw {
    #[serde(default, deserialize_with = "de_sub")]
    sub: Option<String>,
    #[serde(default, deserialize_with = "de_exp")]
    exp: Option<i64>,
    #[serde(default, deserialize_with = "de_nbf")]
    nbf: Option<i64>,
    #[serde(default, deserialize_with = "de_aud")]
    aud: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_iss")]
    iss: Option<String>,
    #[serde(default, deserialize_with = "de_expire_at")]
    expire_at: Option<i64>,
    #[serde(default, deserialize_with = "de_channel")]
    channel: Option<String>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "de_b64info")]
    b64info: Option<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "de_b64data")]
    b64data: Option<String>,
    #[serde(default, rename = "override")]
    overrides: Option<OverrideRaw>,
}

#[derive(Deserialize)]
struct SubOptionsRaw {
    #[serde(default)]
    info: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "de_b64info")]
    b64info: Option<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default, deserialize_with = "de_b64data")]
    b64data: Option<String>,
    #[serde(default, rename = "override")]
    overrides: Option<OverrideRaw>,
}

#[derive(Deserialize)]
struct OverrideRaw {
    #[serde(default)]
    presence: Option<BoolValue>,
    #[serde(default)]
    join_leave: Option<BoolValue>,
    #[serde(default)]
    force_push_join_leave: Option<BoolValue>,
    #[serde(default)]
    force_recovery: Option<BoolValue>,
    #[serde(default)]
    force_positioning: Option<BoolValue>,
}

/// Centrifugo's `BoolValue`: `{"value": bool}`; a missing `value` means `false`.
#[derive(Deserialize)]
struct BoolValue {
    #[serde(default)]
    value: bool,
}

impl OverrideRaw {
    fn into_overrides(self) -> SubOverrides {
        SubOverrides {
            presence: self.presence.map(|b| b.value),
            join_leave: self.join_leave.map(|b| b.value),
            force_push_join_leave: self.force_push_join_leave.map(|b| b.value),
            force_recovery: self.force_recovery.map(|b| b.value),
            force_positioning: self.force_positioning.map(|b| b.value),
        }
    }
}

/// Deserializes a claim through `Value` so a type mismatch gets a message naming the claim.
/// `null` is treated like a missing claim.
fn typed<'de, D: Deserializer<'de>, T: DeserializeOwned>(
    d: D,
    expected: &'static str,
) -> Result<Option<T>, D::Error> {
    let value = Value::deserialize(d)?;
    if value.is_null() {
        return Ok(None);
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|_| D::Error::custom(expected))
}

fn de_sub<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    typed(d, "claim `sub` must be a string")
}
fn de_iss<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    typed(d, "claim `iss` must be a string")
}
fn de_channel<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    typed(d, "claim `channel` must be a string")
}
fn de_b64info<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    typed(d, "claim `b64info` must be a string")
}
fn de_b64data<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    typed(d, "claim `b64data` must be a string")
}
fn de_channels<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    typed(d, "claim `channels` must be an array of strings")
}
fn de_expire_at<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    typed(d, "claim `expire_at` must be an integer (UNIX seconds)")
}

fn de_aud<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    const MSG: &str = "claim `aud` must be a string or an array of strings";
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(one) => Ok(Some(vec![one])),
        many @ Value::Array(_) => serde_json::from_value(many)
            .map(Some)
            .map_err(|_| D::Error::custom(MSG)),
        _ => Err(D::Error::custom(MSG)),
    }
}

/// A JWT NumericDate: an integer or a fraction (truncated), in UNIX seconds.
fn numeric_date<'de, D: Deserializer<'de>>(
    d: D,
    name: &'static str,
) -> Result<Option<i64>, D::Error> {
    let value = Value::deserialize(d)?;
    let number = match value {
        Value::Null => return Ok(None),
        Value::Number(n) => n,
        _ => {
            return Err(D::Error::custom(format_args!(
                "claim `{name}` must be a number (UNIX seconds)"
            )))
        }
    };
    if let Some(i) = number.as_i64() {
        return Ok(Some(i));
    }
    match number.as_f64() {
        // `as` saturates; the range check keeps saturated values out.
        Some(f) if f.is_finite() && f.abs() < 9.0e18 => Ok(Some(f.trunc() as i64)),
        _ => Err(D::Error::custom(format_args!(
            "claim `{name}` is out of range"
        ))),
    }
}

fn de_exp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    numeric_date(d, "exp")
}
fn de_nbf<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    numeric_date(d, "nbf")
}

/// Decodes a `b64info`/`b64data` claim (standard base64) into JSON. Empty means absent, as
/// in Centrifugo. Herald speaks the JSON protocol only, so the bytes must be JSON.
fn decode_b64_json(text: &str, claim: &str) -> Result<Option<Box<RawValue>>, TokenError> {
    if text.is_empty() {
        return Ok(None);
    }
    let bytes = STANDARD
        .decode(text)
        .map_err(|e| TokenError::Invalid(format!("claim `{claim}` is not valid base64: {e}")))?;
    let json = String::from_utf8(bytes).map_err(|_| {
        TokenError::Invalid(format!(
            "claim `{claim}` does not decode to JSON (binary payloads need the Protobuf protocol, which Herald does not speak)"
        ))
    })?;
    RawValue::from_string(json).map(Some).map_err(|_| {
        TokenError::Invalid(format!(
            "claim `{claim}` does not decode to JSON (binary payloads need the Protobuf protocol, which Herald does not speak)"
        ))
    })
}

/// `b64*` wins over the plain claim, as in Centrifugo.
fn pick(
    plain: Option<Box<RawValue>>,
    b64: Option<String>,
    claim: &str,
) -> Result<Option<Box<RawValue>>, TokenError> {
    match b64 {
        Some(text) if !text.is_empty() => decode_b64_json(&text, claim),
        _ => Ok(plain),
    }
}

/// Deepest JSON nesting accepted in a payload, the same as serde_json's own recursion limit.
/// Raw claims (`info`, `meta`, `data`) are otherwise not depth-limited by the parser, and
/// would be relayed to clients and proxies as they are.
const MAX_PAYLOAD_DEPTH: usize = 128;

/// The maximum nesting depth of arrays and objects in `json` (which need not be valid).
fn nesting_depth(json: &[u8]) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Parses a JSON payload, with a clear error when it is not a JSON object.
pub(crate) fn parse_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, TokenError> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(TokenError::Invalid(
            "payload is not a JSON object".to_owned(),
        ));
    }
    if nesting_depth(payload) > MAX_PAYLOAD_DEPTH {
        return Err(TokenError::Invalid(format!(
            "claims are nested more than {MAX_PAYLOAD_DEPTH} levels deep"
        )));
    }
    serde_json::from_slice(payload)
        .map_err(|e| TokenError::Invalid(format!("malformed claims: {e}")))
}

impl ConnectRaw {
    pub(crate) fn registered(&self) -> Registered {
        Registered {
            exp: self.exp,
            nbf: self.nbf,
            aud: self.aud.clone(),
            iss: self.iss.clone(),
        }
    }

    pub(crate) fn has_channel(&self) -> bool {
        self.channel.as_deref().is_some_and(|c| !c.is_empty())
    }

    pub(crate) fn into_claims(self) -> Result<ConnectClaims, TokenError> {
        let mut subs = BTreeMap::new();
        for (channel, options) in self.subs.unwrap_or_default() {
            let options = match options {
                None => SubOptions::default(),
                Some(raw) => SubOptions {
                    info: pick(raw.info, raw.b64info, "subs.*.b64info")?,
                    data: pick(raw.data, raw.b64data, "subs.*.b64data")?,
                    overrides: raw
                        .overrides
                        .map(OverrideRaw::into_overrides)
                        .unwrap_or_default(),
                },
            };
            subs.insert(channel, options);
        }
        Ok(ConnectClaims {
            sub: self.sub.unwrap_or_default(),
            exp: self.exp,
            expire_at: self.expire_at,
            info: pick(self.info, self.b64info, "b64info")?,
            channels: self.channels.unwrap_or_default(),
            subs,
            meta: self.meta,
        })
    }
}

impl SubscribeRaw {
    pub(crate) fn registered(&self) -> Registered {
        Registered {
            exp: self.exp,
            nbf: self.nbf,
            aud: self.aud.clone(),
            iss: self.iss.clone(),
        }
    }

    pub(crate) fn has_channel(&self) -> bool {
        self.channel.as_deref().is_some_and(|c| !c.is_empty())
    }

    pub(crate) fn into_claims(self) -> Result<SubscribeClaims, TokenError> {
        Ok(SubscribeClaims {
            sub: self.sub.unwrap_or_default(),
            channel: self.channel.unwrap_or_default(),
            exp: self.exp,
            expire_at: self.expire_at,
            info: pick(self.info, self.b64info, "b64info")?,
            data: pick(self.data, self.b64data, "b64data")?,
            overrides: self
                .overrides
                .map(OverrideRaw::into_overrides)
                .unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_rules() {
        assert_eq!(effective_expiry(None, None), None);
        assert_eq!(effective_expiry(Some(10), None), Some(10));
        assert_eq!(effective_expiry(Some(10), Some(20)), Some(20));
        assert_eq!(effective_expiry(Some(10), Some(0)), None);
        assert_eq!(effective_expiry(None, Some(-5)), None);
    }

    #[test]
    fn numeric_dates() {
        let raw: ConnectRaw = parse_payload(br#"{"exp": 12.9, "nbf": null}"#).unwrap();
        assert_eq!(raw.exp, Some(12));
        assert_eq!(raw.nbf, None);
        for bad in [
            r#"{"exp": "12"}"#,
            r#"{"exp": 1e300}"#,
            r#"{"exp": 18446744073709551615}"#,
            r#"{"exp": [1]}"#,
        ] {
            let err = parse_payload::<ConnectRaw>(bad.as_bytes())
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains("`exp`"), "{bad}: {err}");
        }
    }

    #[test]
    fn claim_type_errors_name_the_claim() {
        for (payload, claim) in [
            (r#"{"sub": 42}"#, "`sub`"),
            (r#"{"channels": "a"}"#, "`channels`"),
            (r#"{"channels": [1]}"#, "`channels`"),
            (r#"{"aud": 5}"#, "`aud`"),
            (r#"{"aud": ["a", 5]}"#, "`aud`"),
            (r#"{"iss": {}}"#, "`iss`"),
            (r#"{"expire_at": 1.5}"#, "`expire_at`"),
            (r#"{"channel": true}"#, "`channel`"),
        ] {
            let err = parse_payload::<ConnectRaw>(payload.as_bytes())
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(claim), "{payload}: {err}");
        }
    }

    #[test]
    fn non_object_payloads() {
        for payload in [
            "",
            "  ",
            "[]",
            "42",
            "\"x\"",
            "null",
            "{",
            "{}}",
            "\u{feff}{}",
        ] {
            assert!(
                parse_payload::<ConnectRaw>(payload.as_bytes()).is_err(),
                "{payload:?} accepted"
            );
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!(
            "{{\"info\": {}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let err = parse_payload::<ConnectRaw>(deep.as_bytes()).err().unwrap();
        assert!(err.to_string().contains("nested"), "{err}");
        let ok = format!("{{\"info\": {}{}}}", "[".repeat(127), "]".repeat(127));
        assert!(parse_payload::<ConnectRaw>(ok.as_bytes()).is_ok());
        assert_eq!(nesting_depth(br#"{"a": "[[[[\"{{{", "b": [{}]}"#), 3);
    }

    #[test]
    fn subs_parsing() {
        let raw: ConnectRaw = parse_payload(
            br#"{"subs": {"a": null, "b": {"data": {"x": 1}, "b64info": "eyJ5IjoyfQ==",
                 "override": {"presence": {"value": true}, "join_leave": {}, "force_recovery": null}}}}"#,
        )
        .unwrap();
        let claims = raw.into_claims().unwrap();
        assert!(claims.subs["a"].info.is_none());
        let b = &claims.subs["b"];
        assert_eq!(b.data.as_ref().unwrap().get(), r#"{"x": 1}"#);
        assert_eq!(b.info.as_ref().unwrap().get(), r#"{"y":2}"#);
        assert_eq!(b.overrides.presence, Some(true));
        assert_eq!(b.overrides.join_leave, Some(false));
        assert_eq!(b.overrides.force_recovery, None);
    }
}
