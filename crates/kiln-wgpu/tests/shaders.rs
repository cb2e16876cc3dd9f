//! The WGSL of every distinct kernel of Qwen3 validates with naga and translates to Metal
//! Shading Language and SPIR-V with its entry point intact; the artifacts are the same for any
//! thread count. None of this needs an adapter.

use kiln_compile::{compile, CompileOptions};
use kiln_models::{build_graph, presets::preset, GraphOptions};
use kiln_wgpu::{ShaderFormat, WgpuBackend};

#[test]
fn qwen3_kernels_validate_and_emit_msl_and_spirv() {
    let graph = build_graph(&preset("qwen3-0.6b").unwrap(), GraphOptions::default()).unwrap();
    let backend = WgpuBackend::validate_only();
    let mut digests = Vec::new();
    for threads in [1, 2] {
        let c = compile(
            &graph,
            &backend,
            &CompileOptions {
                threads,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{threads} threads: {e}"));
        assert_eq!(c.report.compiled, c.report.kernels_unique);
        digests.push(c.report.artifact_digest.clone());
        if threads == 2 {
            let sources: Vec<_> = c.loaded.kernels.iter().map(|k| &k.source).collect();
            let dir = tempfile::tempdir().unwrap();
            for format in [ShaderFormat::Msl, ShaderFormat::Spv] {
                let paths = kiln_wgpu::emit(&sources, format, dir.path()).unwrap();
                assert_eq!(paths.len(), c.report.kernels_unique, "one file per kernel");
                for (p, k) in paths.iter().zip(&sources) {
                    let bytes = std::fs::read(p).unwrap();
                    match format {
                        ShaderFormat::Msl => {
                            let text = String::from_utf8(bytes).unwrap();
                            // naga's MSL namer appends `_` to names that end in a digit.
                            let ep = if k.name.ends_with(|c: char| c.is_ascii_digit()) {
                                format!("{}_", k.name)
                            } else {
                                k.name.clone()
                            };
                            assert!(text.contains(&format!("kernel void {ep}(")), "{}", k.name);
                            assert!(text.contains("[[buffer(0)]]"), "explicit bindings");
                            assert!(!text.contains("fake"), "no invented bindings");
                        }
                        ShaderFormat::Spv => {
                            assert_eq!(&bytes[..4], &0x0723_0203u32.to_le_bytes(), "SPIR-V magic");
                        }
                    }
                }
            }
        }
    }
    assert_eq!(digests[0], digests[1], "same artifacts for 1 and 2 threads");
}
