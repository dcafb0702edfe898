//! The database schema: a public contract. Users' queries, other tools and
//! older databases depend on these tables and columns, so changes only add
//! (new tables, new trailing columns) and never rename or renumber.
//!
//! `events` starts with the columns of the original ingero tracer, in its
//! order, followed by this tracer's additions. Lookup tables (`sources`,
//! `ops`, `schema_info`) make every database self-describing.

use agent_common::catalog::{OPS, SOURCES};
use rusqlite::{Connection, params};

use super::StoreError;

/// Value of `schema_info.version`.
pub const SCHEMA_VERSION: &str = "1";

/// `causal_chains`, also created alone in other tracers' databases.
pub const CAUSAL_CHAINS: &str = "CREATE TABLE IF NOT EXISTS causal_chains(
        id TEXT PRIMARY KEY,
        detected_at INTEGER NOT NULL,
        severity TEXT NOT NULL,
        summary TEXT NOT NULL,
        root_cause TEXT NOT NULL,
        explanation TEXT NOT NULL,
        recommendations TEXT NOT NULL DEFAULT '[]',
        cuda_op TEXT NOT NULL DEFAULT '',
        cuda_p99_us INTEGER NOT NULL DEFAULT 0,
        cuda_p50_us INTEGER NOT NULL DEFAULT 0,
        tail_ratio REAL NOT NULL DEFAULT 0,
        timeline TEXT NOT NULL DEFAULT '[]',
        node TEXT NOT NULL DEFAULT '',
        window_from INTEGER,
        window_to INTEGER,
        peak_at INTEGER
)";

/// `archive_state`: how far `ingero trace --archive` has archived each
/// table into each archive directory (see `archive::live`). `token` names
/// this database's files in the archive.
pub const ARCHIVE_STATE: &str = "CREATE TABLE IF NOT EXISTS archive_state(
        dir TEXT NOT NULL,
        tbl TEXT NOT NULL,
        token TEXT NOT NULL,
        last_rowid INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY(dir, tbl)
)";

