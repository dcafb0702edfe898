//! Finding CUDA and NCCL libraries and the functions to probe in them.
//!
//! Sources, in order: paths given on the command line (`--cuda-lib`,
//! `--cudart-lib`, `--nccl-lib`), the dynamic loader's paths (`ldconfig -p`,
//! `LD_LIBRARY_PATH`, the usual CUDA install directories), Python
//! site-packages (pip wheels such as `nvidia/cuda_runtime/lib`, and
//! `torch/lib`), and, while tracing, `/proc/PID/maps` of traced processes.
//! Libraries are told apart by file identity (device, inode), because
//! uprobes attach to inodes: two paths to one file are one library.
//!
//! Symbols are resolved from the ELF dynamic symbol table to file offsets,
//! which is what a uprobe is attached at.

use std::{
    collections::{BTreeMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
};

use agent_common::catalog::{DRIVER_SYMBOLS, NCCL_SYMBOLS, ProbeSymbol, RUNTIME_SYMBOLS};
use object::{Object, ObjectSegment, ObjectSymbol};

/// Which CUDA API a library implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LibKind {
    /// libcudart: the runtime API.
    Runtime,
    /// libcuda: the driver API.
    Driver,
    /// libnccl: collective communication.
    Nccl,
}

impl LibKind {
    /// The catalog functions ingero probes in a library of this kind.
    #[must_use]
    pub fn symbols(self) -> &'static [ProbeSymbol] {
        match self {
            Self::Runtime => RUNTIME_SYMBOLS,
            Self::Driver => DRIVER_SYMBOLS,
            Self::Nccl => NCCL_SYMBOLS,
        }
    }

    /// The flag that names a library of this kind explicitly.
    #[must_use]
    pub fn flag(self) -> &'static str {
        match self {
            Self::Runtime => "--cudart-lib",
            Self::Driver => "--cuda-lib",
            Self::Nccl => "--nccl-lib",
        }
    }

    /// Short name shown to users ("runtime", "driver", "nccl").
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Runtime => "runtime",
            Self::Driver => "driver",
            Self::Nccl => "nccl",
        }
    }
}

/// The kind of a library from its file name: `libcudart*.so*` is the
/// runtime (including torch's `libcudart-<hash>.so.12`), `libcuda.so*` the
/// driver, `libnccl.so*` NCCL. Link-time stubs (`.../stubs/libcuda.so`) are not libraries to
/// trace.
#[must_use]
pub fn classify(path: &Path) -> Option<LibKind> {
    if path.components().any(|c| c.as_os_str() == "stubs") {
        return None;
    }
    let name = path.file_name()?.to_str()?;
    if name.starts_with("libcudart") && name.contains(".so") {
        Some(LibKind::Runtime)
    } else if name.starts_with("libcuda.so") {
        Some(LibKind::Driver)
    } else if name.starts_with("libnccl.so") {
        Some(LibKind::Nccl)
    } else {
        None
    }
}

/// A library's identity: uprobes are per inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// Device number of the filesystem holding the file (`st_dev`).
    pub dev: u64,
    /// Inode number of the file on that device (`st_ino`).
    pub ino: u64,
}

impl FileId {
    /// The identity of the file at `path` (symbolic links followed).
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let m = std::fs::metadata(path)?;
        Ok(Self {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// A CUDA library inspected and ready to probe.
#[derive(Debug, Clone)]
pub struct Library {
    /// Runtime (libcudart) or driver (libcuda).
    pub kind: LibKind,
    /// Path shown to the user.
    pub path: PathBuf,
    /// Path to open and attach through (may go through /proc/PID/root).
    pub open_path: PathBuf,
    /// File identity (device, inode): one library however many paths lead to it.
    pub id: FileId,
    /// Probed functions present in the library, with their file offsets.
    pub symbols: Vec<(ProbeSymbol, u64)>,
    /// Probed functions the library does not export.
    pub missing: Vec<&'static str>,
}

/// Why a library given to probe cannot be used (exit code 2 from `ingero trace`).
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// The file does not exist.
    #[error("{path}: no such file; check the path given to --cuda-lib/--cudart-lib/--nccl-lib")]
    NotFound {
        /// The path as given.
        path: PathBuf,
    },
    /// The file exists but cannot be read (permissions, I/O error).
    #[error("{path}: cannot read it: {source}")]
    Read {
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not an ELF shared object the parser understands.
    #[error("{path}: not an ELF shared library ({reason})")]
    NotElf {
        /// The path as given.
        path: PathBuf,
        /// The ELF parser's message.
        reason: String,
    },
    /// The file exports none of the functions probed for its kind: probably
    /// the wrong library (or a runtime given as a driver, or the reverse).
    #[error("{path}: exports none of the {kind:?} functions ingero probes; is it the right library?")]
    NoSymbols {
        /// The path as given.
        path: PathBuf,
        /// The kind it was inspected as.
        kind: LibKind,
    },
}

/// Reads `path` as a `kind` library and resolves the functions to probe.
pub fn inspect(kind: LibKind, path: &Path, open_path: &Path) -> Result<Library, LibraryError> {
    if !open_path.exists() {
        return Err(LibraryError::NotFound {
            path: path.to_path_buf(),
        });
    }
    let read_err = |source| LibraryError::Read {
        path: path.to_path_buf(),
        source,
    };
    let id = FileId::of(open_path).map_err(read_err)?;
    let data = std::fs::read(open_path).map_err(read_err)?;
    let offsets = function_offsets(&data).map_err(|reason| LibraryError::NotElf {
        path: path.to_path_buf(),
        reason,
    })?;
    let mut symbols = Vec::new();
    let mut missing = Vec::new();
    for s in kind.symbols() {
        match offsets.get(s.symbol) {
            Some(&offset) => symbols.push((*s, offset)),
            None => missing.push(s.symbol),
        }
    }
    if symbols.is_empty() {
        return Err(LibraryError::NoSymbols {
            path: path.to_path_buf(),
            kind,
        });
    }
    Ok(Library {
        kind,
        path: path.to_path_buf(),
        open_path: open_path.to_path_buf(),
        id,
        symbols,
        missing,
    })
}

/// File offsets of the defined dynamic function symbols of an ELF image,
/// by name without version suffix.
pub fn function_offsets(data: &[u8]) -> Result<BTreeMap<String, u64>, String> {
    let file = object::File::parse(data).map_err(|e| e.to_string())?;
    let segments: Vec<(u64, u64, u64)> = file
        .segments()
        .map(|s| (s.address(), s.size(), s.file_range().0))
        .collect();
    let mut out = BTreeMap::new();
    for sym in file.dynamic_symbols() {
        if sym.is_undefined() || sym.kind() != object::SymbolKind::Text {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        let name = name.split('@').next().unwrap_or(name);
        let addr = sym.address();
        if let Some((vaddr, _, offset)) = segments
            .iter()
            .find(|(vaddr, size, _)| addr >= *vaddr && addr < vaddr + size)
        {
            out.insert(name.to_owned(), addr - vaddr + offset);
        }
    }
    Ok(out)
}

/// Candidate library files from the loader's paths and Python
/// site-packages (not yet inspected, possibly duplicates).
#[must_use]
pub fn candidates() -> Vec<(LibKind, PathBuf)> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&paths));
    }
    for d in [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/lib/wsl/lib",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs.extend(site_package_library_dirs());

    let mut found: Vec<(LibKind, PathBuf)> = ldconfig_libraries();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if let Some(kind) = classify(&path) {
                found.push((kind, path));
            }
        }
    }
    found
}

