//! kiln vs luminal's own CPUCompiler on graphs built with luminal's high-level ops and nn modules.
//! Every comparison also perturbs an input and checks the comparison then fails (common::check_run).

mod common;

use common::*;
use kiln_luminal::{BridgeError, KilnCompiler};
use luminal::nn::activation::ReLU;
use luminal::nn::embedding::Embedding;
use luminal::nn::linear::Linear;
use luminal::nn::transformer::encoder::TransformerEncoder;
use luminal::op::{InputTensor, Operator};
use luminal::prelude::*;
use luminal::shape::symbolic::Expression;

/// 1e-5 relative (|a-b| / max(|b|, 1)), for every graph here.
const TOL: f64 = 1e-5;

type Built = (Vec<NodeIndex>, GraphTensor<()>);

#[test]
fn matmul_2d_batched_transposed() {
    matmuls(&kiln());
    // and as luminal writes it (reduction over a broadcast product), without kiln's matmul
    matmuls(&kiln_builder().recognize_matmul(false).build());
}

fn matmuls(k: &KilnCompiler) {
    let compare = |what: &str, b: &BuildFn, d: &[Vec<f32>], dd: &[(char, usize)], tol| {
        compare_using(k, Backend::Luminal, what, b, d, dd, tol)
    };
    let b2d = |cx: &mut Graph| -> Built {
        let a = cx.tensor::<R2<4, 8>>();
        let b = cx.tensor::<R2<8, 3>>();
        (vec![a.id, b.id], a.matmul(b).no_shape())
    };
    compare("matmul 2d", &b2d, &[values(32, 1), values(24, 2)], &[], TOL);

    let transposed = |cx: &mut Graph| -> Built {
        let a = cx.tensor::<R2<4, 8>>();
        let b = cx.tensor::<R2<3, 8>>();
        (
            vec![a.id, b.id],
            a.matmul(b.permute::<_, Axes2<1, 0>>()).no_shape(),
        )
    };
    compare(
        "matmul a x b^T",
        &transposed,
        &[values(32, 3), values(24, 4)],
        &[],
        TOL,
    );

    let batched = |cx: &mut Graph| -> Built {
        let a = cx.tensor::<R3<2, 4, 8>>();
        let b = cx.tensor::<R3<2, 8, 3>>();
        (vec![a.id, b.id], a.matmul(b).no_shape())
    };
    compare(
        "batched matmul",
        &batched,
        &[values(64, 5), values(48, 6)],
        &[],
        TOL,
    );

    let batched_4d = |cx: &mut Graph| -> Built {
        let a = cx.tensor::<R4<2, 3, 4, 5>>();
        let b = cx.tensor::<R4<2, 3, 5, 6>>();
        // transposed output too: a view on the retrieved tensor
        (
            vec![a.id, b.id],
            a.matmul(b).permute::<_, Axes4<0, 1, 3, 2>>().no_shape(),
        )
    };
    compare(
        "4d matmul, transposed result",
        &batched_4d,
        &[values(120, 7), values(180, 8)],
        &[],
        TOL,
    );

    let dyn_rows = |cx: &mut Graph| -> Built {
        let a = cx.tensor::<(Dyn<'m'>, Const<8>)>();
        let b = cx.tensor::<R2<8, 5>>();
        (vec![a.id, b.id], a.matmul(b).no_shape())
    };
    let (mut kc, mut lc) = compare(
        "matmul dyn rows",
        &dyn_rows,
        &[values(24, 9), values(40, 10)],
        &[('m', 3)],
        TOL,
    );
    check_run(
        "matmul dyn rows",
        &mut kc,
        &mut lc,
        &[values(56, 11), values(40, 10)],
        &[('m', 7)],
        TOL,
    );
}

