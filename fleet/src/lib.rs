//! Client side of the ingero agent API, and the fleet operations built on
//! it: fan-out of one request to many agents, clock-offset estimation,
//! partial failure, row combination and paging. It returns typed answers
//! ([`ingero_api`]); comparing nodes is the analysis engine's work, and
//! printing is the commands'.
//!
//! [`client::AgentClient`] talks to one agent over HTTPS (TLS 1.3, the
//! fleet CA as the only trust root, an optional client certificate for
//! mutual TLS) or plain HTTP with a bearer token. Its errors say what went
//! wrong in the words an operator uses: refused, timed out, TLS, an HTTP
//! status with the agent's message.

#![warn(missing_docs)]

pub mod client;
pub mod explain;
pub mod fanout;
pub mod pages;
pub mod rows;
pub mod skew;
pub mod tls;

pub use client::{AgentClient, FleetError, TimeSample};
pub use explain::NodeExplain;
pub use fanout::{
    Fleet, FleetOptions, NodeAnswer, Outcome, offsets, refusal, refuse_duplicate_nodes, warnings,
};
pub use rows::FleetRows;
pub use skew::ClockEstimate;
pub use tls::ClientTls;
