//! The tools `ingero mcp` offers: their names, descriptions (with the SQL
//! schema an assistant needs, generated from the catalog so it cannot
//! drift from the database), input schemas, and argument types. Arguments
//! are parsed strictly: an unknown field or a wrong type is a tool error
//! that says what was expected.

use std::sync::Arc;

use agent_common::catalog::{OPS, SOURCES};
use rmcp::model::{JsonObject, Tool, ToolAnnotations};
use serde::Deserialize;
use serde_json::json;

/// Name of the fleet tool: asks every configured agent (argument `QueryFleet`).
pub const QUERY_FLEET: &str = "query_fleet";
/// Name of the tool giving the local database's causal chains (argument `Since`).
pub const GET_CHAINS: &str = "get_chains";
/// Name of the tool running read-only SQL on the local database (argument `Sql`).
pub const RUN_SQL: &str = "run_sql";
/// Name of the tool giving per-operation latency percentiles (argument `Since`).
pub const GET_OPS: &str = "get_ops";
/// Name of the tool giving the costliest call stacks (argument `Stacks`).
pub const GET_STACKS: &str = "get_stacks";

/// Rows an SQL answer carries when the call gives no `limit`.
pub const DEFAULT_ROWS: usize = 50;
/// Largest `limit` an SQL tool call may ask for; more is a tool error.
pub const MAX_ROWS: usize = 1000;

/// What `query_fleet` asks the agents for (`action` in its arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FleetAction {
    /// Causal chains from every node and the straggler verdict.
    Chains,
    /// One read-only SQL statement on every node (needs `sql`).
    Sql,
    /// Per-node CUDA and driver call latency percentiles.
    Ops,
    /// Events per node and source, sessions, drops, tracing state.
    Overview,
}

/// Arguments of `query_fleet`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryFleet {
    /// What to ask every agent.
    pub action: FleetAction,
    /// Window counted back from each node's newest event (`5m`, `all`);
    /// `None`: the agents' default.
    pub since: Option<String>,
    /// The statement, required with `action=sql`.
    pub sql: Option<String>,
    /// With `action=sql`: rows per node, 1 to `MAX_ROWS` (default `DEFAULT_ROWS`).
    pub limit: Option<usize>,
}

/// Arguments of the tools that only take a window (`get_chains`, `get_ops`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    /// Window counted back from the newest event (`5m`, `all`); `None`: all.
    pub since: Option<String>,
}

/// Arguments of `run_sql`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sql {
    /// One read-only SQL statement.
    pub sql: String,
    /// Rows to return, 1 to `MAX_ROWS` (default `DEFAULT_ROWS`).
    pub limit: Option<usize>,
}

/// Arguments of `get_stacks`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stacks {
    /// Only stacks of this operation, by name (e.g. `cuLaunchKernel`).
    pub op: Option<String>,
    /// Stacks to return, 1 to 100 (default 10).
    pub limit: Option<usize>,
}

/// Parses a tool's arguments, or says what was wrong.
pub fn parse<T: serde::de::DeserializeOwned>(tool: &str, args: JsonObject) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::Object(args))
        .map_err(|e| format!("invalid arguments for {tool}: {e}; see the tool's input schema"))
}

/// The row limit asked for, within bounds.
pub fn rows(limit: Option<usize>) -> Result<usize, String> {
    match limit {
        None => Ok(DEFAULT_ROWS),
        Some(0) => Err("limit must be at least 1".into()),
        Some(n) if n > MAX_ROWS => Err(format!("limit must be at most {MAX_ROWS}")),
        Some(n) => Ok(n),
    }
}

/// What an assistant needs to write SQL against an ingero database.
#[must_use]
pub fn sql_guide() -> String {
    let mut g = String::from(
        "SQLite, read-only (writes, ATTACH and PRAGMA writes are refused; queries stop at a deadline).\n\
         Tables:\n\
         - events(id TEXT, timestamp INT Unix ns at the END of the call/span/request, pid, tid, source, op, duration INT ns, \
         arg0, arg1, arg2, ret_code, stack_hash, node TEXT, rank, local_rank, world_size, stream, cpu, session_id); \
         a call started at timestamp - duration.\n\
         - ops(source_id, op_id, name, description) and sources(id, name, description) name every (source, op).\n\
         - process_names(node, pid, name, seen_at); stack_traces(hash, ips, frames JSON [{\"s\": symbol, \"f\": file, \"i\": ip}]) \
         joined on events.stack_hash.\n\
         - sessions(id, node, started_at, stopped_at, hostname, rank, world_size, events_stored, events_dropped, libraries, flags); \
         drops(session_id, node, source, op, reason, count); system_snapshots(node, timestamp, cpu_pct, mem_pct, mem_avail, swap_mb, \
         load_avg, swap_in, swap_out); event_aggregates(node, bucket, source, op, pid, count, sum_dur, min_dur, max_dur, sum_arg0); \
         causal_chains(id, node, severity, summary, root_cause, explanation, recommendations, detected_at, peak_at).\n\
         Codes (source: op name = what arg0/arg1/arg2 hold):\n",
    );
    for s in SOURCES {
        g.push_str(&format!("source {} {} ({}):", s.id, s.name, s.description));
        for o in OPS.iter().filter(|o| o.source == s.id) {
            g.push_str(&format!(" {} {} = {};", o.op, o.name, o.description));
        }
        g.push('\n');
    }
    g.push_str(
        "Example: SELECT o.name, count(*), avg(e.duration)/1e3 AS avg_us FROM events e \
         JOIN ops o ON o.source_id = e.source AND o.op_id = e.op GROUP BY o.name ORDER BY 3 DESC",
    );
    g
}

