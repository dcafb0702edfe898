//! Command-line interface of `ingero` (clap). Flags that have an
//! environment variable say so in `--help`; flags beat variables, which
//! beat `ingero.yaml`, which beats the defaults (see [`crate::config`]).

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::units::{ByteSize, HumanDuration};

#[derive(Debug, Parser)]
#[command(
    name = "ingero",
    version,
    about = "eBPF tracer for distributed GPU training",
    long_about = "Traces CUDA runtime and driver calls and the host events around them \
                  (scheduling, block I/O, memory, process lifecycle) into a node-tagged SQLite \
                  database, and explains slowdowns across nodes."
)]
/// The parsed command line: global options and the command to run.
pub struct Cli {
    /// Configuration file [default: /etc/ingero/ingero.yaml, then ~/.ingero/ingero.yaml]
    #[arg(long, global = true, env = "INGERO_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// More diagnostics on stderr (-v: info, -vv: debug)
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of `ingero`, one per subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace CUDA processes on this node into the database (needs root)
    Trace(TraceArgs),
    /// Report whether this machine can trace, and which CUDA libraries it has
    Check(CheckArgs),
    /// Run read-only SQL on a database
    Query(QueryArgs),
    /// Explain slowdowns: causal chains from the recorded events
    Explain(ExplainArgs),
    /// Merge databases from several nodes into one
    Merge(MergeArgs),
    /// Export a database as a trace for ui.perfetto.dev
    Export(ExportArgs),
    /// Serve a stored database over the agent API (HTTPS)
    Serve(ServeArgs),
    /// Make the certificates of a fleet: a CA, node and client certificates
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Serve the Model Context Protocol on stdio, for an AI assistant
    Mcp(McpArgs),
    /// Print the effective configuration and where each value comes from
    Config(ConfigArgs),
}

impl Command {
    /// Whether the command only reads and prints (no database it writes,
    /// no server, nothing pushed to a collector after printing): it may end
    /// at once when its output is closed.
    #[must_use]
    pub fn only_prints(&self, file: &crate::config::FileConfig) -> bool {
        let pushes = |o: &OtlpArgs| {
            o.otlp_endpoint.as_deref().is_some_and(|e| !e.is_empty())
                || file.otlp.endpoint.as_deref().is_some_and(|e| !e.is_empty())
        };
        match self {
            Self::Query(_) | Self::Check(_) | Self::Config(_) => true,
            Self::Explain(args) => args.no_save && !pushes(&args.otlp),
            Self::Trace(_)
            | Self::Merge(_)
            | Self::Export(_)
            | Self::Serve(_)
            | Self::Certs(_)
            | Self::Mcp(_) => false,
        }
    }
}

/// Options of `ingero config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// Print the settings as JSON
    #[arg(long)]
    pub json: bool,
}

