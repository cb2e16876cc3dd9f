//! Runs the CUDA C that kiln generates on the CPU, for machines without a GPU.
//!
//! The kernels' exact text (with the CUDA prelude) is compiled as C++ by the host compiler
//! against `emu/kernel.h`, which maps CUDA's keywords, built-in variables and intrinsics onto a
//! small runtime (`emu/runtime.cpp`): blocks run one after another, and the threads of a block
//! that synchronises (reductions' warp shuffles, the tiled matmul's `__syncthreads`) run as
//! coroutines that switch at every barrier. Launch geometry and argument order come from the
//! same [`LaunchPlan`] the CUDA executor uses, so the emulator checks the kernels' indexing,
//! reductions and tiling as the GPU would run them.
//!
//! What it does not check: GPU arithmetic (device `sinf`/`exp2f` are the host libm's), races
//! between warps, memory limits, or anything about the driver. It is slow (one coroutine switch
//! per thread per barrier) and meant for tests of small graphs; the GPU tests stay the judge.

use crate::codegen::LaunchPlan;
use kiln_compile::carry::{slot_allocation, CarriedState};
use kiln_compile::clike::storage_type;
use kiln_compile::{Compiled, Executable, KernelKind, MemoryPlan, Program};
use kiln_ir::{IrError, Tensor};
use std::collections::HashMap;
use std::fmt::Write;
use std::process::Command;

const ABI_H: &str = include_str!("emu/abi.h");
const KERNEL_H: &str = include_str!("emu/kernel.h");
const RUNTIME_CPP: &str = include_str!("emu/runtime.cpp");

type LaunchFn = unsafe extern "C" fn(*mut *mut u8, *const u32, *const u32) -> i32;

struct EmulatedKernel {
    name: String,
    plan: LaunchPlan,
    launch: LaunchFn,
}

/// A host buffer with 8-byte alignment, so kernels may read any dtype from it.
#[derive(Default)]
struct HostBuffer(Vec<u64>);

impl HostBuffer {
    fn zeroed(bytes: usize) -> HostBuffer {
        HostBuffer(vec![0; bytes.div_ceil(8).max(1)])
    }
    fn from_bytes(bytes: &[u8]) -> HostBuffer {
        let mut b = HostBuffer::zeroed(bytes.len());
        b.bytes_mut()[..bytes.len()].copy_from_slice(bytes);
        b
    }
    fn len(&self) -> usize {
        self.0.len() * 8
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: u64 storage viewed as its bytes.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr() as *mut u8, self.len()) }
    }
    fn ptr(&self) -> *mut u8 {
        self.0.as_ptr() as *mut u8
    }
}

/// A compiled graph run by the CUDA emulator.
pub struct EmulatedCuda {
    program: Program,
    plan: MemoryPlan,
    step_kernel: Vec<usize>,
    kernels: Vec<EmulatedKernel>,
    params: HashMap<String, (Tensor, HostBuffer)>,
    slots: Vec<HostBuffer>,
    carried: CarriedState<HostBuffer>,
    _lib: libloading::Library,
    _dir: tempfile::TempDir,
}

/// The C++ compiler: `$CXX`, else `g++`.
fn cxx() -> String {
    std::env::var("CXX")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "g++".into())
}

/// A launcher per kernel: unpacks `void **args` into the kernel's typed parameters.
fn launchers(compiled_kernels: &[kiln_compile::UniqueKernel], out: &mut String) {
    for (i, uk) in compiled_kernels.iter().enumerate() {
        let k = &uk.kernel;
        let mut args = vec![format!("({} *)a[0]", storage_type(k.out_dtype))];
        for (j, d) in k.inputs.iter().enumerate() {
            args.push(format!("(const {} *)a[{}]", storage_type(*d), j + 1));
        }
        // The symbols, then kiln_units: int64 scalars passed by address.
        for j in 0..=k.symbols().len() {
            args.push(format!("*(const int64_t *)a[{}]", k.inputs.len() + 1 + j));
        }
        let cooperative = !matches!(k.kind, KernelKind::Elementwise { .. });
        writeln!(
            out,
            "static void kiln_emu_body_{i}(void **a) {{ {}({}); }}\n\
             extern \"C\" int kiln_emu_launch_{i}(void **a, const unsigned *g, const unsigned *b) \
             {{ return kiln_emu_launch(kiln_emu_body_{i}, a, g, b, {}); }}",
            uk.source.name,
            args.join(", "),
            cooperative as i32
        )
        .unwrap();
    }
}

