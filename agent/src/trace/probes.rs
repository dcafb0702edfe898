//! Loading the eBPF object and attaching its programs.
//!
//! The object is built by `build.rs` and embedded in the binary. Before
//! loading, user space writes `CONFIG` (tracepoint offsets read from
//! tracefs, enrolment mode, stack capture, wake-up threshold) and sizes the
//! ring buffer. Tracepoints attach once; the CUDA entry/return programs
//! attach to every probed function of every library found, with the
//! operation as the attach cookie. Dropping [`Probes`] detaches everything.

use std::collections::HashMap;

use agent_common::{
    catalog::{OPS, cookie},
    config::{Config, INTEREST_MANY, INTEREST_SLOTS, interest_claim},
    drops::{REASON_MAP_FULL, REASON_RING_FULL, slot},
    event::MemCounters,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{
        BtfTracePoint, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};

use super::{
    TraceError,
    libraries::{FileId, LibKind, Library},
};

/// The compiled eBPF programs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ingero-probes"));

/// Which host event families to record.
#[derive(Debug, Clone, Copy)]
pub struct Families {
    /// Off-CPU time of traced threads (`sched/sched_switch`).
    pub sched: bool,
    /// Block I/O requests, issue to completion (`block/block_rq_issue`, `block_rq_complete`).
    pub io: bool,
    /// Page allocations counted per process (`kmem/mm_page_alloc`).
    pub memory: bool,
}

/// A drop counter with a non-zero value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drop {
    /// Source code of the dropped events (catalog `source`).
    pub source: u8,
    /// Operation code within the source (catalog `op`).
    pub op: u8,
    /// Why they were dropped: `ring_full` or `map_full`.
    pub reason: &'static str,
    /// Events dropped since the probes were loaded, summed over CPUs.
    pub count: u64,
}

/// A library the CUDA programs are attached to.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttachedLibrary {
    /// CUDA runtime or driver library.
    pub kind: super::libraries::LibKind,
    /// The library's path as found (e.g. through a process's maps).
    pub path: String,
    /// Symbols of the functions probed in it.
    pub functions: Vec<&'static str>,
    /// Catalog functions the library does not export (not probed).
    pub missing: Vec<&'static str>,
}

/// The loaded eBPF object: its programs, maps, drop counters and the
/// libraries the CUDA programs are attached to. Dropping it (or `detach`)
/// removes every probe.
pub struct Probes {
    /// `None` once detached.
    ebpf: Option<Ebpf>,
    /// Taken out of the object so it can still be read after detaching.
    drops: PerCpuArray<MapData, u64>,
    attached: HashMap<FileId, AttachedLibrary>,
    /// Uprobe links attached.
    uprobe_links: usize,
    /// The config has `task_struct` offsets (the BTF-typed `sched_switch`
    /// program can be tried).
    task_fields: bool,
    /// Which `sched_switch` program is attached, once one is.
    sched_switch: Option<&'static str>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("loaded", &self.ebpf.is_some())
            .field("libraries", &self.attached.len())
            .finish_non_exhaustive()
    }
}

fn load_err(e: impl std::fmt::Display) -> TraceError {
    TraceError::Load(e.to_string())
}

impl Probes {
    /// Loads the object with `config` and a ring buffer of `ring_bytes`.
    pub fn load(config: &Config, ring_bytes: u32) -> Result<Self, TraceError> {
        let mut ebpf = EbpfLoader::new()
            .override_global("CONFIG", config, true)
            .map_max_entries("EVENTS", ring_bytes)
            .load(OBJECT)
            .map_err(load_err)?;
        for name in ["cuda_enter", "nccl_enter", "empty_enter"] {
            uprobe(&mut ebpf, name)?.load().map_err(load_err)?;
        }
        for name in ["cuda_exit", "nccl_exit", "empty_exit"] {
            uprobe(&mut ebpf, name)?.load().map_err(load_err)?;
        }
        let drops = ebpf
            .take_map("DROPS")
            .ok_or_else(|| load_err("DROPS map missing"))?;
        Ok(Self {
            ebpf: Some(ebpf),
            drops: PerCpuArray::try_from(drops).map_err(load_err)?,
            attached: HashMap::new(),
            uprobe_links: 0,
            task_fields: config.task.comm != 0,
            sched_switch: None,
        })
    }

    fn ebpf(&mut self) -> Result<&mut Ebpf, TraceError> {
        self.ebpf
            .as_mut()
            .ok_or_else(|| load_err("the probes were detached"))
    }

    /// Number of uprobe links attached.
    #[must_use]
    pub fn link_count(&self) -> usize {
        self.uprobe_links
    }

    /// Detaches every program. The ring buffer (if taken) and the drop
    /// counters stay readable, so what was already recorded is not lost.
    ///
    /// Removing a uprobe waits for an RCU grace period under a kernel-wide
    /// lock (about 0.1 s per link on a small VM), so this takes seconds when
    /// many functions are probed; callers run it off their event loop.
    pub fn detach(&mut self) {
        self.ebpf = None;
        self.uprobe_links = 0;
    }

