//! Reading `/proc`: which processes exist, which CUDA libraries they map,
//! their names, and the rank information torchrun puts in their
//! environment. Every reader tolerates a process vanishing mid-read (it
//! then reports nothing rather than an error).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use super::libraries::{LibKind, classify};

/// Rank of a process in a distributed job, from RANK, LOCAL_RANK and
/// WORLD_SIZE (as torchrun sets them); `None` where a variable is missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RankInfo {
    /// Global rank of the process in the job (`RANK`).
    pub rank: Option<i64>,
    /// Rank of the process on this node (`LOCAL_RANK`).
    pub local_rank: Option<i64>,
    /// Number of processes in the job (`WORLD_SIZE`).
    pub world_size: Option<i64>,
}

impl RankInfo {
    /// True when at least one of the three variables was found.
    #[must_use]
    pub fn is_known(&self) -> bool {
        self.rank.is_some() || self.local_rank.is_some() || self.world_size.is_some()
    }
}

/// Whether `/proc/<pid>` exists, i.e. the process is alive (as seen from
/// our pid namespace).
#[must_use]
pub fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Every process id on the machine.
#[must_use]
pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The rank variables of `pid`'s environment; `None` if the process is
/// gone (or its environment unreadable).
#[must_use]
pub fn rank_info(pid: u32) -> Option<RankInfo> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .ok()
        .map(|env| parse_rank(&env))
}

/// Parses RANK, LOCAL_RANK and WORLD_SIZE from a NUL-separated environment.
#[must_use]
pub fn parse_rank(environ: &[u8]) -> RankInfo {
    let mut info = RankInfo::default();
    for var in environ.split(|b| *b == 0) {
        let Ok(var) = std::str::from_utf8(var) else {
            continue;
        };
        let Some((key, value)) = var.split_once('=') else {
            continue;
        };
        let value = value.trim().parse::<i64>().ok();
        match key {
            "RANK" => info.rank = value,
            "LOCAL_RANK" => info.local_rank = value,
            "WORLD_SIZE" => info.world_size = value,
            _ => {}
        }
    }
    info
}

/// The process name (`comm`).
#[must_use]
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_owned())
}

/// A CUDA library mapped by a process.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MappedLibrary {
    /// Runtime (libcudart) or driver (libcuda), from the file name.
    pub kind: LibKind,
    /// The path as the process sees it.
    pub path: PathBuf,
    /// A path that reaches the same file from here, through the process's
    /// root (so libraries inside containers are found too).
    pub open_path: PathBuf,
}

/// CUDA libraries mapped by `pid`.
#[must_use]
pub fn mapped_cuda_libraries(pid: u32) -> Vec<MappedLibrary> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    parse_maps_libraries(&maps)
        .into_iter()
        .map(|(kind, path)| MappedLibrary {
            kind,
            open_path: PathBuf::from(format!("/proc/{pid}/root{}", path.display())),
            path,
        })
        .collect()
}

/// The distinct CUDA library paths in a `/proc/PID/maps` text.
#[must_use]
pub fn parse_maps_libraries(maps: &str) -> BTreeSet<(LibKind, PathBuf)> {
    maps.lines()
        .filter_map(|line| {
            // address perms offset dev inode path
            let path = line.split_whitespace().nth(5)?;
            if !path.starts_with('/') || line.ends_with("(deleted)") {
                return None;
            }
            let path = PathBuf::from(path);
            Some((classify(&path)?, path))
        })
        .collect()
}

/// One executable mapping of a process, for symbolizing addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First virtual address of the mapping.
    pub start: u64,
    /// Virtual address just past the mapping (exclusive).
    pub end: u64,
    /// Offset in the file, in bytes, that `start` maps.
    pub file_offset: u64,
    /// The mapped file, as the process sees it.
    pub path: PathBuf,
}

/// The file-backed executable mappings of `pid`.
#[must_use]
pub fn executable_mappings(pid: u32) -> Vec<Mapping> {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|m| parse_executable_mappings(&m))
        .unwrap_or_default()
}

/// The file-backed executable mappings in a `/proc/PID/maps` text.
#[must_use]
pub fn parse_executable_mappings(maps: &str) -> Vec<Mapping> {
    maps.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let (range, perms, offset) = (parts.next()?, parts.next()?, parts.next()?);
            let path = parts.nth(2)?;
            if !perms.contains('x') || !path.starts_with('/') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                file_offset: u64::from_str_radix(offset, 16).ok()?,
                path: PathBuf::from(path),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r-xp 00001000 fd:00 1234 /usr/bin/python3.11
7f10a0000000-7f10a0100000 r--p 00000000 fd:00 42 /opt/venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12
7f10a0100000-7f10a0200000 r-xp 00100000 fd:00 42 /opt/venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12
7f10b0000000-7f10b0100000 r-xp 00000000 fd:00 43 /usr/lib/x86_64-linux-gnu/libcuda.so.535.104.05
7f10c0000000-7f10c0100000 r-xp 00000000 fd:00 44 /usr/lib/x86_64-linux-gnu/libc.so.6
7f10d0000000-7f10d0100000 r-xp 00000000 fd:00 45 /tmp/old/libcuda.so.1 (deleted)
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]
";

    #[test]
    fn finds_cuda_libraries_in_maps() {
        let libs = parse_maps_libraries(MAPS);
        let kinds: Vec<_> = libs
            .iter()
            .map(|(k, p)| (*k, p.file_name().map(std::borrow::ToOwned::to_owned)))
            .collect();
        assert_eq!(libs.len(), 2, "{kinds:?}");
        assert!(
            libs.iter()
                .any(|(k, p)| *k == LibKind::Runtime && p.ends_with("libcudart.so.12"))
        );
        assert!(
            libs.iter()
                .any(|(k, p)| *k == LibKind::Driver && p.ends_with("libcuda.so.535.104.05"))
        );
    }

    #[test]
    fn parses_executable_mappings() {
        let m = parse_executable_mappings(MAPS);
        assert_eq!(m.len(), 5);
        assert_eq!(m[1].start, 0x7f10_a010_0000);
        assert_eq!(m[1].file_offset, 0x0010_0000);
    }

    #[test]
    fn parses_rank_variables() {
        let env = b"PATH=/bin\0RANK=3\0LOCAL_RANK=1\0WORLD_SIZE=8\0MASTER_PORT=29500\0";
        assert_eq!(
            parse_rank(env),
            RankInfo {
                rank: Some(3),
                local_rank: Some(1),
                world_size: Some(8)
            }
        );
        assert!(!parse_rank(b"PATH=/bin\0").is_known());
        assert_eq!(parse_rank(b"RANK=x\0").rank, None);
    }
}
