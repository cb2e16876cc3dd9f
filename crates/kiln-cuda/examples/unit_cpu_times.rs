//! Each CUDA compile unit's NVRTC time in CPU time of the compiling thread, which a loaded
//! machine (other builds beside it) lengthens far less than the wall times `kiln compile
//! --json` reports; and from them the critical path, the available parallelism and the
//! modelled speedup at 16 threads (kiln's list schedule, `kiln_compile::modelled_makespan_ms`).
//!
//! ```text
//! KILN_NVRTC_LIB=.../libnvrtc.so.13 cargo run --release -p kiln-cuda --example unit_cpu_times -- \
//!     qwen3-0.6b qwen3-8b [--rounds N] [--dump DIR]
//! ```
//!
//! The compile runs on one thread without a cache, as `kiln compile --threads 1 --no-cache`
//! does; each unit's time is the least over `--rounds` (default 3) compiles. `--dump DIR`
//! writes each unit's NVRTC program (the prelude and its kernels) to `DIR/<model>/<first
//! kernel>.cu`, to time or inspect apart.
use kiln_compile::testing::{
    print_unit_times, units_in_schedule_order, Hooks, Wrapped, UNIT_TIMES_HEADER,
};
use kiln_cuda::CudaBackend;
use kiln_program::{Backend, BackendError, KernelSource};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// Over the CUDA backend: each `compile` call's thread CPU time, recorded under its kernels'
/// names.
struct Timed {
    times: Mutex<BTreeMap<String, f64>>,
    dump: Option<PathBuf>,
}

fn thread_cpu_ms() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 / 1e6
}

impl Hooks<CudaBackend> for Timed {
    fn compile(&self, inner: &CudaBackend, ks: &[&KernelSource]) -> Result<Vec<u8>, BackendError> {
        let label = ks
            .iter()
            .map(|k| k.name.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        if let Some(dir) = &self.dump {
            let text = kiln_render::translation_unit(
                kiln_cuda::prelude(),
                ks.iter().map(|k| k.source.as_str()),
            );
            let file = dir.join(format!("{}.cu", ks[0].name));
            std::fs::write(&file, text).expect("writing a unit's sources");
        }
        let start = thread_cpu_ms();
        let artifact = inner.compile(ks)?;
        let ms = thread_cpu_ms() - start;
        let mut times = self.times.lock().unwrap();
        let best = times.entry(label).or_insert(f64::INFINITY);
        *best = best.min(ms);
        Ok(artifact)
    }
}

fn main() {
    let mut models = Vec::new();
    let mut rounds = 3;
    let mut dump: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--rounds N")
            }
            "--dump" => dump = Some(args.next().expect("--dump DIR").into()),
            _ => models.push(a),
        }
    }
    println!("{UNIT_TIMES_HEADER}");
    for model in &models {
        let config =
            kiln_models::presets::preset(model).unwrap_or_else(|| panic!("{model}: not a preset"));
        let graph = kiln_models::build_graph(&config, Default::default()).expect("graph");
        let dir = dump.as_ref().map(|d| d.join(model));
        if let Some(d) = &dir {
            std::fs::create_dir_all(d).expect("dump folder");
        }
        let backend = Wrapped {
            inner: CudaBackend::compile_only("sm_90").expect("NVRTC"),
            hooks: Timed {
                times: Mutex::default(),
                dump: dir,
            },
        };
        let order = units_in_schedule_order(&graph, &backend, rounds);
        let times = backend.hooks.times.lock().unwrap();
        // In the schedule's order, as the pool takes them.
        let ms: Vec<f64> = order.iter().map(|u| times[u]).collect();
        print_unit_times(model, &order, &ms);
    }
}
