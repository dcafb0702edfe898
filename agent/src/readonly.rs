//! Running user SQL so that it can only read, enforced by SQLite itself.
//!
//! The agent runs as root and executes SQL it receives (command line, HTTP
//! API, MCP), so string checks are not enough. Three independent layers:
//!
//! 1. the database is opened read-only (`SQLITE_OPEN_READ_ONLY`): SQLite
//!    refuses every write to it, whatever the statement;
//! 2. an authorizer allows only reading: `SELECT`, reading columns, calling
//!    functions (except `load_extension`), recursive CTEs and a short list of
//!    introspection pragmas with no value. `INSERT`, `UPDATE`, `DELETE`, DDL
//!    (even on TEMP), `ATTACH`, `DETACH`, transactions, savepoints,
//!    `VACUUM`, `ANALYZE`, virtual tables and pragma writes are denied while
//!    the statement is prepared, so they never run;
//! 3. a deadline: a progress handler interrupts a statement that runs past
//!    it (a huge recursive CTE, a cross join) or whose caller set a cancel
//!    flag (the API's client went away, the agent is stopping); a row cap
//!    and a byte cap ([`ReadOnlyDb::with_max_bytes`]) stop reading results,
//!    saying so (`truncated`), and no single value may exceed the byte cap.
//!
//! Rows can be handed over one at a time ([`ReadOnlyDb::query_each`]) so
//! a large answer is printed or encoded as it is read. A database locked
//! by another process is [`QueryError::Busy`], not bad input.
//!
//! Extension loading is compiled out (rusqlite without `load_extension`).
//! A rejected statement gets an error that names what was denied.

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use rusqlite::{
    Connection,
    hooks::{AuthAction, AuthContext, Authorization},
    types::ValueRef,
};
use serde::Serialize;

/// Pragmas that describe a table or index named in their argument.
const PRAGMAS_ON_A_TABLE: &[&str] = &[
    "table_info",
    "table_xinfo",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
];
/// Pragmas that only report, allowed without a value (with one they write).
const PRAGMAS_THAT_REPORT: &[&str] = &[
    "table_list",
    "function_list",
    "collation_list",
    "schema_version",
    "user_version",
    "page_count",
    "page_size",
];

/// Why a read-only query did not give rows.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The database could not be opened for reading (missing file,
    /// permissions, not a SQLite file): check the path (`--db`).
    #[error("cannot open the database {path} for reading: {source}")]
    Open {
        /// The database path, as shown to the user.
        path: String,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The file is a SQLite database without an `events` table.
    #[error("{path} has no events table: is it an ingero database?")]
    NotIngero {
        /// The database path, as shown to the user.
        path: String,
    },
    /// The statement tried something other than reading (a write, DDL,
    /// ATTACH, a pragma write, `load_extension`); the message names it.
    #[error("refused: {0} (queries are read-only)")]
    Denied(String),
    /// The statement ran past its deadline (the duration it carries) and was
    /// interrupted: narrow the query or raise the timeout.
    #[error(
        "the query ran past its {0:?} deadline and was interrupted; narrow it (WHERE, LIMIT) or raise --timeout"
    )]
    Timeout(Duration),
    /// Any other SQLite error: a syntax error, an unknown table or column,
    /// several statements at once; SQLite's message.
    #[error("SQL error: {0}")]
    Sql(String),
    /// The database is locked or busy (another process holds a lock that
    /// blocks reading): retry in a moment.
    #[error("the database is busy (locked by another process); retry in a moment")]
    Busy,
    /// The work was abandoned (its client went away, or the agent is
    /// stopping) and interrupted.
    #[error("the query was cancelled because its client went away or the agent is stopping")]
    Cancelled,
}

/// A query's result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueryResult {
    /// Column names, in the statement's order.
    pub columns: Vec<String>,
    /// Rows, one value per column: integers, floats, text, or null (blobs
    /// become `"<N bytes>"`, non-finite floats null).
    pub rows: Vec<Vec<serde_json::Value>>,
    /// True when rows were cut at the row limit.
    pub truncated: bool,
    /// Time spent preparing, running and reading the statement, in ms.
    pub elapsed_ms: f64,
}

