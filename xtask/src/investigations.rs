//! `cargo xtask investigations`: regenerates `investigations/` from a real
//! traced run of the simulator: three nodes, one straggler.
//!
//! Each node's database is explained (so `causal_chains` is filled),
//! compacted and copied to `investigations/sample-gpu-node-0K.db`; the
//! three are merged into `sample-cluster.db` and explained again; then
//! `investigations/README.md` is written with what each file holds (counts
//! read back from the files) and ready-to-run queries. Files must stay
//! under 2 MB.

use std::path::{Path, PathBuf};

use std::fmt::Write as _;

use anyhow::{Context as _, bail};
use ingero_sim::cluster::{ClusterConfig, Fault};

use crate::{
    demo::{build_ingero, run_cluster},
    exec::{output, root},
};

const MAX_FILE_BYTES: u64 = 2_000_000;
const SCENARIO: &str = "cpu-contention+checkpoint-io";
const FAULTY: usize = 3;
/// Training steps: enough for the fault to repeat, few enough for 2 MB.
const STEPS: u64 = 40;

/// One number from `ingero query --json`.
fn count(ingero: &Path, db: &Path, sql: &str) -> anyhow::Result<i64> {
    let out = output(
        std::process::Command::new(ingero)
            .args(["query", "--json", "-d"])
            .arg(db)
            .arg(sql),
    )?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["rows"][0][0]
        .as_i64()
        .with_context(|| format!("no number from {sql}"))
}

