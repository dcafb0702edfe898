//! Configuration, resolved along one path: built-in defaults, then
//! `ingero.yaml`, then environment variables, then command-line flags.
//!
//! Flags and environment variables are merged by clap (a flag beats its
//! `INGERO_*` variable); this module supplies the file layer beneath them and
//! the defaults beneath that. The file is parsed with a real YAML parser and
//! unknown keys are errors, so a typo never silently falls back to a
//! default. `configs/ingero.yaml` is the complete, commented example.

use std::{
    ffi::CStr,
    path::{Path, PathBuf},
};

pub mod defaults;
pub mod effective;
pub mod fleet;

use serde::Deserialize;

use crate::units::{ByteSize, HumanDuration};

/// Where the file layer came from, when no `--config` is given:
/// the first of these that exists.
pub const SYSTEM_CONFIG: &str = "/etc/ingero/ingero.yaml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid node name '{0}': use letters, digits, '.', '_' or '-' (at most 63 characters)")]
    NodeName(String),
    #[error("cannot find the home directory of the invoking user; pass --db PATH")]
    NoHome,
    /// Settings that do not go together, or a value out of range: the
    /// user's input, not the file's syntax.
    #[error("{0}")]
    Usage(String),
    #[error("cannot read the token file {path}: {message}")]
    TokenFile { path: PathBuf, message: String },
}

/// The `ingero.yaml` file. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub agent: AgentSection,
    pub trace: TraceSection,
    pub query: QuerySection,
    pub fleet: FleetSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// Node name recorded with every event (default: the hostname).
    pub node: Option<String>,
    /// Database path (default: ~/.ingero/ingero.db of the invoking user).
    pub db: Option<PathBuf>,
    /// Size cap of the database; the oldest events are pruned past it.
    pub max_db_size: Option<ByteSize>,
    /// Where the agent API listens.
    pub listen: Option<std::net::SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Require client certificates from this CA.
    pub ca_cert: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    /// The agent's own files (default ~/.ingero).
    pub state_dir: Option<PathBuf>,
    /// API: database-reading requests at once; more get 429.
    pub max_queries: Option<usize>,
    /// API: deadline of one query.
    pub query_timeout: Option<HumanDuration>,
}

/// `ingero query` settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuerySection {
    /// Rows printed at most.
    pub limit: Option<usize>,
    /// Deadline of the statement.
    pub timeout: Option<HumanDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceSection {
    pub cuda_lib: Vec<PathBuf>,
    pub cudart_lib: Vec<PathBuf>,
    pub stack: Option<bool>,
    pub ringbuf_size: Option<ByteSize>,
    pub io: Option<bool>,
    pub sched: Option<bool>,
    pub memory: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSection {
    pub nodes: Vec<String>,
    pub token_file: Option<PathBuf>,
    pub timeout: Option<HumanDuration>,
    /// Longest the whole fan-out may take.
    pub deadline: Option<HumanDuration>,
    /// Agents asked at once.
    pub concurrency: Option<usize>,
    pub clock_skew_threshold: Option<HumanDuration>,
    pub tls: FleetTls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetTls {
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl FileConfig {
    /// Loads `explicit` (from `--config` / `INGERO_CONFIG`; it must exist),
    /// else the first existing default location, else an empty file layer.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        Ok(Self::load_with_path(explicit)?.0)
    }

    /// As [`FileConfig::load`], with the file it came from (`None`: no file).
    pub fn load_with_path(explicit: Option<&Path>) -> Result<(Self, Option<PathBuf>), ConfigError> {
        let path = if let Some(p) = explicit {
            p.to_path_buf()
        } else {
            let mut candidates = vec![PathBuf::from(SYSTEM_CONFIG)];
            if let Some(home) = invoking_home() {
                candidates.push(home.join(".ingero/ingero.yaml"));
            }
            match candidates.into_iter().find(|p| p.is_file()) {
                Some(p) => p,
                None => return Ok((Self::default(), None)),
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let file = Self::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.clone(),
            message,
        })?;
        Ok((file, Some(path)))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    }
}

/// The node name: flag or `INGERO_NODE`, then `agent.node`, then the hostname.
pub fn resolve_node(flag: Option<&str>, file: &FileConfig) -> Result<String, ConfigError> {
    let name = flag
        .map(str::to_owned)
        .or_else(|| file.agent.node.clone())
        .unwrap_or_else(hostname);
    validate_node(&name)?;
    Ok(name)
}

pub fn validate_node(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::NodeName(name.to_owned()))
    }
}

