//! `[admin]`: the admin console at `/admin` (docs/operations.md#admin-console).

use super::error::{field, positive, ConfigError};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Shortest password and token accepted: the console controls every connection.
const MIN_PASSWORD_CHARS: usize = 12;
/// Shortest signing secret accepted.
const MIN_SECRET_CHARS: usize = 32;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Serve the console (on the internal listener when one is set) — only when `password` or
    /// `token` is set: a console without credentials is never served.
    pub enabled: bool,
    /// Password of the login form; a successful login gets a signed session cookie.
    pub password: String,
    /// Bearer token (`Authorization: Bearer <token>`) for scripts; "" accepts none.
    pub token: String,
    /// Key that signs session cookies and CSRF tokens. The same on every node behind one balancer,
    /// so a session made on one node is valid on the others. "": a random key per process.
    pub secret: String,
    /// How long a session lasts after login.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Login attempts one IP address may make per minute; more are refused with 429.
    pub login_attempts_per_minute: u32,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            password: String::new(),
            token: String::new(),
            secret: String::new(),
            session_ttl: Duration::from_secs(12 * 3600),
            login_attempts_per_minute: 10,
        }
    }
}

impl AdminConfig {
    /// Whether `/admin` is served: enabled, and some credential configured.
    pub fn active(&self) -> bool {
        self.enabled && !(self.password.is_empty() && self.token.is_empty())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("admin.password", &self.password),
            ("admin.token", &self.token),
        ] {
            if !value.is_empty() && value.chars().count() < MIN_PASSWORD_CHARS {
                return Err(field(
                    name,
                    format!("must be at least {MIN_PASSWORD_CHARS} characters (herald genconfig generates one)"),
                ));
            }
            if value.trim() != value.as_str() || value.chars().any(char::is_control) {
                return Err(field(
                    name,
                    "must not start or end with spaces or contain control characters",
                ));
            }
        }
        if !self.secret.is_empty() && self.secret.chars().count() < MIN_SECRET_CHARS {
            return Err(field(
                "admin.secret",
                format!("must be at least {MIN_SECRET_CHARS} characters (herald genconfig generates one)"),
            ));
        }
        if !(Duration::from_secs(60)..=Duration::from_secs(30 * 86400)).contains(&self.session_ttl)
        {
            return Err(field("admin.session_ttl", "must be within 1m..=30days"));
        }
        if self.login_attempts_per_minute == 0 {
            return Err(positive("admin.login_attempts_per_minute"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load::tests::load_str;

    #[test]
    fn admin_settings_are_validated() {
        let c = load_str("", &[], &[]).unwrap();
        assert!(c.admin.enabled);
        assert!(!c.admin.active(), "no credentials: no console");
        let c = load_str("[admin]\npassword = \"correct horse battery\"\n", &[], &[]).unwrap();
        assert!(c.admin.active());
        let c = load_str(
            "[admin]\npassword = \"correct horse battery\"\nenabled = false\n",
            &[],
            &[],
        )
        .unwrap();
        assert!(!c.admin.active());
        for (text, name) in [
            ("password = \"short\"", "admin.password"),
            ("token = \"short\"", "admin.token"),
            ("password = \" padded password \"", "admin.password"),
            ("secret = \"too short\"", "admin.secret"),
            ("session_ttl = \"10s\"", "admin.session_ttl"),
            ("session_ttl = \"60days\"", "admin.session_ttl"),
            (
                "login_attempts_per_minute = 0",
                "admin.login_attempts_per_minute",
            ),
        ] {
            let e = load_str(&format!("[admin]\n{text}\n"), &[], &[]).unwrap_err();
            assert_eq!(e.field(), Some(name), "{text}: {e}");
        }
    }
}
