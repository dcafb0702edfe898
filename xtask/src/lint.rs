//! `cargo xtask lint`: formatting and clippy with warnings as errors, in
//! two passes: the host crates, then the eBPF crate on nightly for its
//! target (it cannot build for the host).

use crate::exec::{cargo, exec, root};

pub fn run() -> anyhow::Result<()> {
    exec(cargo().current_dir(root()).args(["fmt", "--all", "--check"]))?;
    exec(cargo().current_dir(root()).args([
        "clippy",
        "--workspace",
        "--exclude",
        "agent-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    exec(
        std::process::Command::new("rustup")
            .current_dir(root().join("agent-ebpf"))
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ])
            .env("CARGO_TARGET_DIR", root().join("target/ebpf-clippy")),
    )
}