/// The database: flag or `INGERO_DB`, then `agent.db`, then
/// `~/.ingero/ingero.db` of the invoking user (the `sudo` caller's home).
pub fn resolve_db(flag: Option<&Path>, file: &FileConfig) -> Result<PathBuf, ConfigError> {
    if let Some(p) = flag.or(file.agent.db.as_deref()) {
        return Ok(expand_home(p));
    }
    Ok(invoking_home()
        .ok_or(ConfigError::NoHome)?
        .join(".ingero/ingero.db"))
}

/// The state directory: flag, then `agent.state_dir`, then `~/.ingero`.
pub fn resolve_state_dir(flag: Option<&Path>, file: &FileConfig) -> Result<PathBuf, ConfigError> {
    if let Some(p) = flag.or(file.agent.state_dir.as_deref()) {
        return Ok(expand_home(p));
    }
    Ok(invoking_home().ok_or(ConfigError::NoHome)?.join(".ingero"))
}

/// Reads a bearer token (whitespace trimmed; at least 16 characters).
pub fn read_token(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::TokenFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(ConfigError::TokenFile {
            path: path.to_path_buf(),
            message: "the token must be at least 16 characters".into(),
        });
    }
    Ok(token.as_bytes().to_vec())
}

/// `~/x` relative to the invoking user's home.
#[must_use]
pub fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), invoking_home()) {
        (Ok(rest), Some(home)) => home.join(rest),
        _ => path.to_path_buf(),
    }
}

/// The machine's hostname.
#[must_use]
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The user who invoked us: `SUDO_UID`/`SUDO_GID` under sudo, else ourselves.
#[must_use]
pub fn invoking_user() -> (u32, u32) {
    let from_env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u32>().ok());
    match (from_env("SUDO_UID"), from_env("SUDO_GID")) {
        (Some(uid), Some(gid)) => (uid, gid),
        // SAFETY: getuid/getgid cannot fail.
        _ => unsafe { (libc::getuid(), libc::getgid()) },
    }
}

/// Home directory of the invoking user (the caller of `sudo`, not root).
#[must_use]
pub fn invoking_home() -> Option<PathBuf> {
    if std::env::var_os("SUDO_UID").is_some() {
        let (uid, _) = invoking_user();
        if let Some(home) = home_of(uid) {
            return Some(home);
        }
    }
    std::env::var_os("HOME").map(PathBuf::from).or_else(|| {
        // SAFETY: getuid cannot fail.
        home_of(unsafe { libc::getuid() })
    })
}

fn home_of(uid: u32) -> Option<PathBuf> {
    let mut pwd: libc::passwd = unsafe {
        // SAFETY: passwd is plain data; getpwuid_r fills it.
        std::mem::zeroed()
    };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the sizes given.
    let rc = unsafe { libc::getpwuid_r(uid, &raw mut pwd, buf.as_mut_ptr(), buf.len(), &raw mut result) };
    if rc != 0 || result.is_null() || pwd.pw_dir.is_null() {
        return None;
    }
    // SAFETY: pw_dir points into `buf`, NUL-terminated by getpwuid_r.
    let dir = unsafe { CStr::from_ptr(pwd.pw_dir) };
    Some(PathBuf::from(dir.to_string_lossy().into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let text = include_str!("../../../configs/ingero.yaml");
        let cfg = FileConfig::parse(text).expect("configs/ingero.yaml parses");
        assert_eq!(cfg.agent.node.as_deref(), Some("gpu-node-01"));
        assert_eq!(cfg.trace.ringbuf_size, Some(ByteSize(8 << 20)));
        assert_eq!(cfg.fleet.nodes.len(), 3);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = FileConfig::parse("agent:\n  nodee: x\n").expect_err("typo must fail");
        assert!(err.contains("nodee"), "{err}");
    }

    #[test]
    fn empty_file_is_defaults() {
        let cfg = FileConfig::parse("# nothing\n").expect("empty parses");
        assert!(cfg.agent.node.is_none());
    }

    #[test]
    fn flag_beats_file_beats_hostname() {
        let file = FileConfig::parse("agent:\n  node: from-file\n").expect("parses");
        assert_eq!(
            resolve_node(Some("from-flag"), &file).ok().as_deref(),
            Some("from-flag")
        );
        assert_eq!(resolve_node(None, &file).ok().as_deref(), Some("from-file"));
        assert_eq!(resolve_node(None, &FileConfig::default()).ok(), Some(hostname()));
    }

    #[test]
    fn node_names_are_validated() {
        assert!(validate_node("gpu-node-01").is_ok());
        assert!(validate_node("a.b_c").is_ok());
        assert!(validate_node("").is_err());
        assert!(validate_node("bad name").is_err());
        assert!(validate_node("x:1").is_err());
    }
}
