//! `cargo xtask test`: builds everything and runs every test of the
//! workspace. Tests that need root (real eBPF) skip with a printed reason
//! when not root; in CI (root) they all run.

use crate::exec::{cargo, exec, root};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Only tests whose name contains this
    filter: Option<String>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.current_dir(root())
        .args(["test", "--workspace", "--exclude", "agent-ebpf"]);
    if let Some(f) = &opts.filter {
        cmd.args(["--", f]);
    }
    exec(&mut cmd)
}
