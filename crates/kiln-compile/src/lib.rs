//! kiln's compile pipeline.
//!
//! ```text
//! Graph -> Analysis -> Kernel extraction -> Dedupe -> Codegen -> Schedule -> Cache lookup
//!       -> Parallel compile -> Module loading -> Memory plan -> Compiled
//! ```
//! Each stage is one module taking the previous stage's output: [`analysis`] (validate, CSE,
//! DCE), [`extract`] (fusion into canonical kernels), [`dedupe`] (equal kernels compile once),
//! `codegen` (the backend renders each distinct kernel), [`schedule`] (compile units: small
//! kernels batched, longest first), `lookup` (the local cache, then the [`remote`] tier, per
//! unit), `parallel` (the device compiler on a rayon pool), `load` (modules, sequentially),
//! [`memplan`] (buffer slots). The driver (`driver.rs`, [`compile`]) calls them in order over
//! one record per compile unit (`unit.rs`), which the stages after codegen fill in and the
//! report ([`report`]) is built from. [`precompile`] stops after the compile, for a [`shard`]
//! of the units or to fill caches.
//! Units are formed before the cache is consulted, from the kernels alone, so a unit's
//! artifact — and the artifact digest — never depends on what the cache held.
//!
//! Stages are backend-agnostic; a [`Backend`] supplies codegen, compile, verify and load.
//! Every stage is timed, reported to an [`Observer`] and summed up in a [`CompileReport`].
//!
//! The types the pipeline works on (kernels, programs, the backend and device contracts) are
//! kiln-program's, re-exported here; [`Target`] puts the pipeline and kiln-runtime's executor
//! together.

pub mod analysis;
pub mod budget;
pub mod cache;
mod cancel;
mod codegen;
mod context;
pub mod dedupe;
mod driver;
mod error;
pub mod extract;
mod load;
mod lookup;
pub mod memplan;
pub mod observer;
mod options;
mod parallel;
mod pool;
pub mod remote;
pub mod report;
pub mod schedule;
pub mod shard;
mod store;
mod target;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod timer;
mod types;
mod unit;

pub use cache::{cache_key, CacheError, EntryError, KernelCache, Lookup};
pub use driver::{compile, compile_count, precompile};
pub use error::{CompileError, KernelFailure};
pub use kiln_process::{
    cores, default_compile_timeout, default_threads, interrupt, interrupted,
    wait_until_no_compile_runs, DEFAULT_COMPILE_TIMEOUT, MAX_THREADS,
};
// The contracts the pipeline works on, for the pipeline's users (models, the CLI, tests).
pub use kiln_program::{
    Backend, BackendError, Buffer, Epilogue, Kernel, KernelKind, KernelSource, LaunchSpec, Let,
    LoadedProgram, MemoryPlan, Operand, Program, ScalarExpr, Step, UniqueKernel, NAME_PLACEHOLDER,
};
pub use observer::{notify, Event, Observer, Stage, TraceRecorder};
pub use options::CompileOptions;
pub use remote::{RemoteCache, RemoteError, RemoteOptions, RemoteStore};
pub use report::{
    critical_path, peak_rss_mb, CompileReport, KernelReport, RemoteReport, ShardReport, StageTime,
    UnitReport,
};
pub use schedule::modelled_makespan_ms;
pub use shard::{Shard, ShardParseError};
pub use target::{LoadError, Loaded, Target};
pub use types::Compiled;
