//! The batched graph (several sequences in one forward, each in its own KV cache slot) must
//! give every sequence exactly what it gets alone: bitwise equal logits, row by row, on the
//! reference interpreter and on the CPU backend, whatever runs beside it, in any slot.
mod common;

use common::*;
use kiln_compile::CompileOptions;
use kiln_ir::{interpret, Bindings, DType, Tensor};
use kiln_models::model::{fuse_projections, slot_symbols};
use kiln_models::testing::{assert_batched_equals_single, generate_batched, BatchExactness};
use kiln_models::weights::random_weights;
use kiln_models::{
    build_batched_graph, build_graph, weight_shapes, BatchedModel, GraphOptions, KvDtype,
    LoadOptions, Model, ModelSource, SlotWork, WeightDtype,
};
use std::collections::HashMap;

fn tiny_config() -> kiln_models::QwenConfig {
    ModelSource::Dir(fixture("tiny-qwen3")).config().unwrap()
}

/// A few tokens of sequence `i` (ids inside the tiny vocabulary).
fn tokens(i: u32, n: usize) -> Vec<u32> {
    (0..n as u32).map(|j| (7 + 31 * i + 13 * j) % 256).collect()
}

/// Runs the batched graph on the interpreter: `work` is (slot, position, tokens) per
/// sequence, every slot's cache is `cache_len` positions of `caches[slot]`; returns each
/// sequence's last-row logits and the caches after the run.
fn interpret_batch(
    graph: &kiln_ir::Graph,
    weights: &HashMap<String, Tensor>,
    slots: usize,
    caches: &HashMap<String, Tensor>,
    work: &[(usize, usize, Vec<u32>)],
) -> (Vec<Vec<f32>>, HashMap<String, Tensor>) {
    let mut inputs = weights.clone();
    inputs.extend(caches.clone());
    let mut ids = vec![];
    let mut last = vec![0i32; slots];
    let mut b = Bindings::new();
    for (slot, last) in last.iter_mut().enumerate() {
        let [n, p, _, o] = slot_symbols(slot);
        b.insert(o, ids.len() as i64);
        let w = work.iter().find(|w| w.0 == slot);
        if let Some((_, _, t)) = w {
            ids.extend(t.iter().map(|&x| x as i32));
        }
        *last = ids.len() as i32 - 1;
        b.insert(n, w.map_or(0, |w| w.2.len()) as i64);
        b.insert(p, w.map_or(0, |w| w.1) as i64);
    }
    let rows: Vec<i32> = work.iter().map(|w| last[w.0]).collect();
    inputs.insert("ids".into(), Tensor::from_i32(&[ids.len()], &ids));
    inputs.insert("rows".into(), Tensor::from_i32(&[rows.len()], &rows));
    let mut out = interpret(graph, &inputs, &b).unwrap();
    let v = 256;
    let logits = out.remove("logits").unwrap();
    let rows = logits.as_f32().chunks(v).map(|r| r.to_vec()).collect();
    let caches = out
        .into_iter()
        .filter_map(|(k, t)| {
            k.strip_prefix("k_cache_out.")
                .map(|r| (format!("k_cache.{r}"), t.clone()))
                .or_else(|| {
                    k.strip_prefix("v_cache_out.")
                        .map(|r| (format!("v_cache.{r}"), t.clone()))
                })
        })
        .collect();
    (rows, caches)
}

/// On the reference interpreter: a batch of three sequences (a prefill chunk beside two
/// decodes, in slots 2, 0 and 3 of 4) gives each the logits, bit for bit, it gets in a batch
/// of one and in the single-sequence graph.
#[test]
fn interpreter_batch_of_n_equals_batch_of_one_and_the_single_sequence_graph_bitwise() {
    let c = tiny_config();
    let slots = 4;
    let capacity = 16;
    let mut weights = random_weights(&weight_shapes(&c), 3, WeightDtype::F32);
    fuse_projections(&c, &mut weights).unwrap();
    let weights: HashMap<String, Tensor> = weights.into_iter().collect();
    let batched = build_batched_graph(&c, GraphOptions::default(), slots).unwrap();
    let single = build_graph(&c, GraphOptions::default()).unwrap();
    let kv_shape = [c.num_kv_heads, capacity, c.head_dim];
    // Each slot's cache holds a different (random) past: positions 0..p of slot r.
    let mut caches = HashMap::new();
    for l in 0..c.num_layers {
        for slot in 0..slots {
            for kv in ["k", "v"] {
                let vals: Vec<f32> = (0..kv_shape.iter().product::<usize>())
                    .map(|i| ((i * 7919 + slot * 104729 + l * 31) % 1000) as f32 / 500.0 - 1.0)
                    .collect();
                caches.insert(
                    format!("{kv}_cache.{l}.{slot}"),
                    Tensor::from_f32(&kv_shape, &vals),
                );
            }
        }
    }
    let work = vec![
        (2, 3, tokens(0, 4)),
        (0, 5, tokens(1, 1)),
        (3, 0, tokens(2, 1)),
    ];
    let (together, after) = interpret_batch(&batched, &weights, slots, &caches, &work);
    for (i, w) in work.iter().enumerate() {
        let (alone, alone_after) =
            interpret_batch(&batched, &weights, slots, &caches, std::slice::from_ref(w));
        assert_eq!(
            together[i], alone[0],
            "sequence {i}: batch of 3 vs batch of 1"
        );
        // Its cache is written the same way; the others' caches stay as they were.
        for l in 0..c.num_layers {
            let name = format!("k_cache.{l}.{}", w.0);
            assert_eq!(after[&name].as_f32(), alone_after[&name].as_f32());
        }
        // The single-sequence graph on the same past.
        let mut inputs = weights.clone();
        for l in 0..c.num_layers {
            for kv in ["k", "v"] {
                inputs.insert(
                    format!("{kv}_cache.{l}"),
                    caches[&format!("{kv}_cache.{l}.{}", w.0)].clone(),
                );
            }
        }
        let ids: Vec<i32> = w.2.iter().map(|&x| x as i32).collect();
        inputs.insert("ids".into(), Tensor::from_i32(&[ids.len()], &ids));
        let out = interpret(&single, &inputs, &[("p".to_string(), w.1 as i64)].into()).unwrap();
        assert_eq!(
            together[i],
            out["logits"].as_f32(),
            "sequence {i}: batch vs the single-sequence graph"
        );
    }
    // A slot that ran nothing keeps its cache.
    for l in 0..c.num_layers {
        let name = format!("v_cache.{l}.1");
        assert_eq!(after[&name].as_f32(), caches[&name].as_f32());
    }
    assert_eq!(caches[&"k_cache.0.0".to_string()].dtype(), DType::F32);
}

