//! `[log]`: how much Herald logs, and in which format.

use super::error::{field, ConfigError};
use super::words::word_setting;
use serde::{Deserialize, Serialize};

word_setting! {
    /// `log.format`: how each log line is written (to standard error).
    pub enum LogFormat {
        /// Human-readable lines.
        Text = "text",
        /// One JSON object per line.
        Json = "json",
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter such as `herald=debug`
    /// (kept as text: a filter is not one word).
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// The levels a bare word may name.
const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

impl LogConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        tracing_subscriber::EnvFilter::try_new(&self.level)
            .map_err(|e| field("log.level", e.to_string()))?;
        // A bare word is read as a target name by tracing, so a typo would silently disable logs.
        let level = self.level.trim();
        if !level.contains(['=', ',']) && !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(field(
                "log.level",
                format!("{level:?} is not a level (error, warn, info, debug, trace, off) or a filter like \"herald=debug\""),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::LogFormat;
    use crate::config::load::tests::load_str;

    #[test]
    fn level_and_format_are_validated() {
        let c = load_str("", &[], &["log.level=\"debug\"", "log.format=json"]).unwrap();
        assert_eq!(c.log.level, "debug");
        assert_eq!(c.log.format, LogFormat::Json);
        let e = load_str("[log]\nlevel = \"debugg\"\n", &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("log.level"));
        assert!(load_str("[log]\nlevel = \"herald=debug,info\"\n", &[], &[]).is_ok());
        let e = load_str("[log]\nformat = \"xml\"\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("log.format: \"xml\" is not one of \"text\", \"json\""),
            "{e}"
        );
    }
}
