//! One request to many agents at once, with a clock exchange beside it.
//!
//! [`Fleet::run`] calls the same operation on every agent in parallel, at
//! most `concurrency` at a time, each bounded by the per-request timeout
//! and all by one overall deadline. Beside each operation (concurrently,
//! so it adds no latency) a few `/api/v1/time` exchanges estimate that
//! agent's clock offset ([`crate::skew`]) and learn its node name. A node
//! that fails is an answer like any other, with its error: the caller
//! shows what it has and says what is missing ([`Outcome`]).

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use serde::Serialize;
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};

use crate::{
    ClientTls,
    client::{AgentClient, FleetError, TimeSample},
    skew::{self, ClockEstimate, format_offset},
};

/// How a fan-out is bounded.
#[derive(Debug, Clone, Copy)]
pub struct FleetOptions {
    /// Agents asked at once.
    pub concurrency: usize,
    /// Longest one request may take.
    pub timeout: Duration,
    /// Longest the whole fan-out may take.
    pub deadline: Duration,
    /// Clock exchanges per agent (0: none).
    pub clock_samples: usize,
    /// Largest answer read from one agent, bytes (past it the node fails).
    pub max_answer_bytes: u64,
}

/// One agent's part of a fan-out.
#[derive(Debug, Clone, Serialize)]
pub struct NodeAnswer<T> {
    /// `host:port` as configured.
    pub address: String,
    /// The agent's node name, when it told us.
    pub node: Option<String>,
    /// The operation's answer, or why this node gave none (left out of the
    /// serialised form: callers render errors themselves).
    #[serde(skip)]
    pub result: Result<T, FleetError>,
    /// This agent's clock offset, when at least one clock exchange succeeded.
    pub clock: Option<ClockEstimate>,
    /// Wall time this node's part of the fan-out took, in ms (waiting for a
    /// concurrency slot included).
    pub elapsed_ms: f64,
}

impl<T> NodeAnswer<T> {
    /// The node name, else the address.
    #[must_use]
    pub fn name(&self) -> &str {
        self.node.as_deref().unwrap_or(&self.address)
    }

    /// `gpu-node-01 (10.0.0.1:8080)`, or the address alone.
    #[must_use]
    pub fn label(&self) -> String {
        match &self.node {
            Some(n) if *n != self.address => format!("{n} ({})", self.address),
            _ => self.address.clone(),
        }
    }
}

/// How a fan-out went as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every node answered.
    AllAnswered,
    /// Some nodes answered and some did not: results are incomplete.
    Partial,
    /// No node answered.
    NoneAnswered,
}

impl Outcome {
    /// How the fan-out that gave `answers` went.
    #[must_use]
    pub fn of<T>(answers: &[NodeAnswer<T>]) -> Self {
        let ok = answers.iter().filter(|a| a.result.is_ok()).count();
        if ok == answers.len() {
            Self::AllAnswered
        } else if ok == 0 {
            Self::NoneAnswered
        } else {
            Self::Partial
        }
    }
}

/// Turns the answer of every agent that reports the node name of an
/// earlier answering agent into a [`FleetError::DuplicateNode`], so two
/// agents serving the same node (or the same database) are never counted
/// twice. Answers without a node name are left as they are.
pub fn refuse_duplicate_nodes<T>(answers: &mut [NodeAnswer<T>]) {
    let mut seen: HashMap<String, String> = HashMap::new();
    for a in answers.iter_mut() {
        let (Ok(_), Some(node)) = (&a.result, &a.node) else {
            continue;
        };
        if let Some(first) = seen.get(node) {
            a.result = Err(FleetError::DuplicateNode {
                node: node.clone(),
                first: first.clone(),
            });
        } else {
            seen.insert(node.clone(), a.address.clone());
        }
    }
}

/// When no node answered: the message of a node that was reached but
/// refused the request itself (bad SQL, a write, a bad window, its
/// deadline), so the caller blames the request rather than the fleet.
#[must_use]
pub fn refusal<T>(answers: &[NodeAnswer<T>]) -> Option<String> {
    if answers.iter().any(|a| a.result.is_ok()) {
        return None;
    }
    answers.iter().find_map(|a| match &a.result {
        Err(FleetError::Http {
            status: 400 | 403 | 408,
            message,
        }) => Some(message.clone()),
        _ => None,
    })
}

/// One line per node that did not answer and per clock off by more than
/// `threshold`. `corrected`: whether the caller's output moves the node's
/// times onto our clock.
#[must_use]
pub fn warnings<T>(answers: &[NodeAnswer<T>], threshold: Duration, corrected: bool) -> Vec<String> {
    let mut lines: Vec<String> = answers
        .iter()
        .filter_map(|a| Some(format!("{}: no answer: {}", a.label(), a.result.as_ref().err()?)))
        .collect();
    let threshold = i64::try_from(threshold.as_nanos()).unwrap_or(i64::MAX);
    for a in answers.iter().filter(|a| a.result.is_ok()) {
        if let Some(c) = a.clock.filter(|c| c.offset_ns.abs() > threshold) {
            lines.push(format!(
                "{}'s clock is {} {} ours (±{}); {}",
                a.name(),
                format_offset(c.offset_ns).trim_start_matches(['+', '-']),
                if c.offset_ns > 0 { "ahead of" } else { "behind" },
                format_offset(c.error_ns).trim_start_matches('+'),
                if corrected {
                    "its times are corrected by it"
                } else {
                    "its timestamps are on its own clock"
                }
            ));
        }
    }
    lines
}