/// Limits of one query.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest the statement may run before it is interrupted
    /// ([`QueryError::Timeout`]).
    pub timeout: Duration,
    /// Rows read at most; past it the result is cut and marked `truncated`.
    pub max_rows: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: crate::config::defaults::QUERY_TIMEOUT,
            max_rows: crate::config::defaults::QUERY_LIMIT,
        }
    }
}

/// A read-only connection with the authorizer installed.
#[derive(Debug)]
pub struct ReadOnlyDb {
    conn: Connection,
    denied: Arc<Mutex<Option<String>>>,
    deadline: Arc<Mutex<Option<Instant>>>,
    cancel: Arc<Vec<Arc<AtomicBool>>>,
    max_bytes: usize,
}

/// Cost in answer bytes of one value, as JSON (an upper bound for text
/// without escapes; close enough to cap memory and the answer).
fn json_size(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::String(s) => s.len() + 3,
        serde_json::Value::Number(_) => 21,
        _ => 5,
    }
}

/// A refusal that a later, more precise one replaces (SQLite reports the
/// write to its schema table before the statement that causes it).
const SCHEMA_CHANGE: &str = "changing the schema (CREATE, DROP, ALTER)";

/// Why running a statement stopped: SQLite, or a callback of the caller.
enum RunError {
    Sql(rusqlite::Error),
    Callback(QueryError),
}

impl From<rusqlite::Error> for RunError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

/// What one authorizer action is, in words, for a refusal.
fn action_words(action: &AuthAction<'_>) -> String {
    match action {
        AuthAction::CreateIndex { index_name, .. } => format!("CREATE INDEX {index_name}"),
        AuthAction::CreateTable { table_name } => format!("CREATE TABLE {table_name}"),
        AuthAction::CreateTempIndex { index_name, .. } => format!("CREATE TEMP INDEX {index_name}"),
        AuthAction::CreateTempTable { table_name } => format!("CREATE TEMP TABLE {table_name}"),
        AuthAction::CreateTempTrigger { trigger_name, .. } => format!("CREATE TEMP TRIGGER {trigger_name}"),
        AuthAction::CreateTempView { view_name } => format!("CREATE TEMP VIEW {view_name}"),
        AuthAction::CreateTrigger { trigger_name, .. } => format!("CREATE TRIGGER {trigger_name}"),
        AuthAction::CreateView { view_name } => format!("CREATE VIEW {view_name}"),
        AuthAction::DropIndex { index_name, .. } | AuthAction::DropTempIndex { index_name, .. } => {
            format!("DROP INDEX {index_name}")
        }
        AuthAction::DropTable { table_name } | AuthAction::DropTempTable { table_name } => {
            format!("DROP TABLE {table_name}")
        }
        AuthAction::DropTrigger { trigger_name, .. } | AuthAction::DropTempTrigger { trigger_name, .. } => {
            format!("DROP TRIGGER {trigger_name}")
        }
        AuthAction::DropView { view_name } | AuthAction::DropTempView { view_name } => {
            format!("DROP VIEW {view_name}")
        }
        AuthAction::AlterTable { table_name, .. } => format!("ALTER TABLE {table_name}"),
        AuthAction::Reindex { .. } => "REINDEX".into(),
        AuthAction::Analyze { .. } => "ANALYZE".into(),
        AuthAction::CreateVtable { table_name, .. } => format!("CREATE VIRTUAL TABLE {table_name}"),
        AuthAction::DropVtable { table_name, .. } => format!("DROP VIRTUAL TABLE {table_name}"),
        _ => "a statement that is not a read".into(),
    }
}

