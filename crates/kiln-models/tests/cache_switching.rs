//! One model, several generations interleaved token by token: each KV cache is saved out of
//! the executor while the others run and restored before it goes on (`Model::save_cache`,
//! `Model::restore_cache`, what `kiln serve` does between sequences). Each generation must
//! give the tokens it gives alone, and transformers' tokens.
mod common;

use common::*;
use kiln_models::{argmax, KvCache, SavedCache};

#[test]
fn interleaved_generations_with_saved_caches_equal_each_alone() {
    let d = fixture("tiny-qwen3");
    let mut m = load(&d).unwrap();
    let prompts: Vec<(Vec<u32>, Vec<u32>)> = ["p1", "p2", "p3"]
        .iter()
        .map(|p| reference("tiny-qwen3", p))
        .collect();
    let steps = 16;
    let mut caches: Vec<KvCache> = prompts.iter().map(|_| KvCache::new(&m.config)).collect();
    let mut saved: Vec<Option<SavedCache>> = prompts.iter().map(|_| None).collect();
    let mut generated: Vec<Vec<u32>> = vec![vec![]; prompts.len()];
    let mut held: Option<usize> = None;
    // Prompt in chunks of 3 positions (a chunked prefill), then one token per step, the
    // sequences taking turns.
    let mut fed: Vec<usize> = vec![0; prompts.len()];
    while generated.iter().any(|g| g.len() < steps) {
        for s in 0..prompts.len() {
            if generated[s].len() == steps {
                continue;
            }
            if held != Some(s) {
                if let Some(h) = held {
                    saved[h] = Some(m.save_cache(&caches[h]).unwrap());
                }
                if let Some(copy) = saved[s].take() {
                    assert!(copy.bytes() > 0);
                    m.restore_cache(&caches[s], copy).unwrap();
                }
                held = Some(s);
            }
            let prompt = &prompts[s].0;
            let ids: Vec<u32> = if fed[s] < prompt.len() {
                let n = 3.min(prompt.len() - fed[s]);
                prompt[fed[s]..fed[s] + n].to_vec()
            } else {
                vec![*generated[s].last().unwrap()]
            };
            fed[s] += ids.len();
            let logits = m.forward(&ids, &mut caches[s]).unwrap();
            if fed[s] >= prompt.len() {
                let v = m.config.vocab_size;
                let row = logits.as_f32();
                generated[s].push(argmax(&row[row.len() - v..]));
            }
        }
    }
    for (s, (prompt, greedy)) in prompts.iter().enumerate() {
        assert_eq!(
            generated[s],
            greedy[..steps],
            "sequence {s} vs transformers"
        );
        let alone = m
            .generate(prompt, steps, &Default::default(), &[], |_| {})
            .unwrap();
        assert_eq!(generated[s], alone.generated_ids, "sequence {s} vs alone");
    }
}

#[test]
fn a_saved_cache_restores_only_its_own_cache_at_its_length() {
    let mut m = load(&fixture("tiny-qwen3")).unwrap();
    let (prompt, _) = reference("tiny-qwen3", "p1");
    let mut a = KvCache::new(&m.config);
    let b = KvCache::new(&m.config);
    assert!(
        m.save_cache(&a).is_err(),
        "a cache that never ran is not held"
    );
    m.forward(&prompt, &mut a).unwrap();
    let copy = m.save_cache(&a).unwrap();
    let e = m.restore_cache(&b, copy).err().unwrap().to_string();
    assert!(e.contains("another KvCache"), "{e}");
    let copy = m.save_cache(&a).unwrap();
    m.forward(&[1], &mut a).unwrap();
    assert!(
        m.restore_cache(&a, copy).is_err(),
        "a copy of an older length"
    );
}