/// Tables and indexes, in creation order. `IF NOT EXISTS` everywhere:
/// opening an existing database is the same call as creating one.
pub const DDL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS schema_info(
         key TEXT PRIMARY KEY,
         value TEXT NOT NULL
     )",
    "CREATE TABLE IF NOT EXISTS sources(
         id INTEGER PRIMARY KEY,
         name TEXT NOT NULL,
         description TEXT NOT NULL
     )",
    "CREATE TABLE IF NOT EXISTS ops(
         source_id INTEGER NOT NULL,
         op_id INTEGER NOT NULL,
         name TEXT NOT NULL,
         description TEXT NOT NULL,
         PRIMARY KEY(source_id, op_id)
     )",
    "CREATE TABLE IF NOT EXISTS events(
         id TEXT PRIMARY KEY,
         timestamp INTEGER NOT NULL,
         pid INTEGER NOT NULL,
         tid INTEGER NOT NULL,
         source INTEGER NOT NULL,
         op INTEGER NOT NULL,
         duration INTEGER NOT NULL,
         gpu_id INTEGER NOT NULL DEFAULT 0,
         arg0 INTEGER NOT NULL DEFAULT 0,
         arg1 INTEGER NOT NULL DEFAULT 0,
         ret_code INTEGER NOT NULL DEFAULT 0,
         stack_hash INTEGER NOT NULL DEFAULT 0,
         node TEXT NOT NULL DEFAULT '',
         rank INTEGER,
         local_rank INTEGER,
         world_size INTEGER,
         stream INTEGER,
         arg2 INTEGER,
         cpu INTEGER,
         session_id INTEGER
     )",
    "CREATE INDEX IF NOT EXISTS idx_events_timestamp ON events(timestamp)",
    "CREATE TABLE IF NOT EXISTS stack_traces(
         hash INTEGER PRIMARY KEY,
         ips TEXT NOT NULL,
         frames TEXT NOT NULL DEFAULT ''
     )",
    "CREATE TABLE IF NOT EXISTS sessions(
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         started_at INTEGER NOT NULL,
         stopped_at INTEGER NOT NULL DEFAULT 0,
         gpu_model TEXT NOT NULL DEFAULT '',
         gpu_driver TEXT NOT NULL DEFAULT '',
         cpu_model TEXT NOT NULL DEFAULT '',
         cpu_cores INTEGER NOT NULL DEFAULT 0,
         mem_total INTEGER NOT NULL DEFAULT 0,
         kernel TEXT NOT NULL DEFAULT '',
         os_release TEXT NOT NULL DEFAULT '',
         cuda_ver TEXT NOT NULL DEFAULT '',
         python_ver TEXT NOT NULL DEFAULT '',
         ingero_ver TEXT NOT NULL DEFAULT '',
         pid_filter TEXT NOT NULL DEFAULT '',
         flags TEXT NOT NULL DEFAULT '',
         node TEXT NOT NULL DEFAULT '',
         rank INTEGER,
         local_rank INTEGER,
         world_size INTEGER,
         hostname TEXT NOT NULL DEFAULT '',
         libraries TEXT NOT NULL DEFAULT '[]',
         events_stored INTEGER NOT NULL DEFAULT 0,
         events_dropped INTEGER NOT NULL DEFAULT 0
     )",
    "CREATE INDEX IF NOT EXISTS idx_sessions_started ON sessions(started_at)",
    "CREATE TABLE IF NOT EXISTS drops(
         session_id INTEGER NOT NULL,
         node TEXT NOT NULL,
         source INTEGER NOT NULL,
         op INTEGER NOT NULL,
         reason TEXT NOT NULL,
         count INTEGER NOT NULL,
         updated_at INTEGER NOT NULL,
         PRIMARY KEY(session_id, source, op, reason)
     )",
    "CREATE TABLE IF NOT EXISTS process_names(
         node TEXT NOT NULL DEFAULT '',
         pid INTEGER NOT NULL,
         name TEXT NOT NULL,
         seen_at INTEGER NOT NULL DEFAULT 0,
         PRIMARY KEY(node, pid)
     )",
    "CREATE TABLE IF NOT EXISTS event_aggregates(
         node TEXT NOT NULL DEFAULT '',
         bucket INTEGER NOT NULL,
         source INTEGER NOT NULL,
         op INTEGER NOT NULL,
         pid INTEGER NOT NULL DEFAULT 0,
         count INTEGER NOT NULL,
         sum_dur INTEGER NOT NULL,
         min_dur INTEGER NOT NULL,
         max_dur INTEGER NOT NULL,
         sum_arg0 INTEGER NOT NULL,
         PRIMARY KEY(node, bucket, source, op, pid)
     )",
    "CREATE TABLE IF NOT EXISTS system_snapshots(
         node TEXT NOT NULL DEFAULT '',
         timestamp INTEGER NOT NULL,
         cpu_pct REAL,
         mem_pct REAL,
         mem_avail INTEGER,
         swap_mb INTEGER,
         load_avg REAL,
         swap_in INTEGER,
         swap_out INTEGER,
         PRIMARY KEY(node, timestamp)
     )",
    CAUSAL_CHAINS,
    "CREATE INDEX IF NOT EXISTS idx_chains_detected_at ON causal_chains(detected_at)",
    "CREATE TABLE IF NOT EXISTS id_counters(
         node TEXT PRIMARY KEY,
         next_seq INTEGER NOT NULL
     )",
    "CREATE TABLE IF NOT EXISTS nccl_comms(
         node TEXT NOT NULL DEFAULT '',
         session_id INTEGER,
         pid INTEGER NOT NULL,
         comm_id INTEGER NOT NULL,
         handle INTEGER NOT NULL,
         rank INTEGER,
         size INTEGER,
         world_rank INTEGER,
         parent_id INTEGER,
         color INTEGER,
         split_key INTEGER,
         created INTEGER NOT NULL,
         destroyed INTEGER,
         how TEXT NOT NULL,
         PRIMARY KEY(node, pid, comm_id, created)
     )",
    "CREATE TABLE IF NOT EXISTS nccl_collectives(
         node TEXT NOT NULL DEFAULT '',
         session_id INTEGER,
         timestamp INTEGER NOT NULL,
         duration INTEGER NOT NULL,
         pid INTEGER NOT NULL,
         tid INTEGER NOT NULL,
         op INTEGER NOT NULL,
         comm_id INTEGER,
         handle INTEGER NOT NULL,
         seq INTEGER NOT NULL,
         group_id INTEGER,
         count INTEGER NOT NULL,
         datatype INTEGER NOT NULL,
         bytes INTEGER NOT NULL,
         redop INTEGER,
         peer INTEGER,
         stream INTEGER NOT NULL,
         ret_code INTEGER NOT NULL
     )",
    "CREATE INDEX IF NOT EXISTS idx_nccl_collectives_comm ON nccl_collectives(comm_id, seq)",
    "CREATE INDEX IF NOT EXISTS idx_nccl_collectives_timestamp ON nccl_collectives(timestamp)",
    ARCHIVE_STATE,
];

