//! What `ingero explain` prints about a database: the span of data it
//! analysed (whatever window was asked for), and common-mode findings said
//! once. Works on copies of the investigation samples; no root needed.

use std::path::Path;

use crate::common::{ingero, open, scalar};

/// A fresh copy of the merged three-node sample, in `dir`.
fn sample_cluster(dir: &Path) -> anyhow::Result<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../investigations/sample-cluster.db");
    let dst = dir.join("cluster.db");
    std::fs::copy(&src, &dst)?;
    Ok(dst.display().to_string())
}

#[test]
fn a_long_since_reports_the_span_of_the_recorded_data_in_human_units() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db = sample_cluster(dir.path())?;
    let conn = open(Path::new(&db))?;
    let span_s = scalar(&conn, "SELECT (max(timestamp) - min(timestamp)) / 1000000000 FROM events")?;
    anyhow::ensure!((10..60).contains(&span_s), "the sample spans {span_s} s");

    let (code, all, err) = ingero(&["explain", "--no-save", "-d", &db])?;
    assert_eq!(code, 0, "{err}");
    let (code, year, err) = ingero(&["explain", "--no-save", "-d", &db, "--since", "8760h"])?;
    assert_eq!(code, 0, "{err}");
    let head = year.lines().next().unwrap_or_default();
    assert!(!head.contains("31536000"), "the window asked is not the span: {head}");
    assert!(
        head.contains(&format!(" over {span_s}.")) && head.contains(" s of recorded data ("),
        "the recorded span ({span_s} s) in seconds: {head}"
    );
    assert!(head.ends_with("; last 365d asked"), "{head}");
    assert_eq!(
        head.trim_end_matches("; last 365d asked"),
        all.lines().next().unwrap_or_default(),
        "a window wider than the recording analyses the same data"
    );
    assert_eq!(
        year.lines().skip(1).collect::<Vec<_>>(),
        all.lines().skip(1).collect::<Vec<_>>(),
        "and finds the same straggler and chains"
    );
    Ok(())
}
