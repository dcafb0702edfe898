//! Builds the eBPF programs (`agent-ebpf`) with aya-build and leaves the
//! object in `OUT_DIR`, where `src/trace/probes.rs` embeds it.
//!
//! aya-build runs `cargo +nightly build -Z build-std=core --target
//! bpfel-unknown-none` and needs `bpf-linker` and nightly's `rust-src`:
//! `cargo xtask setup` installs both.

fn main() -> anyhow::Result<()> {
    // aya-build watches `agent-ebpf`; the shared types live next door.
    println!("cargo:rerun-if-changed=../agent-common/src");
    let ebpf = aya_build::Package {
        name: "agent-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../agent-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())
}
