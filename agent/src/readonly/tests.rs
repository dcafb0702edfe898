use super::*;

#[test]
fn rows_from_elsewhere_are_queried_under_the_same_guard() {
    let columns = vec!["node".to_owned(), "n".to_owned(), "n".to_owned()];
    let rows = vec![
        vec![
            serde_json::json!("a"),
            serde_json::json!(3),
            serde_json::json!(1.5),
        ],
        vec![
            serde_json::json!("b"),
            serde_json::json!(4),
            serde_json::Value::Null,
        ],
    ];
    let db = ReadOnlyDb::from_rows("fleet", &columns, &rows).expect("table");
    let r = db
        .query(
            "SELECT sum(n), count(n_2), max(node) FROM fleet",
            Limits::default(),
        )
        .expect("query");
    assert_eq!(
        r.rows,
        vec![vec![
            serde_json::json!(7),
            serde_json::json!(1),
            serde_json::json!("b")
        ]]
    );
    for write in [
        "DELETE FROM fleet",
        "INSERT INTO fleet VALUES (1, 2, 3)",
        "ATTACH DATABASE '/tmp/x.db' AS x",
    ] {
        assert!(
            matches!(db.query(write, Limits::default()), Err(QueryError::Denied(_))),
            "{write}"
        );
    }
}

/// A small database with a few events.
fn fixture() -> anyhow::Result<(tempfile::TempDir, std::path::PathBuf)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("t.db");
    let conn = crate::store::open_for_writing(&path)?;
    conn.execute_batch(
        "INSERT INTO events(id, timestamp, pid, tid, source, op, duration, node)
         VALUES ('n:0', 100, 1, 1, 4, 1, 10, 'n'), ('n:1', 200, 1, 1, 4, 1, 20, 'n'), ('n:2', 300, 1, 1, 4, 1, 30, 'n');",
    )?;
    Ok((dir, path))
}

fn count(path: &Path) -> anyhow::Result<i64> {
    Ok(Connection::open(path)?.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?)
}

#[test]
fn reads_work_and_rows_are_capped() -> anyhow::Result<()> {
    let (_d, path) = fixture()?;
    let db = ReadOnlyDb::open(&path, None)?;
    let r = db.query("SELECT id, duration FROM events ORDER BY id", Limits::default())?;
    assert_eq!(r.columns, vec!["id", "duration"]);
    assert_eq!(r.rows.len(), 3);
    assert_eq!(r.rows[1][1], serde_json::json!(20));
    let capped = db.query(
        "SELECT * FROM events",
        Limits {
            max_rows: 2,
            ..Limits::default()
        },
    )?;
    assert_eq!(capped.rows.len(), 2);
    assert!(capped.truncated);
    Ok(())
}

#[test]
fn writes_of_every_kind_are_refused_and_change_nothing() -> anyhow::Result<()> {
    let (_d, path) = fixture()?;
    let db = ReadOnlyDb::open(&path, None)?;
    for sql in [
        "INSERT INTO events(id, timestamp, pid, tid, source, op, duration) VALUES ('x', 1, 1, 1, 1, 1, 1)",
        "DELETE FROM events",
        "UPDATE events SET duration = 0",
        "DROP TABLE events",
        "CREATE TABLE x(a)",
        "CREATE TEMP TABLE x(a)",
        "ATTACH DATABASE '/tmp/other.db' AS o",
        "PRAGMA writable_schema = ON",
        "PRAGMA journal_mode = DELETE",
        "VACUUM",
        "BEGIN",
        "SELECT load_extension('/tmp/evil.so')",
        "WITH RECURSIVE x(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM x) INSERT INTO events(id) SELECT n FROM x",
    ] {
        let err = db.query(sql, Limits::default()).expect_err(sql);
        assert!(
            matches!(err, QueryError::Denied(_) | QueryError::Sql(_)),
            "{sql} must be refused, got {err}"
        );
    }
    assert_eq!(count(&path)?, 3, "the database is unchanged");
    let err = db
        .query("DELETE FROM events", Limits::default())
        .expect_err("delete");
    assert!(
        err.to_string().contains("DELETE from events"),
        "names what was denied: {err}"
    );
    Ok(())
}

