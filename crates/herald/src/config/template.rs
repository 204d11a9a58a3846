//! A feed's channel or tag template as written in the configuration, parsed when the
//! configuration loads (so a bad one is an error naming its field) and rendered by the feed.
//!
//! A template is literal text with `{/json/pointer}` parts, e.g. `market:{/s}` turns
//! `{"s":"BTCUSDT","p":"1.5"}` into the channel `market:BTCUSDT`. `{$source}` is the name the
//! message arrived on (Redis channel, NATS subject) and `{$source[N]}` its N-th segment, split
//! on `.` and `:` (`ticker:BTC` → `{$source[1]}` = `BTC`). `{{` and `}}` are literal braces.

use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("unclosed '{{' at byte {0}")]
    Unclosed(usize),
    #[error("unmatched '}}' at byte {0}")]
    Unmatched(usize),
    #[error("{0:?} is neither a JSON pointer (\"/s\") nor $source / $source[N]")]
    NotPointer(String),
    #[error("the template is empty")]
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Pointer(String),
    Source,
    SourceSegment(usize),
}

fn source_part(inner: &str) -> Option<Part> {
    if inner == "$source" {
        return Some(Part::Source);
    }
    let index = inner.strip_prefix("$source[")?.strip_suffix(']')?;
    index.parse().ok().map(Part::SourceSegment)
}

/// A parsed `{/pointer}` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        if text.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'{' if bytes.get(i + 1) == Some(&b'{') => {
                    literal.push('{');
                    i += 2;
                }
                b'}' if bytes.get(i + 1) == Some(&b'}') => {
                    literal.push('}');
                    i += 2;
                }
                b'{' => {
                    let end = text[i..].find('}').ok_or(TemplateError::Unclosed(i))? + i;
                    let inner = &text[i + 1..end];
                    let part = if inner.starts_with('/') {
                        Part::Pointer(inner.to_string())
                    } else {
                        source_part(inner)
                            .ok_or_else(|| TemplateError::NotPointer(inner.to_string()))?
                    };
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(part);
                    i = end + 1;
                }
                b'}' => return Err(TemplateError::Unmatched(i)),
                _ => {
                    // Copy one whole UTF-8 character.
                    let ch = text[i..].chars().next().unwrap_or('\u{fffd}');
                    literal.push(ch);
                    i += ch.len_utf8();
                }
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    /// The rendered text, or `None` when a pointer is missing or points at an object, array or
    /// null, or the source has no such segment.
    pub fn render(&self, message: &Value, source: &str) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Source => out.push_str(source),
                Part::SourceSegment(n) => out.push_str(source.split(['.', ':']).nth(*n)?),
                Part::Pointer(p) => match message.pointer(p)? {
                    Value::String(s) => out.push_str(s),
                    Value::Number(n) => out.push_str(&n.to_string()),
                    Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                    _ => return None,
                },
            }
        }
        Some(out)
    }
}