    /// Attaches the host tracepoints of the enabled families, and those of
    /// the process lifecycle (always needed to follow forks).
    pub fn attach_tracepoints(&mut self, families: Families) -> Result<(), TraceError> {
        let mut points = vec![
            ("task_newtask", "task", "task_newtask"),
            ("process_exec", "sched", "sched_process_exec"),
            ("process_exit", "sched", "sched_process_exit"),
            ("oom_mark_victim", "oom", "mark_victim"),
        ];
        if families.sched {
            match self.attach_btf_switch() {
                Ok(()) => self.sched_switch = Some("tp_btf/sched_switch"),
                Err(why) => {
                    log::debug!("BTF-typed sched_switch not used ({why}); classic tracepoint instead");
                    points.push(("sched_switch", "sched", "sched_switch"));
                    self.sched_switch = Some("sched/sched_switch");
                }
            }
        }
        if families.io {
            points.push(("block_rq_issue", "block", "block_rq_issue"));
            points.push(("block_rq_complete", "block", "block_rq_complete"));
        }
        if families.memory {
            points.push(("mm_page_alloc", "kmem", "mm_page_alloc"));
        }
        for (program, category, name) in points {
            let tp: &mut TracePoint = self
                .ebpf()?
                .program_mut(program)
                .ok_or_else(|| load_err(format!("program {program} missing from the object")))?
                .try_into()
                .map_err(load_err)?;
            tp.load().map_err(load_err)?;
            tp.attach(category, name).map_err(|e| TraceError::Attach {
                what: format!("tracepoint {category}/{name}"),
                message: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// The BTF-typed `sched_switch` program: no trace record is built for
    /// it, so every context switch of the machine costs less.
    fn attach_btf_switch(&mut self) -> Result<(), String> {
        if !self.task_fields {
            return Err("no task_struct offsets from the kernel's BTF".into());
        }
        let btf = aya::Btf::from_sys_fs().map_err(|e| e.to_string())?;
        let program: &mut BtfTracePoint = self
            .ebpf()
            .map_err(|e| e.to_string())?
            .program_mut("sched_switch_btf")
            .ok_or("program sched_switch_btf missing from the object")?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| e.to_string())?;
        program.load("sched_switch", &btf).map_err(|e| e.to_string())?;
        program.attach().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The `sched_switch` program attached (`tp_btf/sched_switch` or
    /// `sched/sched_switch`), if the family is on.
    #[must_use]
    pub fn sched_switch_program(&self) -> Option<&'static str> {
        self.sched_switch
    }

    /// Whether the CUDA programs are attached to this file already.
    #[must_use]
    pub fn is_attached(&self, id: &FileId) -> bool {
        self.attached.contains_key(id)
    }

    /// Attaches the CUDA entry/return programs to every probed function of
    /// `lib`. Returns the number of functions now traced.
    pub fn attach_library(&mut self, lib: &Library) -> Result<usize, TraceError> {
        if self.attached.contains_key(&lib.id) {
            return Ok(0);
        }
        let (enter, exit) = match lib.kind {
            LibKind::Nccl => ("nccl_enter", "nccl_exit"),
            LibKind::Runtime | LibKind::Driver => ("cuda_enter", "cuda_exit"),
        };
        self.attach_pair(lib, enter, exit)?;
        self.attached.insert(
            lib.id,
            AttachedLibrary {
                kind: lib.kind,
                path: lib.path.display().to_string(),
                functions: lib.symbols.iter().map(|(s, _)| s.symbol).collect(),
                missing: lib.missing.clone(),
            },
        );
        Ok(lib.symbols.len())
    }

    /// Attaches the do-nothing programs instead (benchmark baseline).
    pub fn attach_library_empty(&mut self, lib: &Library) -> Result<usize, TraceError> {
        self.attach_pair(lib, "empty_enter", "empty_exit")?;
        Ok(lib.symbols.len())
    }

    fn attach_pair(&mut self, lib: &Library, enter: &str, exit: &str) -> Result<(), TraceError> {
        for program in [enter, exit] {
            let probe = uprobe(
                self.ebpf
                    .as_mut()
                    .ok_or_else(|| load_err("the probes were detached"))?,
                program,
            )?;
            for (sym, offset) in &lib.symbols {
                let point = UProbeAttachPoint {
                    location: UProbeAttachLocation::AbsoluteOffset(*offset),
                    cookie: Some(cookie(sym.source, sym.op)),
                };
                probe
                    .attach(point, &lib.open_path, UProbeScope::AllProcesses)
                    .map_err(|e| TraceError::Attach {
                        what: format!("{} in {}", sym.symbol, lib.path.display()),
                        message: e.to_string(),
                    })?;
                self.uprobe_links += 1;
            }
        }
        Ok(())
    }

    /// The libraries the CUDA programs are attached to, sorted by kind then path.
    #[must_use]
    pub fn attached_libraries(&self) -> Vec<AttachedLibrary> {
        let mut libs: Vec<_> = self.attached.values().cloned().collect();
        libs.sort_by(|a, b| (a.kind, &a.path).cmp(&(b.kind, &b.path)));
        libs
    }

    fn traced_map(&mut self) -> Result<BpfHashMap<&mut MapData, u32, u8>, TraceError> {
        let map = self
            .ebpf()?
            .map_mut("TRACED")
            .ok_or_else(|| load_err("TRACED map missing"))?;
        BpfHashMap::try_from(map).map_err(load_err)
    }

    /// Starts tracing process `pid` (and, through the kernel, its children):
    /// its `TRACED` entry, then its `INTEREST` slot (see
    /// `agent_common::config::INTEREST_SLOTS`).
    pub fn trace_pid(&mut self, pid: u32) -> Result<(), TraceError> {
        self.traced_map()?
            .insert(pid, 1, 0)
            .map_err(|e| TraceError::Load(format!("cannot trace pid {pid}: {e}")))?;
        self.update_interest(pid, |current| interest_claim(current, pid))
            .map_err(|e| TraceError::Load(format!("cannot trace pid {pid}: {e}")))
    }

    /// Rewrites `pid`'s `INTEREST` slot as `change` says.
    fn update_interest(&mut self, pid: u32, change: impl FnOnce(u32) -> u32) -> Result<(), String> {
        let map = self
            .ebpf()
            .map_err(|e| e.to_string())?
            .map_mut("INTEREST")
            .ok_or("INTEREST map missing")?;
        let mut slots = Array::<_, u32>::try_from(map).map_err(|e| e.to_string())?;
        let index = pid & (INTEREST_SLOTS - 1);
        let current = slots.get(&index, 0).map_err(|e| e.to_string())?;
        let new = change(current);
        if new != current {
            slots.set(index, new, 0).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Processes currently traced.
    pub fn traced_pids(&mut self) -> Vec<u32> {
        self.traced_map()
            .map(|m| m.keys().filter_map(Result::ok).collect())
            .unwrap_or_default()
    }

    /// Forgets a process that no longer exists: its `TRACED` entry, then
    /// its `INTEREST` slot if it names it.
    pub fn untrace_pid(&mut self, pid: u32) {
        if let Ok(mut m) = self.traced_map() {
            let _ = m.remove(&pid);
        }
        let _ = self.update_interest(
            pid,
            |current| if current == pid { INTEREST_MANY } else { current },
        );
    }

    /// The ring buffer, for the reader.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, TraceError> {
        let map = self
            .ebpf()?
            .take_map("EVENTS")
            .ok_or_else(|| load_err("EVENTS map missing"))?;
        RingBuf::try_from(map).map_err(load_err)
    }

    /// Non-zero drop counters, summed over CPUs.
    pub fn drops(&self) -> Vec<Drop> {
        let array = &self.drops;
        let mut out = Vec::new();
        for (reason, label) in [(REASON_RING_FULL, "ring_full"), (REASON_MAP_FULL, "map_full")] {
            for o in OPS {
                let count: u64 = array
                    .get(&slot(reason, o.source, o.op), 0)
                    .map_or(0, |values| values.iter().sum());
                if count > 0 {
                    out.push(Drop {
                        source: o.source,
                        op: o.op,
                        reason: label,
                        count,
                    });
                }
            }
        }
        out
    }

    /// Cumulative page-allocation counters per traced process.
    pub fn mem_counters(&self) -> Vec<(u32, MemCounters)> {
        let Some(map) = self.ebpf.as_ref().and_then(|e| e.map("MEM_COUNTERS")) else {
            return Vec::new();
        };
        let Ok(hash) = PerCpuHashMap::<_, u32, MemCounters>::try_from(map) else {
            return Vec::new();
        };
        hash.iter()
            .filter_map(Result::ok)
            .map(|(pid, per_cpu)| {
                let total = per_cpu.iter().fold(MemCounters::default(), |acc, c| MemCounters {
                    allocs: acc.allocs + c.allocs,
                    pages: acc.pages + c.pages,
                });
                (pid, total)
            })
            .collect()
    }

    /// Deletes the counters of a process that exited.
    pub fn forget_mem_counters(&mut self, pid: u32) {
        if let Some(map) = self.ebpf.as_mut().and_then(|e| e.map_mut("MEM_COUNTERS"))
            && let Ok(mut hash) = PerCpuHashMap::<_, u32, MemCounters>::try_from(map)
        {
            let _ = hash.remove(&pid);
        }
    }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, TraceError> {
    ebpf.program_mut(name)
        .ok_or_else(|| load_err(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(load_err)
}