/// What the authorizer says about one action.
pub fn authorize(action: &AuthAction<'_>) -> Result<(), String> {
    match action {
        AuthAction::Select | AuthAction::Read { .. } | AuthAction::Recursive => Ok(()),
        AuthAction::Function { function_name } => {
            if function_name.eq_ignore_ascii_case("load_extension") {
                Err("load_extension() is not allowed".into())
            } else {
                Ok(())
            }
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let name = pragma_name.to_ascii_lowercase();
            let allowed = PRAGMAS_ON_A_TABLE.contains(&name.as_str())
                || (PRAGMAS_THAT_REPORT.contains(&name.as_str()) && pragma_value.is_none());
            if allowed {
                Ok(())
            } else {
                Err(format!("PRAGMA {pragma_name} is not allowed"))
            }
        }
        AuthAction::Attach { .. } => Err("ATTACH is not allowed".into()),
        AuthAction::Detach { .. } => Err("DETACH is not allowed".into()),
        AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name }
            if table_name.to_ascii_lowercase().starts_with("sqlite_") =>
        {
            Err(SCHEMA_CHANGE.into())
        }
        AuthAction::Insert { table_name } => Err(format!("INSERT into {table_name}")),
        AuthAction::Update { table_name, .. } => Err(format!("UPDATE of {table_name}")),
        AuthAction::Delete { table_name } => Err(format!("DELETE from {table_name}")),
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
            Err("transactions are not allowed".into())
        }
        other => Err(format!("{} is not allowed", action_words(other))),
    }
}

impl ReadOnlyDb {
    /// Opens `path` read-only. `window` (Unix ns, inclusive) shadows the
    /// `events` table with a TEMP view over that time range, so any query
    /// is filtered transparently.
    pub fn open(path: &Path, window: Option<(i64, i64)>) -> Result<Self, QueryError> {
        Self::open_cancellable(path, window, Vec::new())
    }

