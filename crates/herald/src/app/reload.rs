//! Applies a new configuration to a running server (SIGHUP, `systemctl reload`).
//!
//! The new configuration is checked whole before anything changes: a file that does not parse,
//! fails validation or names a key file that cannot be read is refused and the running
//! configuration stays. Fields only a restart can change keep their running value, each named in
//! a warning. Everything else is swapped in at once: sessions, the API and the handshake read the
//! configuration per use (docs/operations.md, "Reloading the configuration").

use super::logging::LogLevel;
use super::server::{verifier_config, Server};
use crate::config::Config;
use crate::core::metrics::ResultLabel;
use serde::Serialize;

/// What a reload changed.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// Restart-only fields whose new value was not applied (the running value stays).
    pub needs_restart: Vec<&'static str>,
    /// The token keys changed (settings or a key file's content): the previous ones verify for
    /// `client.token.rotation_grace`.
    pub keys_rotated: bool,
    /// `[proxy]` changed.
    pub proxy_changed: bool,
    /// `log.level` changed (applied by [`apply`] through the log control).
    pub log_level_changed: bool,
}

impl Server {
    /// Checks `new` and puts it in force. On error nothing changed; the error names the field.
    /// Counts the outcome in `herald_config_reloads_total{result}`.
    pub fn reload(&self, new: Config) -> anyhow::Result<ReloadReport> {
        let result = self.try_reload(new);
        count(self, result.is_ok());
        result
    }

    fn try_reload(&self, mut new: Config) -> anyhow::Result<ReloadReport> {
        new.validate()?;
        let node = &self.node;
        let running = node.config();
        let mut report = ReloadReport {
            needs_restart: keep_restart_only(&running, &mut new),
            ..ReloadReport::default()
        };
        // The mix of new and running values must hold together too (e.g. a new namespace's
        // history against the running broker).
        new.validate()?;
        // Key files are read now, before anything changes: one that cannot be read refuses the
        // whole reload. The same paths with new content are a rotation too.
        let keys = verifier_config(&new)?;
        let grace = new.client.token.rotation_grace;
        report.proxy_changed = differs(&running.proxy, &new.proxy);
        report.log_level_changed = running.log.level != new.log.level;
        drop(running);
        // First: the only step that can still fail, and it changes nothing when it does.
        report.keys_rotated = node.verifier.rotate(&keys, grace)?;
        if report.proxy_changed {
            node.hooks.replace_proxy(&new.proxy);
        }
        node.replace_config(new);
        Ok(report)
    }
}

/// SIGHUP: reloads from `read` (the sources the process started with) and logs the outcome;
/// the process keeps running whatever happens.
pub fn apply(server: &Server, read: anyhow::Result<Config>, log: Option<&LogLevel>) {
    tracing::info!("SIGHUP: reloading the configuration");
    let outcome = match read {
        Ok(config) => {
            let level = config.log.level.clone();
            server.reload(config).map(|report| (report, level))
        }
        Err(e) => {
            count(server, false);
            Err(e)
        }
    };
    let (report, level) = match outcome {
        Ok(done) => done,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "configuration reload refused; the running configuration stays");
            return;
        }
    };
    for field in &report.needs_restart {
        tracing::warn!(field, "{field}: needs a restart; kept the running value");
    }
    if report.keys_rotated {
        let grace = server.node.config().client.token.rotation_grace;
        tracing::info!(grace = %humantime::format_duration(grace), "client.token: new keys in force; the previous keys still verify for client.token.rotation_grace");
    }
    if report.log_level_changed {
        match log.map(|l| l.set(&level)) {
            Some(Ok(true)) => tracing::info!(level = %level, "log.level applied"),
            Some(Ok(false)) => tracing::info!("log.level: RUST_LOG is set and stays in force"),
            Some(Err(e)) => tracing::warn!(error = %e, "log.level not applied"),
            None => {}
        }
    }
    tracing::info!(
        restart_needed = report.needs_restart.len(),
        "configuration reloaded"
    );
}

/// `herald_config_reloads_total{result}` and, on success, the time of the last good load.
fn count(server: &Server, ok: bool) {
    let metrics = &server.node.metrics;
    let result = if ok { "ok" } else { "refused" };
    metrics
        .config_reloads
        .get_or_create(&ResultLabel { result })
        .inc();
    if ok {
        metrics
            .config_last_reload_success
            .set(crate::core::clock::unix_secs());
    }
}

