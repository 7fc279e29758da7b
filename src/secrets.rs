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

/// The admin token a client uses: `RAFTCAST_ADMIN_TOKEN`, else `file`, else
/// `$RAFTCAST_DATA_DIR/admin-token` (default `./data/admin-token`) when it exists.
pub fn admin_token(file: Option<&Path>) -> Result<Option<String>, String> {
    let env = std::env::var("RAFTCAST_ADMIN_TOKEN").ok();
    let default = std::path::PathBuf::from(std::env::var("RAFTCAST_DATA_DIR").unwrap_or_else(|_| "data".into()))
        .join("admin-token");
    let file = file.map(Path::to_path_buf).or_else(|| default.exists().then_some(default));
    load(env.as_deref(), file.as_deref())
}