/// Options of `ingero mcp`.
#[derive(Debug, Args)]
pub struct McpArgs {
    /// Database for the local tools (get_chains, run_sql, get_ops, get_stacks) [default: the configured one, if it exists]
    #[arg(short = 'd', long, env = "INGERO_DB", value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// The agents the fleet tools ask.
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// Options of `ingero trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Node name for every event [default: agent.node in ingero.yaml, else the hostname]
    #[arg(long, env = "INGERO_NODE")]
    pub node: Option<String>,
    /// Trace only this process and its children (repeatable) [default: every process using CUDA]
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Stop after this long (e.g. 10s, 5m) [default: until Ctrl-C]
    #[arg(short, long)]
    pub duration: Option<HumanDuration>,
    /// Database file [default: ~/.ingero/ingero.db of the invoking user]
    #[arg(long, env = "INGERO_DB", value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Size cap of the database; the oldest events are pruned past it [default: 10g]
    #[arg(long, env = "INGERO_MAX_DB", value_name = "SIZE")]
    pub max_db: Option<ByteSize>,
    /// Capture the user stack of every CUDA call
    #[arg(long)]
    pub stack: bool,
    /// Also probe this CUDA driver library (libcuda.so*) (repeatable)
    #[arg(long = "cuda-lib", value_name = "PATH")]
    pub cuda_lib: Vec<PathBuf>,
    /// Also probe this CUDA runtime library (libcudart.so*) (repeatable)
    #[arg(long = "cudart-lib", value_name = "PATH")]
    pub cudart_lib: Vec<PathBuf>,
    /// Also probe this NCCL library (libnccl.so*) (repeatable)
    #[arg(long = "nccl-lib", value_name = "PATH")]
    pub nccl_lib: Vec<PathBuf>,
    /// Stream every event to stdout as one JSON object per line
    #[arg(long)]
    pub json: bool,
    /// Kernel-to-user ring buffer size, a power of two [default: 8m]
    #[arg(long, value_name = "SIZE")]
    pub ringbuf_size: Option<ByteSize>,
    /// Do not record block I/O
    #[arg(long)]
    pub no_io: bool,
    /// Do not record off-CPU time (sched_switch)
    #[arg(long)]
    pub no_sched: bool,
    /// Do not count page allocations
    #[arg(long)]
    pub no_memory: bool,
    /// Do not print the per-second summary
    #[arg(short, long)]
    pub quiet: bool,
    /// Once tracing (and the API listening), write {pid, node, db, session_id, listen} as JSON here
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// Archive the recording as Parquet files into this directory while tracing [default: archive.dir, else off]
    #[arg(long, value_name = "DIR")]
    pub archive: Option<PathBuf>,
    /// Time between archive passes [default: archive.interval, else 10m]
    #[arg(long, value_name = "DURATION")]
    pub archive_interval: Option<HumanDuration>,
    /// The agent API served while tracing (only with `--listen` or `agent.listen`).
    #[command(flatten)]
    pub api: ApiArgs,
    /// OTLP push of the metrics and the new causal chains.
    #[command(flatten)]
    pub otlp: OtlpArgs,
    /// Time between OTLP pushes of the metrics (and analysis passes for chains) [default: otlp.interval, else 10s]
    #[arg(long, value_name = "DURATION")]
    pub otlp_interval: Option<HumanDuration>,
}

/// Where OTLP data goes (`trace`: metrics and chains; `explain`: the
/// verdict and its chains).
#[derive(Debug, Clone, Args)]
pub struct OtlpArgs {
    /// Push OTLP/HTTP (protobuf) to this collector, e.g. http://127.0.0.1:4318 (/v1/metrics and /v1/logs are appended) [default: otlp.endpoint, else off]
    #[arg(long, env = "INGERO_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Send this header with every OTLP request, e.g. Authorization='Bearer x' (repeatable; adds to otlp.headers)
    #[arg(long = "otlp-header", value_name = "K=V")]
    pub otlp_headers: Vec<String>,
}

/// The agent API: where it listens and how it protects itself.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Serve the agent API on this address (e.g. 0.0.0.0:8080; port 0 picks one)
    #[arg(long, env = "INGERO_LISTEN", value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Server certificate (PEM) [default: a self-signed one kept in the state directory]
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Server private key (PEM)
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mutual TLS)
    #[arg(long, value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,
    /// Serve plain HTTP instead of TLS (needs --token-file off loopback)
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "ca_cert"])]
    pub no_tls: bool,
    /// Require `Authorization: Bearer <token>` with the token in this file
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Where the agent keeps its own files (self-signed certificate) [default: ~/.ingero]
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Most database-reading requests at once; more get 429 [default: agent.max_queries, else 4]
    #[arg(long, value_name = "N")]
    pub max_queries: Option<usize>,
    /// Deadline of an API query [default: agent.query_timeout, else 10s]
    #[arg(long, value_name = "DURATION")]
    pub query_timeout: Option<HumanDuration>,
    /// Most bytes of one query answer; past it rows are cut (truncated) [default: agent.max_answer_size, else 16MiB]
    #[arg(long, value_name = "SIZE")]
    pub max_answer_size: Option<ByteSize>,
    /// Close an API connection with no traffic for this long [default: agent.idle_timeout, else 60s]
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<HumanDuration>,
    /// Longest a client may take to send a request's headers, HTTP/1 and HTTP/2 [default: agent.header_timeout, else 10s]
    #[arg(long, value_name = "DURATION")]
    pub header_timeout: Option<HumanDuration>,
    /// Most API connections open at once from one IP address [default: agent.max_connections_per_address, else 64]
    #[arg(long, value_name = "N")]
    pub max_connections_per_address: Option<usize>,
}

