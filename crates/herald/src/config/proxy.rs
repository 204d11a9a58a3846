//! `[proxy]`: calls to the application backend, in Centrifugo's HTTP proxy format (docs/hooks.md).

use super::error::{field, positive, ConfigError};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// An empty endpoint turns that hook off.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Called for a `connect` without a token: the backend authenticates the client.
    pub connect_endpoint: String,
    /// Called when a connection authenticated by the backend reaches its `expire_at`.
    pub refresh_endpoint: String,
    /// Called for subscribes in namespaces with `proxy_subscribe = true`.
    pub subscribe_endpoint: String,
    /// Called for client publishes in namespaces with `proxy_publish = true`.
    pub publish_endpoint: String,
    /// Called for every client `rpc`.
    pub rpc_endpoint: String,
    /// Called, without waiting for an answer, for every client `send`.
    pub send_endpoint: String,
    /// Whole-call deadline (connect, request, response body).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Most backend calls in flight per node; a call over it fails at once.
    pub max_concurrent: usize,
    /// WebSocket handshake headers copied to every proxy request (e.g. Cookie, Authorization).
    pub forward_headers: Vec<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_endpoint: String::new(),
            refresh_endpoint: String::new(),
            subscribe_endpoint: String::new(),
            publish_endpoint: String::new(),
            rpc_endpoint: String::new(),
            send_endpoint: String::new(),
            timeout: Duration::from_secs(3),
            max_concurrent: 256,
            forward_headers: vec!["Cookie".into(), "Authorization".into()],
        }
    }
}

/// Headers a browser adds to a cross-site WebSocket handshake by itself (the visitor's credentials).
const AMBIENT_CREDENTIAL_HEADERS: [&str; 2] = ["cookie", "authorization"];

impl ProxyConfig {
    /// (hook name, endpoint) of every hook, configured or not.
    pub fn endpoints(&self) -> [(&'static str, &str); 6] {
        [
            ("connect", &self.connect_endpoint),
            ("refresh", &self.refresh_endpoint),
            ("subscribe", &self.subscribe_endpoint),
            ("publish", &self.publish_endpoint),
            ("rpc", &self.rpc_endpoint),
            ("send", &self.send_endpoint),
        ]
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (hook, endpoint) in self.endpoints() {
            if !endpoint.is_empty() {
                parse_http_url(endpoint).map_err(|m| field(format!("proxy.{hook}_endpoint"), m))?;
            }
        }
        if self.timeout.is_zero() {
            return Err(positive("proxy.timeout"));
        }
        if self.max_concurrent == 0 {
            return Err(positive("proxy.max_concurrent"));
        }
        for (i, name) in self.forward_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(field(
                    format!("proxy.forward_headers[{i}]"),
                    format!("{name:?} is not a header name"),
                ));
            }
        }
        Ok(())
    }

    /// A browser sends the visitor's cookies (and cached HTTP credentials) with a WebSocket
    /// handshake made by any site's page. Forwarded to the backend, they would authenticate that
    /// page as the visitor (cross-site WebSocket hijacking), so forwarding them needs an `Origin`
    /// policy (`http.allowed_origins`) that names the application's own pages.
    pub(super) fn check_origin_policy(
        &self,
        allowed_origins: &[String],
    ) -> Result<(), ConfigError> {
        let hooked = self.endpoints().iter().any(|(_, e)| !e.is_empty());
        let credentials: Vec<&str> = self
            .forward_headers
            .iter()
            .filter(|h| AMBIENT_CREDENTIAL_HEADERS.contains(&h.to_ascii_lowercase().as_str()))
            .map(String::as_str)
            .collect();
        if !hooked || credentials.is_empty() {
            return Ok(());
        }
        if allowed_origins.is_empty() || allowed_origins.iter().any(|o| o == "*") {
            let forwarded = credentials.join(" and ");
            return Err(field(
                "http.allowed_origins",
                format!(
                    "proxy.forward_headers forwards {forwarded} to the backend, which a browser sends along with a handshake from any web site; \
                     list your pages' origins in http.allowed_origins (not \"*\"), or remove {forwarded} from proxy.forward_headers"
                ),
            ));
        }
        Ok(())
    }
}

/// Checks that `url` is an absolute `http://` URL with a host; returns it parsed.
pub fn parse_http_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("{url:?} is not a URL like http://127.0.0.1:9000/path"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{url:?}: https is not supported; reach the backend over http on a private network or through a local TLS-terminating proxy"
            ))
        }
        _ => return Err(format!("{url:?} must start with http://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use crate::config::load::tests::load_str;

    #[test]
    fn forwarding_credentials_to_hooks_needs_an_origin_policy() {
        let hooked = "[proxy]\nconnect_endpoint = \"http://127.0.0.1:9/connect\"\n";
        let e = load_str(hooked, &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("http.allowed_origins"), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("proxy.forward_headers") && text.contains("Cookie"),
            "{text}"
        );
        let star = load_str(hooked, &[], &["http.allowed_origins=[\"*\"]"]).unwrap_err();
        assert_eq!(star.field(), Some("http.allowed_origins"), "{star}");
        let listed = ["http.allowed_origins=[\"https://app.example\"]"];
        assert!(load_str(hooked, &[], &listed).is_ok());
        let no_credentials = ["proxy.forward_headers=[\"User-Agent\"]"];
        assert!(load_str(hooked, &[], &no_credentials).is_ok());
        assert!(
            load_str("", &[], &[]).is_ok(),
            "no hook: nothing is forwarded"
        );
        let e = load_str("", &[], &["api.max_batch_commands=0"]).unwrap_err();
        assert_eq!(e.field(), Some("api.max_batch_commands"), "{e}");
    }

    #[test]
    fn endpoints_must_be_http_urls() {
        let e = load_str("[proxy]\nrpc_endpoint = \"not a url\"\n", &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("proxy.rpc_endpoint"), "{e}");
        let e = load_str("[proxy]\nforward_headers = [\"a b\"]\n", &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("proxy.forward_headers[0]"), "{e}");
    }
}
