//! Client side of the ingero agent API, and the fleet operations built on
//! it: fan-out of one request to many agents, clock-offset estimation,
//! cross-node comparison.
//!
//! [`client::AgentClient`] talks to one agent over HTTPS (TLS 1.3, the
//! fleet CA as the only trust root, an optional client certificate for
//! mutual TLS) or plain HTTP with a bearer token. Its errors say what went
//! wrong in the words an operator uses: refused, timed out, TLS, an HTTP
//! status with the agent's message.

pub mod client;
pub mod fanout;
pub mod skew;
pub mod straggler;
pub mod tls;

pub use client::{AgentClient, FleetError, QueryAnswer, QueryRequest, TimeSample};
pub use fanout::{Fleet, FleetOptions, NodeAnswer, Outcome};
pub use skew::ClockEstimate;
pub use tls::ClientTls;