impl EmulatedCuda {
    /// Builds the emulated kernels of a graph compiled by the CUDA backend (the kernels' CUBINs,
    /// if any, are not used).
    pub fn new<M>(compiled: Compiled<M>) -> Result<EmulatedCuda, String> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-cuda-emu-")
            .tempdir()
            .map_err(|e| format!("CUDA emulator: temporary folder: {e}"))?;
        let mut unit = String::from("#include \"kernel.h\"\n");
        unit.push_str(crate::prelude());
        for k in &compiled.kernels {
            unit.push('\n');
            unit.push_str(&k.source.source);
        }
        launchers(&compiled.kernels, &mut unit);
        for (name, text) in [
            ("abi.h", ABI_H),
            ("kernel.h", KERNEL_H),
            ("runtime.cpp", RUNTIME_CPP),
            ("kernels.cpp", unit.as_str()),
        ] {
            std::fs::write(dir.path().join(name), text)
                .map_err(|e| format!("CUDA emulator: writing {name}: {e}"))?;
        }
        let lib_path = dir.path().join("emulated.so");
        let cxx = cxx();
        let out = Command::new(&cxx)
            .current_dir(dir.path())
            .args(["-std=c++17", "-O1", "-fPIC", "-shared", "-w", "-o"])
            .arg(&lib_path)
            .args(["kernels.cpp", "runtime.cpp"])
            .output()
            .map_err(|e| {
                format!("CUDA emulator: cannot run the C++ compiler '{cxx}' ({e}); install g++ or set CXX")
            })?;
        if !out.status.success() {
            return Err(format!(
                "CUDA emulator: {cxx} failed on {}:\n{}",
                dir.path().join("kernels.cpp").display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // SAFETY: the library was just built from kiln's kernels and runtime.
        let lib = unsafe { libloading::Library::new(&lib_path) }
            .map_err(|e| format!("CUDA emulator: loading {}: {e}", lib_path.display()))?;
        let kernels = compiled
            .kernels
            .iter()
            .enumerate()
            .map(|(i, uk)| {
                // SAFETY: generated above with exactly this signature.
                let launch =
                    unsafe { lib.get::<LaunchFn>(format!("kiln_emu_launch_{i}").as_bytes()) }
                        .map_err(|e| format!("CUDA emulator: kernel {}: {e}", uk.source.name))?;
                Ok(EmulatedKernel {
                    name: uk.source.name.clone(),
                    plan: LaunchPlan::new(&uk.kernel),
                    launch: *launch,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(EmulatedCuda {
            program: compiled.program,
            plan: compiled.plan,
            step_kernel: compiled.step_kernel,
            kernels,
            params: HashMap::new(),
            slots: Vec::new(),
            carried: CarriedState::default(),
            _lib: lib,
            _dir: dir,
        })
    }
}

impl Executable for EmulatedCuda {
    fn set_param(&mut self, name: &str, t: Tensor) -> Result<(), IrError> {
        self.program.check_param(name, &t)?;
        let host = HostBuffer::from_bytes(t.bytes());
        self.params.insert(name.into(), (t, host));
        Ok(())
    }

    fn run(
        &mut self,
        inputs: &HashMap<String, Tensor>,
    ) -> Result<HashMap<String, Tensor>, IrError> {
        let params = self.params.iter().map(|(k, v)| (k.as_str(), &v.0));
        let b = self
            .program
            .bind_run(params, inputs, self.carried.shapes())?;

        let sizes = self.plan.slot_bytes(&self.program, &b)?;
        self.slots.resize_with(sizes.len(), HostBuffer::default);
        for (i, (slot, &bytes)) in self.slots.iter_mut().zip(&sizes).enumerate() {
            if slot.len() < bytes.max(1) {
                let carried = self
                    .carried
                    .holds_output(&self.program, &self.plan.slot_of, i);
                *slot = HostBuffer::zeroed(slot_allocation(bytes, carried));
            }
        }
        let uploaded: HashMap<&str, HostBuffer> = inputs
            .iter()
            .map(|(name, t)| (name.as_str(), HostBuffer::from_bytes(t.bytes())))
            .collect();
        let bufs: Vec<*mut u8> = self
            .program
            .buffers
            .iter()
            .enumerate()
            .map(|(i, buf)| match &buf.input {
                Some(name) => match self.carried.input(name) {
                    Some(c) => c.buf.ptr(),
                    None => uploaded
                        .get(name.as_str())
                        .unwrap_or_else(|| &self.params[name.as_str()].1)
                        .ptr(),
                },
                None => self.slots[self.plan.slot_of[i].expect("planned")].ptr(),
            })
            .collect();

        for (step, &u) in self.program.steps.iter().zip(&self.step_kernel) {
            let k = &self.kernels[u];
            let Some(launch) = k.plan.resolve(&b)? else {
                continue;
            };
            let scalars: Vec<i64> = launch
                .symbols
                .iter()
                .copied()
                .chain([launch.units])
                .collect();
            let mut args: Vec<*mut u8> = vec![bufs[step.output]];
            args.extend(step.inputs.iter().map(|&i| bufs[i]));
            args.extend(scalars.iter().map(|v| v as *const i64 as *mut u8));
            // SAFETY: the launcher unpacks exactly these arguments; buffers are sized by the plan.
            let rc = unsafe {
                (k.launch)(
                    args.as_mut_ptr(),
                    launch.grid.as_ptr(),
                    launch.block.as_ptr(),
                )
            };
            if rc != 0 {
                return Err(IrError::Invalid {
                    what: format!(
                        "CUDA emulator: kernel {}: out of host memory for its threads",
                        k.name
                    ),
                });
            }
        }

        let mut out = HashMap::new();
        for o in self.program.output_layouts(&b)? {
            if let Some(c) = self.carried.output_mut(o.name) {
                // As the CUDA executor: the output's buffer becomes the next run's input.
                let slot = self.plan.slot_of[o.buffer].expect("carried outputs are computed");
                std::mem::swap(&mut self.slots[slot], &mut c.buf);
                c.shape = o.shape;
                continue;
            }
            // SAFETY: the buffer holds at least o.bytes (the plan sized it).
            let bytes = unsafe { std::slice::from_raw_parts(bufs[o.buffer], o.bytes) };
            out.insert(
                o.name.to_string(),
                Tensor::from_bytes(o.dtype, &o.shape, bytes),
            );
        }
        Ok(out)
    }

    fn carry(&mut self, output: &str, input: &str, initial: Tensor) -> Result<bool, IrError> {
        let buf = HostBuffer::from_bytes(initial.bytes());
        self.carried
            .set(&self.program, output, input, &initial, buf)?;
        Ok(true)
    }
}
