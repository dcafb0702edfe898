//! Copying one input database into the merged output: each known table
//! with its node and ids rewritten as the merge's invariants say (see the
//! parent module), tables this tool does not know copied as they are, a
//! `node` column added when they lack one.
//!
//! Invariant: an input is attached read-only as `src` for the length of
//! its copy and detached whatever happens.

use std::collections::BTreeSet;

use rusqlite::{Connection, params};

use super::{Input, MergeReport};
use crate::store;

/// Events copied per statement (progress is reported between chunks).
const CHUNK: i64 = 200_000;

/// Quotes an SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn sql_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Columns of `table` in schema `db`.
fn columns(conn: &Connection, db: &str, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1, ?2)")?;
    stmt.query_map(params![table, db], |r| r.get(0))?.collect()
}

/// Why an input could not be copied.
pub(super) enum CopyError {
    /// SQLite refused a statement.
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for CopyError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

/// Copies the database at `input.path` into `conn`'s main database.
pub(super) fn copy_input(
    conn: &Connection,
    input: &Input,
    allow_same_node: bool,
    report: &mut MergeReport,
    progress: &mut dyn FnMut(&str),
) -> Result<(), CopyError> {
    let uri = format!(
        "file:{}?mode=ro",
        input
            .path
            .display()
            .to_string()
            .replace('?', "%3f")
            .replace('#', "%23")
    );
    conn.execute("ATTACH DATABASE ?1 AS src", [uri])?;
    let result = copy_attached(conn, input, allow_same_node, report, progress);
    conn.execute_batch("DETACH DATABASE src")?;
    result
}

fn copy_attached(
    conn: &Connection,
    input: &Input,
    allow_same_node: bool,
    report: &mut MergeReport,
    progress: &mut dyn FnMut(&str),
) -> Result<(), CopyError> {
    let node_expr = |table: &str| -> Result<String, CopyError> {
        let has_node = columns(conn, "src", table)?.iter().any(|c| c == "node");
        Ok(match &input.forced {
            Some(name) if has_node => format!(
                "CASE WHEN typeof(t.node) = 'text' AND t.node <> '' THEN t.node ELSE {} END",
                sql_quote(name)
            ),
            Some(name) => sql_quote(name),
            None if has_node => "t.node".to_owned(),
            None => sql_quote(input.nodes.first().map_or("", String::as_str)),
        })
    };
    let src_tables: BTreeSet<String> = {
        let mut stmt = conn.prepare("SELECT name FROM src.sqlite_master WHERE type = 'table'")?;
        stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
    };
    let tx = conn.unchecked_transaction()?;

    // Sessions first: events refer to them by id.
    conn.execute_batch("DROP TABLE IF EXISTS temp.session_map; CREATE TEMP TABLE session_map(old INTEGER PRIMARY KEY, new INTEGER)")?;
    if src_tables.contains("sessions") {
        let src_cols = columns(conn, "src", "sessions")?;
        let ours = columns(conn, "main", "sessions")?;
        let shared: Vec<&String> = ours
            .iter()
            .filter(|c| *c != "id" && *c != "node" && src_cols.contains(c))
            .collect();
        let node = node_expr("sessions")?;
        let mut ids = conn.prepare("SELECT id FROM src.sessions ORDER BY id")?;
        let old_ids: Vec<i64> = ids.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        let cols = shared.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ");
        let sel = shared
            .iter()
            .map(|c| format!("t.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        for old in old_ids {
            conn.execute(
                &format!("INSERT INTO main.sessions({cols}, node) SELECT {sel}, {node} FROM src.sessions t WHERE t.id = ?1"),
                [old],
            )?;
            conn.execute(
                "INSERT INTO temp.session_map(old, new) VALUES (?1, ?2)",
                params![old, conn.last_insert_rowid()],
            )?;
        }
    }

    // Events, in rowid chunks so progress can be shown.
    let src_cols = columns(conn, "src", "events")?;
    let ours = columns(conn, "main", "events")?;
    let node = node_expr("events")?;
    let id_expr = match &input.forced {
        Some(_) => format!(
            "CASE WHEN instr(CAST(t.id AS TEXT), ':') > 0 THEN CAST(t.id AS TEXT) ELSE {node} || ':' || t.id END"
        ),
        None => "CAST(t.id AS TEXT)".to_owned(),
    };
    let select: Vec<String> = ours
        .iter()
        .map(|c| match c.as_str() {
            "id" => id_expr.clone(),
            "node" => node.clone(),
            "session_id" if src_cols.contains(c) => "m.new".to_owned(),
            other if src_cols.contains(&other.to_owned()) => format!("t.{other}"),
            _ => "NULL".to_owned(),
        })
        .collect();
    let verb = if allow_same_node {
        "INSERT OR IGNORE"
    } else {
        "INSERT"
    };
    let sql =
        format!(
        "{verb} INTO main.events({}) SELECT {} FROM src.events t LEFT JOIN temp.session_map m ON m.old = {}
         WHERE t.rowid > ?1 AND t.rowid <= ?2 AND typeof(t.timestamp) = 'integer'",
        ours.join(", "),
        select.join(", "),
        if src_cols.iter().any(|c| c == "session_id") { "t.session_id" } else { "NULL" }
    );
    let (lo, hi): (i64, i64) = conn.query_row(
        "SELECT ifnull(min(rowid), 0), ifnull(max(rowid), 0) FROM src.events",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let label = format!("{} ({})", input.path.display(), input.nodes.join(", "));
    let mut copied = 0u64;
    let mut start = lo - 1;
    while start < hi {
        let end = (start + CHUNK).min(hi);
        copied += conn.execute(&sql, params![start, end])? as u64;
        start = end;
        if input.events > CHUNK as u64 {
            progress(&format!("  {label}: {copied}/{} events", input.events));
        }
    }
    let odd: i64 = conn.query_row(
        "SELECT count(*) FROM src.events WHERE typeof(timestamp) <> 'integer'",
        [],
        |r| r.get(0),
    )?;
    let odd = odd.max(0) as u64;
    if odd > 0 {
        progress(&format!(
            "warning: {label}: {odd} event(s) whose timestamp is not an integer were left out"
        ));
    }
    report.skipped += odd;
    report.duplicates += input.events.saturating_sub(copied + odd);
    progress(&format!("merged {label}: {copied} events"));

    copy_known(conn, &src_tables, &node_expr)?;
    copy_unknown(conn, &src_tables, &node_expr)?;
    tx.commit()?;
    Ok(())
}

/// The per-table rules for tables this tool knows.
fn copy_known(
    conn: &Connection,
    src_tables: &BTreeSet<String>,
    node_expr: &dyn Fn(&str) -> Result<String, CopyError>,
) -> Result<(), CopyError> {
    let copy = |table: &str,
                verb: &str,
                extra: &str,
                mapped: &dyn Fn(&str) -> Option<String>|
     -> Result<(), CopyError> {
        if !src_tables.contains(table) {
            return Ok(());
        }
        let src_cols = columns(conn, "src", table)?;
        let ours = columns(conn, "main", table)?;
        let (mut cols, mut sel) = (Vec::new(), Vec::new());
        for c in &ours {
            if let Some(expr) = mapped(c) {
                cols.push(c.clone());
                sel.push(expr);
            } else if src_cols.contains(c) {
                cols.push(c.clone());
                sel.push(format!("t.{c}"));
            }
        }
        conn.execute_batch(&format!(
            "{verb} INTO main.{table}({}) SELECT {} FROM src.{table} t {extra}",
            cols.join(", "),
            sel.join(", ")
        ))?;
        Ok(())
    };
    let none = |_: &str| None;
    copy("stack_traces", "INSERT OR IGNORE", "", &none)?;
    copy("ops", "INSERT OR IGNORE", "", &none)?;
    copy("sources", "INSERT OR IGNORE", "", &none)?;
    for table in ["causal_chains", "process_names", "system_snapshots"] {
        let node = node_expr(table)?;
        let verb = if table == "causal_chains" {
            "INSERT OR REPLACE"
        } else {
            "INSERT OR IGNORE"
        };
        copy(table, verb, "", &|c: &str| (c == "node").then(|| node.clone()))?;
    }
    let node = node_expr("drops")?;
    copy(
        "drops",
        "INSERT OR REPLACE",
        "JOIN temp.session_map m ON m.old = t.session_id",
        &|c: &str| match c {
            "node" => Some(node.clone()),
            "session_id" => Some("m.new".into()),
            _ => None,
        },
    )?;
    // NCCL tables refer to sessions by id like events do; a call of an
    // unknown session keeps a NULL session.
    for (table, verb) in [("nccl_comms", "INSERT OR IGNORE"), ("nccl_collectives", "INSERT")] {
        let node = node_expr(table)?;
        copy(
            table,
            verb,
            "LEFT JOIN temp.session_map m ON m.old = t.session_id",
            &|c: &str| match c {
                "node" => Some(node.clone()),
                "session_id" => Some("m.new".into()),
                _ => None,
            },
        )?;
    }
    if src_tables.contains("event_aggregates") {
        let node = node_expr("event_aggregates")?;
        let pid = if columns(conn, "src", "event_aggregates")?
            .iter()
            .any(|c| c == "pid")
        {
            "t.pid"
        } else {
            "0"
        };
        conn.execute_batch(&format!(
            "INSERT INTO main.event_aggregates(node, bucket, source, op, pid, count, sum_dur, min_dur, max_dur, sum_arg0)
             SELECT {node}, t.bucket, t.source, t.op, {pid}, t.count, t.sum_dur, t.min_dur, t.max_dur, t.sum_arg0
             FROM src.event_aggregates t WHERE true
             ON CONFLICT(node, bucket, source, op, pid) DO UPDATE SET
                 count = count + excluded.count, sum_dur = sum_dur + excluded.sum_dur,
                 min_dur = min(min_dur, excluded.min_dur), max_dur = max(max_dur, excluded.max_dur),
                 sum_arg0 = sum_arg0 + excluded.sum_arg0"
        ))?;
    }
    if src_tables.contains("id_counters") {
        conn.execute_batch(
            "INSERT INTO main.id_counters(node, next_seq) SELECT node, next_seq FROM src.id_counters WHERE true
             ON CONFLICT(node) DO UPDATE SET next_seq = max(next_seq, excluded.next_seq)",
        )?;
    }
    Ok(())
}

/// When `table` in the output has a NOT NULL column without a default
/// that this input lacks, rebuilds it without constraints (names and
/// declared types kept, rows kept), so the input's rows can go in.
fn relax_missing(conn: &Connection, table: &str, src_cols: &[String]) -> Result<(), CopyError> {
    let mut stmt = conn
        .prepare("SELECT name, type, \"notnull\", dflt_value IS NULL FROM pragma_table_info(?1, 'main')")?;
    let info: Vec<(String, String, bool, bool)> = stmt
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let blocked = info
        .iter()
        .any(|(name, _, notnull, no_default)| *notnull && *no_default && !src_cols.contains(name));
    if !blocked {
        return Ok(());
    }
    let quoted = ident(table);
    let defs: Vec<String> = info
        .iter()
        .map(|(name, ty, ..)| format!("{} {ty}", ident(name)))
        .collect();
    let names: Vec<String> = info.iter().map(|(name, ..)| ident(name)).collect();
    conn.execute_batch(&format!(
        "CREATE TABLE main.ingero_relaxed({defs});
         INSERT INTO main.ingero_relaxed({names}) SELECT {names} FROM main.{quoted};
         DROP TABLE main.{quoted};
         ALTER TABLE main.ingero_relaxed RENAME TO {quoted};",
        defs = defs.join(", "),
        names = names.join(", "),
    ))?;
    Ok(())
}

/// Tables this tool does not know: same schema, plus a node column. When
/// inputs hold a table of the same name with other columns, the columns
/// the output lacks are added (without constraints) and each input fills
/// the columns it has.
fn copy_unknown(
    conn: &Connection,
    src_tables: &BTreeSet<String>,
    node_expr: &dyn Fn(&str) -> Result<String, CopyError>,
) -> Result<(), CopyError> {
    for table in src_tables {
        if store::schema::TABLES.contains(&table.as_str()) || table.starts_with("sqlite_") {
            continue;
        }
        let quoted = ident(table);
        let exists: bool = conn.query_row(
            "SELECT count(*) > 0 FROM main.sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )?;
        if !exists {
            let create: String = conn.query_row(
                "SELECT sql FROM src.sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get(0),
            )?;
            let create = create
                .replacen("CREATE TABLE", "CREATE TABLE main.", 1)
                .replacen("main. ", "main.", 1);
            conn.execute_batch(&create)?;
        }
        let cols = columns(conn, "src", table)?;
        relax_missing(conn, table, &cols)?;
        let ours = columns(conn, "main", table)?;
        for c in cols.iter().chain(std::iter::once(&"node".to_owned())) {
            if !ours.contains(c) {
                let default = if c == "node" {
                    " TEXT NOT NULL DEFAULT ''"
                } else {
                    ""
                };
                conn.execute_batch(&format!(
                    "ALTER TABLE main.{quoted} ADD COLUMN {}{default}",
                    ident(c)
                ))?;
            }
        }
        let (names, sel): (Vec<String>, Vec<String>) = if cols.iter().any(|c| c == "node") {
            (
                cols.iter().map(|c| ident(c)).collect(),
                cols.iter().map(|c| format!("t.{}", ident(c))).collect(),
            )
        } else {
            let node = node_expr(table)?;
            (
                cols.iter()
                    .map(|c| ident(c))
                    .chain(std::iter::once("node".into()))
                    .collect(),
                cols.iter()
                    .map(|c| format!("t.{}", ident(c)))
                    .chain(std::iter::once(node))
                    .collect(),
            )
        };
        conn.execute_batch(&format!(
            "INSERT OR IGNORE INTO main.{quoted}({}) SELECT {} FROM src.{quoted} t",
            names.join(", "),
            sel.join(", ")
        ))?;
    }
    Ok(())
}
