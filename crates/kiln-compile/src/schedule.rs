//! Scheduling: estimate each kernel's compile cost, group small kernels into one compile unit
//! (one compiler invocation, one artifact, one cache entry), and order units longest-first
//! (LPT) for the worker pool.
//!
//! The plan depends only on the kernels — never on the thread count, on timing or on what the
//! cache holds — so the artifacts, and the artifact digest, are the same for every `--threads`
//! and every cache state.

use crate::cache::cache_key;
use crate::context::Context;
use crate::unit::Unit;
use kiln_program::Backend;

/// One compile unit: indices into the list of distinct kernels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub kernels: Vec<usize>,
    pub estimate: u64,
}

/// Fixed cost of one invocation, in the same unit as a kernel's estimate (source bytes): a C
/// compiler process start and its headers cost about what a few kilobytes of kernel source do.
/// The default of [`Backend::invocation_overhead`], which the schedule uses.
pub const INVOCATION_OVERHEAD: u64 = kiln_program::DEFAULT_INVOCATION_OVERHEAD;

/// The largest share of the program's estimated cost one unit should hold: 1/32, so that 32
/// workers each have a unit to compile.
pub const UNIT_SHARE: u64 = 32;

/// The batch target is never below this many invocations' `overhead`: a batch whose kernels
/// cost less than one more invocation would only be slower apart (each part paying the
/// invocation again), so small programs keep their batches even where they exceed
/// 1/[`UNIT_SHARE`] of the total.
pub const MIN_BATCH_INVOCATIONS: u64 = 2;

/// The estimated cost a batch of small kernels is packed up to, for a compiler whose
/// invocation costs `overhead`: the largest single kernel (so batching never lengthens the
/// critical path), lowered to 1/[`UNIT_SHARE`] of the whole program where that is larger than
/// [`MIN_BATCH_INVOCATIONS`] invocations (so no unit holds more than its share of the work
/// unless one kernel alone does).
pub fn batch_target(estimates: &[u64], overhead: u64) -> u64 {
    let largest = estimates.iter().copied().max().unwrap_or(0) + overhead;
    let total = estimates.iter().sum::<u64>() + overhead;
    largest.min((total / UNIT_SHARE).max(MIN_BATCH_INVOCATIONS * overhead))
}

/// Builds the jobs for kernels with the given cost estimates (and names, for stable ties), for a
/// compiler whose invocation costs `overhead` ([`Backend::invocation_overhead`]).
///
/// Kernels at least as costly as the [`batch_target`] compile alone; smaller ones are packed
/// (largest first) into batches up to the target, so that small kernels stop paying the
/// per-invocation overhead each. The plan is a function of the estimates, names and overhead
/// only.
pub fn plan(estimates: &[u64], names: &[String], batching: bool, overhead: u64) -> Vec<Job> {
    let mut order: Vec<usize> = (0..estimates.len()).collect();
    order.sort_by(|&a, &b| {
        estimates[b]
            .cmp(&estimates[a])
            .then_with(|| names[a].cmp(&names[b]))
    });
    let mut jobs: Vec<Job> = Vec::new();
    if !batching {
        jobs = order
            .iter()
            .map(|&k| Job {
                kernels: vec![k],
                estimate: estimates[k] + overhead,
            })
            .collect();
    } else {
        let target = batch_target(estimates, overhead);
        let mut open: Option<Job> = None;
        for &k in &order {
            let cost = estimates[k];
            match &mut open {
                Some(j) if j.estimate + cost <= target => {
                    j.kernels.push(k);
                    j.estimate += cost;
                }
                _ => {
                    if let Some(j) = open.take() {
                        jobs.push(j);
                    }
                    open = Some(Job {
                        kernels: vec![k],
                        estimate: cost + overhead,
                    });
                }
            }
        }
        jobs.extend(open);
    }
    // Longest processing time first; ties by first kernel name for a stable order.
    jobs.sort_by(|a, b| {
        b.estimate
            .cmp(&a.estimate)
            .then_with(|| names[a.kernels[0]].cmp(&names[b.kernels[0]]))
    });
    jobs
}

