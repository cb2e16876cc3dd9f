//! How to compile: [`CompileOptions`].

use crate::cache::KernelCache;
use crate::observer::Observer;
use crate::remote::RemoteCache;
use crate::shard::Shard;
use kiln_process::default_threads;

/// How to compile.
#[derive(Clone)]
pub struct CompileOptions<'a> {
    /// Compile workers; 1 compiles strictly sequentially on the calling thread.
    pub threads: usize,
    /// The kernel cache, or None to bypass it.
    pub cache: Option<KernelCache>,
    /// Compile each distinct kernel once (off only to measure what dedupe saves).
    pub dedupe: bool,
    /// Pack small kernels into one compiler invocation.
    pub batching: bool,
    /// Fuse reductions, row maps and matmul epilogues into the kernels that read them
    /// ([`crate::extract::fusion`] passes 4-7); off only to compare against the unfused
    /// kernels. A backend whose [`Backend::supports_fusion`](kiln_program::Backend) is false
    /// never gets them.
    pub fusion: bool,
    /// Upper bound on the memory of compiler invocations in flight (bytes).
    pub memory_budget: Option<u64>,
    pub observer: Option<&'a dyn Observer>,
    /// The remote tier behind the local cache: asked for what the local cache lacks, sent
    /// what this compile builds.
    pub remote: Option<&'a RemoteCache>,
    /// Compile only this shard of the units ([`crate::precompile`] only).
    pub shard: Option<Shard>,
}

impl Default for CompileOptions<'_> {
    fn default() -> Self {
        CompileOptions {
            threads: default_threads(),
            cache: None,
            dedupe: true,
            batching: true,
            fusion: true,
            memory_budget: None,
            observer: None,
            remote: None,
            shard: None,
        }
    }
}