#[test]
fn softmax_and_norms() {
    let sm = |cx: &mut Graph| -> Built {
        let x = cx.tensor::<R2<3, 7>>();
        let y = x.softmax::<1>() + x.softmax::<0>();
        (vec![x.id], y.no_shape())
    };
    compare(
        "softmax",
        &sm,
        &[values(21, 20).iter().map(|v| v * 4.0).collect()],
        &[],
        TOL,
    );

    let norms = |cx: &mut Graph| -> Built {
        let x = cx.tensor::<R2<4, 16>>();
        let y =
            x.layer_norm::<1, _>(1e-5) + x.mean_norm::<1>() * 0.5 + x.std_norm::<1, _>(1e-5) * 0.25;
        (vec![x.id], y.no_shape())
    };
    compare("layer/mean/std norm", &norms, &[values(64, 21)], &[], TOL);

    // Reductions over a dynamic axis: mean_reduce divides by a Constant(Expression) = s.
    let dyn_mean = |cx: &mut Graph| -> Built {
        let x = cx.tensor::<(Dyn<'s'>, Const<4>)>();
        let m = x.mean_reduce::<R1<4>, Axis<0>>();
        let y = x.layer_norm::<1, _>(1e-5).max_reduce::<R1<4>, Axis<0>>() + m;
        (vec![x.id], y.no_shape())
    };
    let (mut kc, mut lc) = compare("dyn mean", &dyn_mean, &[values(12, 22)], &[('s', 3)], TOL);
    check_run(
        "dyn mean",
        &mut kc,
        &mut lc,
        &[values(20, 23)],
        &[('s', 5)],
        TOL,
    );
}

#[test]
fn views_pad_slice_concat_and_misc_ops() {
    let build = |cx: &mut Graph| -> Built {
        let a = cx.tensor::<R2<3, 4>>();
        let b = cx.tensor::<R2<3, 2>>();
        // concat (pads both sides and adds), then pad, then a max over the padded view with
        // negative values: luminal's MaxReduce skips padding (a zero fill would give 0).
        let c: GraphTensor<R2<3, 6>> = a.concat_along::<R2<3, 6>, Axis<1>, _>(b);
        let p: GraphTensor<R2<3, 8>> = (c - 3.0).pad::<R2<3, 8>, usize, usize>(&[(0, 0), (1, 1)]);
        let m = p.max_reduce::<R1<3>, Axis<1>>();
        let s = p.sum_reduce::<R1<3>, Axis<1>>();
        // slices
        let sl = a.slice((.., Expression::from(1)..)).realize::<R2<3, 3>>();
        let sl2 = a.slice((..Expression::from(2), ..)).realize::<R2<2, 4>>();
        let sl2 = sl2.sum_reduce::<R1<4>, Axis<0>>();
        // unary ops on a view, mod, less_than
        let u = (sl * sl + 1.0).sqrt().log2() + sl.sin() + sl.exp2();
        let md = a % cx.constant(0.7).expand::<R2<3, 4>, _>();
        let lt = a.less_than(a.permute::<R2<4, 3>, _>().permute::<R2<3, 4>, _>() * 0.5);
        let y = u.sum_reduce::<R1<3>, Axis<1>>()
            + m
            + s * 0.1
            + (md + lt).max_reduce::<R1<3>, Axis<1>>()
            + sl2.max_reduce::<R0, Axis<0>>().expand::<R1<3>, _>();
        (vec![a.id, b.id], y.no_shape())
    };
    compare("views", &build, &[values(12, 30), values(6, 31)], &[], TOL);

    // Symbolic pads and slices: arange over a dynamic length (cumsum via pool_last_dim).
    let ar = |cx: &mut Graph| -> Built {
        let x = cx.tensor::<(Dyn<'n'>,)>();
        let r = cx.arange::<Dyn<'n'>>();
        (vec![x.id], (x * r + r).no_shape())
    };
    let (mut kc, mut lc) = compare("dyn arange", &ar, &[values(5, 32)], &[('n', 5)], TOL);
    check_run(
        "dyn arange",
        &mut kc,
        &mut lc,
        &[values(9, 33)],
        &[('n', 9)],
        TOL,
    );
}

