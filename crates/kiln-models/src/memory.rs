//! Where a model load's memory goes: with `KILN_TRACE_MEMORY=1`, [`trace`] prints the process's
//! resident set (VmRSS), its peak so far (VmHWM) and the allocator's bytes in use and held free
//! at each phase of `kiln run` (to stderr). For finding what a peak is made of; silent otherwise.
//! And [`return_free_heap`], which hands the allocator's free pages back to the system.

use std::sync::OnceLock;

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("KILN_TRACE_MEMORY").is_some_and(|v| v != "0"))
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
    if !enabled() {
        return;
    }
    let (rss, hwm) = rss_mib();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        let m = unsafe { libc::mallinfo2() };
        let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
        eprintln!(
            "memory: {phase:<40} rss {rss:7.1} MiB  peak {hwm:7.1} MiB  heap in use {:7.1} MiB, \
             free {:6.1} MiB, mmapped {:7.1} MiB",
            mib(m.uordblks),
            mib(m.fordblks),
            mib(m.hblkhd)
        );
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    eprintln!("memory: {phase:<40} rss {rss:7.1} MiB  peak {hwm:7.1} MiB");
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
