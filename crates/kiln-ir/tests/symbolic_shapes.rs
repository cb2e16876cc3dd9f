//! The shape relations the Qwen graph (kiln-models' `model.rs`) relies on, checked the way the
//! builder checks them now: by proof (normalisation), not by sampling bindings.

use kiln_ir::graph::dims_equal;
use kiln_ir::{numel, DType, Expr, Graph, IrError};

fn s() -> Expr {
    Expr::sym("s")
}
fn p() -> Expr {
    Expr::sym("p")
}
fn c(v: usize) -> Expr {
    Expr::from(v)
}

/// Qwen2.5-0.5B's attention sizes: 14 query heads sharing 2 KV heads, head_dim 64.
const NH: usize = 14;
const KV: usize = 2;
const GROUP: usize = NH / KV;
const D: usize = 64;
const H: usize = 896;

#[test]
fn numel_equalities_of_the_attention_reshapes() {
    let (s, p) = (s(), p());
    // q/k/v projections: [s, nh*d] <-> [s, nh, d].
    assert!(dims_equal(
        &numel(&[s.clone(), c(NH * D)]),
        &numel(&[s.clone(), c(NH), c(D)])
    ));
    // Grouped queries: [nh, s, d] <-> [kv, group*s, d], in either spelling of group*s.
    for gs in [s.clone().mul(GROUP as i64), c(GROUP).mul(s.clone())] {
        assert!(dims_equal(
            &numel(&[c(KV), gs.clone(), c(D)]),
            &numel(&[c(NH), s.clone(), c(D)])
        ));
        // Scores and probabilities: [kv, group*s, p+s] <-> [nh, s, s+p].
        assert!(dims_equal(
            &numel(&[c(KV), gs, p.clone().add(s.clone())]),
            &numel(&[c(NH), s.clone(), s.clone().add(p.clone())])
        ));
    }
    // The output projection's input: [s, nh, d] <-> [s, nh*d].
    assert!(dims_equal(
        &numel(&[s.clone(), c(NH), c(D)]),
        &numel(&[s.clone(), c(NH * D)])
    ));
    // Slices: end - start.
    assert!(dims_equal(&s.clone().sub(s.clone().sub(1)), &c(1)));
    assert!(dims_equal(&p.clone().add(1).sub(p.clone()), &c(1)));
    assert!(dims_equal(
        &p.clone().add(s.clone()).sub(0),
        &s.clone().add(p.clone())
    ));
    let half = Expr::sym("n").div(2);
    assert!(dims_equal(
        &Expr::sym("n").sub(half.clone()).add(half.clone().sub(0)),
        &Expr::sym("n")
    ));
    // Concatenating the cache with the new positions.
    assert!(dims_equal(
        &p.clone().add(s.clone()),
        &s.clone().add(p.clone())
    ));
    // rope's d / 2 for a constant d folds.
    assert!(dims_equal(&c(D).div(2).add(c(D).sub(c(D).div(2))), &c(D)));
    // And what is not equal is not.
    assert!(!dims_equal(&p.clone().add(1), &s));
    assert!(!dims_equal(&s.clone().div(2).mul(2), &s));
    assert!(!dims_equal(
        &numel(&[c(KV), s.clone(), c(D)]),
        &numel(&[c(NH), s.clone(), c(D)])
    ));
}

/// One attention layer with a KV cache, built as `model.rs` builds it (weights as inputs).
fn attention_layer() -> Result<Graph, IrError> {
    let mut g = Graph::new();
    let (s, p) = (s(), p());
    let x = g.input("x", DType::F32, &[s.clone(), c(H)])?;
    let (cos, sin) = g.rope_tables(p.clone(), s.clone(), D, 1e6)?;
    let mask = g.causal_mask(p.clone(), s.clone())?;
    let lin = |g: &mut Graph, name: &str, out: usize| -> Result<_, IrError> {
        let w = g.input(name, DType::F32, &[c(out), c(H)])?;
        let wt = g.transpose(w, 0, 1)?;
        g.matmul(x, wt)
    };
    let q = lin(&mut g, "q", NH * D)?;
    let k = lin(&mut g, "k", KV * D)?;
    let v = lin(&mut g, "v", KV * D)?;
    let q = g.reshape(q, &[s.clone(), c(NH), c(D)])?;
    let k = g.reshape(k, &[s.clone(), c(KV), c(D)])?;
    let v = g.reshape(v, &[s.clone(), c(KV), c(D)])?;
    let q = g.permute(q, &[1, 0, 2])?;
    let k = g.permute(k, &[1, 0, 2])?;
    let v = g.permute(v, &[1, 0, 2])?;
    let q = g.rope(q, cos, sin)?;
    let k = g.rope(k, cos, sin)?;
    let cache = [c(KV), p.clone(), c(D)];
    let k_past = g.input("k_cache", DType::F32, &cache)?;
    let v_past = g.input("v_cache", DType::F32, &cache)?;
    let k_all = g.concat(&[k_past, k], 1)?;
    let v_all = g.concat(&[v_past, v], 1)?;
    g.output("k_cache_out", k_all);
    g.output("v_cache_out", v_all);
    // The total length spelled the other way round from the concat's `p + s`.
    let t = s.clone().add(p.clone());
    let qg = g.reshape(q, &[c(KV), c(GROUP).mul(s.clone()), c(D)])?;
    let kt = g.transpose(k_all, 1, 2)?;
    let scores = g.matmul(qg, kt)?;
    let scores = g.reshape(scores, &[c(NH), s.clone(), t.clone()])?;
    let scores = g.mul_scalar(scores, 0.125)?;
    let scores = g.add(scores, mask)?;
    let probs = g.softmax(scores, 2)?;
    let probs = g.reshape(probs, &[c(KV), s.clone().mul(GROUP as i64), t])?;
    let out = g.matmul(probs, v_all)?;
    let out = g.reshape(out, &[c(NH), s.clone(), c(D)])?;
    let out = g.permute(out, &[1, 0, 2])?;
    let out = g.reshape(out, &[s.clone(), c(NH * D)])?;
    // Logits of the last position only.
    let last = g.slice(out, 0, s.clone().sub(1), s)?;
    g.output("last", last);
    Ok(g)
}

#[test]
fn the_attention_layer_builds_with_provable_shapes() {
    let g = attention_layer().expect("attention layer builds");
    let shape = |name: &str| {
        let id = g.outputs.iter().find(|(n, _)| n == name).expect("output").1;
        g.shape(id).to_vec()
    };
    let kv_out = shape("k_cache_out");
    assert!(dims_equal(&kv_out[1], &s().add(p())), "{kv_out:?}");
    let last = shape("last");
    assert!(dims_equal(&last[0], &c(1)) && dims_equal(&last[1], &c(NH * D)));
}

#[test]
fn shapes_equal_only_under_some_bindings_are_rejected() {
    // The sampler bound p = v, s = v + 1 and so took p + 1 for s: this reshape used to pass.
    let mut g = Graph::new();
    let x = g.input("x", DType::F32, &[p().add(1), c(4)]).unwrap();
    let err = g.reshape(x, &[s(), c(4)]).unwrap_err().to_string();
    assert!(err.contains("cannot reshape"), "{err}");
    let y = g.input("y", DType::F32, &[s(), c(4)]).unwrap();
    assert!(g.add(x, y).is_err());
    // Equal for every binding, spelled differently: fine.
    let z = g
        .input("z", DType::F32, &[c(1).add(p()), c(2), c(2)])
        .unwrap();
    let z = g.reshape(z, &[p().add(1), c(4)]).unwrap();
    g.add(x, z).unwrap();
}
