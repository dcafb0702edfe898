//! `ingero certs`: a fleet's PKI in three commands:
//!
//! ```text
//! ingero certs init-ca                      # ca.pem, ca-key.pem
//! ingero certs issue --node gpu-node-01     # per agent (server)
//! ingero certs issue --client oncall        # per person or tool (client)
//! ```
//!
//! Keys are written 0600; nothing is overwritten without `--force`.

use std::{path::PathBuf, process::ExitCode};

use crate::{
    cli::CertsCommand,
    config::{self, FileConfig},
    error::CliError,
    tls::{Role, init_ca, issue},
};

fn certs_dir(dir: Option<&PathBuf>, file: &FileConfig) -> Result<PathBuf, CliError> {
    match dir {
        Some(d) => Ok(config::expand_home(d)),
        None => Ok(config::resolve_state_dir(None, file)?.join("certs")),
    }
}

/// Runs `ingero certs init-ca` or `ingero certs issue` in `--dir` (default
/// `<state dir>/certs`) and prints the files written and how to use them.
/// Exit 0; 2 when a file exists without `--force`, the CA is missing, a
/// name is invalid or neither `--node` nor `--client` is given.
pub fn run(command: &CertsCommand, file: &FileConfig) -> Result<ExitCode, CliError> {
    match command {
        CertsCommand::InitCa { dir, force } => {
            let dir = certs_dir(dir.as_ref(), file)?;
            let (cert, fingerprint) = init_ca(&dir, *force)?;
            println!("CA certificate: {} (SHA-256 {fingerprint})", cert.display());
            println!(
                "CA key:         {} (keep it safe; it signs every certificate)",
                dir.join("ca-key.pem").display()
            );
            println!("next: ingero certs issue --node NAME, then ingero certs issue --client NAME");
        }
        CertsCommand::Issue {
            node,
            client,
            san,
            dir,
            force,
        } => {
            let dir = certs_dir(dir.as_ref(), file)?;
            let role = match (node, client) {
                (Some(name), None) => Role::Node {
                    name: name.clone(),
                    extra_sans: san.clone(),
                },
                (None, Some(name)) => Role::Client { name: name.clone() },
                _ => return Err(CliError::BadInput("give --node NAME or --client NAME".into())),
            };
            let (cert, key) = issue(&dir, &role, *force)?;
            println!("certificate: {}", cert.display());
            println!("key:         {}", key.display());
            let ca = dir.join("ca.pem");
            match role {
                Role::Node { .. } => println!(
                    "use: ingero trace --listen 0.0.0.0:8080 --tls-cert {} --tls-key {} --ca-cert {}",
                    cert.display(),
                    key.display(),
                    ca.display()
                ),
                Role::Client { .. } => println!(
                    "use: ingero query --nodes HOST:8080,... --ca-cert {} --client-cert {} --client-key {} \"SQL\"",
                    ca.display(),
                    cert.display(),
                    key.display()
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
