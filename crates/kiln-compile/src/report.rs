//! What every compile reports.

use crate::context::Context;
use crate::observer::Stage;
use crate::store::RemoteOutcome;
use crate::unit::{unit_of_kernel, Origin, Unit};
use kiln_program::Backend;
use serde::Serialize;
use std::time::Instant;

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

/// One compile unit (one compiler invocation, one artifact, one cache entry), in the
/// schedule's order: the backend's runtime units first, then longest estimate first.
#[derive(Clone, Debug, Serialize)]
pub struct UnitReport {
    /// Its kernels' function names (a runtime unit: the name of the runtime part).
    pub kernels: Vec<String>,
    /// Whether it is a part of the backend's runtime (code the kernels call, compiled once:
    /// `Backend::runtime`) rather than kernels.
    pub runtime: bool,
    /// The schedule's cost estimate (source bytes plus the invocation overhead).
    pub estimate: u64,
    /// Where its artifact came from: `compiled`, `cache` or `remote`.
    pub origin: &'static str,
    /// Time of the compiler invocation that built its artifact, ms (recorded in the cache entry
    /// when it came from a cache).
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
    /// The memory budget of compilers in flight (MB; None: unknown, no limit) and how many
    /// invocations it (and, for a compiler inside the process, the cores) let run at once.
    pub memory_budget_mb: Option<u64>,
    pub max_compilers_in_flight: usize,
    /// See [`artifact_digest`]: equal across thread counts and cache states. For a shard,
    /// over the shard's units only.
    pub artifact_digest: String,
    /// Kernels whose compile unit came from the remote tier (counted in `cache_hits` too).
    pub remote_hits: usize,
    /// Kernels the remote tier was asked for and could not supply (absent, rejected, failed).
    pub remote_misses: usize,
    /// Remote operations that failed (the first one turns the remote off for the process).
    pub remote_errors: u64,
    pub remote_bytes_down: u64,
    /// Bytes this compile uploaded (before its flush limit).
    pub remote_bytes_up: u64,
    /// The remote tier's details, when there is one.
    pub remote: Option<RemoteReport>,
    /// The shard this compile built, when it was one.
    pub shard: Option<ShardReport>,
    pub kernels: Vec<KernelReport>,
    /// The compile units this compile wanted (a shard's only), in the schedule's order.
    pub units: Vec<UnitReport>,
    /// The longest unit's compile time, ms: no number of threads compiles faster than this.
    pub critical_path_ms: f64,
    /// Sum of the units' compile times / the longest one: the most speedup any number of
    /// threads can give the parallel compile stage (0 with no units).
    pub available_parallelism: f64,
}

/// What the remote tier did during one compile.
#[derive(Clone, Debug, Serialize)]
pub struct RemoteReport {
    /// Where it is (never with a password).
    pub location: String,
    /// Entries uploaded.
    pub uploads: u64,
    /// Uploads not made: queue full, remote off, or pending at the flush limit.
    pub uploads_dropped: u64,
}

/// Which part of the program a sharded precompile built.
#[derive(Clone, Debug, Serialize)]
pub struct ShardReport {
    /// 1-based.
    pub index: usize,
    pub count: usize,
    /// Compile units (and kernels) in this shard.
    pub units: usize,
    pub kernels: usize,
}

/// The artifact digest: a hash over the compile units' (key, artifact) pairs in key order. Units
/// depend only on the kernels, so the digest is the same for any thread count and whatever
/// the cache held.
pub fn artifact_digest<'a>(units: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut pairs: Vec<(&str, &[u8])> = units.into_iter().collect();
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

/// What the report needs besides the compile's context and units.
pub(crate) struct Finish {
    /// Kernel launches in the program.
    pub launches: usize,
    pub stages: Vec<StageTime>,
    /// When the compile started.
    pub started: Instant,
    pub remote: RemoteOutcome,
}