#[test]
fn embedding_and_linear_chain() {
    let emb = |cx: &mut Graph| -> Built {
        let model: Embedding<10, 4> = InitModule::initialize(cx);
        let w = state_set(&model)[0];
        let ids = cx.tensor::<(Dyn<'s'>,)>();
        let y = model.forward(ids).no_shape();
        (vec![w, ids.id], y)
    };
    let ids = vec![3.0, 0.0, 9.0, 3.0, 7.0];
    let w = values(40, 41);
    // luminal 0.2's CPUCompiler gets this graph wrong (its ARange/Gather rewrites return other
    // rows, see luminal_cpu_compiler_gets_embedding_wrong), so the reference here is luminal's
    // primitive ops run one by one (GenericCompiler only), plus the rows themselves.
    let (mut kc, mut lc) = compare_with(
        Backend::LuminalPrimitive,
        "embedding",
        &emb,
        &[w.clone(), ids.clone()],
        &[('s', 5)],
        TOL,
    );
    let rows: Vec<f32> = ids
        .iter()
        .flat_map(|&i| w[i as usize * 4..i as usize * 4 + 4].to_vec())
        .collect();
    assert_eq!(kc.run(&[w.clone(), ids], &[('s', 5)]), rows);
    check_run(
        "embedding",
        &mut kc,
        &mut lc,
        &[w, vec![1.0, 8.0]],
        &[('s', 2)],
        TOL,
    );

    let lin = |cx: &mut Graph| -> Built {
        let model: (Linear<8, 16>, ReLU, Linear<16, 4>) = InitModule::initialize(cx);
        let x = cx.tensor::<(Dyn<'b'>, Const<8>)>();
        let y = model.forward(x).no_shape();
        seed_weights(cx, &model, 42, 0.5);
        (vec![x.id], y)
    };
    let (mut kc, mut lc) = compare("linear chain", &lin, &[values(24, 43)], &[('b', 3)], TOL);
    check_run(
        "linear chain",
        &mut kc,
        &mut lc,
        &[values(48, 44)],
        &[('b', 6)],
        TOL,
    );
}

#[test]
fn luminal_cpu_compiler_gets_embedding_wrong() {
    // Documents why the embedding test does not use CPUCompiler as its reference.
    let emb = |cx: &mut Graph| -> Built {
        let model: Embedding<10, 4> = InitModule::initialize(cx);
        let w = state_set(&model)[0];
        let ids = cx.tensor::<(Dyn<'s'>,)>();
        let y = model.forward(ids).no_shape();
        (vec![w, ids.id], y)
    };
    let w = values(40, 41);
    let ids = vec![3.0, 0.0, 9.0];
    let rows: Vec<f32> = ids
        .iter()
        .flat_map(|&i: &f32| w[i as usize * 4..i as usize * 4 + 4].to_vec())
        .collect();
    let k = kiln();
    let data = [w.clone(), ids.clone()];
    let got = |b| Case::new(b, &k, &emb).run(&data, &[('s', 3)]);
    assert_eq!(got(Backend::Kiln), rows);
    assert_eq!(got(Backend::LuminalPrimitive), rows);
    assert_ne!(
        got(Backend::Luminal),
        rows,
        "luminal's CPUCompiler got fixed? then use it as the reference"
    );
}

/// luminal's encoder with its weights kept between executes, as luminal holds weights: kiln binds
/// them once.
fn encoder<const L: usize>(cx: &mut Graph) -> Built {
    let model: TransformerEncoder<16, 32, 2, L> = InitModule::initialize(cx);
    let x = cx.tensor::<(Dyn<'s'>, Const<16>)>();
    let y = model.forward(x).no_shape();
    seed_weights(cx, &model, 50, 0.25);
    cx.keep_tensors(state_set(&model));
    (vec![x.id], y)
}

#[test]
fn transformer_encoder_dynamic_seq() {
    let (mut kc2, mut lc2) = compare(
        "encoder 2 layers",
        &encoder::<2>,
        &[values(5 * 16, 60)],
        &[('s', 5)],
        TOL,
    );
    check_run(
        "encoder 2 layers",
        &mut kc2,
        &mut lc2,
        &[values(9 * 16, 61)],
        &[('s', 9)],
        TOL,
    );

    let (mut kc8, mut lc8) = compare(
        "encoder 8 layers",
        &encoder::<8>,
        &[values(5 * 16, 62)],
        &[('s', 5)],
        TOL,
    );
    check_run(
        "encoder 8 layers",
        &mut kc8,
        &mut lc8,
        &[values(9 * 16, 63)],
        &[('s', 9)],
        TOL,
    );

    let r2 = kiln_luminal::reports(&mut kc2.cx);
    let r8 = kiln_luminal::reports(&mut kc8.cx);
    assert_eq!((r2.len(), r8.len()), (1, 1), "one kiln segment each");
    let matmuls = r2[0]
        .kernels
        .iter()
        .filter(|k| k.label.contains("matmul"))
        .map(|k| k.uses)
        .sum::<usize>();
    assert_eq!(
        matmuls,
        2 * 8,
        "per layer: q, k, v, o, scores, weights x values, 2 feed-forward"
    );
    eprintln!(
        "encoder: 2 layers {} kernels / {} unique, 8 layers {} / {}",
        r2[0].kernels_total, r2[0].kernels_unique, r8[0].kernels_total, r8[0].kernels_unique
    );
    assert!(r8[0].kernels_total > r2[0].kernels_total);
    assert_eq!(
        r8[0].kernels_unique, r2[0].kernels_unique,
        "depth must not add distinct kernels"
    );
}

