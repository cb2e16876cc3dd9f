//! Helpers of the wgpu backend's tests: the adapter they run on (lavapipe in CI), compiling and
//! running graphs, and comparing with the reference interpreter.
#![allow(dead_code)]

use kiln_compile::CompileOptions;
// Not every test binary uses every helper.
use kiln_compile::Target;
#[allow(unused_imports)]
pub use kiln_ir::testing::{assert_close, inputs, values};
use kiln_ir::{Graph, Tensor};
pub use kiln_runtime::Executable;
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
                !kiln_ir::testing::require("KILN_REQUIRE_WGPU"),
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

/// Runs `g` on wgpu and on the interpreter and compares every output.
pub fn check(
    exe: &mut dyn Executable,
    g: &Graph,
    ins: &HashMap<String, Tensor>,
    atol: f64,
    rtol: f64,
) {
    let got = exe.run(ins).unwrap_or_else(|e| panic!("run failed: {e}"));
    kiln_ir::testing::assert_matches_interpreter(&got, g, ins, atol, rtol);
}
