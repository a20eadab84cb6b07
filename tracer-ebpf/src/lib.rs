//! Empty on purpose: the kernel programs are the `tracer` binary of this crate (`src/main.rs`).
//! This library target exists so that `tracer` can list us as a build-dependency and cargo rebuilds
//! it when the kernel programs change.
#![no_std]
