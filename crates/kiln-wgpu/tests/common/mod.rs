//! Helpers of the wgpu backend's tests: the adapter they run on (lavapipe in CI), compiling and
//! running graphs, and comparing with the reference interpreter.
#![allow(dead_code)]

use kiln_compile::CompileOptions;
use kiln_ir::{Bindings, Graph, Tensor};
pub use kiln_runtime::Executable;
use kiln_runtime::Target;
use kiln_wgpu::{WgpuBackend, WgpuOptions};
use std::collections::HashMap;

/// The wgpu backend on the adapter the environment selects, or None (said once) where there is
/// none. `scripts/test.sh` installs Mesa's lavapipe and sets `KILN_REQUIRE_WGPU=1`, so in CI a
/// missing adapter fails instead of skipping; with `WGPU_BACKEND=vulkan` (test.sh sets it) the
/// adapter must be a Vulkan one.
pub fn backend() -> Option<WgpuBackend> {
    match WgpuBackend::open(&WgpuOptions::default()) {
        Ok(b) => {
            let info = b.adapter_info().expect("an adapter").clone();
            if std::env::var("WGPU_BACKEND").is_ok_and(|v| v.eq_ignore_ascii_case("vulkan")) {
                assert_eq!(info.backend, kiln_wgpu::wgpu::Backend::Vulkan, "{info:?}");
            }
            Some(b)
        }
        Err(e) => {
            assert!(
                std::env::var_os("KILN_REQUIRE_WGPU").is_none(),
                "KILN_REQUIRE_WGPU is set but there is no wgpu adapter: {e}"
            );
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "skipping the wgpu tests: {e} (scripts/test.sh installs lavapipe)"
                );
            });
            None
        }
    }
}

/// Compiles `g` for wgpu with `threads` compile threads and loads it.
pub fn build(b: &WgpuBackend, g: &Graph, threads: usize) -> Box<dyn Executable> {
    let opts = CompileOptions {
        threads,
        ..Default::default()
    };
    b.load(g, &opts)
        .unwrap_or_else(|e| panic!("compile failed: {e}"))
        .exe
}

pub fn inputs(pairs: &[(&str, Tensor)]) -> HashMap<String, Tensor> {
    pairs
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect()
}

/// Max |a-b| / (atol + rtol*|b|) <= 1, NaNs and infinities equal where both are.
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, atol: f64, rtol: f64) {
    assert_eq!(got.shape(), want.shape(), "{name}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{name}: dtype");
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let same = (a.is_nan() && b.is_nan()) || a == b;
        assert!(
            same || (a - b).abs() <= atol + rtol * b.abs(),
            "{name}[{i}]: got {a}, want {b} (atol {atol}, rtol {rtol})"
        );
    }
}

/// Runs `g` on wgpu and on the interpreter and compares every output.
pub fn check(
    exe: &mut dyn Executable,
    g: &Graph,
    ins: &HashMap<String, Tensor>,
    atol: f64,
    rtol: f64,
) {
    let got = exe.run(ins).unwrap_or_else(|e| panic!("run failed: {e}"));
    let want = kiln_ir::interpret(g, ins, &Bindings::new()).expect("interpreter");
    for (name, w) in &want {
        assert_close(name, &got[name], w, atol, rtol);
    }
}

/// Deterministic pseudo-random values in [-1, 1).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
