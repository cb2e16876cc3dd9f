//! How many device-compiler invocations run at once: as many as the compile's memory budget
//! holds at the backend's estimate of one invocation's peak
//! ([`Backend::compile_memory_estimate`](kiln_program::Backend)), at least one. Workers beyond
//! that wait for a free slot, so a high `--threads` (on more cores, or with distcc) cannot hold
//! more compilers in memory than the budget allows. A compiler that runs inside the process
//! (NVRTC) is also held to one invocation per core ([`local_cores`]).

/// Without a budget given, the compilers in flight may use this share (1/2) of the memory
/// available when the compile starts: the rest stays for the program being compiled (weights,
/// the running executor) and whatever else runs on the machine.
const DEFAULT_SHARE_DIVISOR: u64 = 2;

/// `MemAvailable` of /proc/meminfo, bytes; None where unknown (not Linux).
pub fn available_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The compile's memory budget for compilers in flight, bytes: the one given, else half of the
/// available memory; None (no limit) where neither is known.
pub fn memory_budget(given: Option<u64>) -> Option<u64> {
    given.or_else(|| available_memory_bytes().map(|b| b / DEFAULT_SHARE_DIVISOR))
}

/// The cores this process may run on (at least one): the most invocations of a compiler that
/// runs inside the process ([`Backend::compiles_on_local_cores`](kiln_program::Backend)) that
/// are in flight at once.
pub fn local_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The most invocations in flight under `budget` at `per_invocation` bytes each (at least
/// one); `usize::MAX` without a budget.
pub fn in_flight_limit(budget: Option<u64>, per_invocation: u64) -> usize {
    match budget {
        Some(b) => usize::try_from(b / per_invocation.max(1))
            .unwrap_or(usize::MAX)
            .max(1),
        None => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_admits_what_it_holds_and_at_least_one() {
        assert_eq!(in_flight_limit(Some(1 << 30), 256 << 20), 4);
        assert_eq!(in_flight_limit(Some(1), 512 << 20), 1);
        assert_eq!(in_flight_limit(None, 512 << 20), usize::MAX);
        assert_eq!(memory_budget(Some(5)), Some(5));
    }

    #[test]
    fn the_default_budget_is_half_the_available_memory() {
        if let Some(avail) = available_memory_bytes() {
            let b = memory_budget(None).unwrap();
            // MemAvailable moves between the two reads; allow a little.
            assert!(b.abs_diff(avail / 2) < avail / 8, "{b} of {avail}");
        }
    }
}
