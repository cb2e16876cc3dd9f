//! What the machine can do, for benchmarks to measure against: the FMA peak, from a
//! register-only loop compiled by the same C compiler and flags as kernels (so at the widest
//! vector width the CPU has), run on every thread at once.

use crate::cc::CCompiler;
use kiln_program::BackendError;
use std::time::Instant;

/// The FMA peak of `threads` threads in GFLOP/s (best of `runs` short runs, 2 FLOPs per lane
/// per FMA) and the vector width it ran at, in f32 lanes.
pub fn fma_peak(cc: &CCompiler, threads: usize, runs: usize) -> Result<(f64, usize), BackendError> {
    let so = cc.compile(&[include_str!("c/peak.c")])?;
    let module = crate::CpuModule::open(&so)?;
    type Peak = unsafe extern "C" fn(i64) -> f32;
    type Lanes = unsafe extern "C" fn() -> i32;
    // SAFETY: both are defined in peak.c with these signatures.
    let (peak, lanes) = unsafe {
        let peak = *module
            .lib
            .get::<Peak>(b"kiln_fma_peak")
            .map_err(|e| BackendError::Invalid(e.to_string()))?;
        let lanes = *module
            .lib
            .get::<Lanes>(b"kiln_fma_lanes")
            .map_err(|e| BackendError::Invalid(e.to_string()))?;
        (peak, lanes)
    };
    // SAFETY: a pure function.
    let lanes = unsafe { lanes() } as usize;
    let iters: i64 = 2_000_000 / lanes.max(1) as i64 * 8;
    let threads = threads.max(1);
    let mut best = 0.0f64;
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                // SAFETY: a pure function of its argument.
                s.spawn(|| std::hint::black_box(unsafe { peak(iters) }));
            }
        });
        let flops = (iters as f64) * 12.0 * lanes as f64 * 2.0 * threads as f64;
        best = best.max(flops / start.elapsed().as_secs_f64() / 1e9);
    }
    Ok((best, lanes))
}
