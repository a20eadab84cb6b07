//! Types shared by the kernel programs (`tracer-ebpf`) and the userspace loader (`tracer`).
//!
//! Everything that crosses the kernel boundary is `#[repr(C)]`, made of integers and fixed arrays
//! only, with its padding spelled out and its size asserted. Userspace turns raw numbers into enums
//! with `TryFrom`; nothing here is an enum in memory.
#![no_std]

pub mod config;
pub mod event;
pub mod fingerprint;
pub mod names;
pub mod parse;
pub mod sample;
pub mod tuple;
pub mod words;

/// How many hook slots the kernel object carries. Each slot is its own classifier program
/// (`pathtrace_h<n>`, see [`names`]), so the event says which hook saw the packet without any
/// lookup.
pub const MAX_HOOKS: usize = 24;
