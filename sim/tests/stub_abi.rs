//! The stub driver exports every probed function, each starting with
//! `push %rbp` like the real libcudart's entry points, so uprobes on it take
//! the kernel's emulated fast path and overhead measured on the stub is
//! representative.

use object::{Object, ObjectSegment, ObjectSymbol};

#[test]
fn every_probed_driver_function_is_exported_and_starts_with_push_rbp() {
    let path = ingero_sim::libcuda();
    let data = std::fs::read(&path).expect("the stub libcuda is built");
    let file = object::File::parse(&*data).expect("ELF");
    let segments: Vec<(u64, u64, u64)> = file
        .segments()
        .map(|s| (s.address(), s.size(), s.file_range().0))
        .collect();
    for probe in agent_common::catalog::DRIVER_SYMBOLS {
        let sym = file
            .dynamic_symbols()
            .find(|s| s.name() == Ok(probe.symbol))
            .unwrap_or_else(|| panic!("{} is not exported", probe.symbol));
        let addr = sym.address();
        let (vaddr, _, off) = segments
            .iter()
            .find(|(v, size, _)| addr >= *v && addr < v + size)
            .unwrap_or_else(|| panic!("{} is outside every segment", probe.symbol));
        let first = data[(addr - vaddr + off) as usize];
        assert_eq!(
            first, 0x55,
            "{} starts with {first:#04x}, not push %rbp",
            probe.symbol
        );
    }
}