/// A small model of several distinct kernels (matmuls, an activation, softmax, a norm).
fn mlp(cx: &mut Graph) -> Built {
    let model: (Linear<16, 32>, ReLU, Linear<32, 16>) = InitModule::initialize(cx);
    let x = cx.tensor::<(Dyn<'b'>, Const<16>)>();
    let y = model.forward(x).softmax::<1>().layer_norm::<1, _>(1e-5);
    seed_weights(cx, &model, 70, 0.5);
    (vec![x.id], y.no_shape())
}

#[test]
fn threads_1_and_2_give_the_same_artifacts() {
    // Compiled for real (no cache) twice, so a small graph of several distinct kernels.
    let digest = |threads: usize| {
        let k = KilnCompiler::builder().threads(threads).no_cache().build();
        let mut c = Case::new(Backend::Kiln, &k, &mlp);
        let r = k.report().expect("report after compile");
        assert_eq!(r.threads, threads);
        // the report is also reachable through the graph
        assert_eq!(
            kiln_luminal::reports(&mut c.cx)[0].artifact_digest,
            r.artifact_digest
        );
        assert!(
            r.kernels_unique >= 6,
            "{} distinct kernels",
            r.kernels_unique
        );
        let out = c.run(&[values(3 * 16, 70)], &[('b', 3)]);
        (r.artifact_digest, out)
    };
    let (d1, o1) = digest(1);
    let (d2, o2) = digest(2);
    assert_eq!(d1, d2);
    assert_eq!(o1, o2, "same artifacts, same results");
}

/// An op kiln does not know.
#[derive(Debug, Clone, PartialEq)]
struct Triple;
impl Operator for Triple {
    fn process(&mut self, inp: Vec<(InputTensor, ShapeTracker)>) -> Vec<Tensor> {
        let (t, st) = &inp[0];
        let d = t
            .borrowed()
            .data
            .as_any()
            .downcast_ref::<Vec<f32>>()
            .unwrap();
        let (ind, val) = (st.index_expression(), st.valid_expression());
        let n = st.n_elements().to_usize().unwrap();
        let out: Vec<f32> = (0..n)
            .map(|i| {
                if val.exec_single_var(i) != 0 {
                    3.0 * d[ind.exec_single_var(i)]
                } else {
                    0.0
                }
            })
            .collect();
        vec![Tensor::new(out)]
    }
}

fn with_custom_op(cx: &mut Graph) -> Built {
    let x = cx.tensor::<R2<3, 4>>();
    let y = x.exp2().permute::<R2<4, 3>, _>();
    let t = cx.add_op(Triple).input(y.id, 0, y.shape).finish();
    let t = GraphTensor::<R2<4, 3>>::from_id(t, y.shape.contiguous(), cx);
    let z = (t + 1.0).softmax::<1>();
    (vec![x.id], z.no_shape())
}

#[test]
fn unsupported_op_is_a_named_error() {
    let mut cx = Box::new(Graph::new());
    let (_, out) = with_custom_op(&mut cx);
    let mut out = out.retrieve();
    cx.compile(GenericCompiler::default(), &mut out);
    let nodes_before = cx.graph.node_count();
    let triple = cx
        .graph
        .node_indices()
        .find(|&n| format!("{:?}", cx.graph[n]) == "Triple")
        .unwrap();
    let err = KilnCompiler::default()
        .try_compile(&mut cx, &mut out)
        .unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        matches!(err, BridgeError::Unsupported { node, ref op, .. } if node == triple.index() && op == "Triple")
    );
    assert!(
        msg.contains("Triple") && msg.contains(&format!("node {}", triple.index())),
        "{msg}"
    );
    assert_eq!(
        cx.graph.node_count(),
        nodes_before,
        "graph untouched on error"
    );
}

