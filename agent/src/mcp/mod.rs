//! `ingero mcp`: a Model Context Protocol server on stdio, so an AI
//! assistant can investigate one node's database or the whole fleet.
//!
//! Tools ([`tools`]): `query_fleet` over the agents of `--nodes` /
//! `fleet.nodes` (chains with the straggler verdict, fan-out SQL, per-node
//! operations, overview), through the fleet client and the analysis engine; and, with a
//! local database, `get_chains`, `run_sql` (the same read-only guard as
//! `ingero query`), `get_ops` and `get_stacks`. Answers are compact text
//! ([`answer`]); a failure of the tool itself (bad arguments, a refused
//! statement, no node answering) is a tool error with a sentence, never a
//! crash. Stdout carries the protocol only: nothing else is printed there.
//! Lines are checked before rmcp reads them ([`stdio`]), so a line that
//! is not JSON or a request without the `params` it needs gets its
//! JSON-RPC error instead of silence.

pub mod answer;
pub mod stdio;
pub mod tools;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use crate::{
    analysis::{self, NodeReport, straggler::NodeFigures},
    cli::McpArgs,
    config::{
        FileConfig, defaults,
        fleet::{FleetSetup, resolve},
    },
    error::CliError,
    readonly::{Limits, ReadOnlyDb},
    units::format_ns,
};
use answer::{DATA_NOTICE, clean, data};
use ingero_api::{OpsEndpoint, OverviewEndpoint, QueryRequest, Since as SinceWindow};
use ingero_fleet::{NodeAnswer, explain as fleet_explain, refusal, warnings};
use rmcp::{
    ErrorData as McpError, RoleServer, ServerHandler, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation, JsonObject,
        ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
    },
    service::RequestContext,
};
use serde_json::Value;
use tools::{FleetAction, QueryFleet, Since, Sql, Stacks};

/// Chains listed in one answer.
const MAX_CHAINS: usize = 12;

/// The server: where its data is.
#[derive(Debug, Clone)]
pub struct IngeroMcp {
    fleet: Option<FleetSetup>,
    db: Option<PathBuf>,
}

const INSTRUCTIONS: &str = "ingero traces CUDA calls and host events (CPU scheduling, block I/O, memory) of GPU training \
processes. When training is slow, call query_fleet with action=chains (or get_chains for a local database): it names the \
straggler node its peers wait for, the cause, and fixes. Then drill down with SQL (the tool descriptions hold the schema).";

/// `since` as the tools take it (`5m`, `all`); `None` when not given.
fn window_of(since: Option<&str>) -> Result<Option<SinceWindow>, String> {
    since.map(str::parse).transpose()
}

/// Warnings (nodes that did not answer, clocks off) as answer lines.
fn warning_lines<T>(answers: &[NodeAnswer<T>], fleet: &FleetSetup, corrected: bool) -> String {
    warnings(answers, fleet.skew_threshold, corrected)
        .iter()
        .fold(String::new(), |mut out, w| {
            out.push_str("Warning: ");
            out.push_str(&clean(w, 400));
            out.push('\n');
            out
        })
}

fn answered<T>(answers: &[NodeAnswer<T>]) -> Result<usize, String> {
    match answers.iter().filter(|a| a.result.is_ok()).count() {
        0 => Err(format!(
            "none of the {} node(s) answered:\n{}",
            answers.len(),
            answers
                .iter()
                .filter_map(|a| Some(format!("- {}: {}", a.label(), a.result.as_ref().err()?)))
                .collect::<Vec<_>>()
                .join("\n")
        )),
        n => Ok(n),
    }
}

impl IngeroMcp {
    async fn call(&self, name: &str, args: JsonObject) -> Result<String, String> {
        match name {
            tools::QUERY_FLEET => self.query_fleet(tools::parse(name, args)?).await,
            tools::GET_CHAINS => self.get_chains(tools::parse(name, args)?).await,
            tools::RUN_SQL => self.run_sql(tools::parse(name, args)?).await,
            tools::GET_OPS => self.get_ops(tools::parse(name, args)?).await,
            tools::GET_STACKS => self.get_stacks(tools::parse(name, args)?).await,
            _ => Err(format!("no tool named {}", clean(name, 64))),
        }
    }

