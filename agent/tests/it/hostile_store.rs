//! The tracer's database under hostile conditions: a second tracer on the
//! same database, a SQLite file that is someone else's, a size cap on a
//! small file system, readers hammering the live database, and drops
//! around the stop.

use anyhow::Context;

use crate::common::{Daemon, ingero, open, root_or_skip, scalar, serial, sha256};

#[test]
fn a_second_tracer_on_the_same_database_is_refused_naming_the_first() -> anyhow::Result<()> {
    if !root_or_skip("a_second_tracer_on_the_same_database_is_refused") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("one.db");
    let db_arg = db.to_str().context("utf-8 path")?;
    let first = Daemon::trace(&db, &["-q", "--no-sched", "--no-io", "--no-memory"])?;
    let first_pid = first.ready["pid"].as_u64().context("pid in the ready file")?;
    let (code, _, err) = ingero(&["trace", "--db", db_arg, "-q", "--duration", "1s"])?;
    assert_eq!(code, 73, "{err}");
    assert!(
        err.contains(&format!("pid {first_pid}")),
        "names the first tracer: {err}"
    );
    assert!(err.contains("another ingero trace"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    let conn = open(&db)?;
    assert_eq!(
        scalar(&conn, "SELECT count(*) FROM sessions")?,
        1,
        "the second left no session"
    );
    drop(conn);
    // kill -9 (the Daemon's drop) releases the lock with the process.
    drop(first);
    let again = Daemon::trace(&db, &["-q", "--no-sched", "--no-io", "--no-memory"])?;
    again.stop()?;
    Ok(())
}

#[test]
fn a_sqlite_file_that_is_not_ingeros_is_refused_and_left_unchanged() -> anyhow::Result<()> {
    if !root_or_skip("a_sqlite_file_that_is_not_ingeros_is_refused") {
        return Ok(());
    }
    let _guard = serial();
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("shop.db");
    rusqlite::Connection::open(&db)?
        .execute_batch("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT); INSERT INTO customers(name) VALUES ('a');")?;
    let before = sha256(&db)?;
    let (code, _, err) = ingero(&[
        "trace",
        "--db",
        db.to_str().context("utf-8")?,
        "-q",
        "--duration",
        "1s",
    ])?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not ingero's") && err.contains("customers"), "{err}");
    assert_eq!(sha256(&db)?, before, "the file is unchanged");
    let mut left: Vec<String> = std::fs::read_dir(dir.path())?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    left.sort();
    assert_eq!(left, ["shop.db"], "nothing was added beside it");
    Ok(())
}