/// Columns this tracer adds to tables that older databases may lack.
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("events", "node", "TEXT NOT NULL DEFAULT ''"),
    ("events", "rank", "INTEGER"),
    ("events", "local_rank", "INTEGER"),
    ("events", "world_size", "INTEGER"),
    ("events", "stream", "INTEGER"),
    ("events", "arg2", "INTEGER"),
    ("events", "cpu", "INTEGER"),
    ("events", "session_id", "INTEGER"),
    ("sessions", "node", "TEXT NOT NULL DEFAULT ''"),
    ("sessions", "hostname", "TEXT NOT NULL DEFAULT ''"),
    ("sessions", "libraries", "TEXT NOT NULL DEFAULT '[]'"),
    ("sessions", "events_stored", "INTEGER NOT NULL DEFAULT 0"),
    ("sessions", "events_dropped", "INTEGER NOT NULL DEFAULT 0"),
    ("causal_chains", "node", "TEXT NOT NULL DEFAULT ''"),
    ("causal_chains", "window_from", "INTEGER"),
    ("causal_chains", "window_to", "INTEGER"),
    ("causal_chains", "peak_at", "INTEGER"),
];

/// Notes written to `schema_info` so a database explains itself.
const NOTES: &[(&str, &str)] = &[
    ("timestamp_unit", "nanoseconds (Unix epoch)"),
    ("duration_unit", "nanoseconds"),
    (
        "timestamp_note",
        "events.timestamp is the END of what is measured (a call's return, a thread's return to a CPU, an I/O completion); it started at timestamp - duration",
    ),
    (
        "id_note",
        "events.id is '{node}:{seq}', unique across merged databases",
    ),
    (
        "arg_note",
        "arg0/arg1/arg2/stream per operation: see ops.description",
    ),
    ("io_arg0", "bytes"),
    (
        "sched_note",
        "sched_switch: duration = off-CPU time of thread tid; arg0 = 1 when preempted while runnable; arg1 = pid of the task that took the CPU (names in process_names)",
    ),
    (
        "rank_note",
        "rank/local_rank/world_size come from the traced process's RANK, LOCAL_RANK, WORLD_SIZE environment",
    ),
    (
        "example_query",
        "SELECT node, source, count(*) AS cnt, avg(duration)/1000 AS avg_us FROM events GROUP BY node, source",
    ),
];

