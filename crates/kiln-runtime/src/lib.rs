//! kiln's runtime: what runs a compiled graph.
//!
//! A backend implements [`Device`] (allocate, upload, download, resolve a kernel, launch it,
//! synchronise); the one [`Executor`] drives every device: it binds inputs and weights, sizes
//! buffers from the memory plan, keeps carried values such as the KV cache on the device,
//! launches kernels in program order and collects outputs. A backend that implements both
//! [`kiln_compile::Backend`] and [`Device`] is a [`Runtime`], and every runtime is a
//! [`Target`]: the object-safe handle that the CLI, the model crate and tests compile and run
//! graphs through (the `kiln-backends` crate opens one by name).

pub mod carry;
mod device;
mod error;
mod executor;
pub mod host;
mod target;

pub use device::Device;
pub use error::{Cause, RunError};
pub use executor::{Executable, Executor, RunStats};
pub use host::{HostBuffer, HostLibrary};
pub use target::{LoadError, Loaded, Runtime, Target};