#[test]
#[should_panic(expected = "kiln cannot compile luminal node")]
fn unsupported_op_panics_through_the_compiler_trait() {
    let mut cx = Box::new(Graph::new());
    let (_, mut out) = with_custom_op(&mut cx);
    cx.compile(<(GenericCompiler, KilnCompiler)>::default(), &mut out);
}

#[test]
fn unsupported_op_left_to_luminal_on_request() {
    let k = kiln_builder().fallback_to_luminal(true).build();
    let mut kc = Case::new(Backend::Kiln, &k, &with_custom_op);
    assert_eq!(k.reports().len(), 2, "kiln before and after the custom op");
    assert_eq!(k.warnings().len(), 1);
    assert!(k.warnings()[0].contains("Triple"));
    let mut lc = Case::new(Backend::Luminal, &k, &with_custom_op);
    check_run("fallback", &mut kc, &mut lc, &[values(12, 80)], &[], TOL);
}

#[test]
fn inconsistent_luminal_slice_is_rejected() {
    // A slice with both a start and an end: luminal 0.2's ShapeTracker::shape() (used by
    // reductions) and its index expression disagree on the length, so kiln refuses it.
    let mut cx = Box::new(Graph::new());
    let a = cx.tensor::<R2<3, 4>>();
    let s = a
        .slice((.., Expression::from(1)..Expression::from(3)))
        .realize::<R2<3, 2>>();
    let mut out = s.sum_reduce::<R1<3>, Axis<1>>().retrieve();
    cx.compile(GenericCompiler::default(), &mut out);
    let err = KilnCompiler::default()
        .try_compile(&mut cx, &mut out)
        .unwrap_err()
        .to_string();
    eprintln!("{err}");
    assert!(err.contains("SumReduce") && err.contains("slice"), "{err}");
}

#[test]
fn more_than_255_inputs_are_packed() {
    // luminal numbers a node's inputs with a u8: past 255 the kiln op reads them through packs.
    let many = |cx: &mut Graph| -> Built {
        let xs: Vec<GraphTensor<R1<3>>> = (0..300).map(|_| cx.tensor::<R1<3>>()).collect();
        let mut acc = xs[0];
        for (i, x) in xs.iter().enumerate().skip(1) {
            acc = if i % 2 == 0 { acc + *x } else { acc + x.sin() };
        }
        (xs.iter().map(|x| x.id).collect(), acc.no_shape())
    };
    let data: Vec<Vec<f32>> = (0..300).map(|i| values(3, 100 + i)).collect();
    let (mut kc, _) = compare("300 inputs", &many, &data, &[], TOL);
    let packs = kc
        .cx
        .graph
        .node_indices()
        .filter(|&n| kc.cx.graph[n].as_any().is::<kiln_luminal::KilnPack>())
        .count();
    assert_eq!(packs, 2);
    let _ = kc.run(&data, &[]);
}

/// The kept `Function` sources of a graph (the weights `encoder` keeps), by node index.
fn kept_sources(cx: &Graph) -> Vec<NodeIndex> {
    let mut v: Vec<NodeIndex> = cx
        .no_delete
        .iter()
        .copied()
        .filter(|&n| {
            cx.graph[n].as_any().is::<luminal::op::Function>() && cx.get_sources(n).is_empty()
        })
        .collect();
    v.sort();
    v
}

/// Changes kept weight `w` the luminal way: a new value for its source, and the held tensor
/// dropped so that luminal runs the source again at the next execute.
fn change_kept_weight(cx: &mut Graph, w: NodeIndex) {
    let held = cx.get_tensor_ref(w, 0).expect("kept after an execute");
    let old = held.data.as_any().downcast_ref::<Vec<f32>>().unwrap();
    let new: Vec<f32> = old.iter().map(|v| v * -1.5 + 0.01).collect();
    set_node(cx, w, new);
    cx.drop_tensors(w);
}

