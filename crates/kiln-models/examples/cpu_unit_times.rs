//! Each CPU compile unit's C compiler time in CPU time (user + system of the compiler and
//! linker processes it ran), which a loaded machine (other builds beside it) lengthens far
//! less than the wall times `kiln compile --json` reports; and from them the critical path,
//! the available parallelism and the modelled speedup at 16 threads (kiln's list schedule,
//! `kiln_compile::modelled_makespan_ms`). The CPU backend's twin of kiln-cuda's
//! `unit_cpu_times` example (issue 27).
//!
//! ```text
//! cargo run --release -p kiln-models --example cpu_unit_times -- qwen3-0.6b qwen3-8b [--rounds N]
//! ```
//!
//! The compile runs on one thread without a cache, as `kiln compile --threads 1 --no-cache`
//! does, so one compiler process runs at a time and the children's CPU time this process
//! gathers around a unit's `compile` is that unit's; each unit's time is the median over
//! `--rounds` (default 3) compiles. Units are listed on stderr in the schedule's order.
use kiln_compile::testing::{
    print_unit_times, units_in_schedule_order, Hooks, Wrapped, UNIT_TIMES_HEADER,
};
use kiln_compile::{Backend, BackendError, KernelSource};
use kiln_cpu::CpuBackend;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// The CPU backend's hook that records each `compile` call's compiler CPU time under its
/// kernels' names.
#[derive(Default)]
struct Timed {
    times: Mutex<BTreeMap<String, Vec<f64>>>,
}

/// User + system CPU time of this process's waited-for children, ms.
fn children_cpu_ms() -> f64 {
    // SAFETY: an all-zero rusage is a valid value, which getrusage overwrites.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(u.ru_utime) + ms(u.ru_stime)
}

impl Hooks<CpuBackend> for Timed {
    fn compile(&self, inner: &CpuBackend, ks: &[&KernelSource]) -> Result<Vec<u8>, BackendError> {
        let label = ks
            .iter()
            .map(|k| k.name.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let start = children_cpu_ms();
        let artifact = inner.compile(ks)?;
        let ms = children_cpu_ms() - start;
        self.times
            .lock()
            .unwrap()
            .entry(label)
            .or_default()
            .push(ms);
        Ok(artifact)
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut models = Vec::new();
    let mut rounds = 3;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--rounds N")
            }
            _ => models.push(a),
        }
    }
    println!("{UNIT_TIMES_HEADER}");
    for model in &models {
        let config =
            kiln_models::presets::preset(model).unwrap_or_else(|| panic!("{model}: not a preset"));
        let graph = kiln_models::build_graph(&config, Default::default()).expect("graph");
        let backend = Wrapped {
            inner: CpuBackend::default(),
            hooks: Timed::default(),
        };
        let order = units_in_schedule_order(&graph, &backend, rounds);
        let times = backend.hooks.times.lock().unwrap();
        // In the schedule's order, as the pool takes them.
        let ms: Vec<f64> = order.iter().map(|u| median(&times[u])).collect();
        print_unit_times(model, &order, &ms);
    }
}
