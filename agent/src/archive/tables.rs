//! The archived tables: for each, its Parquet columns (names and meanings
//! of the SQLite contract, each at its natural width), how its rows are
//! partitioned, and the SQL that reads them from any database, old or
//! merged.
//!
//! Invariants: a column's name is its SQLite name; a column that is `NOT
//! NULL` in the contract is a required Parquet field; the `node` column is
//! never stored in a file, it is the `node=` partition of the path (engines
//! add it back as a column from the path, as Hive, Spark and Trino expect
//! of partition columns). A database that lacks a column (an older
//! schema) reads it as its default (`0`, `''`) when required, else NULL.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use rusqlite::Connection;

use crate::store::schema::{has_column, table_exists};

/// The Parquet (Arrow) type of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// UTF-8 string.
    Text,
    /// INT32 annotated INT(16, signed): source and operation ids.
    I16,
    /// INT32: pids, tids, ranks, CPUs, return codes.
    I32,
    /// INT64: nanoseconds, bytes, handles, hashes, 64-bit arguments.
    I64,
    /// DOUBLE.
    F64,
    /// INT64 annotated TIMESTAMP(NANOS, isAdjustedToUTC = true).
    TimestampNs,
}

impl Kind {
    fn data_type(self) -> DataType {
        match self {
            Self::Text => DataType::Utf8,
            Self::I16 => DataType::Int16,
            Self::I32 => DataType::Int32,
            Self::I64 => DataType::Int64,
            Self::F64 => DataType::Float64,
            Self::TimestampNs => DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        }
    }

    /// The SQL literal a missing required column reads as.
    fn default_sql(self) -> &'static str {
        match self {
            Self::Text => "''",
            _ => "0",
        }
    }
}

/// One archived column.
#[derive(Debug, Clone, Copy)]
pub struct Col {
    /// Its name, as in SQLite.
    pub name: &'static str,
    /// Its Parquet type.
    pub kind: Kind,
    /// `NOT NULL` in the contract: a required field; a row holding NULL
    /// there is skipped and counted.
    pub required: bool,
}

const fn req(name: &'static str, kind: Kind) -> Col {
    Col {
        name,
        kind,
        required: true,
    }
}

const fn opt(name: &'static str, kind: Kind) -> Col {
    Col {
        name,
        kind,
        required: false,
    }
}

/// Where a table's rows go in the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `table=T/node=N/date=YYYY-MM-DD/hour=HH/`, by the UTC hour of the
    /// row's `timestamp`; archived incrementally by rowid.
    Hourly,
    /// `table=T/node=N/`: small tables, written whole (one file per node,
    /// replaced when rewritten).
    Snapshot,
}

/// An archived table.
#[derive(Debug, Clone, Copy)]
pub struct TableSpec {
    /// Its name, as in SQLite and in `table=` of the path.
    pub name: &'static str,
    /// Its columns, in the contract's order, `node` left out.
    pub cols: &'static [Col],
    /// How its rows are partitioned.
    pub layout: Layout,
    /// The table has no `node` column (the catalogs): one copy of it goes
    /// under every node of the database.
    pub per_node_copy: bool,
    /// The column that names the session of a row, for the files' metadata.
    pub session_col: Option<&'static str>,
}

use Kind::{F64, I16, I32, I64, Text, TimestampNs};

/// `events`.
pub const EVENTS: TableSpec = TableSpec {
    name: "events",
    cols: &[
        req("id", Text),
        req("timestamp", TimestampNs),
        req("pid", I32),
        req("tid", I32),
        req("source", I16),
        req("op", I16),
        req("duration", I64),
        req("gpu_id", I32),
        req("arg0", I64),
        req("arg1", I64),
        req("ret_code", I32),
        req("stack_hash", I64),
        opt("rank", I32),
        opt("local_rank", I32),
        opt("world_size", I32),
        opt("stream", I64),
        opt("arg2", I64),
        opt("cpu", I32),
        opt("session_id", I64),
    ],
    layout: Layout::Hourly,
    per_node_copy: false,
    session_col: Some("session_id"),
};

