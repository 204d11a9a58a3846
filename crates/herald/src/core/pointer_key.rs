//! The value at a JSON pointer in a JSON document, as a key (conflation keys): read in one pass
//! over the text, without building the document's tree.
//!
//! The answer is exactly what `serde_json::from_str::<Value>` followed by `Value::pointer` gives,
//! for every input: the document is still parsed whole and with the same parser, so a document
//! `Value` refuses (bad syntax, a number out of range, nesting past serde_json's 128 levels) has no
//! key here either; a repeated key means its last value, as in `Value`'s map; pointer tokens are
//! split and unescaped (`~1` then `~0`) and array indexes read as `Value::pointer` does. Only the
//! value at the pointer becomes a `Value`; everything else is checked and dropped as it is read.

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;
use std::str::Split;

/// A first key that serde_json's `Value` reads as "the value is the JSON text in this string"
/// (its private raw-value marker). Followed here too, so such documents keep the key they had.
const RAW_VALUE_MARKER: &str = "$serde_json::private::RawValue";

/// The value at `pointer` in `json`: strings as they are, other values as compact JSON text;
/// `None` when the document is not valid JSON, the pointer leads nowhere or the value is null.
pub fn pointer_key(json: &str, pointer: &str) -> Option<String> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return None;
    }
    let mut tokens = pointer.split('/');
    tokens.next(); // the empty text before the leading '/'
    match value_in_document(json, At { tokens }).ok()?? {
        Value::String(s) => Some(s),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Runs `seed` over a whole JSON document, refusing trailing characters as `from_str` does.
fn value_in_document<'de, S: DeserializeSeed<'de>>(
    json: &'de str,
    seed: S,
) -> serde_json::Result<S::Value> {
    let mut deserializer = serde_json::Deserializer::from_str(json);
    let value = seed.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// The reference token as `Value::pointer` unescapes it (borrowed when it has nothing to unescape).
fn unescape(token: &str) -> Cow<'_, str> {
    if token.contains('~') {
        Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
    } else {
        Cow::Borrowed(token)
    }
}

/// An array index as `Value::pointer` reads it: digits, no sign, no leading zero.
fn array_index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

/// The value at the rest of the pointer (`tokens`) within the value about to be read.
struct At<'p> {
    tokens: Split<'p, char>,
}

impl<'de> DeserializeSeed<'de> for At<'_> {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        let mut tokens = self.tokens;
        match tokens.next() {
            None => Value::deserialize(deserializer).map(Some),
            Some(token) => deserializer.deserialize_any(Step {
                token: unescape(token),
                rest: tokens,
            }),
        }
    }
}

/// Reads a value, following `token` into it when it is an object or an array.
struct Step<'p> {
    token: Cow<'p, str>,
    rest: Split<'p, char>,
}

impl<'de> Visitor<'de> for Step<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let wanted = array_index(&self.token);
        let mut found = None;
        let mut index = 0usize;
        loop {
            if wanted == Some(index) {
                match seq.next_element_seed(At {
                    tokens: self.rest.clone(),
                })? {
                    Some(value) => found = value,
                    None => break,
                }
            } else if seq.next_element_seed(Skip)?.is_none() {
                break;
            }
            index += 1;
        }
        Ok(found)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        let mut first = true;
        while let Some(key) = map.next_key_seed(KeySeed {
            wanted: Some(&self.token),
            first,
        })? {
            match key {
                Key::RawValueMarker => {
                    let json: String = map.next_value()?;
                    let inner = Step {
                        token: self.token,
                        rest: self.rest,
                    };
                    return value_in_document(&json, AnyValue(inner))
                        .map_err(serde::de::Error::custom);
                }
                // A later duplicate replaces an earlier one, as in `Value`'s map.
                Key::Wanted => {
                    found = map.next_value_seed(At {
                        tokens: self.rest.clone(),
                    })?
                }
                Key::Other => map.next_value_seed(Skip)?,
            }
            first = false;
        }
        Ok(found)
    }
}

/// A visitor run over whatever value comes next (the raw-value marker's text is a document).
struct AnyValue<V>(V);

