//! User stacks: hashing for deduplication, and symbolization of addresses
//! to `function+offset` in `file`.
//!
//! A stack is identified by the FNV-1a 64 hash of its raw addresses, so the
//! same stack is symbolized and stored once (`stack_traces`). Addresses are
//! resolved through the process's executable mappings (read when the
//! process is first seen, so a process that exits before its events are
//! drained is still resolved; copied to forked children; re-read when an
//! address falls outside them) and the ELF symbol
//! tables of the mapped files (parsed once per file). Captured addresses
//! are return addresses, so the call site is looked up at `ip - 1`.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use object::{Object, ObjectSegment, ObjectSymbol};
use serde::Serialize;

use super::procs::{Mapping, executable_mappings};

/// Stable 64-bit hash of a stack (never 0, which means "no stack").
#[must_use]
pub fn stack_hash(ips: &[u64]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for ip in ips {
        for b in ip.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    }
    h.max(1)
}

/// One resolved frame, as stored in `stack_traces.frames`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// `function+0xoffset`, or empty when unknown.
    #[serde(rename = "s")]
    pub symbol: String,
    /// File name of the mapping, or empty when unknown.
    #[serde(rename = "f")]
    pub file: String,
    /// The address, hex.
    #[serde(rename = "i")]
    pub ip: String,
}

#[derive(Default)]
struct SymbolTable {
    /// (virtual address, size, file offset) of each loadable segment.
    segments: Vec<(u64, u64, u64)>,
    /// (start, size, name), sorted by start.
    symbols: Vec<(u64, u64, String)>,
}

impl SymbolTable {
    fn parse(data: &[u8]) -> Option<Self> {
        let file = object::File::parse(data).ok()?;
        let segments = file
            .segments()
            .map(|s| (s.address(), s.size(), s.file_range().0))
            .collect();
        let mut symbols: Vec<(u64, u64, String)> = file
            .symbols()
            .chain(file.dynamic_symbols())
            .filter(|s| s.kind() == object::SymbolKind::Text && !s.is_undefined() && s.address() != 0)
            .filter_map(|s| {
                let name = s.name().ok()?;
                Some((
                    s.address(),
                    s.size(),
                    name.split('@').next().unwrap_or(name).to_owned(),
                ))
            })
            .collect();
        symbols.sort_by_key(|(start, _, _)| *start);
        symbols.dedup_by_key(|(start, _, _)| *start);
        Some(Self { segments, symbols })
    }

    /// `name+0xoff` of a file offset.
    fn lookup(&self, file_offset: u64) -> Option<String> {
        let (vaddr, _, off) = self
            .segments
            .iter()
            .find(|(_, size, off)| file_offset >= *off && file_offset < off + size)?;
        let addr = file_offset - off + vaddr;
        let i = self.symbols.partition_point(|(start, _, _)| *start <= addr);
        let (start, size, name) = self.symbols.get(i.checked_sub(1)?)?;
        if *size != 0 && addr >= start + size {
            return None;
        }
        Some(format!("{name}+{:#x}", addr - start))
    }
}

/// Caches of process mappings and file symbol tables.
#[derive(Debug, Default)]
pub struct Symbolizer {
    mappings: HashMap<u32, Vec<Mapping>>,
    tables: HashMap<PathBuf, Option<Arc<SymbolTable>>>,
}

impl std::fmt::Debug for SymbolTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SymbolTable({} symbols)", self.symbols.len())
    }
}

impl Symbolizer {
    /// Resolves the frames of a stack captured in process `pid`.
    pub fn frames(&mut self, pid: u32, ips: &[u64]) -> Vec<Frame> {
        ips.iter().map(|&ip| self.frame(pid, ip)).collect()
    }

    fn mapping(&mut self, pid: u32, ip: u64) -> Option<Mapping> {
        let find = |maps: &Vec<Mapping>| maps.iter().find(|m| ip >= m.start && ip < m.end).cloned();
        if let Some(m) = self.mappings.get(&pid).and_then(find) {
            return Some(m);
        }
        // Unknown address: the process may have loaded a library since.
        let fresh = executable_mappings(pid);
        let found = find(&fresh);
        if !fresh.is_empty() {
            // Empty: the process is gone; keep what was known.
            self.mappings.insert(pid, fresh);
        }
        found
    }

    /// Reads `pid`'s mappings now (a process just found or just exec'd).
    pub fn learn(&mut self, pid: u32) {
        let maps = executable_mappings(pid);
        if !maps.is_empty() {
            self.mappings.insert(pid, maps);
        }
    }

    /// A forked child starts with its parent's mappings.
    pub fn inherit(&mut self, parent: u32, child: u32) {
        if let Some(maps) = self.mappings.get(&parent).cloned() {
            self.mappings.entry(child).or_insert(maps);
        }
    }

    fn table(&mut self, pid: u32, path: &Path) -> Option<Arc<SymbolTable>> {
        self.tables
            .entry(path.to_path_buf())
            .or_insert_with(|| {
                let through_root = PathBuf::from(format!("/proc/{pid}/root{}", path.display()));
                let data = std::fs::read(&through_root)
                    .or_else(|_| std::fs::read(path))
                    .ok()?;
                SymbolTable::parse(&data).map(Arc::new)
            })
            .clone()
    }

    fn frame(&mut self, pid: u32, ip: u64) -> Frame {
        let mut frame = Frame {
            symbol: String::new(),
            file: String::new(),
            ip: format!("{ip:#x}"),
        };
        let Some(m) = self.mapping(pid, ip) else {
            return frame;
        };
        frame.file = m
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file_offset = ip.saturating_sub(1) - m.start + m.file_offset;
        if let Some(table) = self.table(pid, &m.path) {
            frame.symbol = table.lookup(file_offset).unwrap_or_default();
        }
        frame
    }

    /// Forgets a process that exited.
    pub fn forget(&mut self, pid: u32) {
        self.mappings.remove(&pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_every_address_and_is_never_zero() {
        assert_ne!(stack_hash(&[1, 2, 3]), stack_hash(&[1, 2, 4]));
        assert_ne!(stack_hash(&[1, 2]), stack_hash(&[2, 1]));
        assert_eq!(stack_hash(&[7, 8]), stack_hash(&[7, 8]));
        assert_ne!(stack_hash(&[]), 0);
    }

    #[test]
    fn symbolizes_an_address_of_this_process() {
        // A function of this test binary, called through a pointer so its
        // address is taken.
        #[inline(never)]
        fn marker() -> u64 {
            std::hint::black_box(42)
        }
        let f: fn() -> u64 = marker;
        let ip = f as usize as u64 + 1; // as if returning into marker
        let mut s = Symbolizer::default();
        let frame = s.frames(std::process::id(), &[ip]).remove(0);
        assert!(!frame.file.is_empty(), "the mapping is found");
        assert!(frame.symbol.contains("marker"), "symbol: {frame:?}");
    }
}
