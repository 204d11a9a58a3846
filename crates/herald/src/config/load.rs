//! Reading the configuration: the TOML file, then `HERALD_…` environment variables, then `--set`
//! flags. An error names the field and where its value came from (`herald.toml:12: …`,
//! `HERALD_BROKER__KIND: …`, `--set broker.kind=kafka: …`).

use super::error::{field, ConfigError, Origin};
use super::locate::{locate, FileText, Override};
use super::Config;
use std::path::Path;

/// Environment variables that override the file: `HERALD_CLIENT__PING_INTERVAL=10s` sets
/// `client.ping_interval` (sections separated by a double underscore).
pub const ENV_PREFIX: &str = "HERALD_";

impl Config {
    /// Loads the optional file, then environment overrides, then `key.path=value` overrides.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<Config, ConfigError> {
        let file = file.map(FileText::read).transpose()?;
        let mut root = match &file {
            Some(file) => file.table()?,
            None => toml::Table::new(),
        };
        let defaults = toml::Value::try_from(Config::default())
            .unwrap_or(toml::Value::Table(toml::Table::new()));
        let mut overrides = Vec::new();
        for (key, value) in env {
            let Some(rest) = key.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // HERALD_CONFIG and other single-word variables belong to the command line, not the file.
            if !rest.contains("__") {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            let origin = Origin::Env(key.clone());
            set_path(&mut root, &defaults, &path, &value)
                .map_err(|m| located(field(path.join("."), m), &origin))?;
            overrides.push(Override { path, origin });
        }
        for set in sets {
            let (key, value) = set
                .split_once('=')
                .ok_or_else(|| ConfigError::SetSyntax { flag: set.clone() })?;
            let key = key.trim();
            let path: Vec<String> = key.split('.').map(str::to_string).collect();
            let origin = Origin::Set(set.clone());
            set_path(&mut root, &defaults, &path, value.trim())
                .map_err(|m| located(field(key, m), &origin))?;
            overrides.push(Override { path, origin });
        }
        let with_origin = |error| locate(error, file.as_ref(), &overrides);
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(root)).map_err(|e| {
                let path = e.path().to_string();
                with_origin(field(path, e.into_inner().message()))
            })?;
        config.validate().map_err(with_origin)?;
        Ok(config)
    }
}

/// The error, said to come from `origin`.
fn located(error: ConfigError, origin: &Origin) -> ConfigError {
    match error {
        ConfigError::Field { field, message, .. } => ConfigError::Field {
            origin: Some(origin.clone()),
            field,
            message,
        },
        other => other,
    }
}

