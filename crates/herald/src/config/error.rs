//! A configuration problem: which field, what is wrong with it, and where its value came from.

/// Where a setting's value came from, so an error can point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of the configuration file (`herald.toml:12`).
    File { path: String, line: usize },
    /// A `HERALD_…` environment variable, by name (its value may be a secret).
    Env(String),
    /// A `--set key.path=value` flag, as given.
    Set(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{path}:{line}"),
            Origin::Env(name) => f.write_str(name),
            Origin::Set(flag) => write!(f, "--set {flag}"),
        }
    }
}

/// A configuration problem, naming the field (and, once loaded, where its value came from).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The cause is the source: printed after this, once.
    #[error("cannot read {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// `at` is the file, with the line when the parser knows it (`herald.toml:3`).
    #[error("{at}: invalid TOML: {message}")]
    Syntax { at: String, message: String },
    #[error("--set {flag}: expected key.path=value")]
    SetSyntax { flag: String },
    #[error("{}{field}: {message}", prefix(.origin))]
    Field {
        origin: Option<Origin>,
        field: String,
        message: String,
    },
}

fn prefix(origin: &Option<Origin>) -> String {
    origin
        .as_ref()
        .map(|o| format!("{o}: "))
        .unwrap_or_default()
}

impl ConfigError {
    /// The dotted path of the field the error is about (`channel.namespaces[0].name`).
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Field { field, .. } => Some(field),
            _ => None,
        }
    }

    /// Where the faulty value came from, when known.
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            ConfigError::Field { origin, .. } => origin.as_ref(),
            _ => None,
        }
    }
}

/// An error about `field`, its origin still unknown (loading fills it in).
pub(crate) fn field(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        origin: None,
        field: field.into(),
        message: message.into(),
    }
}

/// `name: must be greater than zero`, the most common check.
pub(crate) fn positive(name: impl Into<String>) -> ConfigError {
    field(name, "must be greater than zero")
}
