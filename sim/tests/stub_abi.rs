//! The stub driver and the stub NCCL export every probed function, each
//! starting with `push %rbp` like the real libraries' entry points, so
//! uprobes on them take the kernel's emulated fast path and overhead
//! measured on the stubs is representative. NCCL names are weak symbols
//! with a `pncclX` alias at the same address, as in the real libnccl.

use object::{Object, ObjectSegment, ObjectSymbol};

struct Elf {
    data: Vec<u8>,
}

impl Elf {
    fn read(path: &std::path::Path) -> Self {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{} is built: {e}", path.display()));
        Self { data }
    }

    /// (address, first byte of code) of an exported function.
    fn export(&self, name: &str) -> (u64, u8) {
        let file = object::File::parse(&*self.data).expect("ELF");
        let sym = file
            .dynamic_symbols()
            .find(|s| s.name() == Ok(name) && s.is_definition())
            .unwrap_or_else(|| panic!("{name} is not exported"));
        let addr = sym.address();
        let (vaddr, off) = file
            .segments()
            .map(|s| (s.address(), s.size(), s.file_range().0))
            .find(|(v, size, _)| addr >= *v && addr < v + size)
            .map_or_else(
                || panic!("{name} is outside every segment"),
                |(v, _, off)| (v, off),
            );
        (addr, self.data[(addr - vaddr + off) as usize])
    }
}

#[test]
fn every_probed_driver_function_is_exported_and_starts_with_push_rbp() {
    let lib = Elf::read(&ingero_sim::libcuda());
    for probe in agent_common::catalog::DRIVER_SYMBOLS {
        let (_, first) = lib.export(probe.symbol);
        assert_eq!(
            first, 0x55,
            "{} starts with {first:#04x}, not push %rbp",
            probe.symbol
        );
    }
}

#[test]
fn every_nccl_export_starts_with_push_rbp_and_has_its_pnccl_alias() {
    let lib = Elf::read(&ingero_sim::libnccl());
    for name in ingero_sim::NCCL_EXPORTS {
        let (addr, first) = lib.export(name);
        assert_eq!(first, 0x55, "{name} starts with {first:#04x}, not push %rbp");
        let (alias, _) = lib.export(&format!("p{name}"));
        assert_eq!(alias, addr, "p{name} is not at the address of {name}");
    }
}

#[test]
fn the_stub_nccl_exports_nothing_but_the_nccl_api() {
    let data = std::fs::read(ingero_sim::libnccl()).expect("built");
    let file = object::File::parse(&*data).expect("ELF");
    let extra: Vec<String> = file
        .dynamic_symbols()
        .filter(ObjectSymbol::is_definition)
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .filter(|n| {
            let base = n.strip_prefix('p').unwrap_or(n);
            !ingero_sim::NCCL_EXPORTS.contains(&base)
        })
        .collect();
    assert!(extra.is_empty(), "internal symbols leak: {extra:?}");
}
