//! `ingero trace`: configuration layering for the tracer, the async
//! runtime it runs on, and the closing summary.

use std::process::ExitCode;

use crate::{
    DEFAULT_MAX_DB, DEFAULT_RINGBUF,
    cli::TraceArgs,
    config::{self, FileConfig},
    error::CliError,
    trace::{self, TraceOptions, live::group_digits, probes::Families},
};

fn trace_options(args: &TraceArgs, file: &FileConfig) -> Result<TraceOptions, CliError> {
    let t = &file.trace;
    let flags = serde_json::json!({
        "argv": std::env::args().skip(1).collect::<Vec<_>>(),
    });
    let node = config::resolve_node(args.node.as_deref(), file)?;
    let db = config::resolve_db(args.db.as_deref(), file)?;
    let api = super::api_options(
        &args.api,
        file,
        &node,
        &db,
        Some(std::time::Duration::from_secs(300)),
    )?;
    Ok(TraceOptions {
        node,
        pids: args.pids.clone(),
        duration: args.duration.map(|d| d.0),
        db,
        max_db_size: Some(args.max_db.or(file.agent.max_db_size).unwrap_or(DEFAULT_MAX_DB).0),
        stack: args.stack || t.stack.unwrap_or(false),
        cuda_libs: args
            .cuda_lib
            .iter()
            .chain(&t.cuda_lib)
            .map(|p| config::expand_home(p))
            .collect(),
        cudart_libs: args
            .cudart_lib
            .iter()
            .chain(&t.cudart_lib)
            .map(|p| config::expand_home(p))
            .collect(),
        json: args.json,
        ringbuf_bytes: args.ringbuf_size.or(t.ringbuf_size).unwrap_or(DEFAULT_RINGBUF).0,
        families: Families {
            sched: !args.no_sched && t.sched.unwrap_or(true),
            io: !args.no_io && t.io.unwrap_or(true),
            memory: !args.no_memory && t.memory.unwrap_or(true),
        },
        flags_json: flags.to_string(),
        live: !args.quiet,
        api,
    })
}

pub fn run(args: &TraceArgs, file: &FileConfig) -> Result<ExitCode, CliError> {
    let opts = trace_options(args, file)?;
    let runtime = crate::cmd::runtime()?;
    let outcome = runtime.block_on(trace::run(opts))?;
    eprintln!(
        "ingero: {}: {} events stored in {} (node {}, session {}) over {:.1}s, {} dropped",
        outcome.stop_reason,
        group_digits(outcome.events),
        outcome.db.display(),
        outcome.node,
        outcome.session_id,
        outcome.seconds,
        group_digits(outcome.dropped),
    );
    if outcome.dropped > 0 {
        eprintln!(
            "ingero: warning: {} events could not be delivered (counted per probe in the drops table); \
             a larger --ringbuf-size helps",
            group_digits(outcome.dropped)
        );
    }
    Ok(ExitCode::SUCCESS)
}
