//! Causal chains (the wire type [`Chain`]): how they print (alone, and
//! with the common findings of a comparison said once), and how they are
//! stored in `causal_chains` (one row per chain id; ids carry the node and
//! the window start, so history accumulates instead of being overwritten)
//! and read back: all of them ([`load_stored`]), or only those another
//! tracer recorded live, told apart by their missing `window_from`
//! ([`load_recorded`], printed marked as such by [`render_recorded`]).

pub use ingero_api::{Chain, Severity, TimelineEntry};
use rusqlite::{Connection, params};

use super::common_mode::CommonFinding;
use crate::{text::sanitize, timewin::Window};

/// `[HIGH] [node] summary`, the timeline, `Root cause:` and `Fix:`. Every
/// string is sanitized: chains can come from a remote agent, and their
/// text names traced processes.
#[must_use]
pub fn render(chain: &Chain) -> String {
    let t = |s: &str| sanitize(s, 4000);
    let mut out = format!(
        "[{}] [{}] {}\n",
        chain.severity.as_str(),
        t(&chain.node),
        t(&chain.summary)
    );
    out.push_str("  Timeline:\n");
    for e in &chain.timeline {
        out.push_str(&format!("    [{:<6}] {}\n", t(&e.layer), t(&e.detail)));
    }
    out.push_str(&format!("  Root cause: {}\n", t(&chain.root_cause)));
    let fixes: Vec<String> = chain.recommendations.iter().map(|r| t(r)).collect();
    out.push_str(&format!("  Fix: {}\n", fixes.join("; ")));
    out
}