/// Creates missing tables, adds missing columns to older databases, and
/// (re)writes the lookup tables. Idempotent.
pub fn init(conn: &Connection) -> Result<(), StoreError> {
    let sql = |context: &'static str| move |source| StoreError::Sql { context, source };
    for statement in DDL {
        conn.execute_batch(statement).map_err(sql("creating tables"))?;
    }
    for (table, column, decl) in ADDED_COLUMNS {
        if !has_column(conn, table, column).map_err(sql("reading the schema"))? {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))
                .map_err(sql("adding a column"))?;
        }
    }
    let tx = conn
        .unchecked_transaction()
        .map_err(sql("writing lookup tables"))?;
    for s in SOURCES {
        tx.execute(
            "INSERT OR REPLACE INTO sources(id, name, description) VALUES (?1, ?2, ?3)",
            params![s.id, s.name, s.description],
        )
        .map_err(sql("writing sources"))?;
    }
    for o in OPS {
        tx.execute(
            "INSERT OR REPLACE INTO ops(source_id, op_id, name, description) VALUES (?1, ?2, ?3, ?4)",
            params![o.source, o.op, o.name, o.description],
        )
        .map_err(sql("writing ops"))?;
    }
    let producer = format!("ingero {}", env!("CARGO_PKG_VERSION"));
    for (key, value) in NOTES
        .iter()
        .copied()
        .chain([("version", SCHEMA_VERSION), ("producer", producer.as_str())])
    {
        tx.execute(
            "INSERT OR REPLACE INTO schema_info(key, value) VALUES (?1, ?2)",
            params![key, value],
        )
        .map_err(sql("writing schema_info"))?;
    }
    tx.commit().map_err(sql("writing lookup tables"))
}

/// Creates `causal_chains` if missing and adds this tracer's columns to an
/// older one (databases of other tracers).
pub fn ensure_chains_table(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(CAUSAL_CHAINS)?;
    for (table, column, decl) in ADDED_COLUMNS.iter().filter(|(t, _, _)| *t == "causal_chains") {
        if !has_column(conn, table, column)? {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
        }
    }
    Ok(())
}

/// Every table the schema defines (the contract's tables; anything else
/// in a database is another tool's).
pub const TABLES: &[&str] = &[
    "schema_info",
    "sources",
    "ops",
    "events",
    "stack_traces",
    "sessions",
    "drops",
    "process_names",
    "event_aggregates",
    "system_snapshots",
    "id_counters",
    "causal_chains",
    "nccl_comms",
    "nccl_collectives",
    "archive_state",
];

/// Whether a table or view named `name` exists (temporary ones included).
pub fn table_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT count(*) FROM (SELECT name, type FROM sqlite_master UNION ALL SELECT name, type FROM sqlite_temp_master)
         WHERE name = ?1 AND type IN ('table', 'view')",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

/// Whether `table` has `column`.
pub fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?;
    stmt.exists(params![table, column])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_list_is_the_schema() -> rusqlite::Result<()> {
        let conn = Connection::open_in_memory()?;
        init(&conn).expect("init");
        let mut stmt = conn.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?;
        let mut created: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        let mut listed: Vec<String> = TABLES.iter().map(|t| (*t).to_owned()).collect();
        created.sort();
        listed.sort();
        assert_eq!(created, listed);
        assert!(table_exists(&conn, "events")? && !table_exists(&conn, "nope")?);
        Ok(())
    }

    #[test]
    fn init_is_idempotent_and_self_describing() -> rusqlite::Result<()> {
        let conn = Connection::open_in_memory()?;
        init(&conn).expect("first init");
        init(&conn).expect("second init");
        let ops: i64 = conn.query_row("SELECT count(*) FROM ops", [], |r| r.get(0))?;
        assert_eq!(ops as usize, OPS.len());
        let name: String = conn.query_row(
            "SELECT name FROM ops WHERE source_id = 4 AND op_id = 1",
            [],
            |r| r.get(0),
        )?;
        assert_eq!(name, "cuLaunchKernel");
        // The query users already run elsewhere works verbatim.
        conn.prepare(
            "SELECT node, source, count(*) as cnt, avg(duration)/1000 as avg_us FROM events GROUP BY node, source",
        )?;
        Ok(())
    }

    #[test]
    fn old_events_table_gains_new_columns() -> rusqlite::Result<()> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(
            "CREATE TABLE events(id INTEGER PRIMARY KEY, timestamp INTEGER, pid INTEGER, tid INTEGER,
             source INTEGER, op INTEGER, duration INTEGER, gpu_id INTEGER, arg0 INTEGER, arg1 INTEGER,
             ret_code INTEGER, stack_hash INTEGER);",
        )?;
        init(&conn).expect("init upgrades");
        assert!(has_column(&conn, "events", "node")?);
        assert!(has_column(&conn, "events", "world_size")?);
        Ok(())
    }
}
