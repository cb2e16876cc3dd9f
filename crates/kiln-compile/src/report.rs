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
    /// See [`artifact_digest`]: equal across thread counts and cache states.
    pub artifact_digest: String,
    pub kernels: Vec<KernelReport>,
}

/// The artifact digest: a hash over the compile units' (key, artifact) pairs in key order. Units
/// depend only on the kernels, so the digest is the same for any thread count and whatever
/// the cache held.
pub fn artifact_digest(keys: &[String], artifacts: &[Vec<u8>]) -> String {
    let mut pairs: Vec<(&String, &Vec<u8>)> = keys.iter().zip(artifacts).collect();
    pairs.sort();
    pairs.dedup_by(|a, b| a.0 == b.0);
    let mut h = blake3::Hasher::new();
    for (k, a) in pairs {
        h.update(k.as_bytes());
        h.update(&(a.len() as u64).to_le_bytes());
        h.update(a);
    }
    h.finalize().to_hex().to_string()
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
