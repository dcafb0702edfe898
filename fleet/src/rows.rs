//! One SQL statement on every agent, the rows put together.
//!
//! Every answering node's rows come back behind a `node` column (the
//! agent's own node name), unless the statement already selects a column
//! named `node` (in any case): then its rows and columns are kept as they
//! are, so the table never has two `node` columns (and a `--merge` over it
//! can name `node` unambiguously).
//!
//! The columns most nodes answered with win (the first such on a tie); a
//! node whose columns differ (another schema version) becomes a failed node
//! with a sentence, never mixed in. An agent reporting the node name of an
//! earlier one becomes a failed node too
//! ([`crate::FleetError::DuplicateNode`]), so no row is counted twice. A
//! node whose answer was cut at the row limit is listed in
//! [`FleetRows::cut`], so the caller can say so.

use ingero_api::{QueryAnswer, QueryRequest};
use serde_json::Value;

use crate::{Fleet, FleetError, NodeAnswer};

/// A fan-out query's answers and their rows, with a `node` column first.
#[derive(Debug)]
pub struct FleetRows {
    /// Every node's answer, in the order of the addresses.
    pub answers: Vec<NodeAnswer<QueryAnswer>>,
    /// `node` and then the statement's columns, or the statement's columns
    /// alone when one of them is already `node`.
    pub columns: Vec<String>,
    /// Every answering node's rows, each behind its node name (unless the
    /// statement selects `node` itself).
    pub rows: Vec<Vec<Value>>,
    /// Some node's answer was cut at the row limit.
    pub truncated: bool,
    /// Nodes whose answer was cut at the row limit, and how many rows came.
    pub cut: Vec<(String, usize)>,
    /// Time the whole fan-out took.
    pub elapsed_ms: f64,
}

impl Fleet {
    /// Sends `request` to every agent and puts the rows together.
    pub async fn query(&self, request: QueryRequest) -> FleetRows {
        let started = std::time::Instant::now();
        let mut answers = self
            .run(move |client| {
                let request = request.clone();
                async move { client.query(&request).await }
            })
            .await;
        for a in &mut answers {
            if let Ok(q) = &a.result
                && a.node.is_none()
                && !q.node.is_empty()
            {
                a.node = Some(q.node.clone());
            }
        }
        combine(answers, started)
    }
}

fn combine(mut answers: Vec<NodeAnswer<QueryAnswer>>, started: std::time::Instant) -> FleetRows {
    crate::refuse_duplicate_nodes(&mut answers);
    // The columns most nodes answered with (the first such on a tie).
    let mut votes: Vec<(&Vec<String>, usize)> = Vec::new();
    for q in answers.iter().filter_map(|a| a.result.as_ref().ok()) {
        match votes.iter_mut().find(|(c, _)| **c == q.columns) {
            Some((_, n)) => *n += 1,
            None => votes.push((&q.columns, 1)),
        }
    }
    let mut best: Option<(&Vec<String>, usize)> = None;
    for (c, n) in votes {
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((c, n));
        }
    }
    let agreeing = best.map_or(0, |(_, n)| n);
    let columns: Option<Vec<String>> = best.map(|(c, _)| c.clone());
    for a in &mut answers {
        if let Ok(q) = &a.result
            && Some(&q.columns) != columns.as_ref()
        {
            a.result = Err(FleetError::Decode(format!(
                "its columns {:?} differ from the {agreeing} other node(s)' {:?}: run the same ingero version on every agent",
                q.columns,
                columns.clone().unwrap_or_default()
            )));
        }
    }
    let columns = columns.unwrap_or_default();
    let has_node = selects_node(&columns);
    let mut rows = Vec::new();
    let mut truncated = false;
    let mut cut = Vec::new();
    for a in &answers {
        if let Ok(q) = &a.result {
            if has_node {
                rows.extend(q.rows.iter().cloned());
            } else {
                let node = Value::String(a.name().to_owned());
                rows.extend(
                    q.rows
                        .iter()
                        .map(|r| std::iter::once(node.clone()).chain(r.iter().cloned()).collect()),
                );
            }
            if q.truncated {
                truncated = true;
                cut.push((a.name().to_owned(), q.rows.len()));
            }
        }
    }
    FleetRows {
        answers,
        columns: if has_node {
            columns
        } else {
            std::iter::once("node".to_owned()).chain(columns).collect()
        },
        rows,
        truncated,
        cut,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
    }
}

/// The statement already has a `node` column (SQL names are not case
/// sensitive, so neither is this).
fn selects_node(columns: &[String]) -> bool {
    columns.iter().any(|c| c.eq_ignore_ascii_case("node"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(node: &str, columns: &[&str], rows: usize, truncated: bool) -> NodeAnswer<QueryAnswer> {
        NodeAnswer {
            address: format!("{node}:8080"),
            node: Some(node.into()),
            result: Ok(QueryAnswer {
                node: node.into(),
                columns: columns.iter().map(|c| (*c).to_owned()).collect(),
                rows: (0..rows).map(|i| vec![Value::from(i)]).collect(),
                truncated,
                elapsed_ms: 0.0,
                error: None,
            }),
            clock: None,
            elapsed_ms: 1.0,
        }
    }

    #[test]
    fn rows_come_behind_their_node_and_odd_columns_fail_their_node() {
        let rows = combine(
            vec![
                answer("a", &["n"], 2, false),
                answer("b", &["x"], 5, false),
                answer("c", &["n"], 1, true),
            ],
            std::time::Instant::now(),
        );
        assert_eq!(rows.columns, ["node", "n"]);
        assert_eq!(rows.rows.len(), 3);
        assert_eq!(rows.rows[2], vec![Value::from("c"), Value::from(0)]);
        assert!(rows.answers[1].result.is_err(), "b's columns differ");
        assert_eq!(rows.cut, vec![("c".to_owned(), 1)]);
        assert!(rows.truncated);
    }

    #[test]
    fn the_majority_of_columns_wins_and_a_duplicate_node_is_left_out() {
        let rows = combine(
            vec![
                answer("odd", &["x"], 5, false),
                answer("a", &["n"], 2, false),
                answer("b", &["n"], 3, false),
                answer("a", &["n"], 2, false),
            ],
            std::time::Instant::now(),
        );
        assert_eq!(rows.columns, ["node", "n"]);
        assert_eq!(rows.rows.len(), 5, "a counted once, b, not odd");
        assert!(rows.answers[0].result.is_err(), "odd is outvoted");
        assert!(matches!(
            rows.answers[3].result,
            Err(FleetError::DuplicateNode { ref node, .. }) if node == "a"
        ));
    }

    #[test]
    fn a_statement_that_selects_node_gets_no_second_node_column() {
        let mut a = answer("a", &["node", "source", "cnt"], 2, false);
        let mut b = answer("b", &["NODE", "source", "cnt"], 1, false);
        for x in [&mut a, &mut b] {
            if let Ok(q) = &mut x.result {
                for r in &mut q.rows {
                    *r = vec![Value::from("from-the-row"), Value::from(4), Value::from(7)];
                }
            }
        }
        let rows = combine(vec![a], std::time::Instant::now());
        assert_eq!(rows.columns, ["node", "source", "cnt"]);
        assert_eq!(rows.rows.len(), 2);
        assert_eq!(
            rows.rows[0],
            vec![Value::from("from-the-row"), Value::from(4), Value::from(7)],
            "the row's own node value, not the agent's name in front of it"
        );
        let rows = combine(vec![b], std::time::Instant::now());
        assert_eq!(rows.columns, ["NODE", "source", "cnt"], "in any case");
        assert_eq!(rows.rows[0].len(), 3);
    }
}
