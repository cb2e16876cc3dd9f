//! Fused kernels (row reductions with their maps, matmul epilogues, RoPE of a normalised row)
//! against the same graph compiled unfused and against the interpreter, and a decode loop whose
//! per-step launches and bytes written do not grow with the position.
mod common;
use common::*;
use kiln_compile::CompileOptions;
use kiln_compile::Target;
use kiln_ir::{DType, Expr, Graph, NodeId, Tensor};

const H: usize = 32; // hidden
const D: usize = 8; // head dim
const NH: usize = 2; // query heads
const KV: usize = 1; // kv heads
const I: usize = 48; // mlp width

fn linear(g: &mut Graph, x: NodeId, name: &str, out: usize, inp: usize) -> NodeId {
    let w = g
        .input(name, DType::BF16, &[out.into(), inp.into()])
        .unwrap();
    let wt = g.transpose(w, 0, 1).unwrap();
    g.matmul(x, wt).unwrap()
}

fn norm(g: &mut Graph, x: NodeId, name: &str, dim: usize) -> NodeId {
    let w = g.input(name, DType::F32, &[dim.into()]).unwrap();
    g.rms_norm(x, w, 1e-6).unwrap()
}

/// One Qwen3-style block over a KV cache written in place: RMSNorm, q/k/v as one matmul,
/// per-head norms, RoPE, attention, residual adds, SiLU(gate) * up from one matmul.
fn block() -> Graph {
    let (s, p) = (Expr::sym("s"), Expr::sym("p"));
    let mut g = Graph::new();
    let x = g.input("x", DType::F32, &[s.clone(), H.into()]).unwrap();
    let hn = norm(&mut g, x, "ln1", H);
    let qkv = linear(&mut g, hn, "w_qkv", (NH + 2 * KV) * D, H);
    let q = g.slice(qkv, 1, 0, NH * D).unwrap();
    let k = g.slice(qkv, 1, NH * D, (NH + KV) * D).unwrap();
    let v = g.slice(qkv, 1, (NH + KV) * D, (NH + 2 * KV) * D).unwrap();
    let q = g.reshape(q, &[s.clone(), NH.into(), D.into()]).unwrap();
    let k = g.reshape(k, &[s.clone(), KV.into(), D.into()]).unwrap();
    let v = g.reshape(v, &[s.clone(), KV.into(), D.into()]).unwrap();
    let q = norm(&mut g, q, "q_norm", D);
    let k = norm(&mut g, k, "k_norm", D);
    let q = g.permute(q, &[1, 0, 2]).unwrap();
    let k = g.permute(k, &[1, 0, 2]).unwrap();
    let v = g.permute(v, &[1, 0, 2]).unwrap();
    let (cos, sin) = g.rope_tables(p.clone(), s.clone(), D, 1e4).unwrap();
    let q = g.rope(q, cos, sin).unwrap();
    let k = g.rope(k, cos, sin).unwrap();
    // The cache: [kv, c, d], written at p.. in place; attention reads its first p + s rows.
    let c = Expr::sym("c");
    let kc = g
        .input("k_cache", DType::F32, &[KV.into(), c.clone(), D.into()])
        .unwrap();
    let vc = g
        .input("v_cache", DType::F32, &[KV.into(), c, D.into()])
        .unwrap();
    let kc = g.write_slice(kc, k, 1, p.clone()).unwrap();
    let vc = g.write_slice(vc, v, 1, p.clone()).unwrap();
    g.output("k_cache_out", kc);
    g.output("v_cache_out", vc);
    let t = p.clone().add(s.clone());
    let k_all = g.slice(kc, 1, 0, t.clone()).unwrap();
    let v_all = g.slice(vc, 1, 0, t.clone()).unwrap();
    let group = NH / KV;
    let qg = g
        .reshape(q, &[KV.into(), s.clone().mul(group as i64), D.into()])
        .unwrap();
    let kt = g.transpose(k_all, 1, 2).unwrap();
    let scores = g.matmul(qg, kt).unwrap();
    let scores = g
        .reshape(scores, &[NH.into(), s.clone(), t.clone()])
        .unwrap();
    let scores = g.mul_scalar(scores, 1.0 / (D as f64).sqrt()).unwrap();
    let mask = g.causal_mask(p, s.clone()).unwrap();
    let scores = g.add(scores, mask).unwrap();
    let probs = g.softmax(scores, 2).unwrap();
    let probs = g
        .reshape(probs, &[KV.into(), s.clone().mul(group as i64), t])
        .unwrap();
    let o = g.matmul(probs, v_all).unwrap();
    let o = g.reshape(o, &[NH.into(), s.clone(), D.into()]).unwrap();
    let o = g.permute(o, &[1, 0, 2]).unwrap();
    let o = g.reshape(o, &[s, (NH * D).into()]).unwrap();
    let o = linear(&mut g, o, "w_o", H, NH * D);
    let x = g.add(x, o).unwrap();
    let hn = norm(&mut g, x, "ln2", H);
    let gu = linear(&mut g, hn, "w_gate_up", 2 * I, H);
    let gate = g.slice(gu, 1, 0, I).unwrap();
    let up = g.slice(gu, 1, I, 2 * I).unwrap();
    let act = g.silu(gate).unwrap();
    let h = g.mul(act, up).unwrap();
    let down = linear(&mut g, h, "w_down", H, I);
    let x = g.add(x, down).unwrap();
    g.output("y", x);
    g
}

