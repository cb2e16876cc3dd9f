//! `KILN_PROFILE=1`: where an executor's run time went, printed when it is dropped.
//!
//! Per distinct kernel: the wall time of its launches (each launch synchronised) and their
//! count. Beside it, a measure a loaded machine hardly moves: every step of the program keeps
//! its **fastest** launch over the runs, and the fastest time from the previous launch's end
//! to its own start (the executor's work between launches). A preempted launch is slow in one
//! run, not in all, so the sum of the fastest launches is what a run costs on a quiet machine,
//! as long as the runs have the same shape (decode steps: the fastest is the one at the
//! shortest cache; a prefill run among them only raises nothing).

use std::time::Instant;

pub(crate) struct Profile {
    /// Seconds and launches per distinct kernel.
    per_kernel: Vec<(f64, usize)>,
    /// Per step: its fastest launch, and the fastest time before it since the last launch.
    best_launch: Vec<f64>,
    best_gap: Vec<f64>,
    /// When the last launch of the current run ended.
    last_end: Option<Instant>,
    /// Seconds in kernels per run (the first is a prefill in `kiln bench decode`).
    per_run: Vec<f64>,
}

impl Profile {
    /// A profile when `KILN_PROFILE` is set (and not `0`).
    pub(crate) fn from_env(kernels: usize, steps: usize) -> Option<Profile> {
        std::env::var_os("KILN_PROFILE")
            .filter(|v| v != "0")
            .map(|_| Profile {
                per_kernel: vec![(0.0, 0); kernels],
                best_launch: vec![f64::INFINITY; steps],
                best_gap: vec![f64::INFINITY; steps],
                last_end: None,
                per_run: Vec::new(),
            })
    }

    pub(crate) fn start_run(&mut self) {
        self.last_end = None;
        self.per_run.push(0.0);
    }

    /// Step `step` (kernel `kernel`) launched at `started` and finished now.
    pub(crate) fn launched(&mut self, step: usize, kernel: usize, started: Instant) {
        let end = Instant::now();
        let secs = (end - started).as_secs_f64();
        self.per_kernel[kernel].0 += secs;
        self.per_kernel[kernel].1 += 1;
        if let Some(run) = self.per_run.last_mut() {
            *run += secs;
        }
        let best = &mut self.best_launch[step];
        *best = best.min(secs);
        if let Some(prev) = self.last_end {
            let gap = &mut self.best_gap[step];
            *gap = gap.min(started.saturating_duration_since(prev).as_secs_f64());
        }
        self.last_end = Some(end);
    }

    /// The table: `step_kernel[s]` is step `s`'s distinct kernel, `names[u]` kernel `u`'s name.
    pub(crate) fn print(&self, device: &str, step_kernel: &[usize], names: &[String]) {
        let total: f64 = self.per_kernel.iter().map(|p| p.0).sum();
        let finite = |v: &f64| if v.is_finite() { *v } else { 0.0 };
        let mut best = vec![0.0; self.per_kernel.len()];
        for (s, &u) in step_kernel.iter().enumerate() {
            best[u] += finite(&self.best_launch[s]);
        }
        let best_launches: f64 = best.iter().sum();
        let best_gaps: f64 = self.best_gap.iter().map(finite).sum();
        let later = self.per_run.get(1..).unwrap_or(&[]);
        let later_mean = later.iter().sum::<f64>() / later.len().max(1) as f64;
        eprintln!(
            "kiln profile ({device}): {:.1} ms in kernels over {} runs (first {:.3} ms, later ones {:.3} ms each); fastest of each step: {:.3} ms of launches + {:.3} ms between them per run",
            total * 1e3,
            self.per_run.len(),
            self.per_run.first().unwrap_or(&0.0) * 1e3,
            later_mean * 1e3,
            best_launches * 1e3,
            best_gaps * 1e3,
        );
        let mut rows: Vec<(usize, &(f64, usize))> = self.per_kernel.iter().enumerate().collect();
        rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        for (u, (secs, n)) in rows.into_iter().take(20) {
            eprintln!(
                "  {:>9.1} ms {:>5.1}% {:>7} launches {:>9.3} ms fastest/run  {}",
                secs * 1e3,
                100.0 * secs / total.max(1e-12),
                n,
                best[u] * 1e3,
                names[u]
            );
        }
    }
}