fn schema(v: serde_json::Value) -> Arc<JsonObject> {
    match v {
        serde_json::Value::Object(o) => Arc::new(o),
        _ => Arc::new(JsonObject::new()),
    }
}

/// The schema of a tool whose only argument is `since`.
fn since_only() -> Arc<JsonObject> {
    schema(json!({
        "type": "object",
        "properties": { "since": { "type": "string", "description": SINCE } },
        "additionalProperties": false
    }))
}

const SINCE: &str = "Only the last DURATION of the recording, counted back from its newest event (e.g. 30s, 5m, 2h), or 'all'.";

fn read_only(mut tool: Tool, open_world: bool) -> Tool {
    let mut a = ToolAnnotations::new();
    a.read_only_hint = Some(true);
    a.destructive_hint = Some(false);
    a.idempotent_hint = Some(true);
    a.open_world_hint = Some(open_world);
    tool.annotations = Some(a);
    tool
}

/// The tools on offer: the fleet tool when agents are configured, the
/// local tools when a database is.
#[must_use]
pub fn available(fleet: bool, local: bool) -> Vec<Tool> {
    let guide = sql_guide();
    let mut tools = Vec::new();
    if fleet {
        tools.push(read_only(
            Tool::new(
                QUERY_FLEET,
                format!(
                    "Ask every ingero agent of the GPU training fleet at once. Start with action=chains when training is slow: \
                     causal chains from all nodes (most severe first), which node is the straggler its peers wait for and why, \
                     and each node's figures. action=sql runs one read-only SQL statement on every node (rows come back with \
                     a node column; needs sql). action=ops: per-node CUDA and driver call latency (count, p50, p95, p99). \
                     action=overview: events per node and source, sessions, drops, whether it is tracing now. Nodes that did \
                     not answer and clocks that differ from ours come first in the answer.\n{guide}"
                ),
                schema(json!({
                    "type": "object",
                    "properties": {
                        "action": { "type": "string", "enum": ["chains", "sql", "ops", "overview"] },
                        "since": { "type": "string", "description": SINCE },
                        "sql": { "type": "string", "description": "With action=sql: one read-only SQL statement." },
                        "limit": { "type": "integer", "minimum": 1, "maximum": MAX_ROWS, "description": "With action=sql: rows per node (default 50)." }
                    },
                    "required": ["action"],
                    "additionalProperties": false
                })),
            ),
            true,
        ));
    }
    if local {
        tools.push(read_only(
            Tool::new(
                GET_CHAINS,
                "Causal chains of the local ingero database: slow CUDA operations (p99 far above p50) with the host cause \
                 (CPU preemption, block I/O, memory pressure) and fixes, most severe first; with several nodes (a merged \
                 database), also the straggler.",
                since_only(),
            ),
            false,
        ));
        tools.push(read_only(
            Tool::new(
                RUN_SQL,
                format!("One read-only SQL statement on the local ingero database.\n{guide}"),
                schema(json!({
                    "type": "object",
                    "properties": {
                        "sql": { "type": "string", "description": "One SELECT (or WITH ... SELECT) statement." },
                        "limit": { "type": "integer", "minimum": 1, "maximum": MAX_ROWS, "description": "Rows to return (default 50)." }
                    },
                    "required": ["sql"],
                    "additionalProperties": false
                })),
            ),
            false,
        ));
        tools.push(read_only(
            Tool::new(
                GET_OPS,
                "Per-node latency of every CUDA runtime and driver operation in the local database (count, p50, p95, p99, \
                 max, total time), slowest total first.",
                since_only(),
            ),
            false,
        ));
        tools.push(read_only(
            Tool::new(
                GET_STACKS,
                "The call stacks behind the most time spent in CUDA calls (recorded with `ingero trace --stack`), \
                 most total time first: calls, total and max duration, and the frames (symbol and file).",
                schema(json!({
                    "type": "object",
                    "properties": {
                        "op": { "type": "string", "description": "Only this operation, by name (e.g. cuLaunchKernel)." },
                        "limit": { "type": "integer", "minimum": 1, "maximum": 100, "description": "Stacks to return (default 10)." }
                    },
                    "additionalProperties": false
                })),
            ),
            false,
        ));
    }
    tools
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guide_names_every_operation() {
        let g = sql_guide();
        for o in OPS {
            assert!(g.contains(o.name), "{} missing", o.name);
        }
        assert!(g.contains("events(") && g.contains("stack_traces("));
    }

    #[test]
    fn arguments_are_parsed_strictly() {
        let args = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
        let ok: QueryFleet =
            parse(QUERY_FLEET, args(json!({ "action": "sql", "sql": "SELECT 1" }))).expect("valid");
        assert_eq!(ok.action, FleetAction::Sql);
        for bad in [
            json!({ "action": "drop" }),
            json!({ "action": "sql", "oops": 1 }),
            json!({ "since": "5m" }),
        ] {
            let e = parse::<QueryFleet>(QUERY_FLEET, args(bad)).expect_err("invalid");
            assert!(e.starts_with("invalid arguments for query_fleet"), "{e}");
        }
        assert_eq!(rows(None), Ok(DEFAULT_ROWS));
        assert!(rows(Some(0)).is_err() && rows(Some(MAX_ROWS + 1)).is_err());
    }

    #[test]
    fn only_what_is_configured_is_offered() {
        let names = |t: Vec<Tool>| t.into_iter().map(|t| t.name.to_string()).collect::<Vec<_>>();
        assert_eq!(names(available(true, false)), [QUERY_FLEET]);
        assert_eq!(
            names(available(false, true)),
            [GET_CHAINS, RUN_SQL, GET_OPS, GET_STACKS]
        );
    }
}
