//! The node's SQLite store.
//!
//! One writer thread per database ([`writer`]), WAL journaling, batched
//! transactions; readers open with [`open_read`] and never block it. The schema ([`schema`]) is a public
//! contract. A database created under `sudo` is handed to the invoking user,
//! so they can query it without root.
//!
//! One tracer per database: [`lock_for_writing`] takes an `flock` on
//! `<db>.lock` (the holder's pid and start time inside), which the kernel
//! releases when the process ends, however it ends. A SQLite file that has
//! tables but no ingero `events` table is refused before a byte is written.

pub mod batch;
mod nccl;
pub mod schema;
pub mod writer;

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use rusqlite::{Connection, OpenFlags, params};

use crate::config::invoking_user;

/// What can go wrong with the node's database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The directory for a new database could not be created: check the
    /// path and its permissions (or pick another with `--db`).
    #[error("cannot create the database directory {path}: {source}")]
    CreateDir {
        /// The directory that could not be created.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The database could not be opened or set up for writing (permissions,
    /// a read-only file system, a file that is not a SQLite database).
    #[error("cannot write the database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A statement failed on an open database (disk full, corruption,
    /// another writer holding the lock past the busy timeout).
    #[error("database error while {context}: {source}")]
    Sql {
        /// What was being done, in words that complete "while ..."
        /// ("inserting events").
        context: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The file is a SQLite database of something else (it has tables but
    /// no ingero `events` table): ingero refuses to add its tables to it.
    #[error(
        "{path} is a SQLite database that is not ingero's (its tables: {tables}): pass --db a new file or an existing ingero database"
    )]
    NotIngero {
        /// The database file.
        path: PathBuf,
        /// Some of its tables, comma-separated.
        tables: String,
    },
    /// Another tracer is writing this database (it holds the lock file
    /// beside it); a second one would store every event twice.
    #[error(
        "{path} is already being written by another ingero trace ({holder}): stop that one first or pass a different --db"
    )]
    Locked {
        /// The database file.
        path: PathBuf,
        /// Who holds it, as written in the lock file ("pid 123, started ...").
        holder: String,
    },
    /// The lock file beside the database cannot be created or locked.
    #[error(
        "cannot create the lock file {path}: {source}; check the directory's permissions or pass a different --db"
    )]
    LockFile {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The writer thread is gone (it exited on an earlier error or
    /// panicked), so nothing more can be stored; the message says which.
    #[error("the database writer stopped: {0}")]
    WriterGone(String),
}

/// What one trace run records about itself in `sessions`.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo {
    /// Node name the events are stored under (`sessions.node`, `events.node`).
    pub node: String,
    /// When tracing started, Unix ns (`sessions.started_at`).
    pub started_at: i64,
    /// The machine's host name (`sessions.hostname`).
    pub hostname: String,
    /// Kernel release, as `uname -r` (`sessions.kernel`).
    pub kernel: String,
    /// Distribution name, `PRETTY_NAME` of `/etc/os-release` (`sessions.os_release`).
    pub os_release: String,
    /// CPU model name from `/proc/cpuinfo` (`sessions.cpu_model`).
    pub cpu_model: String,
    /// CPUs available to the agent (`sessions.cpu_cores`).
    pub cpu_cores: i64,
    /// Total memory in MiB (`sessions.mem_total`).
    pub mem_total_mb: i64,
    /// Traced pids, comma-separated; empty when not restricted to `--pid`
    /// (`sessions.pid_filter`).
    pub pid_filter: String,
    /// The command line as JSON, `{"argv": [...]}` (`sessions.flags`).
    pub flags: String,
    /// JSON array of the CUDA libraries probed at start (`sessions.libraries`);
    /// kept current by [`writer::SessionUpdate::libraries`].
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
    create_parent_dir(path)?;
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
    // Before anything that writes (even the journal mode is in the header).
    refuse_foreign(&conn, path)?;
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

/// Refuses a database that holds tables but no ingero `events` table (with
/// at least the original tracer's columns): someone else's data, which
/// ingero must not add its tables to.
fn refuse_foreign(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let sql = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect())
        .map_err(sql)?;
    if tables.is_empty() {
        return Ok(());
    }
    let ours = tables.iter().any(|t| t == "events")
        && ["timestamp", "pid", "tid", "source", "op", "duration"]
            .iter()
            .all(|c| schema::has_column(conn, "events", c).unwrap_or(false));
    if ours {
        return Ok(());
    }
    let mut shown: Vec<String> = tables
        .iter()
        .take(5)
        .map(|t| crate::text::sanitize(t, 64))
        .collect();
    if tables.len() > 5 {
        shown.push(format!("and {} more", tables.len() - 5));
    }
    Err(StoreError::NotIngero {
        path: path.to_path_buf(),
        tables: shown.join(", "),
    })
}

/// The exclusive right to write one database, held by one tracer: an
/// `flock` on `<db>.lock` beside it, which holds the holder's pid and start
/// time. The kernel releases it when the process ends, however it ends
/// (kill -9 included); the file itself stays.
#[derive(Debug)]
pub struct WriteLock {
    _file: std::fs::File,
}

/// The lock file of a database: `<db>.lock`.
#[must_use]
pub fn lock_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Takes the write lock of `db` (see [`WriteLock`]), or says who holds it.
pub fn lock_for_writing(db: &Path, started_at_ns: i64) -> Result<WriteLock, StoreError> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let path = lock_path(db);
    create_parent_dir(&path)?;
    let lock_err = |source| StoreError::LockFile {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(lock_err)?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(lock_err(err));
        }
        let mut text = String::new();
        let _ = (&file).take(256).read_to_string(&mut text);
        let holder = crate::text::sanitize(text.lines().next().unwrap_or("").trim(), 120);
        return Err(StoreError::Locked {
            path: db.to_path_buf(),
            holder: if holder.is_empty() {
                "a process that has not written its pid yet".into()
            } else {
                holder
            },
        });
    }
    let line = format!(
        "pid {}, started at {}\n",
        std::process::id(),
        crate::timewin::format_instant(started_at_ns)
    );
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(line.as_bytes()))
        .map_err(lock_err)?;
    give_to_invoking_user(&path);
    Ok(WriteLock { _file: file })
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

/// Creates the directory `path` goes in, if missing (handed to the
/// invoking user under sudo).
fn create_parent_dir(path: &Path) -> Result<(), StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        give_to_invoking_user(dir);
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_of_something_else_is_refused_and_left_alone() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("shop.db");
        Connection::open(&path)?.execute_batch("CREATE TABLE customers(id INTEGER, name TEXT)")?;
        let before = std::fs::read(&path)?;
        let err = open_for_writing(&path).expect_err("refused");
        assert!(matches!(err, StoreError::NotIngero { .. }), "{err}");
        assert!(err.to_string().contains("customers"), "{err}");
        assert_eq!(std::fs::read(&path)?, before, "not one byte changed");
        // An empty file and an ingero database are accepted.
        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"")?;
        drop(open_for_writing(&empty)?);
        drop(open_for_writing(&empty)?);
        Ok(())
    }

    #[test]
    fn the_write_lock_is_exclusive_and_names_its_holder() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("t.db");
        let first = lock_for_writing(&db, 0)?;
        // flock is per open file description: a second open in this process conflicts too.
        let err = lock_for_writing(&db, 0).expect_err("taken");
        let text = err.to_string();
        assert!(text.contains(&format!("pid {}", std::process::id())), "{text}");
        drop(first);
        drop(lock_for_writing(&db, 0)?);
        Ok(())
    }
}
