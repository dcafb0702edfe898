//! `ingero merge`: databases from several nodes (or air-gapped copies) into
//! one, for offline analysis of the whole cluster.
//!
//! Invariants:
//! - every event keeps its node-namespaced id (`{node}:{seq}`); events of a
//!   database without a `node` column get the name given with
//!   `--force-node` (and ids `{name}:{old id}`); a database without a node
//!   column and no such name is refused;
//! - two inputs claiming the same node are refused unless
//!   `--allow-same-node` says they are copies or parts of one node's
//!   database; then an id present in several inputs is stored once;
//! - stacks are deduplicated by hash; sessions are renumbered and events
//!   follow them; chains, process names, drop counters, snapshots,
//!   aggregates and lookup tables are carried over, every per-node row
//!   keeping its node; tables this tool does not know are copied too, with
//!   a `node` column added when they lack one;
//! - the output is built in `OUTPUT.partial` and renamed at the end, so an
//!   interrupted merge never leaves a half-written OUTPUT; an existing
//!   OUTPUT is only replaced with `--force`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::store::{self, schema::has_column};

mod copy;

use copy::{CopyError, copy_input};

/// Why a merge did not happen. Nothing is left at the output path in any case.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// The request itself is refused before anything is written (no inputs,
    /// an existing output without `--force`, a node claimed twice without
    /// `--allow-same-node`, an input without node names and no
    /// `--force-node`); the message says which flag fixes it.
    #[error("{0}")]
    Refused(String),
    /// An input could not be read: missing, not an ingero database, or a
    /// SQLite error while copying it.
    #[error("{path}: {message}")]
    Input {
        /// The input database.
        path: PathBuf,
        /// What went wrong with it.
        message: String,
    },
    /// The output could not be created, written or renamed into place.
    #[error("writing {path}: {message}")]
    Output {
        /// The output database (as given; the work file is `OUTPUT.partial`).
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// A `--force-node` value: `NAME` (for the one input without a node
/// column) or `PATH=NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForcedNode {
    /// The input the name is for; `None` for the one input without node names.
    pub path: Option<PathBuf>,
    /// Node name given to that input's rows (a valid node name).
    pub name: String,
}

impl std::str::FromStr for ForcedNode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (path, name) = match s.rsplit_once('=') {
            Some((p, n)) => (Some(PathBuf::from(p)), n),
            None => (None, s),
        };
        crate::config::validate_node(name).map_err(|e| e.to_string())?;
        Ok(Self {
            path,
            name: name.to_owned(),
        })
    }
}

/// What `ingero merge` was asked to do.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    /// Databases to merge, copied in this order.
    pub inputs: Vec<PathBuf>,
    /// Database to create.
    pub output: PathBuf,
    /// Replace `output` if it exists (`--force`).
    pub force: bool,
    /// Node names for inputs whose events have none (`--force-node`).
    pub force_node: Vec<ForcedNode>,
    /// Accept several inputs holding the same node, storing an event id
    /// present in more than one only once (`--allow-same-node`).
    pub allow_same_node: bool,
}

/// One input of a merge, as found before copying.
#[derive(Debug, Clone, Serialize)]
pub struct InputReport {
    /// The input database.
    pub path: PathBuf,
    /// Node names of its events (the forced name if it had none).
    pub nodes: Vec<String>,
    /// Rows in its `events` table, duplicates included.
    pub events: u64,
}

/// The outcome of a merge (printed by `ingero merge`, as JSON with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    /// The database written.
    pub output: PathBuf,
    /// Each input, in the order given.
    pub inputs: Vec<InputReport>,
    /// Rows in the output's `events` table.
    pub events: u64,
    /// Rows in the output's `stack_traces` table (deduplicated by hash).
    pub stacks: u64,
    /// Rows in the output's `sessions` table (renumbered).
    pub sessions: u64,
    /// Rows in the output's `causal_chains` table.
    pub chains: u64,
    /// Events present in several inputs (with --allow-same-node), kept once.
    pub duplicates: u64,
    /// Events left out because their `timestamp` is not an integer (text
    /// or a real written by another tool): no analysis could place them.
    pub skipped: u64,
}

