//! One `kiln serve` step, measured: the batched model for a preset (random weights, CPU
//! backend), every slot prefilled with a prompt, then decode steps with 1, 2, .. slots
//! decoding at once. Prints launches per step, and wall and process CPU time per step.
//! With `KILN_PROFILE=1` the executor adds its per-kernel table on exit; with
//! `SERVE_STEP_PAUSE=SECS` it waits after the prefills, to attach `perf record -p PID` to the
//! decode steps alone.
//!
//! `cargo run --release -p kiln-models --example serve_step -- [preset] [slots] [prompt]
//! [steps] [threads] [decoding slots: 1,2,4,8 or -]`

use kiln_models::{BatchedModel, LoadOptions, ModelSource, SlotWork};
use std::time::Instant;

/// CPU time of the whole process (every thread), in seconds: what a step costs, which the
/// other processes on a loaded machine move less than its wall time.
fn cpu_seconds() -> f64 {
    #[repr(C)]
    struct Timespec {
        secs: i64,
        nanos: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, t: *mut Timespec) -> i32;
    }
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut t = Timespec { secs: 0, nanos: 0 };
    // SAFETY: clock_gettime writes the struct it is given (the Linux x86-64 layout).
    unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    t.secs as f64 + t.nanos as f64 * 1e-9
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
    let number = |i: usize, d: &str| -> usize {
        arg(i, d)
            .parse()
            .unwrap_or_else(|_| panic!("argument {}: a number, not '{}'", i + 1, arg(i, d)))
    };
    let preset = arg(0, "qwen3-0.6b");
    let (slots, prompt, steps, threads) = (
        number(1, "8"),
        number(2, "128"),
        number(3, "8"),
        number(4, "2"),
    );
    // How many slots decode at once, one measurement each ("-": none, only the prefills).
    let decoding: Vec<usize> = arg(5, "1,2,4,8")
        .split(',')
        .filter_map(|a| a.parse().ok())
        .filter(|&a| a >= 1 && a <= slots)
        .collect();

    let cpu = kiln_cpu::CpuBackend::default().with_run_threads(threads);
    let mut opts = LoadOptions::new(&cpu);
    opts.compile.threads = threads;
    opts.compile.cache =
        kiln_compile::KernelCache::open(std::env::temp_dir().join("kiln-serve-step-cache")).ok();
    let t = Instant::now();
    let mut m = BatchedModel::load(&ModelSource::Preset(preset), &opts, slots, 512)
        .expect("the batched model loads");
    eprintln!("loaded in {:.1} s", t.elapsed().as_secs_f64());

    let vocab = m.config.vocab_size as u32;
    for slot in 0..slots {
        let ids: Vec<u32> = (0..prompt)
            .map(|i| (slot * 977 + i * 31) as u32 % vocab)
            .collect();
        let work = SlotWork {
            slot,
            position: 0,
            tokens: &ids,
            logits: true,
        };
        m.forward(&[work]).expect("a prefill");
    }
    let mut position = vec![prompt; slots];
    if let Some(secs) = std::env::var("SERVE_STEP_PAUSE")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        eprintln!(
            "prefilled; pid {}; decoding in {secs} s",
            std::process::id()
        );
        std::thread::sleep(std::time::Duration::from_secs_f64(secs));
    }
    for &n in &decoding {
        let (mut wall, mut cpu_time, mut launches) = (0.0, 0.0, 0);
        // One step more than measured: the first may grow the slots' caches.
        for step in 0..=steps {
            let tokens: Vec<[u32; 1]> = (0..n).map(|s| [(s as u32 * 7 + 3) % vocab]).collect();
            let work: Vec<SlotWork<'_>> = tokens
                .iter()
                .enumerate()
                .map(|(slot, t)| SlotWork {
                    slot,
                    position: position[slot],
                    tokens: t,
                    logits: true,
                })
                .collect();
            let (t, c) = (Instant::now(), cpu_seconds());
            m.forward(&work).expect("a decode step");
            let (dt, dc) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
            for p in position.iter_mut().take(n) {
                *p += 1;
            }
            if step > 0 {
                wall += dt;
                cpu_time += dc;
                launches = m.exe.last_run().launches;
            }
        }
        println!(
            "{n} decoding: {:.1} ms wall, {:.1} ms cpu per step, {launches} launches",
            1e3 * wall / steps.max(1) as f64,
            1e3 * cpu_time / steps.max(1) as f64
        );
    }
}
