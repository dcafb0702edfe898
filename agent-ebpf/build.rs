//! Declares the `bpf_target_arch` cfg that aya-build passes to rustc, so
//! architecture-specific argument reading is checked, not warned about.

fn main() {
    println!(
        "cargo::rustc-check-cfg=cfg(bpf_target_arch, values(\"aarch64\", \"arm\", \"loongarch64\", \"mips\", \"mips64\", \"powerpc64\", \"riscv64\", \"s390x\", \"x86_64\"))"
    );
}
