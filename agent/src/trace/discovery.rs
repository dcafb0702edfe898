//! Keeping the set of traced processes and probed libraries current.
//!
//! Run at start and then every second. In "every CUDA process" mode (no
//! `--pid`), any process that maps a CUDA library is traced; with `--pid`,
//! only those processes and their descendants (the kernel adds forked
//! children itself). Either way, a CUDA library file that a traced process
//! maps and that is not probed yet gets probed, so a process that starts or
//! loads CUDA after the tracer started is traced within about a second.
//! Libraries that fail inspection are remembered and not retried.

use std::collections::HashSet;

use super::{
    TraceError,
    libraries::{FileId, Library, inspect},
    probes::Probes,
    procs,
};

/// The discovery state: which mode it runs in, and the library files that
/// failed inspection or attachment (never retried).
#[derive(Debug)]
pub struct Discovery {
    /// Trace every process that maps a CUDA library.
    every_cuda_process: bool,
    rejected: HashSet<FileId>,
}

/// What a scan changed, for the log.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Libraries probed for the first time during this scan.
    pub new_libraries: Vec<Library>,
    /// Pids that started being traced during this scan.
    pub new_processes: Vec<u32>,
}

impl Discovery {
    /// A discovery with nothing rejected yet; `every_cuda_process` is true
    /// when no `--pid` was given.
    #[must_use]
    pub fn new(every_cuda_process: bool) -> Self {
        Self {
            every_cuda_process,
            rejected: HashSet::new(),
        }
    }

    /// Probes `lib` unless it is probed already. Returns whether it is new.
    pub fn attach(&mut self, probes: &mut Probes, lib: Library) -> Result<Option<Library>, TraceError> {
        if probes.is_attached(&lib.id) || self.rejected.contains(&lib.id) {
            return Ok(None);
        }
        probes.attach_library(&lib)?;
        Ok(Some(lib))
    }

    /// Inspects and probes a candidate path; failures are remembered.
    fn consider(
        &mut self,
        probes: &mut Probes,
        kind: super::libraries::LibKind,
        path: &std::path::Path,
        open_path: &std::path::Path,
    ) -> Option<Library> {
        let id = FileId::of(open_path).ok()?;
        if probes.is_attached(&id) || self.rejected.contains(&id) {
            return None;
        }
        match inspect(kind, path, open_path)
            .map_err(|e| e.to_string())
            .and_then(|lib| self.attach(probes, lib).map_err(|e| e.to_string()))
        {
            Ok(lib) => lib,
            Err(reason) => {
                log::debug!("not probing {}: {reason}", path.display());
                self.rejected.insert(id);
                None
            }
        }
    }

    /// Probes the libraries found on the loader path and in site-packages.
    pub fn probe_installed(&mut self, probes: &mut Probes) -> Vec<Library> {
        super::libraries::candidates()
            .into_iter()
            .filter_map(|(kind, path)| self.consider(probes, kind, &path, &path))
            .collect()
    }

    /// One pass over the processes (all of them, or the traced ones).
    pub fn scan(&mut self, probes: &mut Probes) -> Result<ScanReport, TraceError> {
        let mut report = ScanReport::default();
        let traced: HashSet<u32> = probes.traced_pids().into_iter().collect();
        for &pid in &traced {
            if !procs::exists(pid) {
                probes.untrace_pid(pid);
            }
        }
        let me = std::process::id();
        let pids: Vec<u32> = if self.every_cuda_process {
            procs::all_pids()
        } else {
            traced.iter().copied().collect()
        };
        for pid in pids.into_iter().filter(|p| *p != me) {
            let libs = procs::mapped_cuda_libraries(pid);
            if libs.is_empty() {
                continue;
            }
            if !traced.contains(&pid) {
                probes.trace_pid(pid)?;
                report.new_processes.push(pid);
            }
            for lib in libs {
                if let Some(new) = self.consider(probes, lib.kind, &lib.path, &lib.open_path) {
                    report.new_libraries.push(new);
                }
            }
        }
        Ok(report)
    }
}
