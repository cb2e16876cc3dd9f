//! Errors name what is wrong: a kernel naga rejects, sizes that do not fit WGSL's i32 indices or
//! the adapter's limits, a memory budget, a lost device, no adapter at all. None panics.

mod common;
use common::*;
use kiln_compile::Target;
use kiln_compile::{compile, CompileError, CompileOptions};
use kiln_ir::{DType, Expr, Graph, Tensor};
use kiln_program::{Device, RunError, Runtime};
use kiln_wgpu::{WgpuBackend, WgpuOptions};

/// A graph with a softmax (it has a max reduction) over symbolic rows.
fn softmax_graph() -> Graph {
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, &[Expr::sym("s"), 16.into()])
        .unwrap();
    let y = g.softmax(x, 1).unwrap();
    g.output("y", y);
    g
}

/// naga rejects a broken kernel before any driver sees it; the failure names the kernel,
/// quotes naga's report (line, caret, reason) and says where the WGSL was written.
#[test]
fn a_kernel_naga_rejects_is_named_with_its_report() {
    let inner = backend().unwrap_or_else(WgpuBackend::validate_only);
    let (_, fail) = kiln_compile::testing::compile_with_a_broken_kernel(
        &softmax_graph(),
        inner,
        &["reduce_max"],
    );
    let report = fail.error.to_string();
    assert!(
        report.contains("WGSL") && report.contains("broken_on_purpose") && report.contains("wgsl:"),
        "naga's report: {report}"
    );
}

/// Constant sizes whose index arithmetic overflows i32 are refused when the kernel is
/// compiled, naming the kernel and the size.
#[test]
fn constant_sizes_beyond_i32_fail_at_compile_time() {
    let mut g = Graph::new();
    let shape = [65536.into(), 32768.into()]; // 2^31 elements
    let x = g.input("x", DType::F32, &shape).unwrap();
    let y = g.input("y", DType::F32, &shape).unwrap();
    let z = g.add(x, y).unwrap();
    g.output("z", z);
    let err = compile(
        &g,
        &WgpuBackend::validate_only(),
        &CompileOptions::default(),
    )
    .err()
    .expect("2^31 elements cannot be indexed in i32");
    let CompileError::Kernels(fails) = &err else {
        panic!("{err}")
    };
    let msg = err.to_string();
    assert!(fails[0].kernel.starts_with("kiln_elementwise_"), "{msg}");
    assert!(
        msg.contains("2147483648") && msg.contains("32-bit indices"),
        "{msg}"
    );
}

/// A buffer larger than the adapter's `max_buffer_size`, and an output larger than one storage
/// binding, are refused before anything is launched, naming the buffer and the sizes.
#[test]
fn buffers_beyond_the_adapters_limits_are_clear_errors() {
    let Some(b) = backend() else { return };
    let limits = b.limits().expect("a device");
    let mut g = Graph::new();
    let x = g
        .input("x", DType::F32, &[Expr::sym("s"), 1.into()])
        .unwrap();
    let z = g
        .input("z", DType::F32, &[1.into(), Expr::sym("n")])
        .unwrap();
    let y = g.add(x, z).unwrap(); // [s, n]
    g.output("y", y);
    let mut exe = build(&b, &g, 1);
    let run = |exe: &mut dyn Executable, s: usize, n: usize| {
        let ins = inputs(&[
            ("x", Tensor::zeros(DType::F32, &[s, 1])),
            ("z", Tensor::zeros(DType::F32, &[1, n])),
        ]);
        exe.run(&ins)
    };
    // 2^31 elements = 8 GiB in one buffer: above wgpu's max_buffer_size (at most 2^31 - 1
    // bytes with lavapipe, and far above the binding size everywhere).
    let e = run(exe.as_mut(), 1 << 16, 1 << 15).expect_err("8 GiB");
    let m = e.to_string();
    assert!(
        matches!(e, RunError::Unsupported(_))
            && m.contains("8589934592 bytes")
            && m.contains("max_buffer_size"),
        "{m}"
    );
    // An output one binding cannot hold (lavapipe: 128 MiB), if the device allows such a buffer.
    let binding = limits.max_storage_buffer_binding_size;
    let n = (binding / 4 / 1024 + 1) as usize; // rows of 1024: just past one binding
    let bytes = (1024 * n * 4) as u64;
    if bytes > limits.max_buffer_size || bytes > b.memory_budget().unwrap_or(u64::MAX) / 2 {
        eprintln!("skipping the binding-size check: {bytes} bytes do not fit this device");
        return;
    }
    let e = run(exe.as_mut(), 1024, n).expect_err("one binding too small");
    let m = e.to_string();
    assert!(
        matches!(e, RunError::Kernel { .. })
            && m.contains("kiln_elementwise_")
            && m.contains(&format!("its output spans {bytes} bytes"))
            && m.contains("max_storage_buffer_binding_size"),
        "{m}"
    );
}

