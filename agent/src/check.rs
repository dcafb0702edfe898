//! `ingero check`: can this machine trace, and what CUDA libraries does it
//! have? Every line names what was checked, what was found, and what to do
//! about a problem. Exits non-zero when tracing cannot work here.

use std::path::Path;

use serde::Serialize;

use crate::trace::{
    BTF_PATH,
    libraries::{self, FileId, LibKind},
    tracefs,
};

/// One requirement checked.
#[derive(Debug, Serialize)]
pub struct Item {
    /// What was checked: "kernel", "BTF", "privileges", "tracefs", "tracepoints".
    pub name: &'static str,
    /// Whether tracing can work as far as this requirement goes.
    pub ok: bool,
    /// What was found; on a failure, also what to do about it.
    pub detail: String,
}

/// A CUDA library found where ingero looks for one.
#[derive(Debug, Serialize)]
pub struct LibraryReport {
    /// Runtime (libcudart) or driver (libcuda).
    pub kind: LibKind,
    /// Path of the library, as found.
    pub path: String,
    /// Probed functions (symbols) the library exports.
    pub functions: usize,
    /// Probed functions it does not export (older CUDA versions lack some).
    pub missing: Vec<&'static str>,
}

/// The outcome of `ingero check` (printed by [`render`], or as JSON).
#[derive(Debug, Serialize)]
pub struct Report {
    /// Whether every check passed: `ingero trace` can run here.
    pub ready: bool,
    /// Each requirement, in the order checked.
    pub checks: Vec<Item>,
    /// CUDA libraries found, one per file, sorted by kind and path. Finding
    /// none does not fail the check: libraries loaded later are probed then.
    pub libraries: Vec<LibraryReport>,
}

const TRACEPOINTS: &[(&str, &str)] = &[
    ("sched", "sched_switch"),
    ("block", "block_rq_issue"),
    ("block", "block_rq_complete"),
    ("task", "task_newtask"),
    ("sched", "sched_process_exec"),
    ("sched", "sched_process_exit"),
    ("oom", "mark_victim"),
    ("kmem", "mm_page_alloc"),
];

/// `(major, minor)` of a kernel release string such as `6.18.44-foo`.
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The oldest kernel the probes load on: uprobe BPF cookies came in 5.15
/// (the ring buffer in 5.8).
pub const MIN_KERNEL: (u32, u32) = (5, 15);

/// Checks this machine: kernel version, BTF, root privileges, tracefs and
/// the tracepoints used, and the CUDA libraries installed. Has no side
/// effects beyond mounting tracefs when it is not mounted.
#[must_use]
pub fn run() -> Report {
    let mut checks = Vec::new();
    let release = crate::host::facts().kernel;
    let kernel_ok = kernel_version(&release).is_some_and(|v| v >= MIN_KERNEL);
    checks.push(Item {
        name: "kernel",
        ok: kernel_ok,
        detail: if kernel_ok {
            release
        } else {
            format!(
                "{release}: ingero needs Linux {}.{} or later (every uprobe carries a BPF cookie)",
                MIN_KERNEL.0, MIN_KERNEL.1
            )
        },
    });
    let btf = Path::new(BTF_PATH).exists();
    checks.push(Item {
        name: "BTF",
        ok: btf,
        detail: if btf {
            BTF_PATH.to_owned()
        } else {
            format!("{BTF_PATH} missing: use a kernel built with CONFIG_DEBUG_INFO_BTF=y")
        },
    });
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    checks.push(Item {
        name: "privileges",
        ok: root,
        detail: if root {
            "root".into()
        } else {
            "not root: run ingero trace with sudo".into()
        },
    });
    match tracefs::ensure_mounted() {
        Ok(dir) => {
            let missing: Vec<String> = TRACEPOINTS
                .iter()
                .filter(|(c, n)| !dir.join("events").join(c).join(n).join("format").exists())
                .map(|(c, n)| format!("{c}/{n}"))
                .collect();
            checks.push(Item {
                name: "tracefs",
                ok: true,
                detail: dir.display().to_string(),
            });
            checks.push(Item {
                name: "tracepoints",
                ok: missing.is_empty(),
                detail: if missing.is_empty() {
                    format!("{} of {} present", TRACEPOINTS.len(), TRACEPOINTS.len())
                } else {
                    format!("missing: {}", missing.join(", "))
                },
            });
        }
        Err(e) => checks.push(Item {
            name: "tracefs",
            ok: false,
            detail: e.to_string(),
        }),
    }
    let mut seen = std::collections::HashSet::new();
    let mut libs = Vec::new();
    for (kind, path) in libraries::candidates() {
        let Ok(id) = FileId::of(&path) else { continue };
        if !seen.insert(id) {
            continue;
        }
        if let Ok(lib) = libraries::inspect(kind, &path, &path) {
            libs.push(LibraryReport {
                kind,
                path: path.display().to_string(),
                functions: lib.symbols.len(),
                missing: lib.missing,
            });
        }
    }
    libs.sort_by(|a, b| (a.kind, &a.path).cmp(&(b.kind, &b.path)));
    Report {
        ready: checks.iter().all(|c| c.ok),
        checks,
        libraries: libs,
    }
}

/// The report as aligned text.
#[must_use]
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    for c in &report.checks {
        out.push_str(&format!(
            "{:<12} {:<4} {}\n",
            c.name,
            if c.ok { "ok" } else { "FAIL" },
            c.detail
        ));
    }
    for kind in [LibKind::Runtime, LibKind::Driver, LibKind::Nccl] {
        let label = match kind {
            LibKind::Runtime => "cuda runtime",
            LibKind::Driver => "cuda driver",
            LibKind::Nccl => "nccl",
        };
        let found: Vec<_> = report.libraries.iter().filter(|l| l.kind == kind).collect();
        if found.is_empty() {
            out.push_str(&format!(
                "{label:<12} -    none installed where ingero looks; a process that loads one is probed anyway (or pass --{})\n",
                &kind.flag()[2..]
            ));
        }
        for l in found {
            let total = l.functions + l.missing.len();
            out.push_str(&format!(
                "{label:<12} -    {} ({}/{total} functions)\n",
                l.path, l.functions
            ));
        }
    }
    out.push_str(if report.ready {
        "ready: ingero trace can run here\n"
    } else {
        "not ready: fix the FAIL lines above\n"
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(kernel_version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(kernel_version("garbage"), None);
        assert!(kernel_version("4.19.0").is_some_and(|v| v < (5, 8)));
    }
}