/// The compile units: first one per part of the backend's runtime (in the backend's order:
/// every kernel module's load needs them, so they are started first), then those of the
/// distinct kernels (planned from their sources' sizes and names), each keyed for the
/// caches; with [`CompileOptions::shard`](crate::CompileOptions::shard), the units of other
/// shards are not wanted.
pub fn units<B: Backend>(cx: &Context<B>) -> Vec<Unit> {
    let names: Vec<String> = cx.sources.iter().map(|s| s.name.clone()).collect();
    let estimates: Vec<u64> = cx.sources.iter().map(|s| s.source.len() as u64).collect();
    // Without dedupe, equal kernels have equal names and cannot share a unit.
    let overhead = cx.backend.invocation_overhead();
    let kernel_jobs = plan(
        &estimates,
        &names,
        cx.opts.batching && cx.opts.dedupe,
        overhead,
    );
    let runtime_jobs = cx.runtime.iter().enumerate().map(|(i, part)| Job {
        kernels: vec![i],
        estimate: part.source.len() as u64 + overhead,
    });
    let runtime_units = cx.runtime.len();
    let jobs: Vec<Job> = runtime_jobs.chain(kernel_jobs).collect();
    let is_runtime = |u: usize| u < runtime_units;
    let sources_of = |u: usize| -> Vec<&str> {
        let from = if is_runtime(u) {
            &cx.runtime
        } else {
            &cx.sources
        };
        jobs[u]
            .kernels
            .iter()
            .map(|&k| from[k].source.as_str())
            .collect()
    };
    let keys: Vec<String> = (0..jobs.len())
        .map(|u| cache_key(cx.backend.name(), &cx.identity, &sources_of(u)))
        .collect();
    let wanted = match cx.opts.shard {
        Some(shard) => shard.select(&jobs, &keys),
        None => vec![true; jobs.len()],
    };
    jobs.into_iter()
        .zip(keys)
        .zip(wanted)
        .enumerate()
        .map(|(u, ((job, key), wanted))| {
            let unit_names = match is_runtime(u) {
                true => vec![cx.runtime[u].name.clone()],
                false => job.kernels.iter().map(|&k| names[k].clone()).collect(),
            };
            Unit {
                wanted,
                runtime: is_runtime(u),
                ..Unit::new(job.kernels, unit_names, job.estimate, key)
            }
        })
        .collect()
}