fn weights() -> Vec<(&'static str, Tensor)> {
    let mat = |name, r: usize, c: usize, seed| {
        let v: Vec<f32> = values(r * c, seed)
            .into_iter()
            .map(|x| x / (c as f32).sqrt())
            .collect();
        (name, Tensor::from_f32(&[r, c], &v).to_dtype(DType::BF16))
    };
    let vec = |name, n: usize, seed| {
        let v: Vec<f32> = values(n, seed).into_iter().map(|x| 1.0 + 0.5 * x).collect();
        (name, Tensor::from_f32(&[n], &v))
    };
    vec![
        mat("w_qkv", (NH + 2 * KV) * D, H, 11),
        mat("w_o", H, NH * D, 12),
        mat("w_gate_up", 2 * I, H, 13),
        mat("w_down", H, I, 14),
        vec("ln1", H, 15),
        vec("ln2", H, 16),
        vec("q_norm", D, 17),
        vec("k_norm", D, 18),
    ]
}

fn load(g: &Graph, fusion: bool, threads: usize) -> Box<dyn Executable> {
    load_for(g, fusion, threads, None)
}

fn load_for(g: &Graph, fusion: bool, threads: usize, isa: Option<Isa>) -> Box<dyn Executable> {
    let mut exe = backend(isa)
        .with_run_threads(threads)
        .load(
            g,
            &CompileOptions {
                threads: 1,
                fusion,
                ..Default::default()
            },
        )
        .unwrap()
        .exe;
    for (name, t) in weights() {
        exe.set_param(name, t).unwrap();
    }
    exe
}

const CACHE: usize = 24;

fn step_inputs(s: usize, seed: u64) -> std::collections::HashMap<String, Tensor> {
    inputs(&[("x", Tensor::from_f32(&[s, H], &values(s * H, seed)))])
}

#[test]
fn a_fused_block_computes_what_the_unfused_one_and_the_interpreter_do() {
    for isa in isas() {
        fused_block_for(isa);
    }
}

