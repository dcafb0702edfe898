//! `ingero config`: every setting's effective value and the layer it
//! comes from (a default, `ingero.yaml`, or an `INGERO_*` variable), read
//! along the same path the commands use. Flags are per command and shown
//! by each command's `--help`; they beat everything listed here.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{FileConfig, defaults, invoking_home};

/// One setting as it resolves here and now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Its key in `ingero.yaml` (`fleet.timeout`).
    pub key: &'static str,
    /// The value, as it would be written in the file (`-` for none).
    pub value: String,
    /// `default`, `file PATH`, or `env NAME`.
    pub source: String,
    /// The variable that sets it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<&'static str>,
}

/// Environment variables that set a file key (the flags' `env = ...`).
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("INGERO_NODE", "agent.node"),
    ("INGERO_DB", "agent.db"),
    ("INGERO_MAX_DB", "agent.max_db_size"),
    ("INGERO_LISTEN", "agent.listen"),
    ("INGERO_NODES", "fleet.nodes"),
    ("INGERO_OTLP_ENDPOINT", "otlp.endpoint"),
];

fn show<T: std::fmt::Display>(v: Option<T>) -> Option<String> {
    v.map(|v| v.to_string())
}

fn path(p: Option<&PathBuf>) -> Option<String> {
    p.map(|p| p.display().to_string())
}

fn list(v: &[impl std::fmt::Display]) -> Option<String> {
    (!v.is_empty()).then(|| v.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))
}

