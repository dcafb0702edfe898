//! Prometheus metrics of the traced work: per-operation latency
//! histograms of the API calls (CUDA runtime and driver, and any call
//! source the catalog gains), bytes copied and allocated, time waiting in
//! synchronize calls, off-CPU time of the traced threads, block I/O bytes
//! and latency.
//!
//! - [`histogram`]: the fixed power-of-two latency buckets;
//! - [`registry`]: the counters, keyed by bounded labels only;
//! - [`exposition`]: the text format;
//! - [`stored`]: the same counters read from a database, a bounded slice
//!   per scrape.
//!
//! `ingero trace` updates a registry as it reads events (the pipeline
//! publishes a copy with every batch, so a scrape never touches SQLite);
//! `ingero serve` fills one from the database it serves. The API renders
//! either after its own counters.

pub mod exposition;
pub mod histogram;
pub mod registry;
pub mod stored;

use agent_common::catalog::{SOURCES, source};

pub use registry::{Published, Registry, Sample};

/// Whether `src` is a source of traced API calls, which get latency
/// histograms: every catalog source but the host and block I/O ones, so a
/// source added to the catalog is exported without changes here.
#[must_use]
pub fn is_call_source(src: u8) -> bool {
    src != source::HOST && src != source::IO && SOURCES.iter().any(|s| s.id == src)
}

/// The catalog name of source `src` (`"unknown"` for another number).
#[must_use]
pub fn source_name(src: u8) -> &'static str {
    SOURCES.iter().find(|s| s.id == src).map_or("unknown", |s| s.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_runtime_and_driver_are_call_sources_and_host_io_are_not() {
        assert!(is_call_source(source::CUDA));
        assert!(is_call_source(source::DRIVER));
        assert!(!is_call_source(source::HOST));
        assert!(!is_call_source(source::IO));
        assert!(!is_call_source(99), "not in the catalog");
        assert_eq!(source_name(source::DRIVER), "driver");
    }
}