    fn fleet(&self) -> Result<&FleetSetup, String> {
        self.fleet.as_ref().ok_or_else(|| {
            "no fleet configured: start `ingero mcp` with --nodes host:port,... or --fleet (fleet.nodes)"
                .to_owned()
        })
    }

    fn db(&self) -> Result<PathBuf, String> {
        self.db
            .clone()
            .ok_or_else(|| "no local database: start `ingero mcp` with --db PATH".to_owned())
    }

    async fn query_fleet(&self, q: QueryFleet) -> Result<String, String> {
        let fleet = self.fleet()?;
        let since = window_of(q.since.as_deref())?;
        match q.action {
            FleetAction::Chains => {
                let answers = fleet.fleet.explain(since).await;
                let n = answered(&answers)?;
                let nccl = crate::fleet_nccl::nccl_input(&answers, fleet.hang_after);
                let x = analysis::compare(
                    &fleet_explain::node_ops(&answers),
                    fleet_explain::chains(&answers),
                    nccl.as_ref(),
                );
                Ok(format!(
                    "{DATA_NOTICE}\n{}Fleet: {n} of {} agents answered; {} on {} node(s).\n{}{}{}",
                    warning_lines(&answers, fleet, true),
                    answers.len(),
                    answer::chain_counts(&x.chains),
                    x.figures.len(),
                    answer::verdict(&x),
                    answer::figures(&x.figures),
                    answer::chains(&x.chains, MAX_CHAINS),
                ))
            }
            FleetAction::Sql => {
                let sql = q.sql.ok_or("action=sql needs sql: one read-only SQL statement")?;
                let limit = tools::rows(q.limit)?;
                let request = QueryRequest {
                    sql,
                    limit: Some(limit),
                    timeout_ms: Some(defaults::MCP_SQL_TIMEOUT.as_millis() as u64),
                    since,
                };
                let rows = fleet.fleet.query(request).await;
                if let Err(e) = answered(&rows.answers) {
                    // Every node refusing the statement is the statement's fault: say why once.
                    return Err(
                        refusal(&rows.answers).map_or(e, |m| format!("the nodes refused the statement: {m}"))
                    );
                }
                let n = rows.answers.iter().filter(|a| a.result.is_ok()).count();
                let total = rows.answers.len();
                let combined = crate::readonly::QueryResult {
                    columns: rows.columns,
                    rows: rows.rows,
                    truncated: rows.truncated,
                    elapsed_ms: rows.elapsed_ms,
                };
                Ok(format!(
                    "{DATA_NOTICE}\n{}{}rows from {n} of {total} node(s)\n",
                    warning_lines(&rows.answers, fleet, false),
                    answer::table(&combined, limit * total),
                ))
            }
            FleetAction::Ops => {
                let answers = fleet
                    .fleet
                    .run(move |c| async move { c.get::<OpsEndpoint>(since).await })
                    .await;
                answered(&answers)?;
                let mut out = format!("{DATA_NOTICE}\n{}", warning_lines(&answers, fleet, false));
                let nodes: Vec<&ingero_api::NodeOps> = answers
                    .iter()
                    .filter_map(|a| a.result.as_ref().ok())
                    .flat_map(|v| v.nodes.iter())
                    .collect();
                let figures: Vec<NodeFigures> = nodes.iter().map(|n| NodeFigures::from_node(n)).collect();
                out.push_str(&answer::figures(&figures));
                for node in nodes {
                    out.push_str(&answer::ops(node, 8));
                }
                Ok(out)
            }
            FleetAction::Overview => {
                let answers = fleet
                    .fleet
                    .run(|c| async move { c.get::<OverviewEndpoint>(None).await })
                    .await;
                answered(&answers)?;
                let mut out = format!("{DATA_NOTICE}\n{}", warning_lines(&answers, fleet, false));
                for a in &answers {
                    match &a.result {
                        Ok(v) => out.push_str(&answer::overview(v)),
                        Err(e) => out.push_str(&format!(
                            "{}: no answer ({})\n",
                            clean(&a.label(), 100),
                            e.class()
                        )),
                    }
                }
                Ok(out)
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(PathBuf) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let db = self.db()?;
        tokio::task::spawn_blocking(move || f(db))
            .await
            .map_err(|e| format!("the tool failed: {e}"))?
    }

    async fn get_chains(&self, a: Since) -> Result<String, String> {
        let since = window_of(a.since.as_deref())?.and_then(SinceWindow::duration);
        self.blocking(move |db| {
            let (reports, nccl) = explain(&db, since)?;
            let comparison = analysis::compare_reports(&reports, nccl.as_ref());
            let verdict = (comparison.figures.len() > 1 || comparison.collectives.is_some())
                .then(|| answer::verdict(&comparison));
            let chains = comparison.chains;
            let events: u64 = reports.iter().map(|r| r.events).sum();
            Ok(format!(
                "{DATA_NOTICE}\n{} events from {} node(s); {}.\n{}{}",
                events,
                reports.len(),
                answer::chain_counts(&chains),
                verdict.unwrap_or_default(),
                if chains.is_empty() {
                    format!(
                        "No CUDA operation had a tail (p99 >= {}x p50) or a throughput drop with a concurrent cause.\n",
                        analysis::rules::TAIL_RATIO
                    )
                } else {
                    answer::chains(&chains, MAX_CHAINS)
                }
            ))
        })
        .await
    }

    async fn run_sql(&self, a: Sql) -> Result<String, String> {
        let limit = tools::rows(a.limit)?;
        self.blocking(move |db| {
            let r = ReadOnlyDb::open(&db, None)
                .and_then(|d| {
                    d.query(
                        &a.sql,
                        Limits {
                            timeout: defaults::MCP_SQL_TIMEOUT,
                            max_rows: limit,
                        },
                    )
                })
                .map_err(|e| e.to_string())?;
            Ok(format!("{DATA_NOTICE}\n{}", answer::table(&r, limit)))
        })
        .await
    }

    async fn get_ops(&self, a: Since) -> Result<String, String> {
        let since = window_of(a.since.as_deref())?.and_then(SinceWindow::duration);
        self.blocking(move |db| {
            let (reports, _) = explain(&db, since)?;
            let mut out = String::new();
            for r in &reports {
                out.push_str(&answer::ops(&r.node_ops(), 12));
            }
            if out.is_empty() {
                out.push_str("No events in the database.\n");
            }
            Ok(out)
        })
        .await
    }

    async fn get_stacks(&self, a: Stacks) -> Result<String, String> {
        let limit = match a.limit {
            None => 10,
            Some(n @ 1..=100) => n,
            Some(_) => return Err("limit must be between 1 and 100".into()),
        };
        self.blocking(move |db| stacks(&db, a.op.as_deref(), limit)).await
    }
}

fn open(db: &std::path::Path) -> Result<rusqlite::Connection, String> {
    ReadOnlyDb::open(db, None).map_err(|e| e.to_string())?;
    crate::store::open_read(db).map_err(|e| format!("cannot open {}: {e}", db.display()))
}

fn explain(
    db: &std::path::Path,
    since: Option<Duration>,
) -> Result<(Vec<NodeReport>, Option<analysis::findings::NcclInput>), String> {
    let conn = open(db)?;
    let range = crate::timewin::event_range(&conn).map_err(|e| e.to_string())?;
    let window = crate::timewin::resolve(range, since, None, None)?;
    let reports = analysis::explain(&conn, window, crate::clock::unix_ns())
        .map_err(|e| format!("analysis failed: {e}"))?;
    let hang_after = i64::try_from(crate::config::defaults::HANG_AFTER.as_nanos()).unwrap_or(i64::MAX);
    let nccl =
        analysis::database_nccl(&conn, window, hang_after).map_err(|e| format!("analysis failed: {e}"))?;
    Ok((reports, nccl))
}

fn stacks(db: &std::path::Path, op: Option<&str>, limit: usize) -> Result<String, String> {
    let conn = open(db)?;
    let err = |e: rusqlite::Error| format!("cannot read the stacks: {e}");
    let mut stmt = conn
        .prepare(
            "SELECT ifnull(o.name, e.source || '/' || e.op), count(*), sum(e.duration), max(e.duration), s.frames,
                    count(DISTINCT e.node)
             FROM events e JOIN stack_traces s ON s.hash = e.stack_hash
             LEFT JOIN ops o ON o.source_id = e.source AND o.op_id = e.op
             WHERE e.stack_hash != 0 AND (?1 IS NULL OR o.name = ?1)
             GROUP BY s.frames, e.source, e.op ORDER BY 3 DESC LIMIT ?2",
        )
        .map_err(err)?;
    let rows = stmt
        .query_map(rusqlite::params![op, limit as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
            ))
        })
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    if rows.is_empty() {
        return Ok(format!(
            "No stacks recorded{}: trace with `ingero trace --stack` to capture them.\n",
            op.map_or(String::new(), |o| format!(" for {}", data(o)))
        ));
    }
    let mut out = format!(
        "{DATA_NOTICE}\nStacks by total time (identical symbolized stacks of different processes counted together):\n"
    );
    for (i, (name, calls, total, max, frames, nodes)) in rows.iter().enumerate() {
        out.push_str(&format!(
            "{}. {} calls={calls} total={} max={} on {nodes} node(s)\n",
            i + 1,
            clean(name, 48),
            format_ns(*total as f64),
            format_ns(*max as f64)
        ));
        let frames: Vec<Value> = serde_json::from_str(frames).unwrap_or_default();
        for f in frames.iter().take(8) {
            let symbol = f["s"].as_str().filter(|s| !s.is_empty()).unwrap_or("?");
            let file = f["f"].as_str().filter(|s| !s.is_empty()).unwrap_or("?");
            out.push_str(&format!("   {} in {}\n", data(symbol), data(file)));
        }
        if frames.len() > 8 {
            out.push_str(&format!("   ({} more frames)\n", frames.len() - 8));
        }
    }
    Ok(out)
}