fn fused_block_for(isa: Isa) {
    let g = block();
    let mut fused = load_for(&g, true, 2, Some(isa));
    let mut unfused = load_for(&g, false, 2, Some(isa));
    let zeros = Tensor::zeros(DType::F32, &[KV, CACHE, D]);
    for exe in [&mut fused, &mut unfused] {
        exe.carry("k_cache_out", "k_cache", zeros.clone()).unwrap();
        exe.carry("v_cache_out", "v_cache", zeros.clone()).unwrap();
    }
    // A prompt of 5, then decode steps: the interpreter keeps its own cache.
    let (mut kc, mut vc) = (zeros.clone(), zeros.clone());
    let mut p = 0usize;
    for (step, s) in [5usize, 1, 1, 3, 1].into_iter().enumerate() {
        let ins = step_inputs(s, 100 + step as u64);
        let b: kiln_ir::Bindings = [("p".to_string(), p as i64)].into();
        let a = fused.run_with(&ins, &b).unwrap();
        let launches = fused.last_run().launches;
        let u = unfused.run_with(&ins, &b).unwrap();
        assert!(
            launches + 8 <= unfused.last_run().launches,
            "fused {launches} launches, unfused {}",
            unfused.last_run().launches
        );
        let mut all = ins.clone();
        all.insert("k_cache".into(), kc.clone());
        all.insert("v_cache".into(), vc.clone());
        for (n, t) in weights() {
            all.insert(n.into(), t);
        }
        let want = kiln_ir::interpret(&g, &all, &b).unwrap();
        assert_close(
            &format!("{isa:?} step {step} y"),
            &a["y"],
            &want["y"],
            2e-5,
            1e-4,
        );
        assert_close(
            &format!("{isa:?} step {step} unfused"),
            &u["y"],
            &want["y"],
            2e-5,
            1e-4,
        );
        kc = want["k_cache_out"].clone();
        vc = want["v_cache_out"].clone();
        assert_close(
            "k cache",
            &fused.carried("k_cache").unwrap(),
            &kc,
            2e-5,
            1e-4,
        );
        p += s;
    }
}

#[test]
fn fused_results_are_the_same_on_one_and_two_threads() {
    let g = block();
    for isa in isas() {
        let mut one = load_for(&g, true, 1, Some(isa));
        let mut two = load_for(&g, true, 2, Some(isa));
        let b: kiln_ir::Bindings = [("p".to_string(), 0)].into();
        let mut ins = step_inputs(7, 5);
        ins.insert("k_cache".into(), Tensor::zeros(DType::F32, &[KV, CACHE, D]));
        ins.insert("v_cache".into(), Tensor::zeros(DType::F32, &[KV, CACHE, D]));
        let (a, c) = (
            one.run_with(&ins, &b).unwrap(),
            two.run_with(&ins, &b).unwrap(),
        );
        assert_eq!(a["y"], c["y"], "{isa:?}");
    }
}

/// 200 decode steps over a cache written in place: every step launches the same kernels and
/// writes the same bytes, whatever the position (the counters, not the clock).
#[test]
fn decode_steps_cost_the_same_at_every_position() {
    let g = block();
    let mut exe = load(&g, true, 2);
    let steps = 200;
    let zeros = Tensor::zeros(DType::F32, &[KV, steps, D]);
    exe.carry("k_cache_out", "k_cache", zeros.clone()).unwrap();
    exe.carry("v_cache_out", "v_cache", zeros).unwrap();
    let mut first = None;
    for p in 0..steps {
        let b: kiln_ir::Bindings = [("p".to_string(), p as i64)].into();
        let out = exe.run_with(&step_inputs(1, p as u64), &b).unwrap();
        assert!(out["y"].as_f32().iter().all(|v| v.is_finite()), "step {p}");
        let stats = exe.last_run();
        match first {
            None => first = Some(stats),
            Some(f) => assert_eq!(stats, f, "step {p} against step 0"),
        }
    }
}

/// The labels of `g`'s kernels compiled for `isa`, in order.
fn kernel_labels(g: &Graph, isa: Isa) -> Vec<String> {
    let opts = CompileOptions {
        threads: 1,
        ..Default::default()
    };
    let compiled = kiln_compile::compile(g, &backend(Some(isa)), &opts).unwrap();
    compiled
        .loaded
        .kernels
        .iter()
        .map(|k| k.kernel.label())
        .collect()
}

