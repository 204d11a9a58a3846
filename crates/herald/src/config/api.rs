//! `[api]`: the server API's key and limits.

use super::error::{positive, ConfigError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Key for `X-API-Key` / `Authorization: apikey …`. Empty: the API (and `/metrics`) answers only
    /// requests made on this host: loopback peer and `Host`, no foreign `Origin`, JSON content type.
    pub key: String,
    /// Most commands one `batch` may carry; a larger batch is refused before any command runs.
    pub max_batch_commands: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            key: String::new(),
            max_batch_commands: 1000,
        }
    }
}

impl ApiConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_batch_commands == 0 {
            return Err(positive("api.max_batch_commands"));
        }
        Ok(())
    }
}
