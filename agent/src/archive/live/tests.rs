use std::path::Path;

use arrow_array::{Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;

/// A database with `n` events of node `n1` (ids `n1:0..`).
fn db_with_events(dir: &Path, n: i64) -> anyhow::Result<PathBuf> {
    let db = dir.join("t.db");
    let conn = crate::store::open_for_writing(&db)?;
    add_events(&conn, 0, n)?;
    crate::store::create_session(
        &conn,
        &crate::store::SessionInfo {
            node: "n1".into(),
            ..Default::default()
        },
    )?;
    Ok(db)
}

fn add_events(conn: &Connection, from: i64, n: i64) -> rusqlite::Result<()> {
    conn.execute(
        "WITH RECURSIVE c(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM c WHERE i + 1 < ?1 + ?2)
         INSERT INTO events(id, timestamp, pid, tid, source, op, duration, node, session_id)
         SELECT 'n1:' || i, 1796196000000000000 + i * 1000000, 10, 11, 4, 1, 1000 + i, 'n1', 1 FROM c",
        params![from, n],
    )?;
    Ok(())
}

/// Every event id in the visible files under `dir`.
fn archived_ids(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for path in files(&dir.join("table=events")) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with('.') || !name.ends_with(".parquet") {
            continue;
        }
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path)?)?.build()?;
        for batch in reader {
            let batch = batch?;
            let col = batch
                .column_by_name("id")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
                .ok_or_else(|| anyhow::anyhow!("no id column"))?;
            ids.extend((0..col.len()).map(|i| col.value(i).to_owned()));
        }
    }
    ids.sort();
    Ok(ids)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn expected(n: i64) -> Vec<String> {
    let mut ids: Vec<String> = (0..n).map(|i| format!("n1:{i}")).collect();
    ids.sort();
    ids
}

fn options(db: &Path, dir: &Path) -> ArchiverOptions {
    ArchiverOptions {
        db: db.to_path_buf(),
        dir: dir.to_path_buf(),
        interval: Duration::from_secs(600),
        node: "n1".into(),
    }
}

#[test]
fn each_pass_archives_what_was_committed_since_the_last() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let db = db_with_events(tmp.path(), 1000)?;
    let out = tmp.path().join("archive");
    let mut state = State::open(&options(&db, &out))?;
    state.pass()?;
    assert_eq!(archived_ids(&out)?, expected(1000));
    add_events(&Connection::open(&db)?, 1000, 500)?;
    state.pass()?;
    state.pass()?;
    assert_eq!(archived_ids(&out)?, expected(1500));
    assert_eq!(state.report.events, 1500);
    assert_eq!(state.report.windows, 2);
    // The small tables are there once per node, replaced in place.
    let sessions = files(&out.join("table=sessions"));
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert!(out.join("table=ops/node=n1").is_dir());
    // A restart continues where the last pass ended.
    drop(state);
    let mut again = State::open(&options(&db, &out))?;
    again.pass()?;
    assert_eq!(again.report.events, 0);
    assert_eq!(archived_ids(&out)?, expected(1500));
    Ok(())
}

#[test]
fn a_window_redone_after_a_crash_replaces_its_files() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let db = db_with_events(tmp.path(), 800)?;
    let out = tmp.path().join("archive");
    {
        // A pass that died after its files were renamed, before its end
        // was recorded; and one that died mid-file (a temporary left).
        let mut state = State::open(&options(&db, &out))?;
        let (pending, rows, _) = state.write_window(&tables::EVENTS, 0, 800)?;
        assert_eq!(rows, 800);
        state.publish(pending)?;
        let stray = out.join(format!(
            "table=events/node=n1/date=2026-12-02/hour=07/.part-{}-w000000000801-0.parquet.tmp",
            state.token
        ));
        std::fs::write(&stray, b"PAR1 half a file")?;
    }
    add_events(&Connection::open(&db)?, 800, 300)?;
    let mut state = State::open(&options(&db, &out))?;
    let left: Vec<PathBuf> = files(&out)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
        .collect();
    assert!(left.is_empty(), "stale temporaries removed at start: {left:?}");
    state.pass()?;
    assert_eq!(archived_ids(&out)?, expected(1100), "each event once");
    Ok(())
}

#[test]
fn a_failed_pass_leaves_nothing_visible_and_is_retried() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let db = db_with_events(tmp.path(), 300)?;
    let out = tmp.path().join("archive");
    let mut state = State::open(&options(&db, &out))?;
    // The partition's directory cannot be created: a file is in its way.
    std::fs::create_dir_all(out.join("table=events/node=n1"))?;
    std::fs::write(out.join("table=events/node=n1/date=2026-12-02"), b"")?;
    assert!(state.pass().is_err());
    assert!(archived_ids(&out)?.is_empty());
    assert_eq!(state.archived_up_to("events")?, 0);
    std::fs::remove_file(out.join("table=events/node=n1/date=2026-12-02"))?;
    state.pass()?;
    assert_eq!(archived_ids(&out)?, expected(300));
    Ok(())
}