/// The attention graph `g` (key depth `d`, `dv` value columns) on 2 threads against the
/// interpreter, and bitwise the same on 1 thread, at each `(s, p)`: `s` query rows at position
/// `p`, the inputs `inputs(s, p + s)` (rows, keys).
fn check_on_1_and_2_threads(
    g: &Graph,
    isa: Isa,
    d: usize,
    dv: usize,
    steps: &[(usize, usize)],
    inputs: impl Fn(usize, usize) -> std::collections::HashMap<String, Tensor>,
) {
    let mut two = build_for(g, 2, Some(isa));
    let mut one = build_for(g, 1, Some(isa));
    for &(s, p) in steps {
        let ins = inputs(s, s + p);
        check(two.as_mut(), g, &ins, 1e-5, 1e-4);
        assert_eq!(
            two.run(&ins).unwrap(),
            one.run(&ins).unwrap(),
            "{isa:?} d={d} dv={dv} s={s} p={p}: 1 vs 2 threads"
        );
    }
}

/// Grouped-query causal attention alone, for each kernel ISA, at sizes that take every path
/// of the fused kernel: key depths of 20 and 37 (vector steps of 8 or 16, then a scalar tail),
/// 40 and 80 value columns (passes of four vectors, single vectors, single columns), three
/// query heads per KV head (an odd row count: a block ends on a single row), 150 keys (three
/// key blocks, the last partial), more query rows than one work unit, and with and without the
/// causal mask (key blocks masked for every row skipped). Bitwise the same on 1 and 2 threads.
#[test]
fn attention_alone_at_awkward_sizes() {
    const G: usize = 3;
    for isa in isas() {
        for (d, dv) in [(20usize, 40usize), (37, 80)] {
            for masked in [true, false] {
                let g = kiln_ir::testing::attention_graph(KV, G, d, dv, masked);
                assert!(
                    kernel_labels(&g, isa).iter().any(|l| l == "attention"),
                    "the pattern is fused"
                );
                // (s, p): a prompt of 75 (rows 225: fifteen 16-row units, the last of one
                // row), then a decode step at 149 (3 rows).
                check_on_1_and_2_threads(&g, isa, d, dv, &[(75, 0), (1, 149), (3, 7)], |s, t| {
                    kiln_ir::testing::attention_inputs(KV, G, d, dv, s, t)
                });
            }
        }
    }
}

/// Grouped-query attention whose output a projection reads as `[s, heads * dv]` (two KV
/// heads of three query heads each): the attention kernel writes each row where that view
/// puts it, with no copy kernel, for each kernel ISA and both the blocked (f32, contiguous)
/// and the row-by-row paths' sizes; against the interpreter, bitwise the same on 1 and 2
/// threads.
#[test]
fn attention_writes_the_rows_its_projection_reads() {
    const KVH: usize = 2;
    const G: usize = 3;
    for isa in isas() {
        for (d, dv) in [(16usize, 16usize), (20, 12)] {
            let g = kiln_ir::testing::attention_graph_projected(KVH, G, d, dv);
            let labels = kernel_labels(&g, isa);
            assert_eq!(labels, ["attention", "matmul"], "{isa:?} d={d} dv={dv}");
            // A prompt of 21 (rows 63: several work units, the last partial), decode steps.
            check_on_1_and_2_threads(&g, isa, d, dv, &[(21, 0), (1, 40), (3, 7)], |s, t| {
                kiln_ir::testing::attention_projected_inputs(KVH, G, d, dv, s, t)
            });
        }
    }
}

