//! `cargo xtask run -- ARGS`: builds `ingero` in release mode and runs it
//! with ARGS, e.g. `cargo xtask run -- trace --node gpu-node-01 --duration 10s`.

use std::process::Command;

use crate::exec::{cargo, exec, root};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Arguments for ingero
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    exec(
        cargo()
            .current_dir(root())
            .args(["build", "--release", "--quiet", "-p", "ingero"]),
    )?;
    exec(Command::new(root().join("target/release/ingero")).args(&opts.args))
}
