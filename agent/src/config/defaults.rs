//! Every built-in default, in one place: the bottom layer of the one
//! configuration path (defaults, `ingero.yaml`, `INGERO_*` variables,
//! flags). Commands, `--help` texts and `ingero config` read them here;
//! nothing else spells a default value.

use std::time::Duration;

use crate::units::ByteSize;

/// Size cap of the database (`agent.max_db_size`, `--max-db`).
pub const MAX_DB: ByteSize = ByteSize(10 << 30);
/// Kernel-to-user ring buffer (`trace.ringbuf_size`, `--ringbuf-size`).
pub const RINGBUF: ByteSize = ByteSize(8 << 20);
/// Record block I/O, off-CPU time and page allocations (`trace.io`, `trace.sched`, `trace.memory`).
pub const FAMILY_ENABLED: bool = true;
/// Capture user stacks (`trace.stack`, `--stack`).
pub const STACK: bool = false;

/// API: SQL queries (and other database-reading requests) at once
/// (`agent.max_queries`, `--max-queries`).
pub const MAX_QUERIES: usize = 4;
/// API: deadline of one query (`agent.query_timeout`, `--query-timeout`).
pub const API_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// API: most bytes of one query answer, as JSON; past it rows are cut and
/// the answer says `truncated` (`agent.max_answer_size`, `--max-answer-size`).
pub const MAX_ANSWER_BYTES: ByteSize = ByteSize(16 << 20);
/// API: a connection with no byte either way for this long is closed
/// (`agent.idle_timeout`, `--idle-timeout`).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// API: longest a client may take to send a request's headers, HTTP/1
/// and HTTP/2; a kept-alive connection with no request in flight is closed
/// after it (`agent.header_timeout`, `--header-timeout`).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// API: connections open at once from one IP address; more are closed
/// before TLS (`agent.max_connections_per_address`, `--max-connections-per-address`).
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 64;
/// API: the window `/chains` and `/ops` analyse without `since`, while
/// tracing (a stored database is analysed whole).
pub const LIVE_WINDOW: Duration = Duration::from_secs(300);

/// `ingero query`: rows printed at most (`query.limit`, `--limit`).
pub const QUERY_LIMIT: usize = 10_000;
/// `ingero query`: deadline of the statement (`query.timeout`, `--timeout`).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Fleet: longest one agent may take (`fleet.timeout`, `--node-timeout`).
pub const NODE_TIMEOUT: Duration = Duration::from_secs(15);
/// Fleet: longest the whole fan-out may take (`fleet.deadline`, `--deadline`).
pub const DEADLINE: Duration = Duration::from_secs(60);
/// Fleet: agents asked at once (`fleet.concurrency`, `--concurrency`).
pub const CONCURRENCY: usize = 32;
/// Fleet: warn when an agent's clock is off by more than this
/// (`fleet.clock_skew_threshold`, `--clock-skew-threshold`).
pub const CLOCK_SKEW_THRESHOLD: Duration = Duration::from_millis(10);
/// A collective some ranks entered and others did not for this long is
/// hung (`fleet.hang_after`, `explain --hang-after`).
pub const HANG_AFTER: Duration = Duration::from_secs(30);
/// Fleet: largest answer read from one agent; past it that node fails and
/// the others' answers are kept (`fleet.max_answer_size`, `--max-answer`).
pub const MAX_ANSWER: ByteSize = ByteSize(256 << 20);
/// Fleet: clock exchanges per agent and request (not configurable: five
/// keep the error bound near half the best round trip at no extra wait).
pub const CLOCK_SAMPLES: usize = 5;

/// Archive: time between the passes that write newly committed events
/// as Parquet files (`archive.interval`, `trace --archive-interval`); the
/// archive itself is off unless a directory is given (`archive.dir`,
/// `trace --archive`).
pub const ARCHIVE_INTERVAL: Duration = Duration::from_secs(600);

/// OTLP: time between pushes of the metrics, and between the analysis
/// passes that look for new causal chains while tracing (`otlp.interval`,
/// `trace --otlp-interval`); OTLP itself is off unless an endpoint is
/// given (`otlp.endpoint`, `--otlp-endpoint`).
pub const OTLP_INTERVAL: Duration = Duration::from_secs(10);
/// OTLP: longest one export may take, and longest the last exports may
/// take when a command ends (not configurable: a collector slower than
/// this loses the export, which is counted as dropped).
pub const OTLP_TIMEOUT: Duration = Duration::from_secs(5);
/// OTLP: log records waiting for the export thread at most; past it new
/// ones are dropped and counted (not configurable).
pub const OTLP_QUEUE: usize = 256;
/// OTLP: the recent data each analysis pass of `trace --otlp-endpoint`
/// reads for causal chains.
pub const OTLP_CHAIN_WINDOW: Duration = LIVE_WINDOW;

/// MCP: deadline of one SQL statement asked by the assistant.
pub const MCP_SQL_TIMEOUT: Duration = Duration::from_secs(10);