/// kiln keeps its own account of device memory (lavapipe cannot report running out): past
/// the budget, an allocation is refused naming what needed it.
#[test]
fn the_memory_budget_is_enforced() {
    let Some(b) = backend() else { return };
    let b = b.with_memory_budget(1 << 20);
    let mut g = Graph::new();
    let x = g.input("x", DType::F32, &[Expr::sym("s")]).unwrap();
    let y = g.mul(x, x).unwrap();
    g.output("y", y);
    let mut exe = build(&b, &g, 1);
    let ok = inputs(&[("x", Tensor::zeros(DType::F32, &[1024]))]);
    exe.run(&ok).expect("8 KB fit in 1 MiB");
    let big = inputs(&[("x", Tensor::zeros(DType::F32, &[1 << 19]))]); // 2 MiB
    let e = exe.run(&big).expect_err("over budget");
    let m = e.to_string();
    assert!(
        matches!(e, RunError::OutOfMemory { .. }) && m.contains("needs 2.1 MB of"),
        "{m}"
    );
}

/// After the device is lost, every operation returns an error that says so.
#[test]
fn a_lost_device_is_an_error_not_a_panic() {
    let Some(b) = backend() else { return };
    let mut dev = b.device().unwrap();
    let buf = dev.upload(&[1, 2, 3, 4], "a test buffer").unwrap();
    dev.gpu().destroy();
    let e = dev
        .alloc(16, "a test buffer")
        .err()
        .expect("lost")
        .to_string();
    assert!(e.contains("lost"), "{e}");
    let e = dev.download(&buf, 4).expect_err("lost").to_string();
    assert!(e.contains("lost"), "{e}");
}

/// With no adapter at all (the Vulkan loader pointed at a driver file that does not exist), opening
/// the backend to run is a clear error; compiling still works with naga alone. Runs in a child
/// process, since the loader reads the variable once.
#[test]
fn no_adapter_is_a_clear_error() {
    if std::env::var_os("KILN_WGPU_CHILD").is_some() {
        let e = WgpuBackend::open(&WgpuOptions::default())
            .err()
            .expect("no adapter")
            .to_string();
        assert!(
            e.contains("no wgpu adapter found") && e.contains("mesa-vulkan-drivers"),
            "{e}"
        );
        let b = WgpuBackend::open(&WgpuOptions {
            compile_only: true,
            ..Default::default()
        })
        .expect("compiling needs no adapter");
        assert!(b.adapter_info().is_none());
        Target::compile(&b, &softmax_graph(), &CompileOptions::default()).expect("naga alone");
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "no_adapter_is_a_clear_error", "--nocapture"])
        .env("KILN_WGPU_CHILD", "1")
        .env("VK_DRIVER_FILES", "/nonexistent/kiln_icd.json")
        .env("VK_ICD_FILENAMES", "/nonexistent/kiln_icd.json")
        .env("WGPU_BACKEND", "vulkan")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
