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

/// Why the configuration cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file exists (or was named) but cannot be read.
    #[error("cannot read the configuration file {path}: {source}")]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The configuration file is not valid YAML, has an unknown key or a
    /// value of the wrong type.
    #[error("invalid configuration file {path}: {message}")]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// The parser's message (names the key and position).
        message: String,
    },
    /// A node name that is empty, longer than 63 characters or holds
    /// characters other than ASCII letters, digits, '.', '_' and '-'.
    #[error("invalid node name '{0}': use letters, digits, '.', '_' or '-' (at most 63 characters)")]
    NodeName(String),
    /// No home directory for the invoking user, so no default path under
    /// `~/.ingero`; give the path explicitly.
    #[error("cannot find the home directory of the invoking user; pass --db PATH")]
    NoHome,
    /// Settings that do not go together, or a value out of range: the
    /// user's input, not the file's syntax.
    #[error("{0}")]
    Usage(String),
    /// A value of the configuration file that is well-formed YAML but
    /// unusable (an OTLP endpoint that is not an http(s) URL).
    #[error("invalid configuration: {0}")]
    Value(String),
    /// A bearer token file cannot be read or holds fewer than 16 characters.
    #[error("cannot read the token file {path}: {message}")]
    TokenFile {
        /// The token file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// The `ingero.yaml` file. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// `agent:`: node name, database, and the agent API.
    pub agent: AgentSection,
    /// `trace:`: what `ingero trace` records.
    pub trace: TraceSection,
    /// `query:`: limits of `ingero query`.
    pub query: QuerySection,
    /// `fleet:`: the agents fleet commands ask and how.
    pub fleet: FleetSection,
    /// `archive:`: the Parquet archive written while tracing.
    pub archive: ArchiveSection,
    /// `otlp:`: OTLP push of metrics and chains.
    pub otlp: OtlpSection,
}

/// The `otlp:` section: where `ingero trace` pushes its metrics and new
/// causal chains, and `ingero explain` its verdict (off without an endpoint).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpSection {
    /// OTLP/HTTP base URL of the collector (`http://host:4318`); none: off.
    pub endpoint: Option<String>,
    /// Time between pushes of the metrics (default: 10 seconds).
    pub interval: Option<HumanDuration>,
    /// Headers sent with every request (an authorization token, a tenant).
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    /// The CA that signed the collector's certificate (https endpoints).
    pub ca_cert: Option<PathBuf>,
    /// Our certificate for a collector that requires mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// The key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

/// The `archive:` section: `ingero trace` writes the recording as Parquet
/// files into `dir` every `interval` (off without a directory).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveSection {
    /// The archive directory (shared storage, typically); none: no archive.
    pub dir: Option<PathBuf>,
    /// Time between archive passes (default: 10 minutes).
    pub interval: Option<HumanDuration>,
}

/// The `agent:` section: node identity, database, and the agent API.
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
    /// API server certificate chain, PEM (default: a self-signed one in the
    /// state directory); goes with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// API server private key, PEM; goes with `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Require client certificates from this CA.
    pub ca_cert: Option<PathBuf>,
    /// File holding the bearer token API clients must send (at least 16
    /// characters).
    pub token_file: Option<PathBuf>,
    /// The agent's own files (default ~/.ingero).
    pub state_dir: Option<PathBuf>,
    /// API: database-reading requests at once; more get 429.
    pub max_queries: Option<usize>,
    /// API: deadline of one query.
    pub query_timeout: Option<HumanDuration>,
    /// API: most bytes of one query answer.
    pub max_answer_size: Option<ByteSize>,
    /// API: close a connection with no traffic for this long.
    pub idle_timeout: Option<HumanDuration>,
    /// API: longest a client may take to send a request's headers (HTTP/1
    /// and HTTP/2).
    pub header_timeout: Option<HumanDuration>,
    /// API: connections open at once from one IP address.
    pub max_connections_per_address: Option<usize>,
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

