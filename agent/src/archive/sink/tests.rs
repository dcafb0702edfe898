use std::path::{Path, PathBuf};

use super::*;
use crate::archive::tables;

fn sink(dir: &Path, spec: TableSpec) -> Sink {
    Sink::new(
        spec,
        SinkOptions {
            dir: dir.to_path_buf(),
            stem: "part-t".into(),
            token: "t".into(),
            window: "test".into(),
        },
    )
}

#[test]
fn rows_land_in_their_partition_and_odd_rows_are_counted() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let conn = rusqlite::Connection::open_in_memory()?;
    crate::store::schema::init(&conn)?;
    conn.execute_batch(
        "INSERT INTO events(id, timestamp, pid, tid, source, op, duration, node, session_id) VALUES
           ('a:1', 1796196000000000000, 1, 1, 4, 1, 10, 'a', 1),
           ('a:2', 1796199600000000000, 1, 1, 4, 1, 20, 'a', 2),
           ('b:1', 1796196000000000001, 1, 1, 4, 1, 30, 'b', 1),
           ('b:2', 'not a time', 1, 1, 4, 1, 30, 'b', 1),
           ('b:3', 1796196000000000002, 5000000000, 1, 4, 1, 30, 'b', 1);",
    )?;
    let sql = tables::EVENTS
        .select(&conn, None, "", "ORDER BY rowid")?
        .expect("events");
    let mut s = sink(dir.path(), tables::EVENTS);
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        s.push(r, None)?;
    }
    let (pending, report) = s.finish()?;
    pending.commit()?;
    assert_eq!((report.rows, report.skipped), (3, 2));
    let mut paths: Vec<String> = report
        .files
        .iter()
        .map(|w| {
            w.path
                .strip_prefix(dir.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        })
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "table=events/node=a/date=2026-12-02/hour=07/part-t-0.parquet",
            "table=events/node=a/date=2026-12-02/hour=08/part-t-0.parquet",
            "table=events/node=b/date=2026-12-02/hour=07/part-t-0.parquet",
        ]
    );
    for w in &report.files {
        assert!(w.path.is_file() && !w.tmp.exists() && w.bytes > 0);
    }
    Ok(())
}

#[test]
fn a_sink_dropped_before_its_commit_leaves_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let conn = rusqlite::Connection::open_in_memory()?;
    crate::store::schema::init(&conn)?;
    let sql = tables::SOURCES.select(&conn, None, "", "")?.expect("sources");
    let mut s = sink(dir.path(), tables::SOURCES);
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        s.push(r, Some("n1"))?;
    }
    assert!(s.rows() > 0);
    drop(s);
    let left: Vec<_> = walk(dir.path());
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
