//! Compiles the GPU-less stand-ins (stub `libcuda.so.1`, stub `libnccl.so.2`)
//! and the C test workloads into `OUT_DIR` with the system C compiler.
//!
//! Invariant: every exported driver and NCCL entry point starts with `push
//! %rbp` (frame pointers on, no shrink-wrapping, no sibling calls, no CET
//! `endbr64`; the NCCL entry points also ask for their frame address, as
//! gcc omits the frame of a leaf function even with frame pointers on),
//! like the real libcudart and libnccl, so uprobes on them take the
//! kernel's emulated fast path. `tests/stub_abi.rs` checks it.

use std::{env, path::PathBuf, process::Command};

/// Flags shared by every native artifact.
const CFLAGS: &[&str] = &[
    "-O2",
    "-g",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fno-omit-frame-pointer",
    "-fno-shrink-wrap",
    "-fno-schedule-insns2",
    "-fno-optimize-sibling-calls",
    "-fcf-protection=none",
    "-pthread",
];

fn compile(out: &std::path::Path, output: &str, sources: &[&str], extra: &[&str]) {
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let mut cmd = Command::new(&cc);
    cmd.args(CFLAGS).arg("-o").arg(out.join(output));
    for s in sources {
        cmd.arg(format!("native/{s}"));
        println!("cargo:rerun-if-changed=native/{s}");
    }
    cmd.args(extra);
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run the C compiler `{cc}` ({e}); install gcc (`cargo xtask setup` does)")
    });
    assert!(status.success(), "`{cmd:?}` failed with {status}");
}

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-env-changed=CC");
    let libdir = format!("-L{}", out.display());
    compile(
        &out,
        "libcuda.so.1",
        &["cuda_stub.c"],
        &["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1"],
    );
    compile(
        &out,
        "libnccl.so.2",
        &["nccl_stub.c", "nccl_coll.c", "nccl_net.c"],
        &[
            "-shared",
            "-fPIC",
            "-fvisibility=hidden",
            "-Wl,-soname,libnccl.so.2",
            &libdir,
            "-l:libcuda.so.1",
            "-Wl,-rpath,$ORIGIN",
        ],
    );
    println!("cargo:rerun-if-changed=native/common.h");
    println!("cargo:rerun-if-changed=native/cuda_driver.h");
    println!("cargo:rerun-if-changed=native/nccl_api.h");
    println!("cargo:rerun-if-changed=native/nccl_internal.h");
    compile(
        &out,
        "ingero-sim-workload",
        &["workload.c"],
        &[&libdir, "-l:libcuda.so.1", "-Wl,-rpath,$ORIGIN"],
    );
    // Must not link the stub driver (see native/cudart.c).
    compile(&out, "ingero-sim-cudart", &["cudart.c"], &["-ldl"]);
    // Opens the real libnccl.so.2 given on its command line.
    compile(&out, "ingero-sim-nccl-loop", &["nccl_loop.c"], &["-ldl"]);
    compile(
        &out,
        "ingero-sim-nccl-check",
        &["nccl_check.c"],
        &[
            &libdir,
            "-l:libnccl.so.2",
            "-l:libcuda.so.1",
            "-Wl,-rpath,$ORIGIN",
        ],
    );
    println!("cargo:rerun-if-changed=native/rank.h");
    compile(
        &out,
        "ingero-sim-rank",
        &["rank.c", "rank_faults.c"],
        &[
            &libdir,
            "-l:libnccl.so.2",
            "-l:libcuda.so.1",
            "-ldl",
            "-Wl,-rpath,$ORIGIN",
        ],
    );
    println!("cargo:rustc-env=INGERO_SIM_DIR={}", out.display());
}