fn load_batched(slots: usize, positions: usize) -> BatchedModel {
    let cpu = cpu();
    let opts = LoadOptions {
        compile: CompileOptions {
            threads: 1,
            ..Default::default()
        },
        ..LoadOptions::new(&cpu)
    };
    BatchedModel::load(
        &ModelSource::Dir(fixture("tiny-qwen3")),
        &opts,
        slots,
        positions,
    )
    .unwrap()
}

/// On the CPU backend: four sequences batched (chunked prefill beside decodes, in slots 3,
/// 0, 2 and 1 of 4) give the tokens and the logits, bit for bit, each gives alone in the
/// batched model and alone in the single-sequence model (`kiln run`'s), and transformers'
/// tokens (the backends' fixture tests run the same check).
#[test]
fn cpu_batched_generation_equals_each_sequence_alone_bitwise() {
    for name in ["tiny-qwen3", "tiny-qwen3-bf16"] {
        assert_batched_equals_single(&cpu(), name, BatchExactness::Bitwise);
    }
}

/// A 16-bit KV cache in the slot pool (`--kv-dtype f16|bf16`, f16 the default of quantized
/// weights): four sequences batched, one with a 70-token prompt whose slot's cache grows from
/// 64 positions (copying the 16-bit positions it holds), give the tokens and logits, bit for
/// bit, that each gives alone in the single-sequence model with the same cache dtype.
#[test]
fn a_16_bit_kv_cache_batched_equals_each_sequence_alone_bitwise() {
    let cpu = cpu();
    let source = ModelSource::Dir(fixture("tiny-qwen3"));
    let prompts: Vec<Vec<u32>> = [5u32, 9, 14, 70]
        .iter()
        .enumerate()
        .map(|(i, &n)| (0..n).map(|j| (7 + 31 * i as u32 + 13 * j) % 256).collect())
        .collect();
    for kv in [KvDtype::F16, KvDtype::BF16] {
        let mut opts = LoadOptions::new(&cpu);
        opts.graph.kv_dtype = Some(kv);
        let mut m = BatchedModel::load(&source, &opts, 4, 256).unwrap();
        assert_eq!(m.kv_dtype, kv.dtype());
        let together = generate_batched(&mut m, &prompts, &[3, 0, 2, 1], 12, 3);
        let mut single = Model::load(&source, &opts).unwrap();
        assert_eq!(single.kv_dtype, kv.dtype());
        for (i, prompt) in prompts.iter().enumerate() {
            let run = single
                .generate(prompt, 12, &Default::default(), &[], |_| {})
                .unwrap();
            assert_eq!(together[i].0, run.generated_ids, "{kv:?}: sequence {i}");
            assert!(
                together[i].1 == run.step_logits,
                "{kv:?}: sequence {i}: logits, batched vs Model"
            );
        }
    }
}

/// Bad work is refused with a message naming the slot, before anything runs.
#[test]
fn bad_slot_work_is_refused_by_name() {
    let mut m = load_batched(2, 8);
    let err = |m: &mut BatchedModel, w: &[SlotWork]| m.forward(w).unwrap_err().to_string();
    let at = |slot, position, tokens: &'static [u32]| SlotWork {
        slot,
        position,
        tokens,
        logits: true,
    };
    assert!(err(&mut m, &[at(2, 0, &[1])]).contains("slot 2 does not exist"));
    assert!(err(&mut m, &[at(0, 0, &[1]), at(0, 0, &[1])]).contains("twice"));
    assert!(err(&mut m, &[at(1, 3, &[1])]).contains("the sequence is at 0"));
    assert!(err(&mut m, &[at(1, 0, &[1; 9])]).contains("exceed the 8"));
    assert!(err(&mut m, &[at(1, 0, &[999])]).contains("999"));
    // Nothing ran: both slots are still empty and run fine.
    assert_eq!(m.slot_len(0) + m.slot_len(1), 0);
    m.forward(&[at(0, 0, &[1]), at(1, 0, &[3])]).unwrap();
}