#[test]
fn every_refusal_names_the_action_in_words() -> anyhow::Result<()> {
    let (_d, path) = fixture()?;
    let db = ReadOnlyDb::open(&path, None)?;
    for (sql, words) in [
        (
            "CREATE TEMP TRIGGER t AFTER INSERT ON events BEGIN SELECT 1; END",
            "CREATE TEMP TRIGGER t",
        ),
        ("CREATE TEMP VIEW v AS SELECT 1", "changing the schema"),
        ("CREATE INDEX i ON events(pid)", "refused: "),
        ("DROP TABLE events", "refused: "),
        ("ANALYZE", "refused: "),
        ("REINDEX", "refused: "),
    ] {
        let err = db.query(sql, Limits::default()).expect_err(sql).to_string();
        assert!(err.contains(words), "{sql}: {err}");
        assert!(!err.contains('{') && !err.contains(".."), "{sql}: {err}");
    }
    Ok(())
}

#[test]
fn a_locked_database_says_it_is_busy() -> anyhow::Result<()> {
    let (_d, path) = fixture()?;
    let holder = Connection::open(&path)?;
    holder
        .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; UPDATE events SET duration = 1;")?;
    let err = ReadOnlyDb::open(&path, None)
        .and_then(|db| db.query("SELECT count(*) FROM events", Limits::default()))
        .expect_err("locked");
    assert!(matches!(err, QueryError::Busy), "{err}");
    assert!(err.to_string().contains("busy"), "{err}");
    Ok(())
}

#[test]
fn answers_are_capped_in_bytes() -> anyhow::Result<()> {
    let (_d, path) = fixture()?;
    let db = ReadOnlyDb::open(&path, None)?.with_max_bytes(4096);
    let r = db.query("SELECT hex(zeroblob(1000)) FROM events", Limits::default())?;
    assert_eq!(r.rows.len(), 2);
    assert!(r.truncated);
    let err = db
        .query("SELECT hex(zeroblob(100000))", Limits::default())
        .expect_err("too big");
    assert!(err.to_string().contains("larger than an answer may be"), "{err}");
    Ok(())
}

#[test]
fn introspection_pragmas_are_allowed() -> anyhow::Result<()> {
    let (_d, path) = fixture()?;
    let db = ReadOnlyDb::open(&path, None)?;
    let r = db.query("PRAGMA table_info(events)", Limits::default())?;
    assert!(r.rows.len() >= 16);
    Ok(())
}

#[test]
fn a_runaway_query_is_interrupted_at_the_deadline() -> anyhow::Result<()> {
    let (_d, path) = fixture()?;
    let db = ReadOnlyDb::open(&path, None)?;
    let start = Instant::now();
    let err = db
        .query(
            "WITH RECURSIVE x(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM x) SELECT count(*) FROM x",
            Limits {
                timeout: Duration::from_millis(300),
                ..Limits::default()
            },
        )
        .expect_err("must be interrupted");
    assert!(matches!(err, QueryError::Timeout(_)), "{err}");
    assert!(start.elapsed() < Duration::from_secs(3));
    // The connection is usable afterwards.
    assert_eq!(
        db.query("SELECT count(*) FROM events", Limits::default())?.rows[0][0],
        3
    );
    Ok(())
}

#[test]
fn a_window_filters_events_transparently() -> anyhow::Result<()> {
    let (_d, path) = fixture()?;
    let db = ReadOnlyDb::open(&path, Some((150, 300)))?;
    let r = db.query("SELECT count(*) FROM events", Limits::default())?;
    assert_eq!(r.rows[0][0], 2);
    Ok(())
}

#[test]
fn a_file_that_is_not_an_ingero_database_is_named() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("other.db");
    Connection::open(&path)?.execute_batch("CREATE TABLE t(a)")?;
    let err = ReadOnlyDb::open(&path, None).expect_err("no events");
    assert!(err.to_string().contains("no events table"), "{err}");
    Ok(())
}