/// CUDA libraries known to the dynamic loader's cache.
fn ldconfig_libraries() -> Vec<(LibKind, PathBuf)> {
    let out = ["/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"]
        .iter()
        .find_map(|cmd| Command::new(cmd).arg("-p").output().ok())
        .filter(|o| o.status.success());
    let Some(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = PathBuf::from(line.split("=>").nth(1)?.trim());
            Some((classify(&path)?, path))
        })
        .collect()
}

/// Library directories of CUDA pip wheels and torch in every site-packages
/// we can find: the interpreter's own, virtualenv/conda prefixes, and the
/// usual system and user locations.
fn site_package_library_dirs() -> Vec<PathBuf> {
    let mut sites: HashSet<PathBuf> = HashSet::new();
    let python = Command::new("python3")
        .args([
            "-c",
            "import site,sys\nfor p in site.getsitepackages()+[site.getusersitepackages()]: print(p)",
        ])
        .output();
    if let Ok(out) = python {
        sites.extend(String::from_utf8_lossy(&out.stdout).lines().map(PathBuf::from));
    }
    let mut prefixes: Vec<PathBuf> = ["VIRTUAL_ENV", "CONDA_PREFIX"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .collect();
    prefixes.extend(["/usr", "/usr/local"].map(PathBuf::from));
    if let Some(home) = crate::config::invoking_home() {
        prefixes.push(home.join(".local"));
    }
    for prefix in prefixes {
        let Ok(entries) = std::fs::read_dir(prefix.join("lib")) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if name.to_string_lossy().starts_with("python3") {
                sites.insert(e.path().join("site-packages"));
                sites.insert(e.path().join("dist-packages"));
            }
        }
    }
    let mut dirs = Vec::new();
    for site in sites {
        dirs.push(site.join("torch/lib"));
        let Ok(entries) = std::fs::read_dir(site.join("nvidia")) else {
            continue;
        };
        dirs.extend(entries.flatten().map(|e| e.path().join("lib")));
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_file_name() {
        assert_eq!(classify(Path::new("/x/libcudart.so.12")), Some(LibKind::Runtime));
        assert_eq!(
            classify(Path::new("/torch/lib/libcudart-d0da41ae.so.11.0")),
            Some(LibKind::Runtime)
        );
        assert_eq!(
            classify(Path::new("/usr/lib/libcuda.so.1")),
            Some(LibKind::Driver)
        );
        assert_eq!(
            classify(Path::new("/usr/lib/libcuda.so.535.104.05")),
            Some(LibKind::Driver)
        );
        assert_eq!(classify(Path::new("/cuda/lib64/stubs/libcuda.so")), None);
        assert_eq!(classify(Path::new("/usr/lib/libcudnn.so.8")), None);
        assert_eq!(classify(Path::new("/usr/lib/libcudart_static.a")), None);
    }

    #[test]
    fn resolves_offsets_in_a_real_elf() {
        // The test binary itself is an ELF with dynamic symbols from libc
        // imports only (undefined), so use libc, which every system has.
        let libc = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/libc.so.6",
            "/usr/lib/libc.so.6",
        ]
        .iter()
        .map(Path::new)
        .find(|p| p.exists());
        let Some(libc) = libc else {
            crate::say!("skipped: no libc.so.6 at a known path");
            return;
        };
        let data = std::fs::read(libc).expect("read libc");
        let offsets = function_offsets(&data).expect("parse libc");
        assert!(offsets.contains_key("malloc"), "malloc is exported by libc");
        assert!(offsets.values().all(|o| *o < data.len() as u64));
    }

    #[test]
    fn a_missing_library_is_a_clear_error() {
        let err = inspect(
            LibKind::Driver,
            Path::new("/nope/libcuda.so.1"),
            Path::new("/nope/libcuda.so.1"),
        )
        .expect_err("missing file");
        assert!(err.to_string().contains("no such file"), "{err}");
    }
}
