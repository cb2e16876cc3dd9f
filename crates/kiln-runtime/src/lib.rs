//! kiln's runtime: what runs a compiled graph.
//!
//! A backend implements [`Device`] (allocate, upload, download, resolve a kernel, launch it,
//! synchronise); the one [`Executor`] drives every device: it binds inputs and weights
//! ([`binding`]), sizes buffers from the memory plan, keeps carried values such as the KV
//! cache on the device ([`carry`]), launches kernels in program order and collects outputs.
//! A backend that implements both [`kiln_program::Backend`] and [`Device`] is a [`Runtime`];
//! kiln-compile makes every runtime a `Target` (compile, then run here).
//!
//! This crate depends on the contracts ([`kiln_program`]) only, never on the compile pipeline:
//! the executor runs a [`LoadedProgram`](kiln_program::LoadedProgram), whoever compiled it.

pub mod binding;
pub mod carry;
mod executor;
pub mod host;
mod profile;

pub use executor::{Executable, Executor, RunStats};
pub use host::{HostBuffer, HostLibrary, HugePageArena};
// The device-side contracts, for backends and embedders that name them from here.
pub use kiln_program::{Cause, Device, RunError, Runtime};