#[test]
fn kept_weights_are_bound_once_and_again_when_they_change() {
    let k = kiln();
    let mut kc = Case::new(Backend::Kiln, &k, &encoder::<2>);
    let mut lc = Case::new(Backend::Luminal, &k, &encoder::<2>);
    let weights = kept_sources(&kc.cx);
    assert_eq!(weights, kept_sources(&lc.cx), "both graphs built alike");
    let st = kiln_luminal::segment_stats(&mut kc.cx)[0];
    assert_eq!((st.kept_inputs, st.per_run_inputs), (weights.len(), 1));

    let mut compare = |x: Vec<f32>, s: usize| {
        let data = [x];
        let got = kc.run(&data, &[('s', s)]);
        let want = lc.run(&data, &[('s', s)]);
        assert_close("encoder, kept weights", &got, &want, TOL);
        got
    };
    let first = compare(values(4 * 16, 90), 4);
    compare(values(7 * 16, 91), 7);
    let again = compare(values(4 * 16, 90), 4);
    assert_eq!(first, again);
    let st = kiln_luminal::segment_stats(&mut kc.cx)[0];
    assert_eq!(st.runs, 3);
    assert_eq!(
        st.kept_binds, st.kept_inputs,
        "each weight bound once over three executes"
    );

    // Change one weight in both graphs: kiln must see the change, bind it, and only it.
    let w = weights[weights.len() / 2];
    for c in [&mut kc, &mut lc] {
        change_kept_weight(&mut c.cx, w);
    }
    let got = kc.run(&[values(4 * 16, 90)], &[('s', 4)]);
    let want = lc.run(&[values(4 * 16, 90)], &[('s', 4)]);
    assert_close("encoder, one weight changed", &got, &want, TOL);
    assert!(
        !close(&got, &first, TOL),
        "the changed weight must change the result"
    );
    let st = kiln_luminal::segment_stats(&mut kc.cx)[0];
    assert_eq!(
        st.kept_binds,
        st.kept_inputs + 1,
        "only the changed weight is bound again"
    );
}

#[test]
fn trusted_kept_weights_are_bound_again_on_request() {
    // verify_kept_inputs(false): no fingerprint per execute; a changed weight is seen only after
    // rebind_kept_inputs (the documented contract).
    let k = kiln_builder().verify_kept_inputs(false).build();
    let mut kc = Case::new(Backend::Kiln, &k, &encoder::<2>);
    let mut lc = Case::new(Backend::Luminal, &k, &encoder::<2>);
    let x = [values(3 * 16, 92)];
    let before = kc.run(&x, &[('s', 3)]);
    assert_close("before", &before, &lc.run(&x, &[('s', 3)]), TOL);
    let w = kept_sources(&kc.cx)[1];
    for c in [&mut kc, &mut lc] {
        change_kept_weight(&mut c.cx, w);
    }
    assert_eq!(
        kc.run(&x, &[('s', 3)]),
        before,
        "trusted: the old weight stays bound"
    );
    kiln_luminal::rebind_kept_inputs(&mut kc.cx);
    let got = kc.run(&x, &[('s', 3)]);
    assert_close("after rebind", &got, &lc.run(&x, &[('s', 3)]), TOL);
    assert!(!close(&got, &before, TOL));
}

/// The panic message of `f`.
fn panic_message(f: impl FnOnce()) -> String {
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).expect_err("panics");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn run_time_errors_name_the_node_and_the_problem() {
    let build = |cx: &mut Graph| -> Built {
        let x = cx.tensor::<(Dyn<'s'>, Const<4>)>();
        (vec![x.id], x.softmax::<1>().no_shape())
    };
    let mut kc = Case::new(Backend::Kiln, &kiln(), &build);
    let x = kc.inputs[0].index();
    kc.run(&[values(8, 93)], &[('s', 2)]);
    // 8 values but s = 3 says 12: luminal's process() cannot return an error, so the kiln op
    // panics naming its node, the input's node and both sizes.
    let msg = panic_message(|| {
        kc.run(&[values(8, 93)], &[('s', 3)]);
    });
    eprintln!("{msg}");
    assert!(msg.contains("kiln segment 0 (luminal node"), "{msg}");
    assert!(
        msg.contains(&format!(
            "the input from luminal node {x} (Tensor Load) has 8 values but kiln expects 12"
        )),
        "{msg}"
    );
}