/// The report of a finished compile, from its units.
pub(crate) fn build<B: Backend>(cx: &Context<B>, units: &[Unit], end: Finish) -> CompileReport {
    let kernels_in = |pick: &dyn Fn(&Unit) -> bool| -> usize {
        units
            .iter()
            .filter(|u| !u.runtime && pick(u))
            .map(|u| u.kernels.len())
            .sum()
    };
    let built = |u: &Unit| u.origin == Some(Origin::Compiled);
    let busy: f64 = units.iter().map(|u| u.busy_s).sum();
    let compile_wall = end
        .stages
        .iter()
        .find(|s| s.name == Stage::ParallelCompile.name())
        .map_or(0.0, |s| s.ms / 1e3);
    let totals = end.remote.totals;
    let unit_reports = unit_reports(units);
    let (critical_path_ms, available_parallelism) =
        critical_path(unit_reports.iter().map(|u| u.compile_ms));
    let wanted = units.iter().filter(|u| u.wanted);
    let artifacts = wanted.clone().map(|u| {
        let artifact = u
            .artifact
            .as_deref()
            .expect("every wanted unit has its artifact");
        (u.key.as_str(), artifact)
    });
    CompileReport {
        backend: cx.backend.name().into(),
        compiler: cx.identity.clone(),
        threads: cx.opts.threads,
        kernels_total: end.launches,
        kernels_unique: cx.sources.len(),
        cache_hits: kernels_in(&Unit::cached),
        compiled: kernels_in(&built),
        compiler_invocations: units.iter().map(|u| u.invocations).sum(),
        compile_ms: end.started.elapsed().as_secs_f64() * 1e3,
        stages: end.stages,
        parallel_efficiency: if units.iter().any(built) {
            busy / (cx.opts.threads as f64 * compile_wall)
        } else {
            1.0
        },
        peak_rss_mb: peak_rss_mb(),
        memory_budget_mb: cx.memory_budget.map(|b| b >> 20),
        max_compilers_in_flight: cx.max_in_flight.min(cx.opts.threads),
        artifact_digest: artifact_digest(artifacts),
        remote_hits: kernels_in(&|u| u.origin == Some(Origin::Remote)),
        remote_misses: kernels_in(&|u| u.asked_remote && u.origin != Some(Origin::Remote)),
        remote_errors: totals.errors,
        remote_bytes_down: totals.bytes_down,
        remote_bytes_up: totals.bytes_up,
        remote: end.remote.report,
        shard: cx.opts.shard.map(|s| ShardReport {
            index: s.index,
            count: s.count,
            units: wanted.count(),
            kernels: kernels_in(&|u| u.wanted),
        }),
        kernels: kernel_reports(cx, units),
        units: unit_reports,
        critical_path_ms,
        available_parallelism,
    }
}

/// The wanted units' reports, in the schedule's order.
fn unit_reports(units: &[Unit]) -> Vec<UnitReport> {
    units
        .iter()
        .filter(|u| u.wanted)
        .map(|u| UnitReport {
            kernels: u.names.clone(),
            runtime: u.runtime,
            estimate: u.estimate,
            origin: match u.origin {
                Some(Origin::Cache) => "cache",
                Some(Origin::Remote) => "remote",
                Some(Origin::Compiled) | None => "compiled",
            },
            compile_ms: u.compile_ms,
        })
        .collect()
}

/// The longest unit's time and the sum of all over it (0 when there is nothing to compile).
pub fn critical_path(unit_ms: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (sum, longest) = unit_ms
        .into_iter()
        .fold((0.0, 0.0_f64), |(s, m), ms| (s + ms, m.max(ms)));
    let parallelism = if longest > 0.0 { sum / longest } else { 0.0 };
    (longest, parallelism)
}

/// One line per distinct kernel: its uses, its source's size, and its unit's provenance and
/// compile time.
fn kernel_reports<B: Backend>(cx: &Context<B>, units: &[Unit]) -> Vec<KernelReport> {
    let unit_of = unit_of_kernel(units, cx.sources.len());
    cx.sources
        .iter()
        .enumerate()
        .map(|(k, source)| KernelReport {
            name: source.name.clone(),
            label: cx.kernels.kernels[k].label(),
            uses: cx.kernels.uses[k],
            source_bytes: source.source.len(),
            cached: units[unit_of[k]].cached(),
            compile_ms: units[unit_of[k]].compile_ms,
        })
        .collect()
}
