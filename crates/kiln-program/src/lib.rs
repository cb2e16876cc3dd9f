//! kiln's contracts: the data the compiler hands the runtime, and the two traits a backend
//! implements.
//!
//! - [`Kernel`] ([`kernel`]): the canonical description of one fused kernel, what every
//!   backend renders;
//! - [`KernelSource`] ([`source`]): a kernel's canonical text and function name, as a
//!   backend's codegen returns it, with its [`LaunchSpec`] ([`launch`]): the launch geometry
//!   as expressions over the kernel's symbols, which the device evaluates per run;
//! - [`Program`], [`Step`], [`Buffer`] ([`program`]): a graph as kernel launches over
//!   buffers, and [`LoadedProgram`], what an executor runs;
//! - [`MemoryPlan`] ([`memplan`]): which storage slot each buffer uses, sized per run;
//! - [`Backend`] + [`BackendError`] ([`backend`]): render, compile, verify, load;
//! - [`Device`] + [`RunError`] ([`device`], [`error`]): memory and launches; a
//!   [`Runtime`] is a backend with its device.
//!
//! Why a crate of its own: the compile pipeline (kiln-compile: rayon, the cache, the remote
//! tier), the renderers (kiln-render), the backends and the executor (kiln-runtime) all speak
//! these types, and none of them should need the others to do so. Here they depend on the
//! contracts only, so the run path (executor → device → kernel) never reaches back into the
//! compiler, and a renderer or a device builds without the pipeline, its cache or its remote
//! store. Nothing here does work: it is types, traits and the few functions that define them
//! (a kernel's symbols, a buffer's bytes, a slot's size).

pub mod backend;
pub mod device;
pub mod error;
pub mod kernel;
pub mod launch;
pub mod memplan;
pub mod program;
pub mod source;

pub use backend::{Backend, BackendError, DEFAULT_INVOCATION_OVERHEAD};
pub use device::{Device, Runtime};
pub use error::{Cause, RunError};
pub use kernel::{
    canonical_symbol, launch_bindings, Epilogue, Kernel, KernelKind, Let, Operand, RowWrite,
    ScalarExpr,
};
pub use launch::LaunchSpec;
pub use memplan::{MemoryPlan, SlotSizes};
pub use program::{Buffer, LoadedProgram, Program, Step, UniqueKernel};
pub use source::{KernelSource, NAME_PLACEHOLDER};