/// Attention over a 16-bit KV cache (bf16 and f16 keys and values widened in registers:
/// `kiln_mm_nt_bf16`/`_f16`, `kiln_att_pv_bf16`/`_f16`) on the blocked path: bitwise what the
/// f32 kernel computes over the same values widened to f32 (the same FMA chains), for each
/// kernel ISA, at the awkward sizes of [`attention_alone_at_awkward_sizes`], masked and not;
/// and against the interpreter.
#[test]
fn attention_over_a_16_bit_cache_is_the_f32_kernel_on_the_widened_values() {
    const G: usize = 3;
    for isa in isas() {
        for dtype in [DType::BF16, DType::F16] {
            for (d, dv, masked) in [(20usize, 40usize, true), (37, 80, false), (16, 64, true)] {
                let half = kiln_ir::testing::attention_graph_kv(KV, G, d, dv, masked, dtype);
                let full = kiln_ir::testing::attention_graph(KV, G, d, dv, masked);
                let mut a = build_for(&half, 2, Some(isa));
                let mut b = build_for(&full, 2, Some(isa));
                for (s, p) in [(75usize, 0usize), (1, 149), (3, 7)] {
                    let mut ins = kiln_ir::testing::attention_inputs(KV, G, d, dv, s, s + p);
                    for name in ["k", "v"] {
                        let rounded = ins[name].to_dtype(dtype);
                        ins.insert(name.to_string(), rounded);
                    }
                    check(a.as_mut(), &half, &ins, 1e-5, 1e-4);
                    let got = a.run(&ins).unwrap();
                    for name in ["k", "v"] {
                        let widened = ins[name].to_dtype(DType::F32);
                        ins.insert(name.to_string(), widened);
                    }
                    let want = b.run(&ins).unwrap();
                    let bits =
                        |t: &Tensor| t.as_f32().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got["o"]),
                        bits(&want["o"]),
                        "{isa:?} {dtype} d={d} dv={dv} masked={masked} s={s} p={p}"
                    );
                }
            }
        }
    }
}

/// A query row gets the same bits as one of a prompt's rows (register tiles of rows, key
/// blocks with keys masked past it) and as the rows of a decode step over the keys up to it:
/// the fused attention sums every score, weight sum and output element in one order whatever
/// the tile and the row count, which is what lets chunked, batched and single-sequence
/// generation agree bit for bit. Three query heads (decode steps of 3 rows: no 4-row tile),
/// key depth 37 and 80 value columns (vector remainders), positions around a key block's end.
/// Both ISAs: with AVX2, GCC once vectorized the NT product's last keys across rows and left
/// their `c += a * b` unfused (a decode step's scores then differed from a prompt's in the last
/// bits); the prelude now writes those FMAs out (`kiln_fmav`, `kiln_fma1`).
#[test]
fn a_query_row_gets_the_same_bits_in_a_prompt_and_in_a_decode_step() {
    const G: usize = 3;
    let (d, dv, s) = (37usize, 80usize, 75usize);
    for isa in isas() {
        let g = kiln_ir::testing::attention_graph(KV, G, d, dv, true);
        let mut exe = build_for(&g, 2, Some(isa));
        let full = kiln_ir::testing::attention_inputs(KV, G, d, dv, s, s);
        let prompt = exe.run(&full).unwrap()["o"].clone(); // [KV, G * s, dv]
        let (q, k, v) = (full["q"].as_f32(), full["k"].as_f32(), full["v"].as_f32());
        for pos in [0usize, 1, 17, 63, 64, 74] {
            let t = pos + 1;
            let q_row: Vec<f32> = (0..G)
                .flat_map(|h| q[(h * s + pos) * d..(h * s + pos + 1) * d].to_vec())
                .collect();
            let ins = std::collections::HashMap::from([
                ("q".to_string(), Tensor::from_f32(&[KV, G, 1, d], &q_row)),
                ("k".to_string(), Tensor::from_f32(&[KV, t, d], &k[..t * d])),
                (
                    "v".to_string(),
                    Tensor::from_f32(&[KV, t, dv], &v[..t * dv]),
                ),
            ]);
            let step = exe.run(&ins).unwrap()["o"].clone(); // [KV, G, dv]
            for h in 0..G {
                let want = &prompt.as_f32()[(h * s + pos) * dv..(h * s + pos + 1) * dv];
                let got = &step.as_f32()[h * dv..(h + 1) * dv];
                let bits = |r: &[f32]| r.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(got), bits(want), "{isa:?}: head {h}, position {pos}");
            }
        }
    }
}
