//! The process's log subscriber, with a level a configuration reload can change (`log.level`).
//! `RUST_LOG`, when set, wins over `log.level` at start and on every reload.

use crate::config::{Config, LogFormat};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Changes the level of the running subscriber.
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
    /// `RUST_LOG` was set: it stays in force.
    from_env: bool,
}

/// Installs the global subscriber (text or JSON on standard error) and returns its level control.
pub fn init(config: &Config) -> LogLevel {
    let env = std::env::var("RUST_LOG").ok();
    let filter = EnvFilter::try_new(env.as_deref().unwrap_or(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    // Colours only for a terminal: log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let json = config.log.format == LogFormat::Json;
    let registry = tracing_subscriber::registry().with(filter);
    let text_layer = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
    });
    let json_layer = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    registry.with(text_layer).with(json_layer).init();
    LogLevel {
        handle,
        from_env: env.is_some(),
    }
}

impl LogLevel {
    /// Puts `level` (already validated as `log.level`) in force. Returns whether it applies:
    /// not while `RUST_LOG` is set.
    pub fn set(&self, level: &str) -> Result<bool, String> {
        if self.from_env {
            return Ok(false);
        }
        let filter = EnvFilter::try_new(level).map_err(|e| format!("log.level: {e}"))?;
        self.handle
            .reload(filter)
            .map_err(|e| format!("log.level: {e}"))?;
        Ok(true)
    }
}