/// Every setting: environment over file over default.
#[must_use]
pub fn entries(file: &FileConfig, file_path: Option<&Path>) -> Vec<Entry> {
    let home = invoking_home().map_or_else(|| "~".to_owned(), |h| h.display().to_string());
    let (a, t, q, f) = (&file.agent, &file.trace, &file.query, &file.fleet);
    let archive = &file.archive;
    let otlp = &file.otlp;
    // Header names only: their values are often credentials.
    let headers = otlp.headers.as_ref().and_then(|h| {
        (!h.is_empty()).then(|| h.keys().map(|k| format!("{k}=***")).collect::<Vec<_>>().join(","))
    });
    let cuda: Vec<String> = t.cuda_lib.iter().map(|p| p.display().to_string()).collect();
    let cudart: Vec<String> = t.cudart_lib.iter().map(|p| p.display().to_string()).collect();
    let nccl: Vec<String> = t.nccl_lib.iter().map(|p| p.display().to_string()).collect();
    let rows: Vec<(&'static str, Option<String>, String)> = vec![
        (
            "agent.node",
            a.node.clone(),
            format!("{} (the hostname)", super::hostname()),
        ),
        (
            "agent.db",
            path(a.db.as_ref()),
            format!("{home}/.ingero/ingero.db"),
        ),
        (
            "agent.max_db_size",
            show(a.max_db_size),
            defaults::MAX_DB.to_string(),
        ),
        ("agent.listen", show(a.listen), "- (no API)".into()),
        (
            "agent.tls_cert",
            path(a.tls_cert.as_ref()),
            "- (self-signed, in state_dir/tls)".into(),
        ),
        ("agent.tls_key", path(a.tls_key.as_ref()), "-".into()),
        (
            "agent.ca_cert",
            path(a.ca_cert.as_ref()),
            "- (no client certificate required)".into(),
        ),
        (
            "agent.token_file",
            path(a.token_file.as_ref()),
            "- (no token)".into(),
        ),
        (
            "agent.state_dir",
            path(a.state_dir.as_ref()),
            format!("{home}/.ingero"),
        ),
        (
            "agent.max_queries",
            show(a.max_queries),
            defaults::MAX_QUERIES.to_string(),
        ),
        (
            "agent.query_timeout",
            show(a.query_timeout),
            fmt_duration(defaults::API_QUERY_TIMEOUT),
        ),
        (
            "agent.max_answer_size",
            show(a.max_answer_size),
            defaults::MAX_ANSWER_BYTES.to_string(),
        ),
        (
            "agent.idle_timeout",
            show(a.idle_timeout),
            fmt_duration(defaults::IDLE_TIMEOUT),
        ),
        (
            "agent.header_timeout",
            show(a.header_timeout),
            fmt_duration(defaults::HEADER_TIMEOUT),
        ),
        (
            "agent.max_connections_per_address",
            show(a.max_connections_per_address),
            defaults::MAX_CONNECTIONS_PER_ADDRESS.to_string(),
        ),
        ("trace.cuda_lib", list(&cuda), "- (discovered)".into()),
        ("trace.cudart_lib", list(&cudart), "- (discovered)".into()),
        ("trace.nccl_lib", list(&nccl), "- (discovered)".into()),
        ("trace.stack", show(t.stack), defaults::STACK.to_string()),
        (
            "trace.ringbuf_size",
            show(t.ringbuf_size),
            defaults::RINGBUF.to_string(),
        ),
        ("trace.io", show(t.io), defaults::FAMILY_ENABLED.to_string()),
        ("trace.sched", show(t.sched), defaults::FAMILY_ENABLED.to_string()),
        (
            "trace.memory",
            show(t.memory),
            defaults::FAMILY_ENABLED.to_string(),
        ),
        ("query.limit", show(q.limit), defaults::QUERY_LIMIT.to_string()),
        (
            "query.timeout",
            show(q.timeout),
            fmt_duration(defaults::QUERY_TIMEOUT),
        ),
        ("fleet.nodes", list(&f.nodes), "- (a local database)".into()),
        (
            "fleet.token_file",
            path(f.token_file.as_ref()),
            "- (no token)".into(),
        ),
        (
            "fleet.timeout",
            show(f.timeout),
            fmt_duration(defaults::NODE_TIMEOUT),
        ),
        (
            "fleet.deadline",
            show(f.deadline),
            fmt_duration(defaults::DEADLINE),
        ),
        (
            "fleet.concurrency",
            show(f.concurrency),
            defaults::CONCURRENCY.to_string(),
        ),
        (
            "fleet.max_answer_size",
            show(f.max_answer_size),
            defaults::MAX_ANSWER.to_string(),
        ),
        (
            "fleet.clock_skew_threshold",
            show(f.clock_skew_threshold),
            fmt_duration(defaults::CLOCK_SKEW_THRESHOLD),
        ),
        (
            "fleet.hang_after",
            show(f.hang_after),
            fmt_duration(defaults::HANG_AFTER),
        ),
        (
            "fleet.tls.ca_cert",
            path(f.tls.ca_cert.as_ref()),
            "- (system roots: none)".into(),
        ),
        (
            "fleet.tls.client_cert",
            path(f.tls.client_cert.as_ref()),
            "- (no client certificate)".into(),
        ),
        (
            "fleet.tls.client_key",
            path(f.tls.client_key.as_ref()),
            "-".into(),
        ),
        ("archive.dir", path(archive.dir.as_ref()), "- (no archive)".into()),
        (
            "archive.interval",
            show(archive.interval),
            fmt_duration(defaults::ARCHIVE_INTERVAL),
        ),
        ("otlp.endpoint", otlp.endpoint.clone(), "- (no OTLP push)".into()),
        (
            "otlp.interval",
            show(otlp.interval),
            fmt_duration(defaults::OTLP_INTERVAL),
        ),
        ("otlp.headers", headers, "- (none)".into()),
        (
            "otlp.ca_cert",
            path(otlp.ca_cert.as_ref()),
            "- (needed for an https endpoint)".into(),
        ),
        (
            "otlp.client_cert",
            path(otlp.client_cert.as_ref()),
            "- (no client certificate)".into(),
        ),
        ("otlp.client_key", path(otlp.client_key.as_ref()), "-".into()),
    ];
    let file_label = file_path.map_or_else(|| "file".to_owned(), |p| format!("file {}", p.display()));
    rows.into_iter()
        .map(|(key, from_file, default)| {
            let env = ENV_KEYS.iter().find(|(_, k)| *k == key).map(|(e, _)| *e);
            let from_env = env.and_then(|e| std::env::var(e).ok().filter(|v| !v.is_empty()));
            let (value, source) = match (from_env, from_file) {
                (Some(v), _) => (v, format!("env {}", env.unwrap_or_default())),
                (None, Some(v)) => (v, file_label.clone()),
                (None, None) => (default, "default".to_owned()),
            };
            Entry {
                key,
                value,
                source,
                env,
            }
        })
        .collect()
}