/// Each answering node's clock offset (ns to subtract to get our clock).
#[must_use]
pub fn offsets<T>(answers: &[NodeAnswer<T>]) -> HashMap<String, i64> {
    answers
        .iter()
        .filter_map(|a| Some((a.node.clone()?, a.clock?.offset_ns)))
        .collect()
}

/// The agents of a fleet.
#[derive(Debug, Clone)]
pub struct Fleet {
    clients: Vec<AgentClient>,
    options: FleetOptions,
}

impl Fleet {
    /// Clients for `addresses` (`host:port` each, no duplicates).
    pub fn new(addresses: &[String], tls: &ClientTls, options: FleetOptions) -> Result<Self, FleetError> {
        if addresses.is_empty() {
            return Err(FleetError::Config(
                "no nodes: give --nodes host:port,... or fleet.nodes in ingero.yaml".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = addresses.iter().find(|a| !seen.insert(a.as_str())) {
            return Err(FleetError::Config(format!("{dup} is listed twice")));
        }
        if options.concurrency == 0 {
            return Err(FleetError::Config("the concurrency must be at least 1".into()));
        }
        let config = if tls.no_tls { None } else { Some(tls.tls13()?) };
        let clients = addresses
            .iter()
            .map(|a| {
                AgentClient::with_tls_config(a, tls, options.timeout, config.clone())
                    .map(|c| c.with_answer_limit(options.max_answer_bytes))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { clients, options })
    }

    /// Number of agents in the fleet.
    #[must_use]
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether the fleet has no agents (never true for one built by [`Fleet::new`]).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The bounds this fleet's fan-outs run with.
    #[must_use]
    pub fn options(&self) -> FleetOptions {
        self.options
    }

    /// Runs `op` on every agent (with clock exchanges beside it); answers
    /// come back in the order of the addresses.
    pub async fn run<T, F, Fut>(&self, op: F) -> Vec<NodeAnswer<T>>
    where
        T: Send + 'static,
        F: Fn(AgentClient) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, FleetError>> + Send + 'static,
    {
        let deadline = Instant::now() + self.options.deadline;
        let slots = Arc::new(Semaphore::new(self.options.concurrency));
        let op = Arc::new(op);
        let samples = self.options.clock_samples;
        let mut tasks = JoinSet::new();
        for (i, client) in self.clients.iter().cloned().enumerate() {
            let (slots, op) = (Arc::clone(&slots), Arc::clone(&op));
            let overall = self.options.deadline;
            tasks.spawn(async move {
                let started = std::time::Instant::now();
                let address = client.address.clone();
                let answer = tokio::time::timeout_at(deadline, async {
                    let _slot = slots
                        .acquire_owned()
                        .await
                        .map_err(|e| FleetError::Other(e.to_string()))?;
                    let (result, clock) = tokio::join!(op(client.clone()), clock(&client, samples));
                    Ok::<_, FleetError>((result, clock))
                })
                .await;
                let (result, (node, clock)) = match answer {
                    Ok(Ok((result, clock))) => (result, clock),
                    Ok(Err(e)) => (Err(e), (None, None)),
                    Err(_) => (Err(FleetError::Timeout(overall)), (None, None)),
                };
                (
                    i,
                    NodeAnswer {
                        address,
                        node,
                        result,
                        clock,
                        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
                    },
                )
            });
        }
        let mut answers: Vec<Option<NodeAnswer<T>>> = (0..self.clients.len()).map(|_| None).collect();
        while let Some(done) = tasks.join_next().await {
            if let Ok((i, answer)) = done {
                answers[i] = Some(answer);
            }
        }
        let mut answers: Vec<NodeAnswer<T>> = answers
            .into_iter()
            .zip(&self.clients)
            .map(|(a, c)| {
                a.unwrap_or_else(|| NodeAnswer {
                    address: c.address.clone(),
                    node: None,
                    result: Err(FleetError::Other("the request task failed".into())),
                    clock: None,
                    elapsed_ms: 0.0,
                })
            })
            .collect();
        refuse_duplicate_nodes(&mut answers);
        answers
    }
}

/// `samples` clock exchanges, one after the other; the node name and the
/// estimate (none if no exchange succeeded).
async fn clock(client: &AgentClient, samples: usize) -> (Option<String>, Option<ClockEstimate>) {
    let mut node = None;
    let mut got: Vec<TimeSample> = Vec::with_capacity(samples);
    for _ in 0..samples {
        match client.time().await {
            Ok((name, sample)) => {
                node.get_or_insert(name);
                got.push(sample);
            }
            Err(_) => break,
        }
    }
    (node, skew::estimate(&got))
}