fn ingero_ok(ingero: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = output(std::process::Command::new(ingero).args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn run() -> anyhow::Result<()> {
    let ingero = build_ingero()?;
    let dest = root().join("investigations");
    let work = root().join("target/investigations-run");
    let _ = std::fs::remove_dir_all(&work);
    let cfg = ClusterConfig {
        ingero: ingero.clone(),
        nodes: 3,
        steps: STEPS,
        faults: Fault::parse_scenario(SCENARIO)?,
        faulty_node: FAULTY - 1,
        run_dir: work.clone(),
        cudart: ingero_sim::libcudart(),
        agent_args: vec![vec!["--stack".to_owned()]; 3],
    };
    let report = run_cluster(&cfg)?;
    if !report.survivors.is_empty() {
        bail!("processes outlived the run: {:?}", report.survivors);
    }
    std::fs::create_dir_all(&dest)?;
    let mut samples: Vec<(String, PathBuf)> = Vec::new();
    for (node, db) in &report.databases {
        ingero_ok(&ingero, &["explain", "-d", &db.to_string_lossy()])?;
        let sample = dest.join(format!("sample-{node}.db"));
        let _ = std::fs::remove_file(&sample);
        // A compact copy in rollback-journal mode: one self-contained file.
        ingero_ok(
            &ingero,
            &[
                "merge",
                &db.to_string_lossy(),
                "-o",
                &sample.to_string_lossy(),
                "--force",
            ],
        )?;
        samples.push((node.clone(), sample));
    }
    let cluster = dest.join("sample-cluster.db");
    let mut args: Vec<String> = vec!["merge".into()];
    args.extend(samples.iter().map(|(_, p)| p.display().to_string()));
    args.extend(["-o".into(), cluster.display().to_string(), "--force".into()]);
    ingero_ok(&ingero, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let explained = ingero_ok(&ingero, &["explain", "-d", &cluster.to_string_lossy()])?;

    let mut table = String::new();
    for (name, path) in samples
        .iter()
        .map(|(n, p)| (format!("sample-{n}.db"), p))
        .chain([("sample-cluster.db".to_owned(), &cluster)])
    {
        let size = std::fs::metadata(path)?.len();
        if size > MAX_FILE_BYTES {
            bail!(
                "{} is {size} bytes, over the 2 MB budget: fewer --steps",
                path.display()
            );
        }
        table.push_str(&format!(
            "| `{name}` | {} | {} | {} | {} | {:.0} KB |\n",
            count(&ingero, path, "SELECT count(DISTINCT node) FROM events")?,
            count(&ingero, path, "SELECT count(*) FROM events")?,
            count(&ingero, path, "SELECT count(*) FROM causal_chains")?,
            count(&ingero, path, "SELECT count(*) FROM stack_traces")?,
            size as f64 / 1000.0
        ));
    }
    let ranks = report.ranks.iter().fold(String::new(), |mut out, r| {
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {:.1} |",
            r.node, r.rank, r.median_ms, r.compute_mean_ms, r.wait_mean_ms
        );
        out
    });
    let readme = README
        .replace("{SCENARIO}", SCENARIO)
        .replace("{STEPS}", &STEPS.to_string())
        .replace("{FAULTY}", &format!("gpu-node-{FAULTY:02}"))
        .replace("{TABLE}", &table)
        .replace("{RANKS}", &ranks)
        .replace("{EXPLAIN}", explained.trim_end());
    std::fs::write(dest.join("README.md"), readme)?;
    println!("investigations/ regenerated:\n{table}");
    Ok(())
}

const README: &str = r#"# investigations/

Ready-to-query databases from a simulated distributed training job, traced
for real by `ingero trace` (one agent per node). Regenerate them with
`cargo xtask investigations` (needs root; about a minute).

## The scenario

Three ranks of a data-parallel job, one per node (`gpu-node-01` ..
`gpu-node-03`), each training {STEPS} steps: a host-to-device batch copy, 32
kernel launches interleaved with host work, a few CUDA runtime calls, then an
all-reduce (a real barrier among the ranks over loopback) and a stream
synchronize. The stub driver simulates GPU time; the CUDA runtime is the real
`libcudart.so.12`, which returns 35 without a driver.

Injected on **{FAULTY}**: `{SCENARIO}`: CPU hogs at a higher priority pinned to
the rank's CPU, and a checkpoint every 10 steps (a 256 MiB device-to-host
staging copy, then a writer thread serializing and writing it with O_DIRECT
and fsync on the trainer's CPU). The other two nodes share the remaining CPU
of this small machine, so they show some contention of their own.

What the ranks measured themselves (ms; compute = own forward/backward, wait =
all-reduce):

| node | rank | step median | compute mean | wait mean |
|---|---|---|---|---|
{RANKS}
The straggler computes longest and waits least; its peers wait for it.

## Files

| file | nodes | events | causal chains | stacks | size |
|---|---|---|---|---|---|
{TABLE}
`sample-cluster.db` is the three node files merged with `ingero merge`. Every
file was explained with `ingero explain`, so `causal_chains` is filled; stacks
were captured with `ingero trace --stack`.

## Try

```sh
ingero explain -d investigations/sample-cluster.db
ingero query -d investigations/sample-cluster.db \
  "SELECT node, source, count(*) as cnt, avg(duration)/1000 as avg_us FROM events GROUP BY node, source"
# p50/p99 of kernel launches per node
ingero query -d investigations/sample-cluster.db "WITH l AS (SELECT node, duration, ntile(100) OVER (PARTITION BY node ORDER BY duration) AS pct FROM events WHERE source = 4 AND op = 1) SELECT node, max(CASE WHEN pct <= 50 THEN duration END)/1000.0 AS p50_us, max(CASE WHEN pct <= 99 THEN duration END)/1000.0 AS p99_us FROM l GROUP BY node"
# who preempted the traced threads, per node
ingero query -d investigations/sample-cluster.db "SELECT e.node, p.name AS preemptor, count(*) AS times, sum(e.duration)/1e6 AS ms_off_cpu FROM events e LEFT JOIN process_names p ON p.node = e.node AND p.pid = e.arg1 WHERE e.source = 3 AND e.op = 1 AND e.arg0 = 1 GROUP BY 1, 2 ORDER BY times DESC LIMIT 10"
# checkpoint writes: block I/O by thread
ingero query -d investigations/sample-cluster.db "SELECT e.node, p.name, count(*) AS requests, sum(e.arg0)/1048576 AS mib, max(e.duration)/1000 AS peak_us FROM events e LEFT JOIN process_names p ON p.node = e.node AND p.pid = e.tid WHERE e.source = 5 GROUP BY 1, 2"
# the slowest launch's stack
ingero query -d investigations/sample-cluster.db "SELECT e.node, e.duration/1000 AS us, s.frames FROM events e JOIN stack_traces s ON s.hash = e.stack_hash WHERE e.source = 4 AND e.op = 1 ORDER BY e.duration DESC LIMIT 1"
ingero export --format perfetto -d investigations/sample-cluster.db -o cluster.json   # open in ui.perfetto.dev
```

## What `ingero explain -d sample-cluster.db` said when these files were made

```
{EXPLAIN}
```
"#;