/// A common finding ([`CommonFinding`]) as a block: `[SEVERITY] on all N
/// nodes: ...`, the example's root cause (its node named) and fixes, and
/// the chains it stands for. Sanitized as [`render`].
#[must_use]
pub fn render_common(f: &CommonFinding) -> String {
    let t = |s: &str| sanitize(s, 4000);
    let fixes: Vec<String> = f.recommendations.iter().map(|r| t(r)).collect();
    format!(
        "[{}] {}\n  Root cause (as on {}, alike on the others): {}\n  Fix: {}\n  Stands for: {}\n",
        f.severity.as_str(),
        t(&f.summary),
        t(&f.example_node),
        t(&f.root_cause),
        fixes.join("; "),
        f.members
            .iter()
            .map(|m| format!("{} {}", t(&m.node), m.severity.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The chains to print, as text: with `all`, every chain in order; else
/// the node-specific chains first, then each common finding once, under a
/// line that says so. When nodes were compared, the LOW chains of nodes
/// other than the straggler are counted in one line instead of printed:
/// their slow calls cost little of the step time, and the on-call reader
/// should not have to read past them to reach what holds the job back.
/// `block` renders one chain (callers add their own lines).
#[must_use]
pub fn render_compared(
    comparison: &super::Comparison,
    all: bool,
    block: &dyn Fn(&Chain) -> String,
) -> String {
    let mut out = String::new();
    if all {
        for c in &comparison.chains {
            out.push('\n');
            out.push_str(&block(c));
        }
        return out;
    }
    let compared = comparison.compares_nodes();
    let straggler = comparison.straggler_node();
    let (shown, quiet): (Vec<&Chain>, Vec<&Chain>) = comparison
        .specific()
        .into_iter()
        .partition(|c| !compared || c.severity > Severity::Low || straggler == Some(c.node.as_str()));
    for c in shown {
        out.push('\n');
        out.push_str(&block(c));
    }
    if !quiet.is_empty() {
        let nodes: std::collections::BTreeSet<String> =
            quiet.iter().map(|c| sanitize(&c.node, 200)).collect();
        let nodes: Vec<String> = nodes.into_iter().collect();
        out.push_str(&format!(
            "\n{} LOW chain{} on {} not shown: slow calls that cost little of the step time{} (--all lists them).\n",
            quiet.len(),
            if quiet.len() == 1 { "" } else { "s" },
            nodes.join(", "),
            if straggler.is_some() {
                ", on nodes that wait for the straggler anyway"
            } else {
                ""
            },
        ));
    }
    if comparison.common.is_empty() {
        return out;
    }
    let n = comparison.common.len();
    let chains: usize = comparison.common.iter().map(|f| f.members.len()).sum();
    out.push_str(&format!(
        "\nCOMMON TO ALL NODES - {n} condition{} seen on every node, said once for its {chains} chains (--all lists them):\n",
        if n == 1 { "" } else { "s" },
    ));
    for f in &comparison.common {
        out.push('\n');
        out.push_str(&render_common(f));
    }
    out
}

/// A chain another tracer recorded live ([`load_recorded`]): as
/// [`render`], marked `[recorded live]`, with when it was detected.
#[must_use]
pub fn render_recorded(chain: &Chain) -> String {
    let block = render(chain);
    let (first, rest) = block.split_once('\n').unwrap_or((&block, ""));
    let sev = format!("[{}] ", chain.severity.as_str());
    let node = if chain.node.is_empty() {
        String::new()
    } else {
        format!("[{}] ", sanitize(&chain.node, 4000))
    };
    let summary = first
        .strip_prefix(&sev)
        .and_then(|x| x.strip_prefix(&format!("[{}] ", sanitize(&chain.node, 4000))))
        .unwrap_or(first);
    // The original ingero stores no fixes as ''.
    let rest = rest.strip_suffix("  Fix: \n").unwrap_or(rest);
    format!(
        "{sev}[recorded live] {node}{summary}\n  Detected: {} by the tracer's live engine (id {})\n{rest}",
        crate::timewin::format_instant(chain.detected_at),
        sanitize(&chain.id, 200)
    )
}

/// The chains another tracer recorded, as a section after this engine's:
/// a header saying whose they are, then each with [`render_recorded`].
/// Empty without any.
#[must_use]
pub fn render_recorded_section(recorded: &[Chain]) -> String {
    if recorded.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\nRECORDED LIVE BY THE TRACER - {} chain(s) the tracer's own engine found while capturing, as stored in causal_chains (not found by this engine's rules; shown as recorded):\n",
        recorded.len()
    );
    for c in recorded {
        out.push('\n');
        out.push_str(&render_recorded(c));
    }
    out
}

/// Writes chains to `causal_chains` (insert or replace by id).
pub fn store(conn: &Connection, chains: &[Chain]) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    {
        let mut stmt = tx.prepare(
            "INSERT OR REPLACE INTO causal_chains(id, detected_at, severity, summary, root_cause, explanation,
                 recommendations, cuda_op, cuda_p99_us, cuda_p50_us, tail_ratio, timeline, node,
                 window_from, window_to, peak_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        )?;
        for c in chains {
            stmt.execute(params![
                c.id,
                c.detected_at,
                c.severity.as_str(),
                c.summary,
                c.root_cause,
                c.explanation,
                serde_json::to_string(&c.recommendations).unwrap_or_default(),
                c.cuda_op,
                c.p99_us.round() as i64,
                c.p50_us.round() as i64,
                c.tail_ratio,
                serde_json::to_string(&c.timeline).unwrap_or_default(),
                c.node,
                c.window.from,
                c.window.to,
                c.peak_at,
            ])?;
        }
    }
    tx.commit()
}

/// Chains stored in a database detected at or after `since` (Unix ns),
/// most severe first: this engine's and any recorded by another tracer.
/// Columns an older table lacks read as their defaults.
pub fn load_stored(conn: &Connection, since: i64) -> rusqlite::Result<Vec<Chain>> {
    load_where(conn, "detected_at >= ?1 AND detected_at <= ?2", since, i64::MAX)
}

/// Chains another tracer recorded in the database, detected between `from`
/// and `to` (Unix ns), most severe first: the rows this engine did not
/// write. [`store`] always fills `window_from`; the original ingero's live
/// engine has no such column (`causal_chains` gains it, NULL, when this
/// engine first stores a chain there), so its rows are those without one.
pub fn load_recorded(conn: &Connection, from: i64, to: i64) -> rusqlite::Result<Vec<Chain>> {
    if !crate::store::schema::table_exists(conn, "causal_chains")? {
        return Ok(Vec::new());
    }
    let recorded = if crate::store::schema::has_column(conn, "causal_chains", "window_from")? {
        "window_from IS NULL AND "
    } else {
        ""
    };
    load_where(
        conn,
        &format!("{recorded}detected_at >= ?1 AND detected_at <= ?2"),
        from,
        to,
    )
}

/// Rows of `causal_chains` matching `condition` (over `?1`, `?2`).
fn load_where(conn: &Connection, condition: &str, a: i64, b: i64) -> rusqlite::Result<Vec<Chain>> {
    let has = |c: &str| crate::store::schema::has_column(conn, "causal_chains", c);
    let or = |c: &str, default: &str| -> rusqlite::Result<String> {
        Ok(if has(c)? { c.to_owned() } else { default.to_owned() })
    };
    let text = |c: &str| -> rusqlite::Result<String> {
        Ok(if has(c)? {
            format!("ifnull(CAST({c} AS TEXT), '')")
        } else {
            "''".to_owned()
        })
    };
    let num = |c: &str| -> rusqlite::Result<String> {
        Ok(if has(c)? {
            format!("ifnull(CAST({c} AS REAL), 0)")
        } else {
            "0".to_owned()
        })
    };
    let at = |c: &str| -> rusqlite::Result<String> {
        Ok(format!(
            "CAST(ifnull({}, detected_at) AS INTEGER)",
            or(c, "NULL")?
        ))
    };
    let sql = format!(
        "SELECT CAST(id AS TEXT), {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, detected_at, {}, {}, {}
         FROM causal_chains WHERE typeof(detected_at) = 'integer' AND {condition}",
        text("node")?,
        text("severity")?,
        text("summary")?,
        text("root_cause")?,
        text("explanation")?,
        text("recommendations")?,
        text("cuda_op")?,
        num("cuda_p99_us")?,
        num("cuda_p50_us")?,
        num("tail_ratio")?,
        text("timeline")?,
        at("window_from")?,
        at("window_to")?,
        at("peak_at")?,
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([a, b], |r| {
        let recommendations: String = r.get(6)?;
        let timeline: String = r.get(11)?;
        let detected_at: i64 = r.get(12)?;
        Ok(Chain {
            id: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
            node: r.get(1)?,
            severity: Severity::parse(&r.get::<_, String>(2)?).unwrap_or(Severity::Low),
            score: 0.0,
            summary: r.get(3)?,
            root_cause: r.get(4)?,
            explanation: r.get(5)?,
            recommendations: serde_json::from_str(&recommendations).unwrap_or_default(),
            cuda_op: r.get(7)?,
            p99_us: r.get::<_, f64>(8)?,
            p50_us: r.get::<_, f64>(9)?,
            tail_ratio: r.get(10)?,
            timeline: serde_json::from_str(&timeline).unwrap_or_default(),
            detected_at,
            window: Window {
                from: r.get(13)?,
                to: r.get(14)?,
            },
            peak_at: r.get(15)?,
        })
    })?;
    let mut chains: Vec<Chain> = rows.collect::<Result<_, _>>()?;
    chains.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(b.detected_at.cmp(&a.detected_at))
            .then(a.id.cmp(&b.id))
    });
    Ok(chains)
}
