//! Where accepted device positions go: `devices.fsync` (when the spool reaches the disk) and
//! `devices.store` (the database). Both are text in the file and parsed when it loads.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `devices.fsync`: "always", "never" or "every `<duration>`" ("every 100ms", "every 1s").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum FsyncSetting {
    Always,
    Never,
    Every(Duration),
}

impl std::str::FromStr for FsyncSetting {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        match text {
            "always" => return Ok(FsyncSetting::Always),
            "never" => return Ok(FsyncSetting::Never),
            _ => {}
        }
        let bad = || {
            format!("{text:?} is not \"always\", \"never\" or \"every <duration>\" (e.g. \"every 100ms\")")
        };
        let rest = text.strip_prefix("every").ok_or_else(bad)?.trim();
        let interval = humantime::parse_duration(rest).map_err(|_| bad())?;
        if interval.is_zero() {
            return Err(format!(
                "{text:?}: the interval must be greater than zero (or use \"always\")"
            ));
        }
        Ok(FsyncSetting::Every(interval))
    }
}

impl std::fmt::Display for FsyncSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncSetting::Always => f.write_str("always"),
            FsyncSetting::Never => f.write_str("never"),
            FsyncSetting::Every(interval) => {
                write!(f, "every {}", humantime::format_duration(*interval))
            }
        }
    }
}

impl TryFrom<String> for FsyncSetting {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<FsyncSetting> for String {
    fn from(setting: FsyncSetting) -> String {
        setting.to_string()
    }
}

/// `devices.store`: `"sqlite:<path>"` or a PostgreSQL conninfo "postgres://user:pass@host/db".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum StoreSetting {
    /// The SQLite database file.
    Sqlite(String),
    /// The whole conninfo, scheme included.
    Postgres(String),
}

impl std::str::FromStr for StoreSetting {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(path) = text.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err("\"sqlite:\" needs a file path, e.g. \"sqlite:data/herald.db\"".into());
            }
            return Ok(StoreSetting::Sqlite(path.to_string()));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(StoreSetting::Postgres(text.to_string()));
        }
        Err("expected \"sqlite:<path>\" or \"postgres://user:password@host/database\"".into())
    }
}

impl std::fmt::Display for StoreSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreSetting::Sqlite(path) => write!(f, "sqlite:{path}"),
            StoreSetting::Postgres(conninfo) => f.write_str(conninfo),
        }
    }
}

impl TryFrom<String> for StoreSetting {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<StoreSetting> for String {
    fn from(setting: StoreSetting) -> String {
        setting.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_read_back_as_written() {
        for text in ["always", "never", "every 100ms", "every 1s"] {
            let setting: FsyncSetting = text.parse().unwrap();
            assert_eq!(setting.to_string(), text);
        }
        for text in ["sqlite:data/herald.db", "postgres://u@h/db"] {
            let setting: StoreSetting = text.parse().unwrap();
            assert_eq!(setting.to_string(), text);
        }
    }
}
