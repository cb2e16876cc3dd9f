//! Sharded precompile: N machines (a CI matrix, a Kubernetes job, Ray tasks) each compile a
//! deterministic 1/N of a program's compile units and upload them to the remote tier; after
//! the N shards, every machine starts with all hits.
//!
//! The partition is a function of the compile units alone (their keys and the schedule's cost
//! estimates), which every machine computes identically, so the N shards cover every unit
//! exactly once without talking to each other. Units go, longest estimate first (ties by key),
//! to the shard with the least estimated work so far (ties to the lowest index): the LPT
//! heuristic, whose slowest shard is within 4/3 of the best possible partition.

use crate::schedule::Job;

/// The most shards a program is split into: machines in one precompile. (A shard beyond the
/// program's compile units is empty; the partition never allocates per shard.)
pub const MAX_SHARDS: usize = 65_536;

/// Shard `index` of `count` (1-based: `--shard 1/3`, `2/3`, `3/3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// A `--shard` that is not `I/N` with 1 <= I <= N.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid shard `{0}`: expected I/N with 1 <= I <= N <= {MAX_SHARDS}, e.g. 2/3")]
pub struct ShardParseError(pub String);

impl std::str::FromStr for Shard {
    type Err = ShardParseError;

    /// `I/N` with 1 <= I <= N <= [`MAX_SHARDS`].
    fn from_str(s: &str) -> Result<Shard, ShardParseError> {
        let bad = || ShardParseError(s.to_string());
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || count == 0 || index > count || count > MAX_SHARDS {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

/// The shard (0-based) of every unit: `units[u]` with cache key `keys[u]`.
pub fn partition(units: &[Job], keys: &[String], count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..units.len()).collect();
    order.sort_by(|&a, &b| {
        units[b]
            .estimate
            .cmp(&units[a].estimate)
            .then_with(|| keys[a].cmp(&keys[b]))
    });
    // Only the first `units.len()` shards can receive a unit (the least-loaded shard, ties to
    // the lowest index, is never past the first empty one), so the loads of the others are
    // never kept: `--shard 1/65536` costs what `--shard 1/<units>` does.
    let bins = count.clamp(1, units.len().max(1));
    let mut load: std::collections::BinaryHeap<std::cmp::Reverse<(u64, usize)>> =
        (0..bins).map(|s| std::cmp::Reverse((0, s))).collect();
    let mut shard_of = vec![0; units.len()];
    for u in order {
        let std::cmp::Reverse((l, s)) = load.pop().expect("at least one shard");
        load.push(std::cmp::Reverse((l + units[u].estimate, s)));
        shard_of[u] = s;
    }
    shard_of
}

impl Shard {
    /// Which units this shard compiles.
    pub fn select(&self, units: &[Job], keys: &[String]) -> Vec<bool> {
        partition(units, keys, self.count)
            .into_iter()
            .map(|s| s == self.index - 1)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(estimates: &[u64]) -> (Vec<Job>, Vec<String>) {
        let jobs = estimates
            .iter()
            .enumerate()
            .map(|(i, &e)| Job {
                kernels: vec![i],
                estimate: e,
            })
            .collect();
        let keys = (0..estimates.len())
            .map(|i| blake3::hash(&[i as u8]).to_hex().to_string())
            .collect();
        (jobs, keys)
    }

    #[test]
    fn shards_cover_every_unit_exactly_once_and_balance_the_estimates() {
        let est: Vec<u64> = (0..40).map(|i| 1000 + (i * 7919 % 13) * 500).collect();
        let (jobs, keys) = units(&est);
        for n in 1..=7 {
            let picks: Vec<Vec<bool>> = (1..=n)
                .map(|i| Shard { index: i, count: n }.select(&jobs, &keys))
                .collect();
            for u in 0..jobs.len() {
                assert_eq!(
                    picks.iter().filter(|p| p[u]).count(),
                    1,
                    "unit {u}, {n} shards"
                );
            }
            let loads: Vec<u64> = picks
                .iter()
                .map(|p| (0..jobs.len()).filter(|&u| p[u]).map(|u| est[u]).sum())
                .collect();
            let total: u64 = est.iter().sum();
            let largest = *est.iter().max().unwrap();
            // LPT: no shard exceeds the mean by more than the largest unit.
            assert!(
                loads.iter().all(|&l| l <= total / n as u64 + largest),
                "{n} shards: {loads:?}"
            );
        }
    }

    #[test]
    fn the_partition_depends_on_the_units_not_their_order() {
        let (jobs, keys) = units(&[5, 9, 9, 3, 7, 1, 4]);
        let a = partition(&jobs, &keys, 3);
        let perm = [6, 2, 0, 5, 1, 3, 4];
        let jobs2: Vec<Job> = perm.iter().map(|&i| jobs[i].clone()).collect();
        let keys2: Vec<String> = perm.iter().map(|&i| keys[i].clone()).collect();
        let b = partition(&jobs2, &keys2, 3);
        for (j, &i) in perm.iter().enumerate() {
            assert_eq!(a[i], b[j]);
        }
    }

    #[test]
    fn more_shards_than_units_leave_the_extra_shards_empty_at_no_cost() {
        let (jobs, keys) = units(&[5, 9, 9, 3]);
        let few = partition(&jobs, &keys, 4);
        assert_eq!(partition(&jobs, &keys, MAX_SHARDS), few);
        let last = Shard {
            index: MAX_SHARDS,
            count: MAX_SHARDS,
        };
        assert!(last.select(&jobs, &keys).iter().all(|&w| !w));
    }

    #[test]
    fn parses_i_of_n() {
        assert_eq!("2/3".parse(), Ok(Shard { index: 2, count: 3 }));
        let too_many = format!("1/{}", MAX_SHARDS + 1);
        for bad in [
            "0/3",
            "4/3",
            "1/0",
            "x/2",
            "3",
            "",
            "1/4294967296",
            &too_many,
        ] {
            let e = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("I/N"), "{e}");
        }
    }
}
