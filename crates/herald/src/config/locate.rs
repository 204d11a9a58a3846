//! Where a faulty value came from: the `--set` flag or environment variable that set it last,
//! else its line in the configuration file.

use super::error::{ConfigError, Origin};
use std::ops::Range;
use std::path::Path;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// The configuration file as read, kept to find the lines of fields.
pub(super) struct FileText {
    /// The path as given, which errors show.
    path: String,
    text: String,
}

/// A value set by an environment variable or a `--set` flag, and the key path it set.
pub(super) struct Override {
    pub path: Vec<String>,
    pub origin: Origin,
}

impl FileText {
    pub(super) fn read(path: &Path) -> Result<FileText, ConfigError> {
        let shown = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(FileText { path: shown, text }),
            Err(source) => Err(ConfigError::Read {
                path: shown,
                source,
            }),
        }
    }

    /// The file's settings; a syntax error names its line.
    pub(super) fn table(&self) -> Result<toml::Table, ConfigError> {
        toml::from_str(&self.text).map_err(|e| {
            let at = match e.span() {
                Some(span) => format!("{}:{}", self.path, self.line_at(span.start)),
                None => self.path.clone(),
            };
            ConfigError::Syntax {
                at,
                message: e.message().to_string(),
            }
        })
    }

    /// The line of the deepest part of `path` the file has: the value's own line, or that of
    /// the section (or array entry) it belongs in when the file leaves it out.
    fn line_of(&self, path: &[String]) -> Option<usize> {
        let document = DeTable::parse(&self.text).ok()?;
        span_in_table(document.get_ref(), path).map(|span| self.line_at(span.start))
    }

    fn line_at(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text.as_bytes()[..offset]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }
}

/// The span of the key of `path`'s first segment in `table`, or of something deeper.
fn span_in_table(table: &DeTable<'_>, path: &[String]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    let (key, value) = table.iter().find(|(key, _)| key.get_ref() == first)?;
    Some(span_in_value(value, rest).unwrap_or_else(|| key.span()))
}

fn span_in_value(value: &Spanned<DeValue<'_>>, path: &[String]) -> Option<Range<usize>> {
    let (first, rest) = path.split_first()?;
    match value.get_ref() {
        DeValue::Table(table) => span_in_table(table, path),
        DeValue::Array(items) => {
            let item = items.get(first.parse::<usize>().ok()?)?;
            Some(span_in_value(item, rest).unwrap_or_else(|| item.span()))
        }
        _ => None,
    }
}

/// `channel.namespaces[0].name` → `["channel", "namespaces", "0", "name"]`.
fn segments(field: &str) -> Vec<String> {
    field
        .split(['.', '['])
        .map(|s| s.trim_end_matches(']').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Fills in where a field error's value came from. The last override of the field (or of a
/// section holding it, or of a key inside it) wins over the file, as it did when loading.
pub(super) fn locate(
    error: ConfigError,
    file: Option<&FileText>,
    overrides: &[Override],
) -> ConfigError {
    let ConfigError::Field {
        origin: None,
        field,
        message,
    } = error
    else {
        return error;
    };
    let path = segments(&field);
    let overlaps = |other: &[String]| {
        let common = other.len().min(path.len());
        common > 0 && other[..common] == path[..common]
    };
    let origin = overrides
        .iter()
        .rev()
        .find(|o| overlaps(&o.path))
        .map(|o| o.origin.clone())
        .or_else(|| {
            let file = file?;
            let line = file.line_of(&path)?;
            Some(Origin::File {
                path: file.path.clone(),
                line,
            })
        });
    ConfigError::Field {
        origin,
        field,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> FileText {
        FileText {
            path: "herald.toml".into(),
            text: text.into(),
        }
    }

    fn line(text: &str, field: &str) -> Option<usize> {
        file(text).line_of(&segments(field))
    }

    #[test]
    fn paths_split_into_keys_and_indexes() {
        assert_eq!(
            segments("channel.namespaces[10].name"),
            ["channel", "namespaces", "10", "name"]
        );
        assert_eq!(segments("feeds"), ["feeds"]);
    }

    #[test]
    fn lines_of_values_sections_and_array_entries() {
        let text = "[a]\nx = 1\ny = [\n  \"p\",\n  \"q\",\n]\n\n[[t]]\nn = 1\n\n[[t]]\nn = 2\nm = { k = 3 }\nb.c = 4\n";
        assert_eq!(line(text, "a.x"), Some(2));
        assert_eq!(line(text, "a.y"), Some(3));
        assert_eq!(line(text, "a.y[1]"), Some(5));
        assert_eq!(line(text, "a.z"), Some(1), "missing: its section");
        assert_eq!(line(text, "t[1].n"), Some(12));
        assert_eq!(line(text, "t[1].m.k"), Some(13));
        assert_eq!(line(text, "t[1].b.c"), Some(14));
        assert_eq!(line(text, "nowhere.x"), None);
    }
}
