//! Types shared by the eBPF programs (`agent-ebpf`) and the user-space agent.
//!
//! Everything that crosses the kernel/user boundary is defined here once, as
//! `#[repr(C)]` plain data with explicit padding, so both sides agree on the
//! layout byte for byte: the ring-buffer records ([`event`]), the load-time
//! configuration written into the eBPF object ([`config`]), the drop-counter
//! slots ([`drops`]), and the numbering of sources and operations
//! ([`catalog`]), which is also the public contract of the `events` table.
//!
//! With the `user` feature the types implement `aya::Pod`.

#![warn(missing_docs)]
#![no_std]

pub mod catalog;
pub mod config;
pub mod drops;
pub mod event;

#[cfg(feature = "user")]
mod pod {
    //! `aya::Pod` for the types user space reads from or writes to the kernel.
    use crate::{
        config::Config,
        event::{Event, MemCounters},
    };

    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and
    // byte arrays, with explicit padding fields: every bit pattern is valid.
    unsafe impl aya::Pod for Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Config {}
    // SAFETY: as above.
    unsafe impl aya::Pod for MemCounters {}
}