/// The wall time of the compile stage that kiln's worker pool would take on `threads` ideal
/// cores for units taking `unit_ms` each, listed in the schedule's (LPT) order: each worker,
/// when free, takes the next unit (as [`crate::pool`] does). A model, not a measurement: it
/// ignores contention for the cores and the memory budget. At one thread it is the sum.
pub fn modelled_makespan_ms(unit_ms: &[f64], threads: usize) -> f64 {
    let mut free_at = vec![0.0_f64; threads.max(1).min(unit_ms.len().max(1))];
    for &ms in unit_ms {
        let worker = free_at
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(w, _)| w);
        free_at[worker] += ms;
    }
    free_at.into_iter().fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modelled_makespan_follows_the_list_schedule() {
        let ms = [5.0, 4.0, 3.0, 3.0, 1.0];
        assert_eq!(modelled_makespan_ms(&ms, 1), 16.0);
        // worker 0: 5, 3 (at 5) -> 8; worker 1: 4, 3 (at 4) -> 7, then 1 (at 7) -> 8
        assert_eq!(modelled_makespan_ms(&ms, 2), 8.0);
        // never below the longest unit, whatever the thread count
        assert_eq!(modelled_makespan_ms(&ms, 32), 5.0);
        assert_eq!(modelled_makespan_ms(&[], 4), 0.0);
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("k{i:02}")).collect()
    }

    #[test]
    fn batches_small_kernels_up_to_the_largest() {
        let est = [10_000, 1_000, 1_000, 1_000, 1_000, 9_000];
        let jobs = plan(&est, &names(6), true, INVOCATION_OVERHEAD);
        // every kernel exactly once
        let mut all: Vec<usize> = jobs.iter().flat_map(|j| j.kernels.clone()).collect();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4, 5]);
        assert!(jobs.len() < 6, "{jobs:?}");
        let target = 10_000 + INVOCATION_OVERHEAD;
        assert!(jobs
            .iter()
            .all(|j| j.estimate <= target || j.kernels.len() == 1));
        // LPT order
        assert!(jobs.windows(2).all(|w| w[0].estimate >= w[1].estimate));
    }

    #[test]
    fn no_unit_exceeds_its_share_unless_one_kernel_does() {
        // 300 small kernels and one large one: the large one alone exceeds 1/32 of the total;
        // every batch stays within it.
        let mut est = vec![2_000; 300];
        est.push(60_000);
        let jobs = plan(&est, &names(301), true, INVOCATION_OVERHEAD);
        let total = est.iter().sum::<u64>() + INVOCATION_OVERHEAD;
        let share = total / UNIT_SHARE;
        let min_target = MIN_BATCH_INVOCATIONS * INVOCATION_OVERHEAD;
        assert!(share > min_target && share < 60_000 + INVOCATION_OVERHEAD);
        for j in &jobs {
            assert!(j.estimate <= share || j.kernels == vec![300], "{j:?}");
        }
        // still batched: far fewer invocations than kernels
        assert!(jobs.len() < 301 / 3, "{} jobs", jobs.len());
        // the same kernels, in any order, give the same partition
        let mut rev_est = est.clone();
        rev_est.reverse();
        let mut rev_names = names(301);
        rev_names.reverse();
        let rev = plan(&rev_est, &rev_names, true, INVOCATION_OVERHEAD);
        let partition = |jobs: &[Job], names: &[String]| -> Vec<Vec<String>> {
            jobs.iter()
                .map(|j| j.kernels.iter().map(|&k| names[k].clone()).collect())
                .collect()
        };
        assert_eq!(partition(&jobs, &names(301)), partition(&rev, &rev_names));
    }

    #[test]
    fn small_programs_keep_their_batches() {
        // 1/32 of this program is far below one invocation's overhead: the batches stay.
        let est = [3_000, 600, 600, 600, 600, 600, 600];
        assert_eq!(
            batch_target(&est, INVOCATION_OVERHEAD),
            3_000 + INVOCATION_OVERHEAD
        );
        assert!(plan(&est, &names(7), true, INVOCATION_OVERHEAD).len() <= 3);
    }

    #[test]
    fn a_cheaper_invocation_packs_smaller_batches() {
        // kiln-cuda's NVRTC program costs half a C compiler's invocation: its batches of small
        // kernels must not outgrow the longest single kernel in time, so it packs less into
        // each (more units), and no batch is longer than with the C compiler's overhead.
        let est = [
            3_400, 3_100, 2_700, 2_600, 1_200, 1_170, 640, 550, 480, 450, 450, 430, 420,
        ];
        let cheap = plan(&est, &names(13), true, INVOCATION_OVERHEAD / 2);
        let dear = plan(&est, &names(13), true, INVOCATION_OVERHEAD);
        assert!(cheap.len() > dear.len(), "{cheap:?} vs {dear:?}");
        let largest_batch = |jobs: &[Job], overhead: u64| {
            jobs.iter()
                .filter(|j| j.kernels.len() > 1)
                .map(|j| j.estimate - overhead)
                .max()
                .unwrap_or(0)
        };
        assert!(
            largest_batch(&cheap, INVOCATION_OVERHEAD / 2)
                < largest_batch(&dear, INVOCATION_OVERHEAD)
        );
        // still batched
        assert!(cheap.len() < est.len());
    }

    #[test]
    fn no_batching_means_one_job_per_kernel() {
        let jobs = plan(&[5, 7, 3], &names(3), false, INVOCATION_OVERHEAD);
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs[0].kernels, vec![1]);
    }
}