    /// Like [`ReadOnlyDb::open`], and any statement is interrupted
    /// ([`QueryError::Cancelled`]) as soon as one of `cancel` is set.
    pub fn open_cancellable(
        path: &Path,
        window: Option<(i64, i64)>,
        cancel: Vec<Arc<AtomicBool>>,
    ) -> Result<Self, QueryError> {
        let shown = path.display().to_string();
        let open_err = |source: rusqlite::Error| match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => QueryError::Busy,
            _ => QueryError::Open {
                path: shown.clone(),
                source,
            },
        };
        if !path.is_file() {
            return Err(QueryError::Open {
                path: shown.clone(),
                source: rusqlite::Error::InvalidPath(path.to_path_buf()),
            });
        }
        let conn = crate::store::open_read(path).map_err(open_err)?;
        let has_events = crate::store::schema::table_exists(&conn, "events").map_err(open_err)?;
        if !has_events {
            return Err(QueryError::NotIngero { path: shown });
        }
        // Keep sorts of huge results on disk, not in memory. (Set before any
        // TEMP object: changing temp_store drops them.)
        conn.execute_batch("PRAGMA temp_store = FILE; PRAGMA cache_size = -16000")
            .map_err(open_err)?;
        if let Some((from, to)) = window {
            // Created before the authorizer exists; TEMP objects live in the
            // connection's own temp database, never in the file.
            conn.execute_batch(&format!(
                "CREATE TEMP VIEW events AS SELECT * FROM main.events WHERE timestamp BETWEEN {from} AND {to}"
            ))
            .map_err(open_err)?;
        }
        Self::guard(conn, cancel).map_err(open_err)
    }

    /// An in-memory database with one table `name` holding `rows` under
    /// `columns` (duplicate names get a `_2`, `_3` suffix), guarded like a
    /// file: for queries over rows gathered from elsewhere (`--merge`).
    pub fn from_rows(
        name: &str,
        columns: &[String],
        rows: &[Vec<serde_json::Value>],
    ) -> Result<Self, QueryError> {
        let err = |e: rusqlite::Error| QueryError::Sql(format!("cannot build the {name} table: {e}"));
        let conn = Connection::open_in_memory().map_err(err)?;
        let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        let quoted: Vec<String> = columns
            .iter()
            .map(|c| {
                let n = seen.entry(c.to_ascii_lowercase()).or_insert(0);
                *n += 1;
                let unique = if *n == 1 { c.clone() } else { format!("{c}_{n}") };
                format!("\"{}\"", unique.replace('"', "\"\""))
            })
            .collect();
        conn.execute_batch(&format!("CREATE TABLE \"{name}\" ({})", quoted.join(", ")))
            .map_err(err)?;
        {
            let placeholders = vec!["?"; columns.len()].join(", ");
            let mut insert = conn
                .prepare(&format!("INSERT INTO \"{name}\" VALUES ({placeholders})"))
                .map_err(err)?;
            conn.execute_batch("BEGIN").map_err(err)?;
            for row in rows {
                let values = row.iter().map(from_json);
                insert.execute(rusqlite::params_from_iter(values)).map_err(err)?;
            }
            conn.execute_batch("COMMIT").map_err(err)?;
        }
        Self::guard(conn, Vec::new()).map_err(err)
    }

    /// Installs the authorizer, the deadline and the SQL length limit.
    fn guard(mut conn: Connection, cancel: Vec<Arc<AtomicBool>>) -> rusqlite::Result<Self> {
        conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_SQL_LENGTH, 100_000)?;
        let denied = Arc::new(Mutex::new(None));
        let hook_denied = Arc::clone(&denied);
        conn.authorizer(Some(move |ctx: AuthContext<'_>| match authorize(&ctx.action) {
            Ok(()) => Authorization::Allow,
            Err(why) => {
                if let Ok(mut d) = hook_denied.lock()
                    && d.as_deref().is_none_or(|first| first == SCHEMA_CHANGE)
                {
                    *d = Some(why);
                }
                Authorization::Deny
            }
        }))?;
        let deadline: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let hook_deadline = Arc::clone(&deadline);
        let cancel = Arc::new(cancel);
        let hook_cancel = Arc::clone(&cancel);
        conn.progress_handler(
            1_000,
            Some(move || {
                hook_cancel.iter().any(|c| c.load(Ordering::Relaxed))
                    || hook_deadline
                        .lock()
                        .ok()
                        .and_then(|d| *d)
                        .is_some_and(|d| Instant::now() > d)
            }),
        )?;
        Ok(Self {
            conn,
            denied,
            deadline,
            cancel,
            max_bytes: usize::MAX,
        })
    }

    /// Caps the bytes of an answer: rows past `max_bytes` (counted as JSON)
    /// are cut and the result marked `truncated`; SQLite refuses to build a
    /// single string or blob larger than that.
    #[must_use]
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        let limit = i32::try_from(max_bytes).unwrap_or(i32::MAX).max(1024);
        let _ = self
            .conn
            .set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, limit);
        self.max_bytes = max_bytes;
        self
    }

    /// Moves the running statement's deadline `by` later: time its caller
    /// spent waiting (for a slow reader of the answer, with the statement
    /// paused) is not time the statement ran. Callable from a
    /// [`ReadOnlyDb::query_each`] callback; nothing when no statement runs.
    pub fn postpone_deadline(&self, by: Duration) {
        if let Ok(mut d) = self.deadline.lock()
            && let Some(d) = d.as_mut()
        {
            *d += by;
        }
    }

    /// Runs one statement within `limits`.
    pub fn query(&self, sql: &str, limits: Limits) -> Result<QueryResult, QueryError> {
        let mut columns = Vec::new();
        let mut rows = Vec::new();
        let (truncated, elapsed_ms) = self.query_each(
            sql,
            limits,
            |c| {
                columns = c.to_vec();
                Ok(())
            },
            |row| {
                rows.push(row);
                Ok(())
            },
        )?;
        Ok(QueryResult {
            columns,
            rows,
            truncated,
            elapsed_ms,
        })
    }

    /// Runs one statement within `limits`, handing over the column names
    /// once and then each row as it is read (nothing is kept), so a large
    /// answer can be printed as it comes. Returns whether rows were cut and
    /// the elapsed ms. An error of a callback (writing failed) stops it.
    pub fn query_each(
        &self,
        sql: &str,
        limits: Limits,
        mut on_columns: impl FnMut(&[String]) -> Result<(), QueryError>,
        mut on_row: impl FnMut(Vec<serde_json::Value>) -> Result<(), QueryError>,
    ) -> Result<(bool, f64), QueryError> {
        let start = Instant::now();
        if let Ok(mut d) = self.denied.lock() {
            *d = None;
        }
        if let Ok(mut d) = self.deadline.lock() {
            *d = Some(start + limits.timeout);
        }
        let mut failed = None;
        let result = self.run(sql, limits, &mut on_columns, &mut |row| {
            on_row(row).map_err(|e| {
                failed = Some(e);
                rusqlite::Error::InvalidQuery
            })
        });
        if let Ok(mut d) = self.deadline.lock() {
            *d = None;
        }
        if let Some(e) = failed {
            return Err(e);
        }
        let truncated = result.map_err(|e| match e {
            RunError::Callback(e) => e,
            RunError::Sql(e) => self.explain_error(&e, limits.timeout),
        })?;
        Ok((truncated, start.elapsed().as_secs_f64() * 1e3))
    }

    fn run(
        &self,
        sql: &str,
        limits: Limits,
        on_columns: &mut dyn FnMut(&[String]) -> Result<(), QueryError>,
        on_row: &mut dyn FnMut(Vec<serde_json::Value>) -> rusqlite::Result<()>,
    ) -> Result<bool, RunError> {
        let mut stmt = self.conn.prepare(sql)?;
        let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
        on_columns(&columns).map_err(RunError::Callback)?;
        let n = columns.len();
        let mut count = 0usize;
        let mut bytes = columns.iter().map(|c| c.len() + 3).sum::<usize>();
        let mut cursor = stmt.query([])?;
        while let Some(row) = cursor.next()? {
            if count == limits.max_rows {
                return Ok(true);
            }
            let values = (0..n)
                .map(|i| row.get_ref(i).map(to_json))
                .collect::<Result<Vec<_>, _>>()?;
            bytes = bytes.saturating_add(values.iter().map(json_size).sum::<usize>() + 3);
            if bytes > self.max_bytes {
                return Ok(true);
            }
            on_row(values)?;
            count += 1;
        }
        Ok(false)
    }

    fn explain_error(&self, e: &rusqlite::Error, timeout: Duration) -> QueryError {
        let denied = self.denied.lock().ok().and_then(|mut d| d.take());
        if let Some(why) = denied {
            return QueryError::Denied(why);
        }
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::OperationInterrupted
                    && self.cancel.iter().any(|c| c.load(Ordering::Relaxed)) =>
            {
                QueryError::Cancelled
            }
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::OperationInterrupted => {
                QueryError::Timeout(timeout)
            }
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                QueryError::Busy
            }
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::TooBig => QueryError::Sql(
                "a value is larger than an answer may be; select less (substr, length) or raise the answer cap".into(),
            ),
            rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ReadOnly => {
                QueryError::Denied("the database is opened read-only".into())
            }
            rusqlite::Error::MultipleStatement => QueryError::Sql("send one statement at a time".into()),
            _ => QueryError::Sql(e.to_string()),
        }
    }

    /// The underlying connection (read-only, authorizer installed).
    #[must_use]
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

fn from_json(v: &serde_json::Value) -> rusqlite::types::Value {
    use rusqlite::types::Value as V;
    match v {
        serde_json::Value::Null => V::Null,
        serde_json::Value::Bool(b) => V::Integer(i64::from(*b)),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map_or_else(|| V::Real(n.as_f64().unwrap_or(f64::NAN)), V::Integer),
        serde_json::Value::String(t) => V::Text(t.clone()),
        other => V::Text(other.to_string()),
    }
}

fn to_json(v: ValueRef<'_>) -> serde_json::Value {
    match v {
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(i) => i.into(),
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
        ValueRef::Blob(b) => format!("<{} bytes>", b.len()).into(),
    }
}

#[cfg(test)]
mod tests;