#[test]
fn trace_and_report_like_the_kiln_command() {
    let trace = std::sync::Arc::new(kiln_compile::TraceRecorder::default());
    let k = KilnCompiler::builder()
        .threads(2)
        .no_cache()
        .observer(trace.clone())
        .build();
    // Through try_compile (not Graph::compile): the graph must be ready to execute all the same.
    let mut cx = Box::new(Graph::new());
    let (inputs, out) = mlp(&mut cx);
    let mut out = out.retrieve();
    cx.compile(GenericCompiler::default(), &mut out);
    k.try_compile(&mut cx, &mut out).expect("compiles");
    let mut c = Case { cx, inputs, out };
    let r = k.report().expect("report after compile");
    assert_eq!(r.threads, 2);
    assert!(r.compiler_invocations > 0 && r.kernels_unique > 0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.json");
    trace.write(&path).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let names: Vec<&str> = json["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    for stage in [
        "Analysis",
        "Kernel extraction",
        "Parallel compile",
        "Memory plan",
    ] {
        assert!(names.contains(&stage), "{stage} missing from {names:?}");
    }
    assert!(json["traceEvents"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["cat"] == "compile"));
    assert!(c
        .run(&[values(2 * 16, 94)], &[('b', 2)])
        .iter()
        .all(|v| v.is_finite()));
}

#[test]
fn the_backend_comes_from_kiln_s_registry() {
    // The CUDA backend: on a machine without a GPU, a named error and an untouched graph; with
    // one, the same results as luminal's CPU compiler.
    let k = kiln_builder()
        .backend(kiln_backends::BackendKind::Cuda)
        .build();
    let build = |cx: &mut Graph| -> Built {
        let a = cx.tensor::<R2<4, 8>>();
        let b = cx.tensor::<R2<8, 3>>();
        (vec![a.id, b.id], a.matmul(b).softmax::<1>().no_shape())
    };
    let mut cx = Box::new(Graph::new());
    let (_, out) = build(&mut cx);
    let mut out = out.retrieve();
    cx.compile(GenericCompiler::default(), &mut out);
    let nodes = cx.graph.node_count();
    match k.try_compile(&mut cx, &mut out) {
        Err(e) => {
            let msg = e.to_string();
            eprintln!("no CUDA device, so the registry says: {msg}");
            assert!(matches!(e, BridgeError::Backend { .. }), "{msg}");
            assert!(msg.contains("cuda"), "{msg}");
            assert_eq!(cx.graph.node_count(), nodes, "graph untouched on error");
        }
        Ok(()) => {
            compare_using(
                &k,
                Backend::Luminal,
                "cuda",
                &build,
                &[values(32, 95), values(24, 96)],
                &[],
                TOL,
            );
        }
    }
}

#[test]
fn kiln_ops_are_send() {
    // luminal 0.2 never moves an op to another thread (its Operator trait has no Send bound and
    // its Graph is not Send); kiln's ops are Send anyway, and so is the compiler.
    fn send<T: Send>() {}
    send::<kiln_luminal::KilnOp>();
    send::<kiln_luminal::KilnPack>();
    send::<KilnCompiler>();
}

#[test]
fn an_unset_dynamic_dimension_fails_in_luminal_as_with_its_own_compiler() {
    // luminal resolves every edge's dynamic dimensions before an op runs (kiln's ops receive
    // theirs that way too) and panics there on one never set, whatever the compiler.
    let build = |cx: &mut Graph| -> Built {
        let x = cx.tensor::<(Dyn<'s'>, Const<4>)>();
        (vec![x.id], x.softmax::<1>().no_shape())
    };
    for backend in [Backend::Kiln, Backend::Luminal] {
        let mut c = Case::new(backend, &kiln(), &build);
        set_node(&mut c.cx, c.inputs[0], values(8, 97));
        let msg = panic_message(|| c.cx.execute());
        assert!(msg.contains("None"), "{backend:?}: {msg}");
    }
}
