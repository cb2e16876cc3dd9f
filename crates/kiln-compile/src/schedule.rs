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
pub const INVOCATION_OVERHEAD: u64 = 4096;

/// Builds the jobs for kernels with the given cost estimates (and names, for stable ties).
///
/// Kernels at least as costly as the batch target compile alone; smaller ones are packed
/// (largest first) into batches up to the target. The target is the largest single estimate:
/// no batch takes longer than the longest kernel already does, so batching never lengthens the
/// critical path, while small kernels stop paying the per-invocation overhead each.
pub fn plan(estimates: &[u64], names: &[String], batching: bool) -> Vec<Job> {
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
                estimate: estimates[k] + INVOCATION_OVERHEAD,
            })
            .collect();
    } else {
        let target = estimates.iter().copied().max().unwrap_or(0) + INVOCATION_OVERHEAD;
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
                        estimate: cost + INVOCATION_OVERHEAD,
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

/// The compile units of the distinct kernels (planned from their sources' sizes and names),
/// each keyed for the caches; with [`CompileOptions::shard`](crate::CompileOptions::shard),
/// the units of other shards are not wanted.
pub fn units<B: Backend>(cx: &Context<B>) -> Vec<Unit> {
    let names: Vec<String> = cx.sources.iter().map(|s| s.name.clone()).collect();
    let estimates: Vec<u64> = cx.sources.iter().map(|s| s.source.len() as u64).collect();
    // Without dedupe, equal kernels have equal names and cannot share a unit.
    let jobs = plan(&estimates, &names, cx.opts.batching && cx.opts.dedupe);
    let keys: Vec<String> = jobs
        .iter()
        .map(|job| {
            let sources: Vec<&str> = job
                .kernels
                .iter()
                .map(|&k| cx.sources[k].source.as_str())
                .collect();
            cache_key(cx.backend.name(), &cx.identity, &sources)
        })
        .collect();
    let wanted = match cx.opts.shard {
        Some(shard) => shard.select(&jobs, &keys),
        None => vec![true; jobs.len()],
    };
    jobs.into_iter()
        .zip(keys)
        .zip(wanted)
        .map(|((job, key), wanted)| {
            let unit_names = job.kernels.iter().map(|&k| names[k].clone()).collect();
            Unit {
                wanted,
                ..Unit::new(job.kernels, unit_names, job.estimate, key)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("k{i:02}")).collect()
    }

    #[test]
    fn batches_small_kernels_up_to_the_largest() {
        let est = [10_000, 1_000, 1_000, 1_000, 1_000, 9_000];
        let jobs = plan(&est, &names(6), true);
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
    fn no_batching_means_one_job_per_kernel() {
        let jobs = plan(&[5, 7, 3], &names(3), false);
        assert_eq!(jobs.len(), 3);
        assert_eq!(jobs[0].kernels, vec![1]);
    }
}
