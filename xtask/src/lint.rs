//! `cargo xtask lint`: formatting, clippy with warnings as errors (the
//! workspace lints: pedantic on the host crates, with the allow-list in
//! the root `Cargo.toml`), and the documentation with warnings as errors.
//! Clippy runs in two passes: the host crates, then the eBPF crate on
//! nightly for its target (it cannot build for the host).

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
        cargo()
            .current_dir(root())
            .args(["doc", "--workspace", "--exclude", "agent-ebpf", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
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