/// What an input holds, before copying.
struct Input {
    path: PathBuf,
    /// The name given to events when the database has no node column.
    forced: Option<String>,
    nodes: Vec<String>,
    events: u64,
}

fn input_err(path: &Path, e: impl std::fmt::Display) -> MergeError {
    MergeError::Input {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// What an input's `events` say about node names, before any is forced.
struct Facts {
    events: u64,
    /// Distinct non-empty node names of its events.
    names: Vec<String>,
    /// Some events (or all, without a node column) have no node name.
    unnamed: bool,
}

fn facts(path: &Path) -> Result<Facts, MergeError> {
    if !path.is_file() {
        return Err(input_err(path, "no such file"));
    }
    let conn = crate::store::open_read(path).map_err(|e| input_err(path, e))?;
    if !has_column(&conn, "events", "id").map_err(|e| input_err(path, e))? {
        return Err(input_err(path, "not an ingero database (no events table)"));
    }
    let events: i64 = conn
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .map_err(|e| input_err(path, e))?;
    let (mut names, mut unnamed) = (Vec::new(), true);
    if has_column(&conn, "events", "node").map_err(|e| input_err(path, e))? {
        unnamed = false;
        let mut stmt = conn
            .prepare(
                "SELECT DISTINCT CASE WHEN typeof(node) = 'text' AND node <> '' THEN node END FROM events",
            )
            .map_err(|e| input_err(path, e))?;
        let mut rows = stmt.query([]).map_err(|e| input_err(path, e))?;
        while let Some(r) = rows.next().map_err(|e| input_err(path, e))? {
            match r.get::<_, Option<String>>(0).map_err(|e| input_err(path, e))? {
                Some(n) => names.push(n),
                None => unnamed = true,
            }
        }
    }
    Ok(Facts {
        events: events.max(0) as u64,
        names,
        unnamed,
    })
}

/// An input's facts with the `--force-node` name it gets, if any.
fn inspect(
    path: &Path,
    facts: Facts,
    forced: &[ForcedNode],
    unnamed_inputs: usize,
) -> Result<Input, MergeError> {
    let for_this = forced
        .iter()
        .find(|f| f.path.as_deref().is_some_and(|p| same_file(p, path)));
    if !facts.unnamed {
        return Ok(Input {
            path: path.to_path_buf(),
            forced: None,
            nodes: facts.names,
            events: facts.events,
        });
    }
    let name = for_this
        .or_else(|| {
            forced
                .iter()
                .find(|f| f.path.is_none())
                .filter(|_| unnamed_inputs == 1)
        })
        .map(|f| f.name.clone())
        .ok_or_else(|| {
            MergeError::Refused(format!(
                "{} has no node column (or events without a node): name its node with --force-node {}=NAME",
                path.display(),
                path.display()
            ))
        })?;
    let mut nodes = facts.names;
    if !nodes.contains(&name) {
        nodes.push(name.clone());
    }
    Ok(Input {
        path: path.to_path_buf(),
        forced: Some(name),
        nodes,
        events: facts.events,
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Merges the inputs; `progress` receives human-readable lines.
pub fn merge(opts: &MergeOptions, progress: &mut dyn FnMut(&str)) -> Result<MergeReport, MergeError> {
    if opts.inputs.is_empty() {
        return Err(MergeError::Refused("give at least one database to merge".into()));
    }
    if opts.output.exists() && !opts.force {
        return Err(MergeError::Refused(format!(
            "{} already exists: pass --force to overwrite it",
            opts.output.display()
        )));
    }
    if opts.inputs.iter().any(|i| same_file(i, &opts.output)) {
        return Err(MergeError::Refused("the output cannot also be an input".into()));
    }
    if opts.output.is_dir() {
        return Err(MergeError::Refused(format!(
            "{} is a directory: give the path of a database file to create with -o",
            opts.output.display()
        )));
    }
    let all_facts: Vec<Facts> = opts.inputs.iter().map(|p| facts(p)).collect::<Result<_, _>>()?;
    let unnamed_inputs = all_facts.iter().filter(|f| f.unnamed).count();
    if unnamed_inputs == 0
        && let Some(f) = opts.force_node.iter().find(|f| f.path.is_none())
    {
        return Err(MergeError::Refused(format!(
            "every input already names the node of its events: drop --force-node {}",
            f.name
        )));
    }
    if let Some(f) = opts.force_node.iter().find(|f| {
        f.path
            .as_deref()
            .is_some_and(|p| !opts.inputs.iter().any(|i| same_file(i, p)))
    }) {
        return Err(MergeError::Refused(format!(
            "--force-node {}={} names a database that is not among the inputs: check its path",
            f.path.as_deref().unwrap_or(Path::new("")).display(),
            f.name
        )));
    }
    // A name for an input whose events all have one is refused, not ignored.
    for (path, facts) in opts.inputs.iter().zip(&all_facts) {
        if let Some(f) = opts
            .force_node
            .iter()
            .find(|f| !facts.unnamed && f.path.as_deref().is_some_and(|p| same_file(p, path)))
        {
            return Err(MergeError::Refused(format!(
                "{} already names the node of every event ({}): drop --force-node {}={}",
                path.display(),
                facts.names.join(", "),
                path.display(),
                f.name
            )));
        }
    }
    let inputs: Vec<Input> = opts
        .inputs
        .iter()
        .zip(all_facts)
        .map(|(p, f)| inspect(p, f, &opts.force_node, unnamed_inputs))
        .collect::<Result<_, _>>()?;
    let mut owners: BTreeMap<&str, Vec<&Path>> = BTreeMap::new();
    for i in &inputs {
        for n in &i.nodes {
            owners.entry(n.as_str()).or_default().push(&i.path);
        }
    }
    if !opts.allow_same_node
        && let Some((node, paths)) = owners.iter().find(|(_, p)| p.len() > 1)
    {
        return Err(MergeError::Refused(format!(
            "node {node} is in {}: pass --allow-same-node if they are copies or parts of one node's database",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" and ")
        )));
    }

    // A merge killed earlier leaves its work file and journal: start afresh.
    let partial = PathBuf::from(format!("{}.partial", opts.output.display()));
    let remove_partial = || {
        for suffix in ["", "-journal", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", partial.display()));
        }
    };
    remove_partial();
    let out_err = |e: &dyn std::fmt::Display| MergeError::Output {
        path: opts.output.clone(),
        message: e.to_string(),
    };
    let result = (|| {
        let conn = store::open_for_writing(&partial).map_err(|e| out_err(&e))?;
        conn.execute_batch("PRAGMA journal_mode = DELETE")
            .map_err(|e| out_err(&e))?;
        let mut report = MergeReport {
            output: opts.output.clone(),
            inputs: Vec::new(),
            events: 0,
            stacks: 0,
            sessions: 0,
            chains: 0,
            duplicates: 0,
            skipped: 0,
        };
        for input in &inputs {
            copy_input(&conn, input, opts.allow_same_node, &mut report, progress).map_err(|e| match e {
                CopyError::Sql(e) => input_err(&input.path, e),
            })?;
            report.inputs.push(InputReport {
                path: input.path.clone(),
                nodes: input.nodes.clone(),
                events: input.events,
            });
        }
        for statement in store::schema::DDL
            .iter()
            .filter(|s| s.starts_with("CREATE INDEX"))
        {
            conn.execute_batch(statement).map_err(|e| out_err(&e))?;
        }
        conn.execute_batch("PRAGMA journal_mode = DELETE")
            .map_err(|e| out_err(&e))?;
        let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).map(|n| n as u64);
        report.events = count("SELECT count(*) FROM events").map_err(|e| out_err(&e))?;
        report.stacks = count("SELECT count(*) FROM stack_traces").map_err(|e| out_err(&e))?;
        report.sessions = count("SELECT count(*) FROM sessions").map_err(|e| out_err(&e))?;
        report.chains = count("SELECT count(*) FROM causal_chains").map_err(|e| out_err(&e))?;
        Ok(report)
    })();
    match result {
        Ok(report) => std::fs::rename(&partial, &opts.output)
            .map(|()| report)
            .map_err(|e| {
                remove_partial();
                out_err(&e)
            }),
        Err(e) => {
            remove_partial();
            Err(e)
        }
    }
}
