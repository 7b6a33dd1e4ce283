//! Helpers shared by the commands that read a TOML configuration.

use std::path::{Path, PathBuf};

/// Any error as the CLI's `String` error.
pub fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Parses a TOML configuration file; errors name the file.
pub fn read_toml<T: serde::de::DeserializeOwned>(config: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(config).map_err(|e| format!("{}: {e}", config.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", config.display()))
}

/// Resolves a path from a configuration file against the file's directory.
pub fn rel(config: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        config.parent().unwrap_or(Path::new(".")).join(p)
    }
}
