//! The node's SQLite store.
//!
//! One writer thread per database ([`writer`]), WAL journaling, batched
//! transactions; readers open with [`open_read`] and never block it. The schema ([`schema`]) is a public
//! contract. A database created under `sudo` is handed to the invoking user,
//! so they can query it without root.

pub mod schema;
pub mod writer;

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use rusqlite::{Connection, OpenFlags, params};

use crate::config::invoking_user;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the database directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot write the database {path}: {source}")]
    Open { path: PathBuf, source: rusqlite::Error },
    #[error("database error while {context}: {source}")]
    Sql {
        context: &'static str,
        source: rusqlite::Error,
    },
    #[error("the database writer stopped: {0}")]
    WriterGone(String),
}

/// What one trace run records about itself in `sessions`.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo {
    pub node: String,
    pub started_at: i64,
    pub hostname: String,
    pub kernel: String,
    pub os_release: String,
    pub cpu_model: String,
    pub cpu_cores: i64,
    pub mem_total_mb: i64,
    pub pid_filter: String,
    pub flags: String,
    pub libraries: String,
}

/// Opens (creating if needed) a database for writing: WAL, incremental
/// auto-vacuum, schema created or upgraded. Fails with the path in the
/// message if the file or its directory cannot be written.
pub fn open_for_writing(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        give_to_invoking_user(dir);
    }
    let existed = path.exists();
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(open_err)?;
    if !existed {
        // Must precede the first table: lets pruning give pages back.
        conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL")
            .map_err(open_err)?;
    }
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .map_err(open_err)?;
    conn.execute_batch("PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE; ROLLBACK;")
        .map_err(open_err)?;
    schema::init(&conn)?;
    if !existed {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            give_to_invoking_user(Path::new(&p));
        }
    }
    Ok(conn)
}

/// Opens a database for reading, the one way every reader does: read-only
/// (SQLite refuses any write), no mutex (one thread per connection), and a
/// busy timeout so a reader waits out the writer's checkpoint instead of
/// failing. In WAL mode readers never block the writer.
pub fn open_read(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Under sudo, hands a file we created to the user who ran sudo.
fn give_to_invoking_user(path: &Path) {
    let (uid, gid) = invoking_user();
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 && uid != 0 {
        let _ = std::os::unix::fs::chown(path, Some(uid), Some(gid));
        if path.is_dir() {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755));
        }
    }
}

/// Inserts the session row and returns its id.
pub fn create_session(conn: &Connection, s: &SessionInfo) -> Result<i64, StoreError> {
    conn.execute(
        "INSERT INTO sessions(started_at, node, hostname, kernel, os_release, cpu_model, cpu_cores,
             mem_total, ingero_ver, pid_filter, flags, libraries)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            s.started_at,
            s.node,
            s.hostname,
            s.kernel,
            s.os_release,
            s.cpu_model,
            s.cpu_cores,
            s.mem_total_mb,
            env!("CARGO_PKG_VERSION"),
            s.pid_filter,
            s.flags,
            s.libraries,
        ],
    )
    .map_err(|source| StoreError::Sql {
        context: "recording the session",
        source,
    })?;
    Ok(conn.last_insert_rowid())
}
