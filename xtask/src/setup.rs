//! `cargo xtask setup`: installs what is missing, and nothing else.
//!
//! Each step checks first and acts only if needed, so a second run takes a
//! fraction of a second. Steps: nightly's `rust-src` (for
//! `-Z build-std=core`), `bpf-linker` 0.10.4 (the last release that links
//! with rustc's own LLVM), a C compiler (the simulator's stubs), tracefs
//! mounted, the stock tools the API tests check against (curl, openssl,
//! promtool and the Prometheus server, faketime, a Java runtime for
//! Spark), and the Python packages the tests use.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::exec::{exec, output, succeeds};

/// bpf-linker release that matches nightly's LLVM (see README, Toolchain).
const BPF_LINKER_VERSION: &str = "0.10.4";
/// Python packages for the tests, pinned: the real CUDA runtime and NCCL
/// (a 351 MB wheel, installed once), the official MCP SDK that drives
/// `ingero mcp` as an independent client, Perfetto's generated trace
/// protos (with the protobuf runtime) that decode the native `.pftrace`
/// export, the engines that read the Parquet archive (DuckDB, pyarrow,
/// and Spark in local mode: about 500 MB installed, once; pip keeps the
/// downloaded wheels in its cache), and rotel, an OpenTelemetry collector
/// whose wheel ships the `rotel-agent` binary (the OTLP tests find it in
/// the package's directory and read what it received from its debug log).
const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("nvidia-cuda-runtime-cu12", "12.9.79"),
    ("nvidia-nccl-cu12", "2.32.3"),
    ("mcp", "2.3.0"),
    ("protobuf", "7.36.2"),
    ("perfetto", "0.59.1"),
    ("duckdb", "2.0.1"),
    ("pyarrow", "26.0.1"),
    ("pyspark", "4.3.0"),
    ("rotel", "0.0.1a15"),
];

/// Everything: what building needs ([`toolchain`]) and what the tests,
/// the demo and the benchmarks run against.
pub fn ensure() -> anyhow::Result<()> {
    toolchain()?;
    c_compiler()?;
    tracefs()?;
    test_tools()?;
    python_packages()?;
    Ok(())
}

/// What compiling the workspace needs (the eBPF programs are built by the
/// agent's build script): nightly's `rust-src` and `bpf-linker`. Installs
/// no system or Python package.
pub fn toolchain() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()
}

fn rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))
        .context("the nightly toolchain is needed to build the eBPF programs; install it with `rustup toolchain install nightly`")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    eprintln!("xtask setup: adding rust-src to the nightly toolchain");
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let version = Command::new("bpf-linker").arg("--version").output();
    if version.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    eprintln!("xtask setup: installing bpf-linker {BPF_LINKER_VERSION} (about a minute)");
    exec(crate::exec::cargo().args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--force",
    ]))
}

fn c_compiler() -> anyhow::Result<()> {
    if succeeds(Command::new("cc").arg("--version")) {
        return Ok(());
    }
    eprintln!("xtask setup: installing gcc");
    apt_install(&["gcc", "libc6-dev"])
}

/// Commands the tests run as independent checks, and their Debian packages:
/// clients no one here wrote (curl, openssl s_client), Prometheus's own
/// format checker and server (it scrapes a live agent), and a clock
/// shifter for the skew tests, and the Java runtime local Spark runs on
/// (the archive test).
const TEST_TOOLS: &[(&str, &str)] = &[
    ("curl", "curl"),
    ("openssl", "openssl"),
    ("promtool", "prometheus"),
    ("prometheus", "prometheus"),
    ("faketime", "faketime"),
    ("java", "openjdk-17-jre-headless"),
];

fn test_tools() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = TEST_TOOLS
        .iter()
        .filter(|(command, _)| !succeeds(Command::new("sh").args(["-c", &format!("command -v {command}")])))
        .map(|(_, package)| *package)
        .collect();
    // One package may bring several tools (prometheus: promtool too).
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask setup: installing {}", missing.join(" "));
    apt_install(&missing)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn tracefs() -> anyhow::Result<()> {
    if Path::new("/sys/kernel/tracing/events").is_dir() || !is_root() {
        return Ok(());
    }
    eprintln!("xtask setup: mounting tracefs at /sys/kernel/tracing");
    exec(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
}

fn python_packages() -> anyhow::Result<()> {
    for (package, version) in PYTHON_PACKAGES {
        let check = format!("import importlib.metadata as m; assert m.version('{package}') == '{version}'");
        if succeeds(Command::new("python3").args(["-c", &check])) {
            continue;
        }
        let requirement = format!("{package}=={version}");
        eprintln!("xtask setup: pip install {requirement}");
        exec(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--root-user-action=ignore",
            &requirement,
        ]))?;
    }
    Ok(())
}

/// Installs Debian packages (as root), with a clear error otherwise.
pub fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "missing packages {packages:?}: install them with `sudo apt-get install -y {}`",
            packages.join(" ")
        );
    }
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "-q"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .or_else(|_| {
        exec(Command::new("apt-get").args(["update", "-q"]))?;
        exec(
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "-q"])
                .args(packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    })
}