/// Copies back into `new` the running value of every field only a restart can change, naming
/// those whose value differed. Listeners, the broker, devices, feeds, webhooks and the admin
/// console are built once at start; `log.format` is the subscriber's.
fn keep_restart_only(running: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($name:literal, $($field:ident).+) => {
            if differs(&running.$($field).+, &new.$($field).+) {
                new.$($field).+ = running.$($field).+.clone();
                kept.push($name);
            }
        };
    }
    keep!("node", node);
    keep!("http.listen", http.listen);
    keep!("http.internal_listen", http.internal_listen);
    keep!("http.reuse_port", http.reuse_port);
    // The files reload on change and on SIGHUP; which files (or TLS at all) is set at start.
    keep!("http.tls_cert", http.tls_cert);
    keep!("http.tls_key", http.tls_key);
    keep!("http.internal_tls_cert", http.internal_tls_cert);
    keep!("http.internal_tls_key", http.internal_tls_key);
    keep!("log.format", log.format);
    keep!("client.max_connections", client.max_connections);
    keep!("channel.max_streams", channel.max_streams);
    keep!("channel.history_meta_ttl", channel.history_meta_ttl);
    keep!("devices", devices);
    keep!("feeds", feeds);
    keep!("admin", admin);
    keep!("webhooks", webhooks);
    keep!("broker", broker);
    // Each Pusher app's webhook queue and task are built at start, for the apps there then.
    let mut webhooks_kept = false;
    for app in &mut new.pusher.apps {
        let (url, events) = running
            .pusher
            .apps
            .iter()
            .find(|a| a.id == app.id)
            .map(|a| (a.webhook_url.clone(), a.webhook_events.clone()))
            .unwrap_or_else(|| (String::new(), app.webhook_events.clone()));
        if app.webhook_url != url || app.webhook_events != events {
            app.webhook_url = url;
            app.webhook_events = events;
            webhooks_kept = true;
        }
    }
    if webhooks_kept {
        kept.push("pusher.apps[].webhook_url");
    }
    kept
}

/// Compares two sections by their serialized form (the configuration types derive no equality).
fn differs<T: Serialize>(a: &T, b: &T) -> bool {
    serde_json::to_value(a).ok() != serde_json::to_value(b).ok()
}

#[cfg(test)]
mod tests {
    use super::keep_restart_only;
    use crate::config::Config;

    #[test]
    fn restart_only_fields_keep_the_running_value_and_are_named() {
        let running = Config::default();
        let mut new = Config::default();
        new.http.listen = "127.0.0.1:9999".into();
        new.broker.prefix = "other".into();
        new.client.max_channels = 3;
        new.api.key = "k".into();
        let kept = keep_restart_only(&running, &mut new);
        assert_eq!(kept, ["http.listen", "broker"]);
        assert_eq!(new.http.listen, running.http.listen);
        assert_eq!(new.broker.prefix, running.broker.prefix);
        assert_eq!(new.client.max_channels, 3, "reloadable");
        assert_eq!(new.api.key, "k", "reloadable");
        assert!(keep_restart_only(&running, &mut Config::default()).is_empty());

        // Pusher apps reload, but not their webhooks: those of the apps running stay.
        let app = |id: &str, url: &str| crate::config::PusherApp {
            id: id.into(),
            webhook_url: url.into(),
            ..Default::default()
        };
        let mut running = Config::default();
        running.pusher.apps = vec![app("1", "http://127.0.0.1:1/a")];
        let mut new = Config::default();
        new.pusher.apps = vec![app("1", "http://127.0.0.1:1/b"), app("2", "http://x:1/")];
        new.pusher.apps[0].client_events = true;
        let kept = keep_restart_only(&running, &mut new);
        assert_eq!(kept, ["pusher.apps[].webhook_url"]);
        assert_eq!(new.pusher.apps[0].webhook_url, "http://127.0.0.1:1/a");
        assert!(new.pusher.apps[0].client_events, "reloadable");
        assert_eq!(
            new.pusher.apps[1].webhook_url, "",
            "a new app gets none until a restart"
        );
    }
}
