//! Invariants checked on generated inputs (proptest):
//! - merging N databases keeps every event, ids stay unique, and a stack
//!   shared by several inputs is stored once;
//! - no statement, generated or hand-written, changes a database through the
//!   read-only guard.

use std::path::Path;

use ingero::{
    merge::{MergeOptions, merge},
    readonly::{Limits, ReadOnlyDb},
    store,
};
use proptest::prelude::*;
use rusqlite::{Connection, params};

/// A node's database with `events` events whose stacks come from `stacks`.
fn node_db(path: &Path, node: &str, events: usize, stacks: &[i64]) -> anyhow::Result<()> {
    let conn = store::open_for_writing(path)?;
    let session = store::create_session(
        &conn,
        &store::SessionInfo {
            node: node.into(),
            ..Default::default()
        },
    )?;
    for i in 0..events {
        let stack = stacks.get(i % stacks.len().max(1)).copied().unwrap_or(0);
        conn.execute(
            "INSERT INTO events(id, timestamp, pid, tid, source, op, duration, stack_hash, node, session_id)
             VALUES (?1, ?2, 1, 1, 4, 1, 1000, ?3, ?4, ?5)",
            params![format!("{node}:{i}"), i as i64, stack, node, session],
        )?;
    }
    for h in stacks {
        conn.execute(
            "INSERT OR IGNORE INTO stack_traces(hash, ips, frames) VALUES (?1, '[]', '[]')",
            [h],
        )?;
    }
    Ok(())
}

/// Everything a write could change, read through a fresh connection (which
/// also sees a write-ahead log).
fn digest(path: &Path) -> anyhow::Result<String> {
    let conn = Connection::open(path)?;
    Ok(conn.query_row(
        "SELECT (SELECT group_concat(id || ':' || duration) FROM events)
             || '|' || (SELECT group_concat(sql) FROM sqlite_master)
             || '|' || (SELECT group_concat(key || value) FROM schema_info)
             || '|' || (SELECT user_version FROM pragma_user_version)",
        [],
        |r| r.get(0),
    )?)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn merge_keeps_every_event_with_unique_ids_and_deduplicated_stacks(
        sizes in proptest::collection::vec(0usize..300, 1..5),
        stack_pool in proptest::collection::vec(1i64..20, 1..6),
    ) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut inputs = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            let path = dir.path().join(format!("n{i}.db"));
            // Each node uses a rotating slice of the shared stack pool.
            let stacks: Vec<i64> = stack_pool.iter().skip(i % stack_pool.len()).copied().collect();
            node_db(&path, &format!("gpu-node-{i:02}"), *n, &stacks).map_err(|e| TestCaseError::fail(e.to_string()))?;
            inputs.push(path);
        }
        let output = dir.path().join("cluster.db");
        let report = merge(
            &MergeOptions { inputs, output: output.clone(), force: false, force_node: Vec::new(), allow_same_node: false },
            &mut |_| {},
        ).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let total: usize = sizes.iter().sum();
        prop_assert_eq!(report.events as usize, total);
        let conn = Connection::open(&output).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let q = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap_or(-1);
        prop_assert_eq!(q("SELECT count(DISTINCT id) FROM events") as usize, total);
        let distinct: std::collections::BTreeSet<i64> = stack_pool.iter().copied().collect();
        prop_assert_eq!(q("SELECT count(*) FROM stack_traces") as usize, distinct.len());
        prop_assert_eq!(q("SELECT count(*) FROM events WHERE session_id NOT IN (SELECT id FROM sessions)"), 0);
        prop_assert_eq!(q("SELECT count(*) FROM sessions") as usize, sizes.len());
    }

    #[test]
    fn no_statement_changes_the_database_through_the_guard(
        verb in prop::sample::select(vec![
            "INSERT INTO events(id, timestamp, pid, tid, source, op, duration) VALUES ('x', 1, 1, 1, 1, 1, {n})",
            "INSERT OR REPLACE INTO events(id, timestamp, pid, tid, source, op, duration) SELECT id, {n}, 1, 1, 1, 1, 1 FROM events",
            "UPDATE events SET duration = {n}",
            "DELETE FROM events WHERE duration > {n}",
            "REPLACE INTO schema_info(key, value) VALUES ('k', '{n}')",
            "DROP TABLE events",
            "ALTER TABLE events ADD COLUMN c{n} INTEGER",
            "CREATE INDEX i{n} ON events(duration)",
            "CREATE TEMP VIEW v{n} AS SELECT 1",
            "ATTACH DATABASE '/tmp/ingero-guard-{n}.db' AS a",
            "PRAGMA user_version = {n}",
            "PRAGMA writable_schema = 1",
            "VACUUM",
            "SAVEPOINT s{n}",
            "WITH x AS (SELECT {n}) DELETE FROM events",
            "SELECT load_extension('/tmp/x{n}.so')",
        ]),
        n in 0u32..1000,
        garbage in "[ -~]{0,40}",
    ) {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let path = dir.path().join("guard.db");
        node_db(&path, "n", 5, &[1]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let before = std::fs::read(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let digest_before = digest(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let db = ReadOnlyDb::open(&path, None).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let sql = verb.replace("{n}", &n.to_string());
        prop_assert!(db.query(&sql, Limits::default()).is_err(), "{} must fail", sql);
        // Arbitrary text must not panic, and must not write either.
        let _ = db.query(&garbage, Limits::default());
        drop(db);
        let after = std::fs::read(&path).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(before == after, "the file changed after {}", sql);
        prop_assert_eq!(digest(&path).map_err(|e| TestCaseError::fail(e.to_string()))?, digest_before, "the content changed after {}", sql);
        prop_assert!(!Path::new(&format!("/tmp/ingero-guard-{n}.db")).exists(), "ATTACH created a file");
    }
}