/// Sets `path` in the table to `raw`. Where the setting is a string, `raw` is taken as is (a key
/// `12345` stays a string); otherwise it is typed like TOML would type it (number, bool, array,
/// quoted string), falling back to a string.
fn set_path(
    root: &mut toml::Table,
    defaults: &toml::Value,
    path: &[String],
    raw: &str,
) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".into());
    };
    let mut table = root;
    for part in parents {
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("{part} is not a section"))?;
    }
    let default = path
        .iter()
        .try_fold(defaults, |v, part| v.get(part.as_str()));
    let as_typed = || {
        toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
    };
    let value = match default {
        Some(toml::Value::String(_)) => match as_typed() {
            Some(quoted @ toml::Value::String(_)) => quoted,
            _ => toml::Value::String(raw.to_string()),
        },
        _ => as_typed().unwrap_or_else(|| toml::Value::String(raw.to_string())),
    };
    table.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::BrokerKind;
    use std::time::Duration;

    /// Loads `text` as the file `herald.toml` (in a fresh directory), with the given environment
    /// and `--set` flags.
    pub(crate) fn load_str(
        text: &str,
        env: &[(&str, &str)],
        sets: &[&str],
    ) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("herald-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("herald.toml");
        std::fs::write(&path, text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let result = Config::load(Some(&path), env, &sets);
        std::fs::remove_dir_all(&dir).ok();
        result
    }

    /// The error's text with the temporary directory cut off the file's path.
    fn message(error: ConfigError) -> String {
        let text = error.to_string();
        match text.find("herald.toml") {
            Some(at) => text[at..].to_string(),
            None => text,
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = load_str("", &[], &[]).unwrap();
        assert_eq!(c.http.listen, "0.0.0.0:8000");
        assert_eq!(c.client.ping_interval, Duration::from_secs(25));
        assert_eq!(c.broker.kind, BrokerKind::Memory);
        assert!(Config::load(None, std::iter::empty(), &[]).is_ok());
    }

    #[test]
    fn a_type_error_names_the_line() {
        let text = "[http]\nlisten = \"0.0.0.0:8000\"\n\n[client]\nping_interval = \"soon\"\n";
        let e = load_str(text, &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("client.ping_interval"));
        assert!(
            message(e).starts_with("herald.toml:5: client.ping_interval: "),
            "the line of the value"
        );
        let e = load_str("[client]\nmax_channels = \"many\"\n", &[], &[]).unwrap_err();
        assert_eq!(
            message(e),
            "herald.toml:2: client.max_channels: invalid type: string \"many\", expected usize"
        );
    }

    #[test]
    fn an_unknown_field_names_the_line() {
        let e = load_str("[client]\nmax_channels = 3\npingg = 1\n", &[], &[]).unwrap_err();
        let text = message(e);
        assert!(
            text.starts_with("herald.toml:3: client.pingg: unknown field `pingg`, expected one of"),
            "{text}"
        );
        let e = load_str(
            "[[feeds]]\nname = \"a\"\n\n[[feeds]]\nnmae = \"b\"\n",
            &[],
            &[],
        )
        .unwrap_err();
        assert!(message(e).starts_with("herald.toml:5: feeds[1].nmae: "));
    }

    #[test]
    fn a_validation_error_names_the_line() {
        let text = "[broker]\nkind = \"redis\"\nprefix = \"a b\"\n";
        let e = load_str(text, &[], &[]).unwrap_err();
        assert_eq!(
            message(e),
            "herald.toml:3: broker.prefix: must be non-empty, without spaces or braces"
        );
        let text =
            "[[channel.namespaces]]\nname = \"a\"\n\n[[channel.namespaces]]\nname = \"bad name\"\n";
        let e = load_str(text, &[], &[]).unwrap_err();
        assert!(message(e).starts_with("herald.toml:5: channel.namespaces[1].name: "));
        // A field left out of the file: the line of its section, where it belongs.
        let text = "[log]\nlevel = \"info\"\n\n[devices]\nenabled = true\naccept_unknown = false\n";
        let e = load_str(text, &[], &[]).unwrap_err();
        assert!(message(e).starts_with("herald.toml:4: devices.allowed: "));
        // Nothing of it in the file: no line.
        let e = load_str(
            "[proxy]\nconnect_endpoint = \"http://127.0.0.1:9/c\"\n",
            &[],
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("http.allowed_origins: "), "{e}");
    }

    #[test]
    fn a_bad_word_lists_the_accepted_ones() {
        let e = load_str("\n[broker]\nkind = \"redsi\"\n", &[], &[]).unwrap_err();
        assert_eq!(
            message(e),
            "herald.toml:3: broker.kind: \"redsi\" is not one of \"memory\", \"redis\", \"redis_cluster\", \"nats\""
        );
    }

    #[test]
    fn an_env_override_error_names_the_variable() {
        let e = load_str(
            "[broker]\nkind = \"memory\"\n",
            &[("HERALD_BROKER__KIND", "kafka")],
            &[],
        )
        .unwrap_err();
        assert_eq!(e.origin(), Some(&Origin::Env("HERALD_BROKER__KIND".into())));
        assert_eq!(
            e.to_string(),
            "HERALD_BROKER__KIND: broker.kind: \"kafka\" is not one of \"memory\", \"redis\", \"redis_cluster\", \"nats\""
        );
        let e = load_str("", &[("HERALD_CLIENT__MAX_CHANNELS", "many")], &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "HERALD_CLIENT__MAX_CHANNELS: client.max_channels: invalid type: string \"many\", expected usize"
        );
        let e = load_str("", &[("HERALD_CLIENT__PINGG", "1")], &[]).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("HERALD_CLIENT__PINGG: client.pingg: unknown field"));
    }

    #[test]
    fn a_set_error_names_the_flag() {
        let e = load_str("[broker]\nkind = \"redis\"\n", &[], &["broker.kind=kafka"]).unwrap_err();
        assert_eq!(e.origin(), Some(&Origin::Set("broker.kind=kafka".into())));
        assert_eq!(
            e.to_string(),
            "--set broker.kind=kafka: broker.kind: \"kafka\" is not one of \"memory\", \"redis\", \"redis_cluster\", \"nats\""
        );
        let e = load_str("", &[], &["broker.kind=redis", "broker.prefix=a b"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--set broker.prefix=a b: broker.prefix: must be non-empty, without spaces or braces"
        );
        // The flag wins over the file, so the flag is to blame.
        let e = load_str(
            "[client]\nmax_channels = 3\n",
            &[],
            &["client.max_channels=0"],
        )
        .unwrap_err();
        assert!(e
            .to_string()
            .starts_with("--set client.max_channels=0: client.max_channels:"));
        let chat = "[[channel.namespaces]]\nname = \"chat\"\n";
        let e = load_str(chat, &[], &["channel.namespaces.chat.history_size=2"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--set channel.namespaces.chat.history_size=2: channel.namespaces.chat.history_size: namespaces is not a section"
        );
        let e = load_str("", &[], &["broker.kind"]).unwrap_err();
        assert_eq!(e.to_string(), "--set broker.kind: expected key.path=value");
    }

    #[test]
    fn a_syntax_error_names_the_line() {
        let e = load_str("[client]\nping_interval = \"1s\"\n[client\n", &[], &[]).unwrap_err();
        let text = message(e);
        assert!(text.starts_with("herald.toml:3: invalid TOML: "), "{text}");
    }

    #[test]
    fn env_then_flags_override_the_file() {
        let c = load_str(
            "[client]\nping_interval = \"5s\"\nmax_channels = 3\n",
            &[
                ("HERALD_CLIENT__PING_INTERVAL", "7s"),
                ("HERALD_HTTP__LISTEN", "127.0.0.1:9000"),
                ("HOME", "/x"),
            ],
            &["client.max_channels=9"],
        )
        .unwrap();
        assert_eq!(c.client.ping_interval, Duration::from_secs(7));
        assert_eq!(c.client.max_channels, 9);
        assert_eq!(c.http.listen, "127.0.0.1:9000");
        let c = load_str(
            "",
            &[
                ("HERALD_API__KEY", "12345"),
                ("HERALD_BROKER__KIND", "redis"),
            ],
            &["client.token.hmac_secret=true"],
        )
        .unwrap();
        assert_eq!(
            c.api.key, "12345",
            "string settings keep numeric-looking values as text"
        );
        assert_eq!(c.client.token.hmac_secret, "true");
        assert_eq!(
            c.broker.kind,
            BrokerKind::Redis,
            "words are read as text too"
        );
        let c = load_str(
            "",
            &[],
            &[
                "http.allowed_origins=[\"https://a.example\"]",
                "log.level=\"debug\"",
            ],
        )
        .unwrap();
        assert_eq!(
            c.http.allowed_origins,
            vec!["https://a.example".to_string()]
        );
        assert_eq!(c.log.level, "debug");
    }
}
