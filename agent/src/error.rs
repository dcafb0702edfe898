//! The errors a command can end with, and the one place where they become
//! exit codes. Every error prints as one sentence that says what to do.
//!
//! Exit codes: 0 success; 1 other failure (including a query interrupted
//! at its deadline); 2 bad input (usage, a pid that does not exist, a
//! library path that is wrong, SQL that is refused or invalid, a database
//! that does not exist, a database that is not ingero's); 69 the kernel lacks
//! something (BTF, tracefs, a tracepoint); 73 the database or a Parquet
//! archive cannot be written; 77 not enough privileges; 78 bad configuration file. Fleet
//! commands (`--nodes`): 3 when only some nodes answered (their rows are
//! printed), 4 when none did.

use crate::{
    api::listen::ListenError, archive::ArchiveError, config::ConfigError, merge::MergeError,
    readonly::QueryError, store::StoreError, tls::TlsError, trace::TraceError,
};

/// Why a command failed; `exit_code` maps each case to the process exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration (file, flags, node name, token file) is wrong: exit 78,
    /// or 2 for a bad node name, flag combination or token file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Tracing could not start or stopped: exit 77 (not root), 69 (kernel
    /// lacks BTF, tracefs or a probe), 2 (bad pid, ring size or library), 73
    /// (the database cannot be written) or 1.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// The database cannot be created or written: exit 73.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A read-only query failed: exit 1 when it ran past its deadline or
    /// the database is busy, 2 otherwise (refused or invalid SQL, missing or non-ingero database).
    #[error(transparent)]
    Query(#[from] QueryError),
    /// Merging databases failed: exit 2 for a refused or unreadable input,
    /// 73 when the output cannot be written.
    #[error(transparent)]
    Merge(#[from] MergeError),
    /// The listen address or its settings are wrong (exit 2), or the socket
    /// cannot be bound (exit 1).
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// A certificate or key cannot be read, generated or written, or is
    /// invalid or already exists: exit 2.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A Parquet archive could not be written: exit 73 when a file or
    /// directory cannot be written (disk full, permissions), 2 when the
    /// request is refused (the output is a file or already holds these
    /// nodes), 1 when the database cannot be read.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// Input the user can correct (a path, a time, a flag combination).
    #[error("{0}")]
    BadInput(String),
    /// Any other failure, with its message: exit 1.
    #[error("{0}")]
    Failed(String),
    /// A fleet command reached none of its nodes (the count is how many it
    /// tried): exit 4.
    #[error("none of the {0} node(s) answered (see the warnings above)")]
    NoNodeAnswered(usize),
}

impl CliError {
    /// The process exit code for this error (see the module documentation).
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(
                ConfigError::NodeName(_) | ConfigError::Usage(_) | ConfigError::TokenFile { .. },
            ) => 2,
            Self::Config(_) => 78,
            Self::Trace(TraceError::NotRoot) => 77,
            Self::Trace(
                TraceError::NoBtf(_)
                | TraceError::Tracefs(_)
                | TraceError::Load(_)
                | TraceError::Attach { .. },
            ) => 69,
            Self::Trace(TraceError::NoSuchPid(_) | TraceError::RingSize(_) | TraceError::Library(_)) => 2,
            Self::Trace(TraceError::Store(StoreError::NotIngero { .. }))
            | Self::Store(StoreError::NotIngero { .. }) => 2,
            Self::Trace(TraceError::Store(_)) | Self::Store(_) => 73,
            Self::Query(QueryError::Timeout(_) | QueryError::Busy | QueryError::Cancelled) => 1,
            Self::Query(_)
            | Self::BadInput(_)
            | Self::Merge(MergeError::Refused(_) | MergeError::Input { .. }) => 2,
            Self::Merge(MergeError::Output { .. }) => 73,
            Self::Listen(ListenError::Bind { .. }) => 1,
            Self::Listen(_) | Self::Tls(_) => 2,
            Self::Archive(ArchiveError::Write { .. }) => 73,
            Self::Archive(ArchiveError::Refused(_)) => 2,
            Self::Archive(ArchiveError::Sql(_)) => 1,
            Self::Trace(TraceError::Io(_)) | Self::Failed(_) => 1,
            Self::NoNodeAnswered(_) => 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_of_failure_has_its_code() {
        assert_eq!(CliError::from(TraceError::NotRoot).exit_code(), 77);
        assert_eq!(CliError::from(TraceError::NoSuchPid(1)).exit_code(), 2);
        assert_eq!(CliError::from(TraceError::NoBtf("/x".into())).exit_code(), 69);
        assert_eq!(CliError::from(ConfigError::NoHome).exit_code(), 78);
        assert_eq!(CliError::Failed("x".into()).exit_code(), 1);
        assert_eq!(
            CliError::from(ArchiveError::write("/a", "disk full")).exit_code(),
            73
        );
        assert_eq!(CliError::from(ArchiveError::Refused("x".into())).exit_code(), 2);
    }
}