/// The `trace:` section: libraries to probe and event families to record.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TraceSection {
    /// More CUDA driver libraries (libcuda.so*) to probe, added to `--cuda-lib`.
    pub cuda_lib: Vec<PathBuf>,
    /// More CUDA runtime libraries (libcudart.so*) to probe, added to `--cudart-lib`.
    pub cudart_lib: Vec<PathBuf>,
    /// More NCCL libraries (libnccl.so*) to probe, added to `--nccl-lib`.
    pub nccl_lib: Vec<PathBuf>,
    /// Capture the user stack of every CUDA call (default: false).
    pub stack: Option<bool>,
    /// Kernel-to-user ring buffer size in bytes, a power of two (default: 8 MiB).
    pub ringbuf_size: Option<ByteSize>,
    /// Record block I/O (default: true; `--no-io` turns it off).
    pub io: Option<bool>,
    /// Record off-CPU time from `sched_switch` (default: true; `--no-sched` turns it off).
    pub sched: Option<bool>,
    /// Count page allocations (default: true; `--no-memory` turns it off).
    pub memory: Option<bool>,
}

/// The `fleet:` section: which agents fleet commands ask, and how.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSection {
    /// Agents as `host:port`, used with `--fleet`.
    pub nodes: Vec<String>,
    /// File holding the bearer token sent to the agents.
    pub token_file: Option<PathBuf>,
    /// Longest one agent may take to answer (default: 15 s).
    pub timeout: Option<HumanDuration>,
    /// Longest the whole fan-out may take.
    pub deadline: Option<HumanDuration>,
    /// Agents asked at once.
    pub concurrency: Option<usize>,
    /// Largest answer read from one agent.
    pub max_answer_size: Option<ByteSize>,
    /// Warn when an agent's clock differs from ours by more than this
    /// (default: 10 ms).
    pub clock_skew_threshold: Option<HumanDuration>,
    /// A collective some ranks entered and others did not for this long
    /// is reported as hung by explain (default: 30 s).
    pub hang_after: Option<HumanDuration>,
    /// `fleet.tls:`: certificates for reaching the agents.
    pub tls: FleetTls,
}

/// The `fleet.tls:` section: how the fleet client verifies agents and
/// proves who it is.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetTls {
    /// CA that signed the agents' certificates, PEM.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate, PEM, for agents that require one; goes with `client_key`.
    pub client_cert: Option<PathBuf>,
    /// Private key of `client_cert`, PEM.
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

    /// Parses YAML text (empty or whitespace-only text is the empty file
    /// layer); the error is the parser's message.
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

/// Checks a node name: 1 to 63 ASCII letters, digits, '.', '_' or '-'.
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

/// Reads a bearer token (whitespace trimmed; at least 16 characters, at
/// most 4 KiB, one line of visible characters: a token with a line break
/// or a space inside could never match an `Authorization` header).
pub fn read_token(path: &Path) -> Result<Vec<u8>, ConfigError> {
    use std::io::Read;
    const MAX: u64 = 4096;
    let bad = |message: String| ConfigError::TokenFile {
        path: path.to_path_buf(),
        message,
    };
    let mut raw = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX + 1).read_to_end(&mut raw))
        .map_err(|e| bad(e.to_string()))?;
    if raw.len() as u64 > MAX {
        return Err(bad(format!(
            "it is larger than {MAX} bytes: put only the token in it"
        )));
    }
    let text =
        String::from_utf8(raw).map_err(|_| bad("it is not UTF-8 text: put only the token in it".into()))?;
    let token = text.trim();
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(
            "the token holds a line break, space or control character: put the token alone on one line"
                .into(),
        ));
    }
    if token.len() < 16 {
        return Err(bad("the token must be at least 16 characters".into()));
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
        // Archiving is off in the example, as by default; the interval
        // shown is the default.
        assert!(cfg.archive.dir.is_none());
        assert_eq!(
            cfg.archive.interval.map(|d| d.0),
            Some(defaults::ARCHIVE_INTERVAL)
        );
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