/// `nccl_collectives`.
pub const NCCL_COLLECTIVES: TableSpec = TableSpec {
    name: "nccl_collectives",
    cols: &[
        opt("session_id", I64),
        req("timestamp", TimestampNs),
        req("duration", I64),
        req("pid", I32),
        req("tid", I32),
        req("op", I16),
        opt("comm_id", I64),
        req("handle", I64),
        req("seq", I64),
        opt("group_id", I64),
        req("count", I64),
        req("datatype", I32),
        req("bytes", I64),
        opt("redop", I32),
        opt("peer", I32),
        req("stream", I64),
        req("ret_code", I32),
    ],
    layout: Layout::Hourly,
    per_node_copy: false,
    session_col: Some("session_id"),
};

/// `sources`.
pub const SOURCES: TableSpec = TableSpec {
    name: "sources",
    cols: &[req("id", I16), req("name", Text), req("description", Text)],
    layout: Layout::Snapshot,
    per_node_copy: true,
    session_col: None,
};

/// `ops`.
pub const OPS: TableSpec = TableSpec {
    name: "ops",
    cols: &[
        req("source_id", I16),
        req("op_id", I16),
        req("name", Text),
        req("description", Text),
    ],
    layout: Layout::Snapshot,
    per_node_copy: true,
    session_col: None,
};

/// `sessions`.
pub const SESSIONS: TableSpec = TableSpec {
    name: "sessions",
    cols: &[
        req("id", I64),
        req("started_at", I64),
        req("stopped_at", I64),
        req("gpu_model", Text),
        req("gpu_driver", Text),
        req("cpu_model", Text),
        req("cpu_cores", I32),
        req("mem_total", I64),
        req("kernel", Text),
        req("os_release", Text),
        req("cuda_ver", Text),
        req("python_ver", Text),
        req("ingero_ver", Text),
        req("pid_filter", Text),
        req("flags", Text),
        opt("rank", I32),
        opt("local_rank", I32),
        opt("world_size", I32),
        req("hostname", Text),
        req("libraries", Text),
        req("events_stored", I64),
        req("events_dropped", I64),
    ],
    layout: Layout::Snapshot,
    per_node_copy: false,
    session_col: Some("id"),
};

/// `process_names`.
pub const PROCESS_NAMES: TableSpec = TableSpec {
    name: "process_names",
    cols: &[req("pid", I32), req("name", Text), req("seen_at", I64)],
    layout: Layout::Snapshot,
    per_node_copy: false,
    session_col: None,
};

/// `causal_chains`.
pub const CAUSAL_CHAINS: TableSpec = TableSpec {
    name: "causal_chains",
    cols: &[
        req("id", Text),
        req("detected_at", I64),
        req("severity", Text),
        req("summary", Text),
        req("root_cause", Text),
        req("explanation", Text),
        req("recommendations", Text),
        req("cuda_op", Text),
        req("cuda_p99_us", I64),
        req("cuda_p50_us", I64),
        req("tail_ratio", F64),
        req("timeline", Text),
        opt("window_from", I64),
        opt("window_to", I64),
        opt("peak_at", I64),
    ],
    layout: Layout::Snapshot,
    per_node_copy: false,
    session_col: None,
};

/// `nccl_comms`.
pub const NCCL_COMMS: TableSpec = TableSpec {
    name: "nccl_comms",
    cols: &[
        opt("session_id", I64),
        req("pid", I32),
        req("comm_id", I64),
        req("handle", I64),
        opt("rank", I32),
        opt("size", I32),
        opt("world_rank", I32),
        opt("parent_id", I64),
        opt("color", I32),
        opt("split_key", I32),
        req("created", I64),
        opt("destroyed", I64),
        req("how", Text),
    ],
    layout: Layout::Snapshot,
    per_node_copy: false,
    session_col: Some("session_id"),
};

/// Every archived table: the hourly ones first.
pub const TABLES: &[TableSpec] = &[
    EVENTS,
    NCCL_COLLECTIVES,
    SOURCES,
    OPS,
    SESSIONS,
    PROCESS_NAMES,
    CAUSAL_CHAINS,
    NCCL_COMMS,
];

