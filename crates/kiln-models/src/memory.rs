//! Where a model load's memory goes: with `KILN_TRACE_MEMORY=1`, [`trace`] prints the process's
//! resident set (VmRSS), its peak so far (VmHWM) and the allocator's bytes in use and held
//! free at each phase of `kiln run` (to stderr), with the milliseconds since the first phase:
//! for finding what a peak is made of; silent otherwise. And [`return_free_heap`], which hands
//! the allocator's free pages back to the system.

use std::sync::OnceLock;

/// When tracing is on: the time of the first trace, which later ones count from.
fn started() -> Option<std::time::Instant> {
    static ON: OnceLock<Option<std::time::Instant>> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var_os("KILN_TRACE_MEMORY")
            .is_some_and(|v| v != "0")
            .then(std::time::Instant::now)
    })
}

/// `VmRSS` and `VmHWM` of this process in MiB (0 where unknown).
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Prints the memory at `phase` when `KILN_TRACE_MEMORY` is set.
pub fn trace(phase: &str) {
    let Some(start) = started() else {
        return;
    };
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let (rss, hwm) = rss_mib();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        let m = unsafe { libc::mallinfo2() };
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        eprintln!(
            "memory: {ms:7.0} ms {phase:<32} rss {rss:7.1} MiB  peak {hwm:7.1} MiB  heap in use {:7.1} MiB, \
             free {:6.1} MiB, mmapped {:7.1} MiB",
            mib(m.uordblks),
            mib(m.fordblks),
            mib(m.hblkhd)
        );
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    eprintln!("memory: {ms:7.0} ms {phase:<32} rss {rss:7.1} MiB  peak {hwm:7.1} MiB");
}

/// Returns the allocator's free pages to the system (glibc keeps freed small allocations for
/// reuse; `malloc_trim` gives back every whole free page, not only the heap's top).
pub fn return_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}
