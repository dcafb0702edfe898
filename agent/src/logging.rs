//! Diagnostics on stderr through the `log` facade: warnings by default,
//! `-v` adds info, `-vv` debug. Lines are prefixed like every other
//! message of the tool ("ingero: warning: ...").
//!
//! Every message of the tool goes through [`crate::say!`]: a write to stderr that
//! cannot fail the program. `eprintln!` panics when stderr is a closed
//! pipe (a supervisor that stopped reading), which would turn a stopping
//! agent's last progress line into a crash before it commits.

/// Writes one line to stderr, ignoring failures (see the module documentation).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level() && metadata.target().starts_with("ingero")
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                Level::Error => "error",
                Level::Warn => "warning",
                Level::Info => "info",
                Level::Debug | Level::Trace => "debug",
            };
            crate::say!("ingero: {level}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Installs the logger; `verbosity` is the number of `-v` flags.
pub fn init(verbosity: u8) {
    let level = match verbosity {
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        _ => LevelFilter::Debug,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