impl TableSpec {
    /// The Arrow schema of its files (without `node`).
    #[must_use]
    pub fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.cols
                .iter()
                .map(|c| Field::new(c.name, c.kind.data_type(), !c.required))
                .collect::<Vec<_>>(),
        ))
    }

    /// Position of a column among [`Self::cols`].
    #[must_use]
    pub fn position(&self, name: &str) -> Option<usize> {
        self.cols.iter().position(|c| c.name == name)
    }

    /// The SELECT that reads this table from `conn` as the sink takes it:
    /// the node (NULL or '' when unknown; `forced_node` fills it), the
    /// rowid, then [`Self::cols`]. `None` when the database has no such
    /// table. `filter` and `order` are appended as they are.
    pub fn select(
        &self,
        conn: &Connection,
        forced_node: Option<&str>,
        filter: &str,
        order: &str,
    ) -> rusqlite::Result<Option<String>> {
        if !table_exists(conn, self.name)? {
            return Ok(None);
        }
        let forced = forced_node.map_or_else(|| "''".to_owned(), sql_quote);
        let node = if has_column(conn, self.name, "node")? {
            format!("CASE WHEN typeof(node) = 'text' AND node <> '' THEN node ELSE {forced} END")
        } else {
            forced
        };
        let mut cols = vec![node.clone(), "rowid".to_owned()];
        for c in self.cols {
            let present = has_column(conn, self.name, c.name)?;
            cols.push(match (present, c.name) {
                // Ids are '{node}:{seq}'; another tracer's integer ids get
                // their node in front, as merge does.
                (true, "id") if self.name == "events" => format!(
                    "CASE WHEN instr(CAST(id AS TEXT), ':') > 0 THEN CAST(id AS TEXT) ELSE ({node}) || ':' || CAST(id AS TEXT) END"
                ),
                (true, name) => format!("\"{name}\""),
                (false, _) if c.required => c.kind.default_sql().to_owned(),
                (false, _) => "NULL".to_owned(),
            });
        }
        Ok(Some(format!(
            "SELECT {} FROM {} {filter} {order}",
            cols.join(", "),
            self.name
        )))
    }
}

/// A string as an SQL literal.
pub(crate) fn sql_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_archived_table_matches_the_sqlite_contract() -> rusqlite::Result<()> {
        let conn = Connection::open_in_memory()?;
        crate::store::schema::init(&conn).expect("schema");
        for t in TABLES {
            assert!(crate::store::schema::TABLES.contains(&t.name), "{}", t.name);
            // Required: NOT NULL, or part of the primary key (which the
            // writer always fills).
            let mut stmt = conn.prepare("SELECT name, \"notnull\" OR pk > 0 FROM pragma_table_info(?1)")?;
            let sqlite: Vec<(String, bool)> = stmt
                .query_map([t.name], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let expected: Vec<(String, bool)> = sqlite.into_iter().filter(|(n, _)| n != "node").collect();
            let ours: Vec<(String, bool)> = t.cols.iter().map(|c| (c.name.to_owned(), c.required)).collect();
            assert_eq!(ours, expected, "columns of {}", t.name);
            let sql = t.select(&conn, None, "", "")?.expect("table exists");
            conn.prepare(&sql)?;
        }
        Ok(())
    }

    #[test]
    fn an_older_database_reads_missing_columns_as_their_defaults() -> rusqlite::Result<()> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch(
            "CREATE TABLE events(id INTEGER PRIMARY KEY, timestamp INTEGER, pid INTEGER, tid INTEGER,
             source INTEGER, op INTEGER, duration INTEGER, gpu_id INTEGER, arg0 INTEGER, arg1 INTEGER,
             ret_code INTEGER, stack_hash INTEGER);
             INSERT INTO events VALUES (7, 100, 1, 2, 4, 1, 10, 0, 0, 0, 0, 0);",
        )?;
        let sql = EVENTS.select(&conn, Some("old-node"), "", "")?.expect("exists");
        let (node, id, cpu): (String, String, Option<i64>) =
            conn.query_row(&sql, [], |r| Ok((r.get(0)?, r.get(2)?, r.get(2 + 17)?)))?;
        assert_eq!(
            (node.as_str(), id.as_str(), cpu),
            ("old-node", "old-node:7", None)
        );
        assert!(NCCL_COMMS.select(&conn, None, "", "")?.is_none());
        Ok(())
    }
}
