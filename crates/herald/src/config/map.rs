//! `[map]`: the live map page at `/map` (docs/map.md).

use super::error::{field, ConfigError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MapConfig {
    /// Serve `/map` and its data endpoints on the public listener.
    pub enabled: bool,
    /// Tile URL template with `{z}`, `{x}` and `{y}`; "" draws a plain grid (no tiles).
    pub tile_url: String,
    /// Attribution shown in the map's corner (required by most tile providers).
    pub attribution: String,
}

impl Default for MapConfig {
    fn default() -> Self {
        MapConfig {
            enabled: true,
            tile_url: "https://tile.openstreetmap.org/{z}/{x}/{y}.png".into(),
            attribution: "© OpenStreetMap contributors".into(),
        }
    }
}

impl MapConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let url = self.tile_url.trim();
        if url.is_empty() {
            return Ok(());
        }
        if url != self.tile_url {
            return Err(field("map.tile_url", "must not start or end with spaces"));
        }
        if !(url.starts_with("https://") || url.starts_with("http://") || url.starts_with('/')) {
            return Err(field(
                "map.tile_url",
                format!("{url:?} must start with https://, http:// or / (or be \"\" for no tiles)"),
            ));
        }
        for placeholder in ["{z}", "{x}", "{y}"] {
            if !url.contains(placeholder) {
                return Err(field(
                    "map.tile_url",
                    format!("{url:?} lacks {placeholder} (a template like https://tile.example/{{z}}/{{x}}/{{y}}.png)"),
                ));
            }
        }
        if url
            .chars()
            .any(|c| c.is_control() || c == '"' || c == '\\' || c == ' ')
        {
            return Err(field(
                "map.tile_url",
                "must not contain spaces, quotes, backslashes or control characters",
            ));
        }
        if self.attribution.chars().any(char::is_control) {
            return Err(field(
                "map.attribution",
                "must not contain control characters",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load::tests::load_str;

    #[test]
    fn map_settings_are_validated() {
        let c = load_str("", &[], &[]).unwrap();
        assert!(c.map.enabled);
        assert_eq!(
            c.map.tile_url,
            "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
        );
        let c = load_str("[map]\ntile_url = \"\"\nenabled = false\n", &[], &[]).unwrap();
        assert!(!c.map.enabled);
        assert!(c.map.tile_url.is_empty());
        for bad in [
            "ftp://tiles/{z}/{x}/{y}.png",
            "https://tiles.example/{z}/{x}.png",
            "https://tiles.example/{z}/{x}/{y}.png\\\"",
        ] {
            let text = format!("[map]\ntile_url = {}\n", toml::Value::String(bad.into()));
            let e = load_str(&text, &[], &[]).unwrap_err();
            assert_eq!(e.field(), Some("map.tile_url"), "{bad}: {e}");
        }
        let e = load_str("", &[], &["map.enabled=maybe"]).unwrap_err();
        assert_eq!(e.field(), Some("map.enabled"), "{e}");
        let e = load_str("[map]\nattribution = \"a\\nb\"\n", &[], &[]).unwrap_err();
        assert_eq!(e.field(), Some("map.attribution"), "{e}");
    }
}