impl<'de, V: Visitor<'de>> DeserializeSeed<'de> for AnyValue<V> {
    type Value = V::Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<V::Value, D::Error> {
        deserializer.deserialize_any(self.0)
    }
}

/// What a map key is to the walk.
enum Key {
    Wanted,
    RawValueMarker,
    Other,
}

struct KeySeed<'t> {
    wanted: Option<&'t str>,
    first: bool,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Key, E> {
        Ok(if self.first && key == RAW_VALUE_MARKER {
            Key::RawValueMarker
        } else if self.wanted == Some(key) {
            Key::Wanted
        } else {
            Key::Other
        })
    }
}

/// Reads and checks a value as `Value` would, keeping nothing.
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        // Not `IgnoredAny`: serde_json skips without its nesting limit or number range checks,
        // and a document `Value` refuses must stay without a key.
        deserializer.deserialize_any(Skip)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut first = true;
        while let Some(key) = map.next_key_seed(KeySeed {
            wanted: None,
            first,
        })? {
            if let Key::RawValueMarker = key {
                let json: String = map.next_value()?;
                return value_in_document(&json, Skip).map_err(serde::de::Error::custom);
            }
            map.next_value_seed(Skip)?;
            first = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How conflation keys were read before: the whole document as a `Value`, then its pointer.
    fn reference(json: &str, pointer: &str) -> Option<String> {
        let data: Value = serde_json::from_str(json).ok()?;
        match data.pointer(pointer)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    fn same_as_reference(json: &str, pointer: &str) -> Option<String> {
        let key = pointer_key(json, pointer);
        assert_eq!(
            key,
            reference(json, pointer),
            "pointer {pointer:?} in {json:?}"
        );
        key
    }

    const POSITION: &str = r#"{"altitude":34.0,"attributes":{"battery":4.1,"ignition":true},"course":359.0,"device":"359710049000001","lat":52.520008,"lon":-13.404954,"satellites":9,"speed":42.5,"time":1700000000123,"valid":true}"#;

    #[test]
    fn reads_the_key_of_a_device_position() {
        assert_eq!(
            same_as_reference(POSITION, "/device").as_deref(),
            Some("359710049000001")
        );
        assert_eq!(
            same_as_reference(POSITION, "/attributes/battery").as_deref(),
            Some("4.1")
        );
        assert_eq!(same_as_reference(POSITION, "/missing"), None);
    }

    #[test]
    fn every_kind_of_value_gives_the_same_key_as_before() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            // Strings as they are, escapes decoded.
            (r#"{"k":"abc"}"#, "/k", Some("abc")),
            (
                r#"{"k":"a\"b\\c\nd\u00e9\ud83d\ude00"}"#,
                "/k",
                Some("a\"b\\c\nd\u{e9}\u{1f600}"),
            ),
            (r#"{"k":""}"#, "/k", Some("")),
            (r#"{"k":"é漢字"}"#, "/k", Some("é漢字")),
            // Numbers as serde_json prints them, not as written.
            (r#"{"k":42}"#, "/k", Some("42")),
            (r#"{"k":-7}"#, "/k", Some("-7")),
            (r#"{"k":1.50}"#, "/k", Some("1.5")),
            (r#"{"k":1e2}"#, "/k", Some("100.0")),
            (r#"{"k":1E-2}"#, "/k", Some("0.01")),
            (r#"{"k":-0}"#, "/k", Some("-0.0")),
            (r#"{"k":-0.0}"#, "/k", Some("-0.0")),
            (
                r#"{"k":18446744073709551615}"#,
                "/k",
                Some("18446744073709551615"),
            ),
            (
                r#"{"k":18446744073709551616}"#,
                "/k",
                Some("1.8446744073709552e+19"),
            ),
            (
                r#"{"k":-9223372036854775809}"#,
                "/k",
                Some("-9.223372036854776e+18"),
            ),
            (r#"{"k":0.1}"#, "/k", Some("0.1")),
            // Booleans, containers as compact JSON (object keys sorted, as `Value` keeps them).
            (r#"{"k":true}"#, "/k", Some("true")),
            (r#"{"k":false}"#, "/k", Some("false")),
            (
                r#"{"k":[1, "a" ,{"z":1,"a":2}]}"#,
                "/k",
                Some(r#"[1,"a",{"a":2,"z":1}]"#),
            ),
            (
                r#"{"k":{ "b" : [ ] , "a" : { } }}"#,
                "/k",
                Some(r#"{"a":{},"b":[]}"#),
            ),
            // Null or missing: no key.
            (r#"{"k":null}"#, "/k", None),
            (r#"{"j":1}"#, "/k", None),
            (r#"{}"#, "/k", None),
            // Not an object at the top: nothing under it.
            (r#""k""#, "/k", None),
            (r#"42"#, "/k", None),
            (r#"null"#, "/k", None),
            (r#"[{"k":1}]"#, "/k", None),
            // The empty pointer is the whole document; a pointer without '/' is nothing.
            (r#"{"k":1}"#, "", Some(r#"{"k":1}"#)),
            (r#""top""#, "", Some("top")),
            (r#"null"#, "", None),
            (r#"{"k":1}"#, "k", None),
            // Nested pointers, array indexes as `Value::pointer` reads them.
            (r#"{"a":{"b":{"c":"deep"}}}"#, "/a/b/c", Some("deep")),
            (r#"{"a":{"b":1}}"#, "/a/c", None),
            (r#"{"a":"text"}"#, "/a/b", None),
            (r#"{"a":[10,20,30]}"#, "/a/1", Some("20")),
            (r#"{"a":[10,20,30]}"#, "/a/3", None),
            (r#"{"a":[10,20,30]}"#, "/a/01", None),
            (r#"{"a":[10,20,30]}"#, "/a/+1", None),
            (r#"{"a":[10,20,30]}"#, "/a/-1", None),
            (r#"{"a":[10,20,30]}"#, "/a/", None),
            (r#"{"a":[10,20,30]}"#, "/a/-", None),
            (r#"{"a":[[1,[2,{"x":"y"}]]]}"#, "/a/0/1/1/x", Some("y")),
            (r#"{"a":{"0":"zero"}}"#, "/a/0", Some("zero")),
            (r#"{"a":{"01":"padded"}}"#, "/a/01", Some("padded")),
            // Escaped tokens: "~1" is '/', "~0" is '~', in that order.
            (r#"{"a/b":1}"#, "/a~1b", Some("1")),
            (r#"{"a~b":2}"#, "/a~0b", Some("2")),
            (r#"{"~1":3}"#, "/~01", Some("3")),
            (r#"{"a/b":1}"#, "/a/b", None),
            (r#"{"":"empty key"}"#, "/", Some("empty key")),
            (r#"{"a":{"":"x"}}"#, "/a/", Some("x")),
            (
                r#"{"\u0064evice":"escaped key"}"#,
                "/device",
                Some("escaped key"),
            ),
            // A repeated key means its last value, even when the last one leads nowhere.
            (r#"{"k":"first","k":"last"}"#, "/k", Some("last")),
            (r#"{"k":"first","k":null}"#, "/k", None),
            (r#"{"a":{"b":1},"a":{"c":2}}"#, "/a/b", None),
            (r#"{"a":{"c":2},"a":{"b":1}}"#, "/a/b", Some("1")),
            (r#"{"a":{"b":1,"b":2}}"#, "/a/b", Some("2")),
            // Whitespace and pretty printing around everything.
            ("{\n  \"a\" : {\r\n \"b\":\t\"x\" }\n}\n", "/a/b", Some("x")),
            // Invalid documents, even past the key: no key, as before.
            (r#"{"k":"v""#, "/k", None),
            (r#"{"k":"v",}"#, "/k", None),
            (r#"{"k":"v"} x"#, "/k", None),
            (r#"{"k":"v"}{}"#, "/k", None),
            (r#"{"k":"v","n":01}"#, "/k", None),
            (r#"{"k":"v","n":1e400}"#, "/k", None),
            (r#"{"k":"v","n":-1e400}"#, "/k", None),
            (r#"{"k":"v","s":"\ud800"}"#, "/k", None),
            (r#"{"k":"v","s":"\x"}"#, "/k", None),
            (r#"{"k":"v","s":"raw	tab"}"#, "/k", None),
            (r#"{"k":"v","n":nul}"#, "/k", None),
            (r#"{"k":"v",1:2}"#, "/k", None),
            (r#"{"k":"v"]"#, "/k", None),
            (r#"{"k":"v","a":[1,]}"#, "/k", None),
            ("", "/k", None),
            ("   ", "/k", None),
            // serde_json's raw-value marker as a first key: `Value` reads the string as JSON.
            (
                r#"{"$serde_json::private::RawValue":"{\"k\":\"inner\"}"}"#,
                "/k",
                Some("inner"),
            ),
            (
                r#"{"a":{"$serde_json::private::RawValue":"[5,6]"}}"#,
                "/a/1",
                Some("6"),
            ),
            (
                r#"{"$serde_json::private::RawValue":"{\"k\":1}","x":2}"#,
                "/k",
                None,
            ),
            (r#"{"$serde_json::private::RawValue":7}"#, "/k", None),
            (r#"{"$serde_json::private::RawValue":"{bad"}"#, "/k", None),
            (
                r#"{"k":"v","o":{"$serde_json::private::RawValue":"{bad"}}"#,
                "/k",
                None,
            ),
            (
                r#"{"k":"v","o":{"$serde_json::private::RawValue":"[1]"}}"#,
                "/k",
                Some("v"),
            ),
            (
                r#"{"k":"v","$serde_json::private::RawValue":"nope"}"#,
                "/k",
                Some("v"),
            ),
            (
                r#"{"k":{"$serde_json::private::RawValue":"{\"z\":1}"}}"#,
                "/k",
                Some(r#"{"z":1}"#),
            ),
        ];
        for (json, pointer, expected) in cases {
            assert_eq!(
                same_as_reference(json, pointer).as_deref(),
                *expected,
                "pointer {pointer:?} in {json:?}"
            );
        }
    }

    fn nested(depth: usize, innermost: &str) -> String {
        format!("{}{innermost}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn nesting_past_serde_jsons_limit_has_no_key_anywhere_in_the_document() {
        // 127 levels in all is the most `Value` reads; the object is one of them.
        for depth in [1, 100, 125, 126, 127, 128, 200, 100_000] {
            let skipped = format!(r#"{{"device":"d","deep":{}}}"#, nested(depth, "1"));
            let key = same_as_reference(&skipped, "/device");
            assert_eq!(key.is_some(), depth <= 126, "depth {depth}");
            let pointer = format!("/deep{}", "/0".repeat(depth));
            let key = same_as_reference(&skipped, &pointer);
            assert_eq!(key.is_some(), depth <= 126, "depth {depth}");
        }
        let deep_key = format!("{}{}", r#"{"a":"#.repeat(200), "}".repeat(200));
        assert_eq!(same_as_reference(&deep_key, "/a"), None);
    }

    #[test]
    fn huge_documents_give_the_same_key() {
        let big_string = "x".repeat(4 << 20);
        let json = format!(r#"{{"pad":"{big_string}","device":"d1"}}"#);
        assert_eq!(same_as_reference(&json, "/device").as_deref(), Some("d1"));
        let json = format!(r#"{{"device":"{big_string}"}}"#);
        assert_eq!(same_as_reference(&json, "/device"), Some(big_string));

        let many: Vec<String> = (0..200_000).map(|i| format!(r#""k{i}":{i}.5"#)).collect();
        let json = format!("{{{},\"device\":7}}", many.join(","));
        assert_eq!(same_as_reference(&json, "/device").as_deref(), Some("7"));
        assert_eq!(
            same_as_reference(&json, "/k199999").as_deref(),
            Some("199999.5")
        );
        let json = format!("{{\"a\":[{}]}}", vec!["0"; 300_000].join(","));
        assert_eq!(same_as_reference(&json, "/a/299999").as_deref(), Some("0"));
        assert_eq!(same_as_reference(&json, "/a/300000"), None);
    }

    /// A small deterministic generator (xorshift), so a failure names a reproducible case.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }
    }

    /// Keys as they are written in JSON, and the text they stand for.
    const KEYS: &[(&str, &str)] = &[
        ("a", "a"),
        ("b", "b"),
        ("device", "device"),
        ("\\u0064evice", "device"),
        ("0", "0"),
        ("1", "1"),
        ("01", "01"),
        ("", ""),
        ("a/b", "a/b"),
        ("a~b", "a~b"),
        ("~1", "~1"),
        ("\\\"q", "\"q"),
        ("é", "é"),
        (
            "$serde_json::private::RawValue",
            "$serde_json::private::RawValue",
        ),
    ];

    const SCALARS: &[&str] = &[
        "null",
        "true",
        "false",
        "0",
        "-0",
        "7",
        "-7",
        "1.5",
        "-0.0",
        "1e2",
        "1E-2",
        "2.50",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775809",
        "1e400",
        "0.30000000000000004",
        "123456789012345678901234567890",
        r#""""#,
        r#""text""#,
        r#""a\nb""#,
        r#""\u00e9\ud83d\ude00""#,
        r#""\ud800""#,
        "01",
        "1.",
        ".5",
        "nul",
    ];

    const SPACE: &[&str] = &["", "", "", " ", "\n", "\r\n  ", "\t"];

    fn value(rng: &mut Rng, depth: usize, out: &mut String) {
        let kind = if depth == 0 { 0 } else { rng.below(6) };
        match kind {
            0..=2 => out.push_str(rng.pick(SCALARS)),
            3 => {
                out.push('[');
                for i in 0..rng.below(4) {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(rng.pick(SPACE));
                    value(rng, depth - 1, out);
                }
                out.push(']');
            }
            4 if rng.below(8) == 0 => {
                // A raw-value marker whose string holds a whole document.
                let mut inner = String::new();
                value(rng, depth - 1, &mut inner);
                let quoted = serde_json::to_string(&inner).unwrap_or_default();
                out.push_str(&format!(r#"{{"$serde_json::private::RawValue":{quoted}}}"#));
            }
            _ => {
                out.push('{');
                for i in 0..rng.below(5) {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(rng.pick(SPACE));
                    out.push_str(&format!("\"{}\"", KEYS[rng.below(KEYS.len())].0));
                    out.push_str(rng.pick(SPACE));
                    out.push(':');
                    value(rng, depth - 1, out);
                }
                out.push('}');
            }
        }
    }

    fn pointer(rng: &mut Rng) -> String {
        let mut pointer = String::new();
        for _ in 0..rng.below(4) {
            pointer.push('/');
            let token = match rng.below(3) {
                0 => rng
                    .pick(&["0", "1", "2", "00", "01", "+1", "-1", "-", ""])
                    .to_string(),
                _ => KEYS[rng.below(KEYS.len())]
                    .1
                    .replace('~', "~0")
                    .replace('/', "~1"),
            };
            pointer.push_str(&token);
        }
        if rng.below(20) == 0 {
            pointer.push('~');
        }
        pointer
    }

    #[test]
    fn random_documents_and_pointers_give_the_same_key_as_before() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut keys_found = 0;
        for _ in 0..30_000 {
            let mut json = String::new();
            let depth = 1 + rng.below(5);
            value(&mut rng, depth, &mut json);
            if rng.below(10) == 0 {
                // Break it: cut it short or add a stray character.
                let cut = json
                    .char_indices()
                    .map(|(i, _)| i)
                    .nth(rng.below(json.chars().count().max(1)))
                    .unwrap_or(0);
                json.truncate(cut);
                if rng.below(2) == 0 {
                    json.push_str(rng.pick(&[",", "}", "]", "\"", "x"]));
                }
            }
            for _ in 0..4 {
                let pointer = pointer(&mut rng);
                if same_as_reference(&json, &pointer).is_some() {
                    keys_found += 1;
                }
            }
        }
        // The generator must reach real keys, not only invalid documents and dead ends.
        assert!(keys_found > 10_000, "only {keys_found} keys found");
    }
}
