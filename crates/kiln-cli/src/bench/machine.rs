//! What the benchmarks report about the machine: its CPU model and its memory bandwidth.

use std::time::Instant;

/// The CPU's model name (`/proc/cpuinfo`), empty where unknown.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default()
}

/// Streaming read of a large buffer on every core: the machine's memory bandwidth, bytes/s.
/// The buffer is host memory as the CPU device holds weights and caches (huge pages where the
/// OS has them: with 4 KiB pages a core of a virtual machine reads at half the speed).
pub fn memory_bandwidth(threads: usize) -> f64 {
    use rayon::prelude::*;
    let words = 1usize << 27; // 1 GiB of u64
    let host = kiln_runtime::HostBuffer::zeroed(words * 8);
    // SAFETY: the buffer holds `words` u64 (8-byte aligned) and only this function uses it.
    let buf: &mut [u64] =
        unsafe { std::slice::from_raw_parts_mut(host.as_mut_ptr() as *mut u64, words) };
    buf.par_iter_mut()
        .enumerate()
        .for_each(|(i, w)| *w = i as u64);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool");
    let mut best = 0.0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let s: u64 = pool.install(|| {
            buf.par_chunks(1 << 16)
                .map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x)))
                .reduce(|| 0, u64::wrapping_add)
        });
        std::hint::black_box(s);
        best = best.max((words * 8) as f64 / start.elapsed().as_secs_f64());
    }
    best
}