impl ServerHandler for IngeroMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("ingero", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tools::available(
            self.fleet.is_some(),
            self.db.is_some(),
        )))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let known = tools::available(self.fleet.is_some(), self.db.is_some());
        if !known.iter().any(|t| t.name == request.name) {
            return Err(McpError::invalid_params(
                format!("no tool named {}; see tools/list", clean(&request.name, 64)),
                None,
            ));
        }
        let result = match self
            .call(&request.name, request.arguments.unwrap_or_default())
            .await
        {
            Ok(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
            Err(message) => CallToolResult::error(vec![ContentBlock::text(message)]),
        };
        Ok(result.into())
    }
}

/// `ingero mcp`: serves until the client closes stdin.
pub fn run(args: &McpArgs, file: &FileConfig) -> Result<ExitCode, CliError> {
    // The assistant may use both a local database and the fleet.
    let fleet = resolve(&args.fleet, file, crate::config::fleet::Local::None)?;
    let db = match &args.db {
        Some(p) => {
            let p = crate::config::expand_home(p);
            ReadOnlyDb::open(&p, None)?;
            Some(p)
        }
        // The configured database, if there is one.
        None => crate::config::resolve_db(None, file)
            .ok()
            .filter(|p| ReadOnlyDb::open(p, None).is_ok()),
    };
    if fleet.is_none() && db.is_none() {
        return Err(CliError::BadInput(
            "ingero mcp needs something to read: --db PATH (a database) and/or --nodes host:port,... (agents)".into(),
        ));
    }
    let runtime = crate::runtime()?;
    runtime.block_on(async {
        let server = IngeroMcp { fleet, db };
        let (transport, written) = stdio::guard(tokio::io::stdin(), tokio::io::stdout());
        let outcome = async {
            let service = server
                .serve(transport)
                .await
                .map_err(|e| CliError::Failed(format!("the MCP session could not start: {e}")))?;
            service
                .waiting()
                .await
                .map_err(|e| CliError::Failed(format!("the MCP session failed: {e}")))?;
            Ok(ExitCode::SUCCESS)
        }
        .await;
        // rmcp has closed its side: every answer is on its way out.
        let _ = written.await;
        outcome
    })
}
