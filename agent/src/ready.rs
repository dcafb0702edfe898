//! Machine-readable readiness of a daemon (`ingero trace`, `ingero serve`):
//! with `--ready-file PATH`, once the probes are attached and the API (if
//! any) listens, one JSON object is written to PATH, complete or not at
//! all (written beside it, then renamed). Scripts and tests wait for the
//! file instead of reading human messages on stderr.

use std::{net::SocketAddr, path::Path};

use serde::Serialize;

/// What a ready daemon says about itself.
#[derive(Debug, Clone, Serialize)]
pub struct Ready<'a> {
    /// Its process id.
    pub pid: u32,
    /// The node name it records or serves.
    pub node: &'a str,
    /// The database it writes or serves.
    pub db: &'a Path,
    /// The session being recorded (tracing only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<i64>,
    /// Where the API listens, when it does (the real port if 0 was asked).
    pub listen: Option<SocketAddr>,
    /// `https` or `http`, when the API listens.
    pub scheme: Option<&'static str>,
}

/// Writes `ready` to `path` atomically.
pub fn announce(path: &Path, ready: &Ready<'_>) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".partial");
    let json = serde_json::to_vec(ready).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}
