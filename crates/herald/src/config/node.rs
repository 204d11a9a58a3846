//! `[node]`: how this node names itself.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Name shown by the `info` API; empty means `<hostname>-<pid>`.
    pub name: String,
}
