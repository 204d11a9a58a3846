//! How an upstream message becomes publications: pure functions, no I/O, so they can be tested
//! and fuzzed on their own.
//! Channel and tag templates are [`Template`]s (crate::config::template).

pub use crate::config::template::{Template, TemplateError};
use serde_json::Value;
use std::collections::BTreeMap;

/// Why a message produced no publication (counted per feed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not JSON.
    NotJson,
    /// Filtered out by `match` (e.g. subscription acknowledgements).
    Unmatched,
    /// The channel template or `data` pointer did not resolve.
    Unmapped,
}

/// One publication to make.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    pub channel: String,
    pub data: Value,
    pub tags: BTreeMap<String, String>,
}

/// A feed's whole mapping from upstream text to publications.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// Messages are any text, published as a JSON string (else they must be JSON).
    pub text_payload: bool,
    /// Pointer to an array whose elements are mapped one by one ("" = the message itself).
    pub items: String,
    /// Only items where every pointer equals its string are published.
    pub matches: Vec<(String, String)>,
    pub channel: Template,
    /// Pointer to the part of the item that is published ("" = the whole item).
    pub data: String,
    pub tags: Vec<(String, Template)>,
}

impl Mapping {
    /// Maps one upstream message that arrived on `source`.
    pub fn apply(&self, text: &str, source: &str) -> Result<Vec<Mapped>, Skip> {
        let message: Value = if self.text_payload {
            Value::String(text.to_string())
        } else {
            serde_json::from_str(text).map_err(|_| Skip::NotJson)?
        };
        if self.items.is_empty() {
            return self.apply_item(&message, source).map(|m| vec![m]);
        }
        let Some(Value::Array(items)) = message.pointer(&self.items) else {
            return Err(Skip::Unmapped);
        };
        let mapped: Vec<Mapped> = items
            .iter()
            .filter_map(|item| self.apply_item(item, source).ok())
            .collect();
        if mapped.is_empty() {
            return Err(Skip::Unmatched);
        }
        Ok(mapped)
    }

    fn apply_item(&self, item: &Value, source: &str) -> Result<Mapped, Skip> {
        for (pointer, expected) in &self.matches {
            let matched = match item.pointer(pointer) {
                Some(Value::String(s)) => s == expected,
                Some(other) => serde_json::from_str::<Value>(expected).is_ok_and(|e| &e == other),
                None => false,
            };
            if !matched {
                return Err(Skip::Unmatched);
            }
        }
        let channel = self.channel.render(item, source).ok_or(Skip::Unmapped)?;
        let data = if self.data.is_empty() {
            item.clone()
        } else {
            item.pointer(&self.data).cloned().ok_or(Skip::Unmapped)?
        };
        let mut tags = BTreeMap::new();
        for (name, template) in &self.tags {
            tags.insert(
                name.clone(),
                template.render(item, source).ok_or(Skip::Unmapped)?,
            );
        }
        Ok(Mapped {
            channel,
            data,
            tags,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping(channel: &str) -> Mapping {
        Mapping {
            text_payload: false,
            items: String::new(),
            matches: Vec::new(),
            channel: Template::parse(channel).unwrap(),
            data: String::new(),
            tags: Vec::new(),
        }
    }

    #[test]
    fn templates_render_pointers_and_literals() {
        let t = Template::parse("market:{/s}.{/k/i}{{x}}").unwrap();
        let v = json!({"s": "BTC", "k": {"i": 5}});
        assert_eq!(t.render(&v, "").as_deref(), Some("market:BTC.5{x}"));
        assert_eq!(t.render(&json!({"s": "BTC"}), ""), None);
        assert_eq!(t.render(&json!({"s": {"a": 1}, "k": {"i": 1}}), ""), None);
        let greek = Template::parse("κανάλι:{/s}").unwrap();
        assert_eq!(greek.render(&v, "").as_deref(), Some("κανάλι:BTC"));
        let t = Template::parse("q:{$source[1]}/{$source}").unwrap();
        assert_eq!(
            t.render(&v, "ticker:ETH").as_deref(),
            Some("q:ETH/ticker:ETH")
        );
        assert_eq!(t.render(&v, "ticker"), None);
        assert!(Template::parse("{$source[x]}").is_err());
        assert!(Template::parse("{$other}").is_err());
    }

    #[test]
    fn bad_templates_are_named() {
        assert_eq!(Template::parse("a{/b"), Err(TemplateError::Unclosed(1)));
        assert_eq!(Template::parse("a}b"), Err(TemplateError::Unmatched(1)));
        assert_eq!(
            Template::parse("a{b}"),
            Err(TemplateError::NotPointer("b".into()))
        );
        assert_eq!(Template::parse(""), Err(TemplateError::Empty));
    }

    #[test]
    fn messages_map_filter_and_split() {
        let mut m = mapping("trades:{/s}");
        m.matches = vec![("/e".into(), "trade".into())];
        m.data = "/p".into();
        m.tags = vec![("symbol".into(), Template::parse("{/s}").unwrap())];
        let out = m.apply(r#"{"e":"trade","s":"ETH","p":"3.5"}"#, "").unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].channel, "trades:ETH");
        assert_eq!(out[0].data, json!("3.5"));
        assert_eq!(out[0].tags.get("symbol").map(String::as_str), Some("ETH"));
        assert_eq!(
            m.apply(r#"{"result":null,"id":1}"#, ""),
            Err(Skip::Unmatched)
        );
        assert_eq!(m.apply("not json", ""), Err(Skip::NotJson));
        assert_eq!(m.apply(r#"{"e":"trade","p":"1"}"#, ""), Err(Skip::Unmapped));

        let mut batch = mapping("q:{/s}");
        batch.items = "/data".into();
        let out = batch
            .apply(r#"{"data":[{"s":"A"},{"x":1},{"s":"B"}]}"#, "")
            .unwrap();
        let channels: Vec<_> = out.iter().map(|m| m.channel.as_str()).collect();
        assert_eq!(channels, ["q:A", "q:B"]);
        assert_eq!(batch.apply(r#"{"data":{}}"#, ""), Err(Skip::Unmapped));
    }

    #[test]
    fn text_payloads_are_published_as_strings() {
        let mut m = mapping("prices:{$source[1]}");
        m.text_payload = true;
        let out = m.apply("97000.5", "ticker:BTC").unwrap();
        assert_eq!(out[0].channel, "prices:BTC");
        assert_eq!(out[0].data, json!("97000.5"));
    }

    #[test]
    fn arbitrary_text_never_panics() {
        let m = mapping("c:{/a}");
        for text in ["", "{", "[]", "null", "\"\\u0000\"", "{\"a\":[1]}", "1e999"] {
            let _ = m.apply(text, "a.b:c");
        }
        for text in [
            "{",
            "}",
            "{{",
            "}}",
            "{/",
            "{}",
            "é{/é}",
            "{/a}}",
            "{$source[99999999999999999999]}",
        ] {
            let _ = Template::parse(text);
        }
    }
}