/// `10s`, `250ms`: as `ingero.yaml` takes it.
fn fmt_duration(d: std::time::Duration) -> String {
    crate::units::HumanDuration(d).to_string()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn each_layer_is_named() {
        let file = FileConfig::parse("fleet:\n  timeout: 3s\n").expect("parses");
        let entries = entries(&file, Some(Path::new("/etc/ingero/ingero.yaml")));
        let get = |k: &str| entries.iter().find(|e| e.key == k).expect("listed").clone();
        assert_eq!(get("fleet.timeout").value, "3s");
        assert_eq!(get("fleet.timeout").source, "file /etc/ingero/ingero.yaml");
        assert_eq!(get("fleet.deadline").value, "1m");
        assert_eq!(get("fleet.deadline").source, "default");
        assert_eq!(get("archive.dir").value, "- (no archive)");
    }

    #[test]
    fn the_archive_defaults_agree_everywhere() {
        // defaults.rs, `ingero config` and the example file say the same.
        let shown = entries(&FileConfig::default(), None);
        let interval = shown
            .iter()
            .find(|e| e.key == "archive.interval")
            .expect("listed");
        assert_eq!(interval.value, "10m");
        assert_eq!(
            interval.value,
            fmt_duration(defaults::ARCHIVE_INTERVAL),
            "ingero config shows the default"
        );
        let example =
            FileConfig::parse(include_str!("../../../configs/ingero.yaml")).expect("example parses");
        assert_eq!(
            example.archive.interval.map(|d| d.0),
            Some(defaults::ARCHIVE_INTERVAL),
            "configs/ingero.yaml shows the default interval"
        );
        assert!(
            example.archive.dir.is_none(),
            "the example leaves archiving off, as the default does"
        );
        assert!(
            include_str!("../../../configs/ingero.yaml").contains("# dir: "),
            "the example shows where the directory goes"
        );
    }

    #[test]
    fn the_otlp_defaults_agree_everywhere() {
        let shown = entries(&FileConfig::default(), None);
        let interval = shown.iter().find(|e| e.key == "otlp.interval").expect("listed");
        assert_eq!(interval.value, fmt_duration(defaults::OTLP_INTERVAL));
        let example =
            FileConfig::parse(include_str!("../../../configs/ingero.yaml")).expect("example parses");
        assert_eq!(
            example.otlp.interval.map(|d| d.0),
            Some(defaults::OTLP_INTERVAL),
            "configs/ingero.yaml shows the default interval"
        );
        assert!(example.otlp.endpoint.is_none(), "the example leaves OTLP off");
        let file =
            FileConfig::parse("otlp:\n  headers:\n    authorization: Bearer secret\n").expect("parses");
        let headers = entries(&file, None)
            .into_iter()
            .find(|e| e.key == "otlp.headers")
            .expect("listed");
        assert_eq!(headers.value, "authorization=***", "values are not shown");
    }

    #[test]
    fn every_file_key_is_listed_and_accepted() {
        let entries = entries(&FileConfig::default(), None);
        for e in &entries {
            // A key the file does not know is refused (deny_unknown_fields).
            let mut yaml = String::new();
            let parts: Vec<&str> = e.key.split('.').collect();
            for (depth, part) in parts.iter().enumerate() {
                let value = if depth + 1 == parts.len() { " ~" } else { "" };
                yaml.push_str(&format!("{}{part}:{value}\n", "  ".repeat(depth)));
            }
            let yaml = yaml.replace("nodes: ~", "nodes: []").replace("lib: ~", "lib: []");
            FileConfig::parse(&yaml).unwrap_or_else(|err| panic!("{} is not a file key: {err}", e.key));
        }
        // And the example file uses only listed keys.
        let example: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(include_str!("../../../configs/ingero.yaml")).expect("example parses");
        let mut keys = Vec::new();
        collect_keys(&example, "", &mut keys);
        for k in keys {
            assert!(
                entries.iter().any(|e| e.key == k),
                "{k} is in configs/ingero.yaml but not in `ingero config`"
            );
        }
    }

    fn collect_keys(v: &serde_yaml_ng::Value, prefix: &str, out: &mut Vec<String>) {
        if let serde_yaml_ng::Value::Mapping(m) = v {
            for (k, child) in m {
                let key = format!("{prefix}{}", k.as_str().unwrap_or_default());
                if matches!(child, serde_yaml_ng::Value::Mapping(_)) {
                    collect_keys(child, &format!("{key}."), out);
                } else {
                    out.push(key);
                }
            }
        }
    }

    #[test]
    fn every_environment_variable_of_the_flags_is_known() {
        let mut names = std::collections::BTreeSet::new();
        let cli = crate::cli::Cli::command();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                if let Some(env) = arg.get_env() {
                    names.insert(env.to_string_lossy().into_owned());
                }
            }
        }
        names.remove("INGERO_CONFIG");
        for name in names {
            assert!(
                ENV_KEYS.iter().any(|(e, _)| *e == name),
                "{name} sets no file key in ENV_KEYS"
            );
        }
    }
}
