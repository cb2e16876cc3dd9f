//! What every compile reports.

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct StageTime {
    pub name: String,
    pub ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelReport {
    pub name: String,
    pub label: String,
    /// Launches of this kernel in the program.
    pub uses: usize,
    pub source_bytes: usize,
    pub cached: bool,
    /// Compile time of the invocation that built it (shared by a batch), ms.
    pub compile_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CompileReport {
    pub backend: String,
    /// The device compiler and everything else that keys the cache (version, flags, arch).
    pub compiler: String,
    pub threads: usize,
    /// Kernel launches in the program.
    pub kernels_total: usize,
    /// Distinct kernels after dedupe.
    pub kernels_unique: usize,
    pub cache_hits: usize,
    /// Kernels built by the device compiler in this compile.
    pub compiled: usize,
    /// Device-compiler invocations (a batch of small kernels is one).
    pub compiler_invocations: usize,
    /// Wall time of the whole compile, ms.
    pub compile_ms: f64,
    pub stages: Vec<StageTime>,
    /// Sum of per-invocation compile times / (threads x wall time of the Parallel compile stage).
    pub parallel_efficiency: f64,
    pub peak_rss_mb: f64,
    /// Hash over the sorted (kernel key, artifact bytes): equal across thread counts.
    pub artifact_digest: String,
    pub kernels: Vec<KernelReport>,
}

impl CompileReport {
    pub fn stage_ms(&self, name: &str) -> f64 {
        self.stages
            .iter()
            .find(|s| s.name == name)
            .map_or(0.0, |s| s.ms)
    }
}

/// Peak resident set size of this process so far (VmHWM), in MiB; 0 where unknown.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
