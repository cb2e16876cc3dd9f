//! Stage timing: each stage runs inside [`StageTimer::run`], which traces it, tells the
//! observer when it starts and ends, and keeps its time for the report.

use crate::observer::{notify, Event, Observer, Stage};
use crate::report::StageTime;
use std::time::Instant;

pub struct StageTimer<'a> {
    observer: Option<&'a dyn Observer>,
    /// Each stage that ran, in order.
    pub times: Vec<StageTime>,
}

impl<'a> StageTimer<'a> {
    pub fn new(observer: Option<&'a dyn Observer>) -> StageTimer<'a> {
        StageTimer {
            observer,
            times: Vec::new(),
        }
    }

    /// Runs stage `stage` (`f`) and returns what it returned.
    pub fn run<T>(&mut self, stage: Stage, f: impl FnOnce() -> T) -> T {
        let _span = tracing::info_span!("stage", name = stage.name()).entered();
        notify(self.observer, &Event::StageStarted { stage });
        let start = Instant::now();
        let out = f();
        let end = Instant::now();
        notify(self.observer, &Event::StageFinished { stage, start, end });
        self.times.push(StageTime {
            name: stage.name().into(),
            ms: (end - start).as_secs_f64() * 1e3,
        });
        out
    }
}
