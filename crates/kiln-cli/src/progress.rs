//! Compile progress on a terminal, plus the optional trace; nothing is drawn on a pipe.

use indicatif::{ProgressBar, ProgressStyle};
use kiln_compile::{CompileReport, Event, Observer, TraceRecorder};
use std::io::IsTerminal;
use std::path::Path;

pub struct Progress {
    bar: Option<ProgressBar>,
    pub trace: Option<TraceRecorder>,
}

impl Progress {
    pub fn new(trace: bool) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg:<18} [{bar:30}] {pos}/{len} kernels {elapsed}",
                )
                .expect("template")
                .progress_chars("=> "),
            );
            b
        });
        Progress {
            bar,
            trace: trace.then(TraceRecorder::default),
        }
    }

    pub fn finish(&self, trace_path: Option<&Path>) -> anyhow::Result<()> {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        if let (Some(t), Some(p)) = (&self.trace, trace_path) {
            t.write(p)
                .map_err(|e| anyhow::anyhow!("cannot write trace {}: {e}", p.display()))?;
            eprintln!("trace written to {}", p.display());
        }
        Ok(())
    }
}

impl Observer for Progress {
    fn event(&self, e: &Event<'_>) {
        if let Some(t) = &self.trace {
            t.event(e);
        }
        match e {
            Event::Warning { message } => match &self.bar {
                Some(b) => b.println(format!("warning: {message}")),
                None => eprintln!("warning: {message}"),
            },
            Event::CacheCorrupt { kernel, reason } => eprintln!(
                "warning: discarded corrupt cache entry for {kernel}: {reason}; rebuilding it"
            ),
            _ => {}
        }
        let Some(b) = &self.bar else { return };
        match e {
            Event::StageStarted { stage } => b.set_message(stage.name()),
            Event::RemoteFetch {
                kernels, outcome, ..
            } => {
                if *outcome == "found" {
                    b.inc_length(kernels.len() as u64);
                    b.inc(kernels.len() as u64);
                }
                b.set_message(format!("Remote: {outcome}"));
            }
            Event::CompileQueued { kernels, .. } => {
                b.set_length(*kernels as u64);
                b.set_position(0);
            }
            Event::JobFinished { kernels, .. } => b.inc(kernels.len() as u64),
            _ => {}
        }
    }
}

/// The report for humans, on stderr.
pub fn print_report(r: &CompileReport) {
    eprintln!(
        "compiled {} kernels ({} unique, {} from cache, {} built in {} compiler invocations) in {:.0} ms on {} thread(s)",
        r.kernels_total, r.kernels_unique, r.cache_hits, r.compiled, r.compiler_invocations, r.compile_ms, r.threads
    );
    for s in &r.stages {
        eprintln!("  {:<18} {:>9.1} ms", s.name, s.ms);
    }
    eprintln!(
        "  parallel efficiency {:.2}, peak RSS {:.0} MB, artifact digest {}",
        r.parallel_efficiency,
        r.peak_rss_mb,
        &r.artifact_digest[..16]
    );
    if let Some(remote) = &r.remote {
        eprintln!(
            "  remote cache {}: {} kernels fetched ({:.1} MB), {} missing, {} uploads ({:.1} MB), {} errors",
            remote.location,
            r.remote_hits,
            r.remote_bytes_down as f64 / 1e6,
            r.remote_misses,
            remote.uploads,
            r.remote_bytes_up as f64 / 1e6,
            r.remote_errors
        );
    }
    if let Some(s) = &r.shard {
        eprintln!(
            "  shard {}/{}: {} of the compile units ({} kernels)",
            s.index, s.count, s.units, s.kernels
        );
    }
}

/// The kernel cache unless `--no-cache`; an unusable cache dir is a warning, not an error.
pub fn open_cache(no_cache: bool) -> Option<kiln_compile::KernelCache> {
    if no_cache {
        return None;
    }
    match kiln_compile::KernelCache::open(kiln_compile::KernelCache::default_dir()) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("warning: {e}; compiling without the kernel cache");
            None
        }
    }
}
