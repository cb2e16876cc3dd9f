//! One compiled graph serves every prompt length and every decode step. (Its own test binary:
//! it reads the process-wide compile counter.)
use kiln_compile::{compile_count, CompileOptions};
use kiln_models::{KvCache, LoadOptions, Model, ModelSource, Sampling};

#[test]
fn prompts_of_any_length_and_every_step_use_one_compile() {
    let dir = kiln_models::testing::fixtures().join("tiny-qwen3");
    let before = compile_count();
    let cpu = kiln_cpu::CpuBackend::default().with_run_threads(2);
    let opts = LoadOptions {
        compile: CompileOptions {
            threads: 2,
            ..Default::default()
        },
        ..LoadOptions::new(&cpu)
    };
    let mut m = Model::load(&ModelSource::Dir(dir), &opts).unwrap();
    assert_eq!(compile_count(), before + 1);
    for len in [1usize, 8, 37, 100] {
        let prompt: Vec<u32> = (0..len as u32).map(|i| (i * 31 + 7) % 256).collect();
        let g = m
            .generate(&prompt, 12, &Sampling::default(), &[], |_| {})
            .unwrap();
        assert_eq!(g.generated_ids.len(), 12);
    }
    // A prefill continued by another prefill (a second chunk at p > 0) too.
    // It must equal one prefill of all five: the causal mask and RoPE honour the offset p.
    let mut cache = KvCache::new(&m.config);
    m.forward(&[1, 2, 3], &mut cache).unwrap();
    let chunked = m.forward(&[4, 5], &mut cache).unwrap();
    assert_eq!(cache.len(), 5);
    let whole = m
        .forward(&[1, 2, 3, 4, 5], &mut KvCache::new(&m.config))
        .unwrap();
    let d = chunked
        .as_f32()
        .iter()
        .zip(whole.as_f32())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(d <= 1e-4, "chunked prefill differs by {d}");
    // The executor keeps one cache (its memory): the first, since replaced, is refused.
    let Err(e) = m.forward(&[6], &mut cache) else {
        panic!("a cache whose keys and values were replaced must be refused")
    };
    assert!(e.to_string().contains("one cache at a time"), "{e}");
    assert_eq!(compile_count(), before + 1, "nothing recompiled");
}
