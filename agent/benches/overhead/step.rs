//! Training step time, untraced against traced: the simulated job
//! (`ingero_sim::cluster`, `none` scenario) run with no agent, with one
//! `ingero trace` agent per rank (default probes), and with agents given
//! `--stack`. Each round runs the three cases once, in an order rotated
//! round by round; a run's figure is the mean over its ranks of their
//! median (and p90) step time. The spread of the untraced runs is printed
//! too: a ratio closer to 1 than that spread is within the noise.

use std::sync::atomic::AtomicBool;

use ingero_sim::cluster::{ClusterConfig, RunOptions, run_with};

use crate::workload::{ingero, median};

/// Training steps per run (the first few, which include warm-up, count).
const STEPS: u64 = 80;

struct Case {
    name: &'static str,
    trace: bool,
    args: &'static [&'static str],
}

const CASES: [Case; 3] = [
    Case {
        name: "untraced",
        trace: false,
        args: &[],
    },
    Case {
        name: "traced",
        trace: true,
        args: &[],
    },
    Case {
        name: "traced --stack",
        trace: true,
        args: &["--stack"],
    },
];

/// (median, p90) step time in ms of one run, averaged over its ranks.
fn one_run(case: &Case, ranks: usize) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let cfg = ClusterConfig {
        ingero: ingero(),
        nodes: ranks,
        steps: STEPS,
        faults: Vec::new(),
        faulty_node: 0,
        run_dir: dir.path().to_path_buf(),
        cudart: ingero_sim::libcudart(),
        agent_args: vec![case.args.iter().map(|a| (*a).to_owned()).collect(); ranks],
    };
    let opts = RunOptions {
        trace: case.trace,
        ..RunOptions::default()
    };
    let started = std::time::Instant::now();
    let report = run_with(&cfg, opts, &mut |_| {}, &AtomicBool::new(false))?;
    eprintln!(
        "      {}: {:.1} s for the run, {:.1} s reported",
        case.name,
        started.elapsed().as_secs_f64(),
        report.seconds
    );
    anyhow::ensure!(
        report.databases.len() == if case.trace { ranks } else { 0 },
        "{}: {} agents ran for {ranks} ranks",
        case.name,
        report.databases.len()
    );
    let n = report.ranks.len().max(1) as f64;
    let med = report.ranks.iter().map(|r| r.median_ms).sum::<f64>() / n;
    let p90 = report.ranks.iter().map(|r| r.p90_ms).sum::<f64>() / n;
    Ok((med, p90))
}

pub fn run(rounds: usize, ranks: usize) -> anyhow::Result<()> {
    crate::section(&format!(
        "training step time: {ranks} ranks x {STEPS} steps, untraced / traced / traced --stack, {rounds} rounds, medians"
    ));
    let mut figures: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); CASES.len()];
    for round in 0..rounds {
        for k in 0..CASES.len() {
            let i = (k + round) % CASES.len();
            let (med, p90) = one_run(&CASES[i], ranks)?;
            figures[i].0.push(med);
            figures[i].1.push(p90);
        }
        eprintln!("    round {}/{rounds} done (load {})", round + 1, crate::load());
    }
    let base = &figures[0];
    let (base_med, base_p90) = (median(base.0.clone()), median(base.1.clone()));
    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        (hi - lo) / median(v.to_vec()) * 100.0
    };
    for (case, (meds, p90s)) in CASES.iter().zip(&figures) {
        let (med, p90) = (median(meds.clone()), median(p90s.clone()));
        println!(
            "    {:<15} median {:>6.2} ms ({:>5.3}x)  p90 {:>6.2} ms ({:>5.3}x)  runs' medians spread {:.1}%",
            case.name,
            med,
            med / base_med,
            p90,
            p90 / base_p90,
            spread(meds)
        );
    }
    Ok(())
}
