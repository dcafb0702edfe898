//! The writer against real SQLite files: ids, caps, a full disk.
use super::*;
use crate::store::{SessionInfo, create_session, open_for_writing};
use agent_common::catalog::{driver_op, source};

fn event(ts: i64, op: u8) -> EventRow {
    EventRow {
        timestamp: ts,
        pid: 10,
        tid: 11,
        source: source::DRIVER,
        op,
        duration: 1_000,
        arg0: 4096,
        ..EventRow::default()
    }
}

#[test]
fn merged_session_updates_keep_every_field() {
    let mut a = Batch {
        session: Some(SessionUpdate {
            rank: Some((Some(3), None, Some(8))),
            ..SessionUpdate::default()
        }),
        ..Batch::default()
    };
    a.absorb(Batch {
        session: Some(SessionUpdate {
            events_dropped: Some(5),
            ..SessionUpdate::default()
        }),
        ..Batch::default()
    });
    let s = a.session.expect("merged");
    assert_eq!(s.rank, Some((Some(3), None, Some(8))));
    assert_eq!(s.events_dropped, Some(5));
}

fn start(path: &std::path::Path, node: &str, cap: Option<u64>) -> StoreWriter {
    let conn = open_for_writing(path).expect("open");
    let session_id = create_session(
        &conn,
        &SessionInfo {
            node: node.into(),
            ..SessionInfo::default()
        },
    )
    .expect("session");
    StoreWriter::spawn(
        conn,
        WriterConfig {
            node: node.into(),
            session_id,
            max_db_size: cap,
        },
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

#[test]
fn every_event_is_committed_with_unique_node_ids() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("t.db");
    for round in 0..2 {
        let writer = start(&path, "n1", None);
        runtime().block_on(async {
            for chunk in 0..5 {
                let events = (0..3000)
                    .map(|i| event(chunk * 3000 + i, driver_op::MEM_ALLOC))
                    .collect();
                writer
                    .send(Batch {
                        events,
                        ..Batch::default()
                    })
                    .await
                    .expect("send");
            }
        });
        writer.finish()?;
        let conn = Connection::open(&path)?;
        let (n, distinct): (i64, i64) =
            conn.query_row("SELECT count(*), count(DISTINCT id) FROM events", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        assert_eq!(n, 15_000 * (round + 1));
        assert_eq!(distinct, n, "ids stay unique across sessions");
        let agg: i64 = conn.query_row("SELECT sum(count) FROM event_aggregates", [], |r| r.get(0))?;
        assert_eq!(agg, n);
        let stored: i64 = conn.query_row("SELECT sum(events_stored) FROM sessions", [], |r| r.get(0))?;
        assert_eq!(stored, n);
    }
    Ok(())
}

#[test]
fn a_full_disk_drops_events_with_a_count_and_the_writer_goes_on() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("full.db");
    let conn = open_for_writing(&path)?;
    let session_id = create_session(&conn, &SessionInfo::default())?;
    // SQLite answers "database or disk is full" past max_page_count, as on a full disk.
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    conn.query_row(&format!("PRAGMA max_page_count = {}", pages + 40), [], |_| Ok(()))?;
    let writer = StoreWriter::spawn(
        conn,
        WriterConfig {
            node: "n1".into(),
            session_id,
            max_db_size: None,
        },
    );
    let stats = Arc::clone(&writer.stats);
    runtime().block_on(async {
        let big = (0..5000).map(|i| event(i, driver_op::MEM_ALLOC)).collect();
        writer
            .send(Batch {
                events: big,
                ..Batch::default()
            })
            .await
            .expect("send");
        // Let the big one be committed (and refused) on its own: the
        // writer commits what is due when the next batch (here empty) comes.
        tokio::time::sleep(MAX_BATCH_DELAY * 2).await;
        writer.send(Batch::default()).await.expect("send");
        let small = (0..10).map(|i| event(10_000 + i, driver_op::MEM_ALLOC)).collect();
        writer
            .send(Batch {
                events: small,
                ..Batch::default()
            })
            .await
            .expect("send");
    });
    writer.finish()?;
    assert_eq!(stats.disk_full_dropped.load(Ordering::Relaxed), 5000);
    assert_eq!(
        stats.committed.load(Ordering::Relaxed),
        10,
        "later events are stored again"
    );
    Ok(())
}

#[test]
fn size_cap_prunes_oldest_first() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("cap.db");
    let cap = 2 << 20;
    let writer = start(&path, "n1", Some(cap));
    runtime().block_on(async {
        for chunk in 0..40i64 {
            let events = (0..2000)
                .map(|i| event(chunk * 2000 + i, driver_op::MEM_ALLOC))
                .collect();
            writer
                .send(Batch {
                    events,
                    ..Batch::default()
                })
                .await
                .expect("send");
        }
    });
    let stats = Arc::clone(&writer.stats);
    writer.finish()?;
    let pruned = stats.pruned.load(Ordering::Relaxed);
    assert!(pruned > 0, "the cap must have been hit");
    let wal = dir.path().join("cap.db-wal");
    let disk = std::fs::metadata(&path)?.len() + std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert!(
        disk <= cap,
        "database and WAL under the cap after the end: {disk}"
    );
    let conn = Connection::open(&path)?;
    let (n, oldest): (i64, i64) = conn.query_row("SELECT count(*), min(timestamp) FROM events", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    assert_eq!(n as u64 + pruned, 80_000);
    assert_eq!(oldest, pruned as i64, "the oldest events went first");
    let agg: i64 = conn.query_row("SELECT sum(count) FROM event_aggregates", [], |r| r.get(0))?;
    assert_eq!(agg, 80_000, "aggregates keep the pruned events' counts");
    Ok(())
}

#[test]
fn the_wal_budget_is_an_eighth_of_the_cap_within_its_bounds() {
    // A large cap must not give a WAL whose checkpoint stalls the writer
    // for seconds (1.28 GiB for the default 10 GiB), nor a small one a WAL
    // that a single transaction cannot fit in.
    assert_eq!(wal_budget(Some(10 << 30)), 64 << 20);
    assert_eq!(wal_budget(Some(64 << 20)), 8 << 20);
    assert_eq!(wal_budget(Some(1 << 20)), 256 << 10);
    assert_eq!(wal_budget(None), 4 << 20);
    for cap in [1u64 << 20, 8 << 20, 100 << 20, 1 << 30, 10 << 30, 1 << 40] {
        let budget = wal_budget(Some(cap));
        assert!(
            (MIN_WAL_BUDGET..=MAX_WAL_BUDGET).contains(&budget),
            "{cap}: {budget}"
        );
        assert!(budget <= cap / WAL_SHARE || budget == MIN_WAL_BUDGET);
    }
}
