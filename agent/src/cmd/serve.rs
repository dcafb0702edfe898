//! `ingero serve`: the agent API over a stored database (an investigation
//! file, a merged cluster, a copy from an air-gapped node), until Ctrl-C.

use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};

use crate::{
    api::{ApiState, listen},
    cli::ServeArgs,
    config::{self, FileConfig},
    error::CliError,
};

/// The node a database records (its only node), if it has exactly one.
fn node_of(db: &std::path::Path) -> Option<String> {
    let conn = crate::store::open_read(db).ok()?;
    let mut stmt = conn.prepare("SELECT DISTINCT node FROM events LIMIT 2").ok()?;
    let nodes: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .ok()?
        .filter_map(Result::ok)
        .collect();
    (nodes.len() == 1)
        .then(|| nodes[0].clone())
        .filter(|n| !n.is_empty())
}

/// Runs `ingero serve`: the agent API over a stored database until Ctrl-C
/// or SIGTERM. The node name is `--node`, else the database's single node,
/// else the hostname. Exit 0 when stopped; 2 without a listen address or
/// with a database that cannot be opened; 1 when the address cannot be bound.
pub fn run(args: &ServeArgs, file: &FileConfig) -> Result<ExitCode, CliError> {
    let db = super::database(args.db.as_deref(), file)?;
    crate::readonly::ReadOnlyDb::open(&db, None)?;
    let node = match &args.node {
        Some(n) => {
            config::validate_node(n)?;
            n.clone()
        }
        None => node_of(&db).unwrap_or_else(config::hostname),
    };
    let (listen, settings) = super::api_options(&args.api, file, &node, &db, None)?.ok_or_else(|| {
        CliError::BadInput("ingero serve needs --listen ADDR (or agent.listen in ingero.yaml)".into())
    })?;
    let runtime = crate::runtime()?;
    runtime.block_on(async {
        let state = ApiState::new(settings, None);
        let running = listen::start(&listen, state).await?;
        crate::say!("ingero: serving {} as node {node}; Ctrl-C to stop", db.display());
        if let Some(path) = &args.ready_file {
            super::announce(path, &node, &db, None, Some((&running, &listen)))?;
        }
        let mut term = signal(SignalKind::terminate()).map_err(|e| CliError::Failed(e.to_string()))?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        running.stop().await;
        Ok(ExitCode::SUCCESS)
    })
}
