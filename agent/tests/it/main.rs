//! ingero's integration tests: one test binary, one module per topic, so
//! the shared helpers ([`common`]) compile once. Each test works in its own
//! temporary directory. Tests that load eBPF or start daemons need root and
//! say why when they skip; tests that share the machine's probes run one at
//! a time ([`common::serial`]).

mod api;
mod archive;
mod cli_errors;
mod cluster;
mod collectives;
mod common;
mod config;
mod explain;
mod fleet;
mod hostile;
mod hostile_api;
mod hostile_misc;
mod hostile_store;
mod mcp;
mod nccl;
mod other_tracers;
mod otlp;
mod perfetto;
mod prometheus;
mod properties;
mod trace;
