//! Loading the cluster secret and the admin token from the environment or a file.

use std::path::Path;

/// Reads a secret from `env` if set and non-empty, else from `file` if given.
/// A file that is named but unreadable is an error, not a silent "no secret".
pub fn load(env: Option<&str>, file: Option<&Path>) -> Result<Option<String>, String> {
    if let Some(value) = env.map(str::trim).filter(|v| !v.is_empty()) {
        return Ok(Some(value.to_owned()));
    }
    match file {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
            Ok(_) => Err(format!("{} is empty", path.display())),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        },
        None => Ok(None),
    }
}

/// A fresh random secret: 32 random bytes, hex encoded.
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