/// Ask the agents of a fleet instead of a local database.
#[derive(Debug, Clone, Args)]
pub struct FleetArgs {
    /// Ask these agents (host:port, comma-separated) instead of a local database [env: INGERO_NODES, unless -d is given]
    #[arg(long, value_delimiter = ',', value_name = "HOST:PORT,...")]
    pub nodes: Vec<String>,
    /// Ask the agents listed in fleet.nodes of ingero.yaml
    #[arg(long, conflicts_with = "nodes")]
    pub fleet: bool,
    /// CA that signed the agents' certificates [default: fleet.tls.ca_cert]
    #[arg(long, value_name = "PATH")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate for agents that require one [default: fleet.tls.client_cert]
    #[arg(long, value_name = "PATH", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Its private key [default: fleet.tls.client_key]
    #[arg(long, value_name = "PATH", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Plain HTTP to agents started with --no-tls
    #[arg(long, conflicts_with_all = ["ca_cert", "client_cert", "client_key"])]
    pub no_tls: bool,
    /// Send the bearer token in this file [default: fleet.token_file]
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// Longest one agent may take to answer [default: fleet.timeout, else 15s]
    #[arg(long, value_name = "DURATION")]
    pub node_timeout: Option<HumanDuration>,
    /// Longest the whole fan-out may take [default: fleet.deadline, else 60s]
    #[arg(long, value_name = "DURATION")]
    pub deadline: Option<HumanDuration>,
    /// Agents asked at once [default: fleet.concurrency, else 32]
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Largest answer read from one agent; past it that node fails [default: fleet.max_answer_size, else 256m]
    #[arg(long, value_name = "SIZE")]
    pub max_answer: Option<ByteSize>,
    /// Warn when an agent's clock differs from ours by more than this [default: fleet.clock_skew_threshold, else 10ms]
    #[arg(long, value_name = "DURATION")]
    pub clock_skew_threshold: Option<HumanDuration>,
}

/// Options of `ingero check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// The time range to look at.
#[derive(Debug, Clone, Args)]
pub struct WindowArgs {
    /// Only the last DURATION of recorded data (e.g. 5m), counted back from the newest event
    #[arg(long, value_name = "DURATION")]
    pub since: Option<HumanDuration>,
    /// From this time (RFC 3339, or Unix s/ms/us/ns)
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,
    /// Up to this time (RFC 3339, or Unix s/ms/us/ns)
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,
}

/// Options of `ingero query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Database file [default: ~/.ingero/ingero.db]
    #[arg(short = 'd', long, env = "INGERO_DB", value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// The time range the query sees.
    #[command(flatten)]
    pub window: WindowArgs,
    /// At most this many rows [default: query.limit, else 10000]
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Interrupt the query after this long [default: query.timeout, else 10s]
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<HumanDuration>,
    /// Print {columns, rows, truncated} as JSON
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV
    #[arg(long)]
    pub csv: bool,
    /// The agents to ask instead of the local database.
    #[command(flatten)]
    pub fleet: FleetArgs,
    /// With --nodes: run this SQL over the union of the nodes' rows, a table named `fleet` (with a `node` column)
    #[arg(long, value_name = "SQL")]
    pub merge: Option<String>,
    /// One read-only SQL statement, e.g. "SELECT node, count(*) FROM events GROUP BY node"
    pub sql: String,
}

