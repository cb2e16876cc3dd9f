//! Compile progress on a terminal (a bar, warnings printed above it), plus the optional
//! `--trace`; nothing is drawn on a pipe.

use indicatif::{ProgressBar, ProgressStyle};
use kiln_compile::{Event, Observer, TraceRecorder};
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
