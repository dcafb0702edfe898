//! tracefs: making sure it is mounted, and reading tracepoint field offsets
//! from `events/<category>/<name>/format` of the running kernel.
//!
//! The eBPF programs read tracepoint records at these offsets (aya-ebpf has
//! no CO-RE field access), so they are looked up on every start instead of
//! being compiled in. A required field that is missing or has an unexpected
//! size is an error naming the tracepoint and field.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use agent_common::config::{
    ABSENT, BlockCompleteFields, BlockIssueFields, Config, ExitFields, NewTaskFields, OomFields,
    PageAllocFields, SchedSwitchFields,
};

use super::TraceError;

const MOUNT_POINT: &str = "/sys/kernel/tracing";
const LEGACY: &str = "/sys/kernel/debug/tracing";

/// The tracefs root, mounting it at `/sys/kernel/tracing` if needed.
pub fn ensure_mounted() -> Result<PathBuf, TraceError> {
    for root in [MOUNT_POINT, LEGACY] {
        if Path::new(root).join("events").is_dir() {
            return Ok(PathBuf::from(root));
        }
    }
    let target = CString::new(MOUNT_POINT).map_err(|_| TraceError::Tracefs("bad path".into()))?;
    let fstype = CString::new("tracefs").map_err(|_| TraceError::Tracefs("bad type".into()))?;
    let source = CString::new("nodev").map_err(|_| TraceError::Tracefs("bad source".into()))?;
    // SAFETY: all strings are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 || !Path::new(MOUNT_POINT).join("events").is_dir() {
        return Err(TraceError::Tracefs(format!(
            "tracefs is not mounted and mounting it at {MOUNT_POINT} failed ({}); run `mount -t tracefs nodev {MOUNT_POINT}`",
            std::io::Error::last_os_error()
        )));
    }
    Ok(PathBuf::from(MOUNT_POINT))
}

/// One `field:` line of a format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Field name, without type, pointer stars or array brackets.
    pub name: String,
    /// Byte offset of the field in the tracepoint record.
    pub offset: u32,
    /// Size of the field in bytes.
    pub size: u32,
}

/// Parses the `field:` lines of a tracepoint format file.
#[must_use]
pub fn parse_format(text: &str) -> Vec<Field> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let decl = line.strip_prefix("field:")?;
            let mut parts = decl.split(';').map(str::trim);
            let declaration = parts.next()?;
            let mut offset = None;
            let mut size = None;
            for part in parts {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            // "char prev_comm[16]" -> "prev_comm"; "__data_loc char[] cmd" -> "cmd"
            let name = declaration
                .rsplit(|c: char| c.is_whitespace() || c == '*')
                .next()?
                .split('[')
                .next()?
                .to_owned();
            Some(Field {
                name,
                offset: offset?,
                size: size?,
            })
        })
        .collect()
}

/// Field offsets of one tracepoint.
struct Format {
    tracepoint: String,
    fields: Vec<Field>,
}

impl Format {
    fn read(root: &Path, category: &str, name: &str) -> Result<Self, TraceError> {
        let path = root.join("events").join(category).join(name).join("format");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            TraceError::Tracefs(format!(
                "this kernel has no tracepoint {category}/{name} ({}: {e})",
                path.display()
            ))
        })?;
        Ok(Self {
            tracepoint: format!("{category}/{name}"),
            fields: parse_format(&text),
        })
    }

    /// Offset of a required field whose size is one of `sizes`.
    fn offset(&self, field: &str, sizes: &[u32]) -> Result<u32, TraceError> {
        let f = self.fields.iter().find(|f| f.name == field).ok_or_else(|| {
            TraceError::Tracefs(format!("tracepoint {} has no field '{field}'", self.tracepoint))
        })?;
        if !sizes.contains(&f.size) {
            return Err(TraceError::Tracefs(format!(
                "tracepoint {} field '{field}' has size {} (expected {sizes:?})",
                self.tracepoint, f.size
            )));
        }
        Ok(f.offset)
    }

    /// Offset of an optional field, or [`ABSENT`].
    fn optional(&self, field: &str, sizes: &[u32]) -> Result<u32, TraceError> {
        if self.fields.iter().any(|f| f.name == field) {
            self.offset(field, sizes)
        } else {
            Ok(ABSENT)
        }
    }
}

/// Fills the tracepoint offsets of `config` from the running kernel.
pub fn read_offsets(root: &Path, config: &mut Config) -> Result<(), TraceError> {
    let f = Format::read(root, "sched", "sched_switch")?;
    config.sched_switch = SchedSwitchFields {
        prev_pid: f.offset("prev_pid", &[4])?,
        prev_state: f.offset("prev_state", &[8])?,
        next_pid: f.offset("next_pid", &[4])?,
        next_comm: f.offset("next_comm", &[16])?,
    };
    let f = Format::read(root, "block", "block_rq_issue")?;
    config.block_issue = BlockIssueFields {
        dev: f.offset("dev", &[4])?,
        sector: f.offset("sector", &[8])?,
        bytes: f.offset("bytes", &[4])?,
        rwbs: f.offset("rwbs", &[8, 10])?,
    };
    let f = Format::read(root, "block", "block_rq_complete")?;
    config.block_complete = BlockCompleteFields {
        dev: f.offset("dev", &[4])?,
        sector: f.offset("sector", &[8])?,
        error: f.offset("error", &[4])?,
        _pad: 0,
    };
    let f = Format::read(root, "task", "task_newtask")?;
    config.new_task = NewTaskFields {
        pid: f.offset("pid", &[4])?,
        clone_flags: f.offset("clone_flags", &[8])?,
    };
    let f = Format::read(root, "sched", "sched_process_exit")?;
    config.exit = ExitFields {
        pid: f.offset("pid", &[4])?,
        group_dead: f.optional("group_dead", &[1])?,
    };
    let f = Format::read(root, "oom", "mark_victim")?;
    config.oom = OomFields {
        pid: f.offset("pid", &[4])?,
        anon_rss: f.optional("anon_rss", &[8])?,
    };
    let f = Format::read(root, "kmem", "mm_page_alloc")?;
    config.page_alloc = PageAllocFields {
        order: f.offset("order", &[4])?,
        _pad: 0,
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHED_SWITCH: &str = "name: sched_switch
ID: 372
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:char next_comm[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] cmd;\toffset:60;\tsize:4;\tsigned:0;
";

    #[test]
    fn parses_field_names_offsets_and_sizes() {
        let fields = parse_format(SCHED_SWITCH);
        let find = |n: &str| fields.iter().find(|f| f.name == n).cloned();
        assert_eq!(
            find("prev_pid"),
            Some(Field {
                name: "prev_pid".into(),
                offset: 24,
                size: 4
            })
        );
        assert_eq!(find("next_comm").map(|f| (f.offset, f.size)), Some((40, 16)));
        assert_eq!(find("cmd").map(|f| f.offset), Some(60));
        assert_eq!(find("common_type").map(|f| f.size), Some(2));
    }

    #[test]
    fn wrong_size_is_an_error() {
        let f = Format {
            tracepoint: "sched/sched_switch".into(),
            fields: parse_format(SCHED_SWITCH),
        };
        assert!(f.offset("prev_pid", &[4]).is_ok());
        assert!(f.offset("prev_pid", &[8]).is_err());
        assert!(f.offset("missing", &[4]).is_err());
        assert_eq!(f.optional("missing", &[4]).ok(), Some(ABSENT));
    }
}