/// Options of `ingero explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Database file [default: ~/.ingero/ingero.db]; without a window the whole database is explained
    #[arg(short = 'd', long, env = "INGERO_DB", value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// The time range to explain.
    #[command(flatten)]
    pub window: WindowArgs,
    /// Print the chains and per-node figures as JSON
    #[arg(long)]
    pub json: bool,
    /// Print every node's chains, also those of a condition common to all nodes (by default said once)
    #[arg(long)]
    pub all: bool,
    /// Do not record the chains in the database's causal_chains table
    #[arg(long)]
    pub no_save: bool,
    /// Report a collective some ranks entered and others did not for this long as hung [default: fleet.hang_after, else 30s]
    #[arg(long, value_name = "DURATION")]
    pub hang_after: Option<HumanDuration>,
    /// Also send the straggler or hung-collective verdict and the chains as OTLP log records.
    #[command(flatten)]
    pub otlp: OtlpArgs,
    /// The agents to ask instead of the local database.
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// Options of `ingero merge`.
#[derive(Debug, Args)]
pub struct MergeArgs {
    /// Databases to merge (one or more per node)
    #[arg(required = true, value_name = "DB")]
    pub inputs: Vec<PathBuf>,
    /// The merged database to write
    #[arg(short, long, value_name = "PATH")]
    pub output: PathBuf,
    /// Overwrite the output if it exists
    #[arg(long)]
    pub force: bool,
    /// Node name for a database without a node column: NAME, or DB=NAME (repeatable)
    #[arg(long, value_name = "[DB=]NAME")]
    pub force_node: Vec<crate::merge::ForcedNode>,
    /// Allow several inputs to hold the same node (copies or parts of one node's database)
    #[arg(long)]
    pub allow_same_node: bool,
    /// Print the summary as JSON
    #[arg(long)]
    pub json: bool,
}

/// The file formats `ingero export` writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    /// A trace for ui.perfetto.dev: Perfetto's protobuf format when the output ends in .pftrace, Chrome JSON otherwise
    Perfetto,
    /// Hive-partitioned Parquet files for Spark, Trino and DuckDB (-o names a directory)
    Parquet,
}

/// Options of `ingero export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Output format
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Database file [default: ~/.ingero/ingero.db]
    #[arg(short = 'd', long, env = "INGERO_DB", value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// The trace file to write (perfetto: trace.pftrace native protobuf, trace.json Chrome JSON), or the archive directory (parquet)
    #[arg(short, long, value_name = "PATH")]
    pub output: PathBuf,
    /// The time range to export.
    #[command(flatten)]
    pub window: WindowArgs,
    /// Print the summary as JSON
    #[arg(long)]
    pub json: bool,
    /// Parquet: node name for rows without one (a database of another tracer)
    #[arg(long, value_name = "NAME")]
    pub force_node: Option<String>,
    /// The agents to export from instead of the local database.
    #[command(flatten)]
    pub fleet: FleetArgs,
}

/// Options of `ingero serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Database to serve [default: ~/.ingero/ingero.db]
    #[arg(short = 'd', long, env = "INGERO_DB", value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// Node name in answers [default: the database's node]
    #[arg(long, env = "INGERO_NODE")]
    pub node: Option<String>,
    /// Once listening, write {pid, node, db, listen} as JSON here
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,
    /// Where the API listens and how it protects itself.
    #[command(flatten)]
    pub api: ApiArgs,
}

/// The subcommands of `ingero certs`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create the fleet's CA (ca.pem, ca-key.pem)
    InitCa {
        /// Where the certificates go [default: ~/.ingero/certs]
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Replace existing files
        #[arg(long)]
        force: bool,
    },
    /// Issue a node (server) or client certificate signed by the CA
    Issue {
        /// A node certificate for this agent name
        #[arg(
            long,
            value_name = "NAME",
            conflicts_with = "client",
            required_unless_present = "client"
        )]
        node: Option<String>,
        /// A client certificate with this name
        #[arg(long, value_name = "NAME")]
        client: Option<String>,
        /// Extra host names or addresses of the node (repeatable)
        #[arg(long, value_name = "HOST_OR_IP", requires = "node")]
        san: Vec<String>,
        /// Where the CA is and the certificates go [default: ~/.ingero/certs]
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Replace existing files
        #[arg(long)]
        force: bool,
    },
}
