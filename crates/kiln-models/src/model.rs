//! The Qwen decoder as a kiln graph, written to read like the Hugging Face reference.
//!
//! Inputs: `ids` `[s]` (i32); per layer the KV cache `k_cache.{l}` / `v_cache.{l}`
//! `[kv_heads, c, head_dim]`, whose first `p` positions hold the earlier keys and values (`c`
//! is its capacity); and the weights. Outputs: `logits` (`[1, vocab]` for the last position,
//! or `[s, vocab]` with `all_logits`), and `k_cache_out.{l}` / `v_cache_out.{l}`: the caches
//! with this run's `s` positions written at `p` — in place, so a decode step writes one
//! position, not the cache. `s`, `p` and `c` are symbols (`p` is given to each run): one compile
//! serves every prompt length, every decode step and every cache size.
//!
//! The q/k/v projections are one matmul over their concatenated weights, and gate/up one over
//! theirs: fewer, bigger kernels. [`fuse_projections`] builds those weights from a
//! checkpoint's separate ones at load — except where a GGUF file keeps the parts in blocks of
//! different types ([`reads_parts`]): those are read as their parts.

use crate::config::{Arch, QwenConfig};
use kiln_ir::{DType, Expr, Graph, NodeId, Result};

/// What the graph should output besides the KV cache.
#[derive(Clone, Copy, Debug, Default)]
pub struct GraphOptions {
    /// Dtype of the matrix weights (projections, embedding, LM head): bf16 weights stay bf16 in
    /// memory and are widened to f32 inside the matmul kernels. Norm weights and biases are f32.
    /// None: the model's own (`QwenConfig::weight_dtype`).
    pub weight_dtype: Option<WeightDtype>,
    /// Dtype the KV cache holds keys and values in. None: [`default_kv_dtype`] (f16 for
    /// quantized weights, f32 otherwise); see [`kv_cache_dtype`].
    pub kv_dtype: Option<KvDtype>,
    /// Logits for every position instead of the last only.
    pub all_logits: bool,
    /// Also output `hidden.embed`, `hidden.layer{i}` and `hidden.final_norm` (for tests).
    pub hidden_states: bool,
}

/// See [`GraphOptions::weight_dtype`]. The quantized ones (GGML's Q8_0, Q4_0, Q4_K, Q5_K, Q6_K blocks)
/// hold every matrix quantized with ggml's reference quantizer at load, the embedding table
/// included: its gather dequantizes the rows it reads, and a tied LM head reads the same
/// table's blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum WeightDtype {
    #[default]
    F32,
    BF16,
    Q8_0,
    Q4_0,
    Q4_K,
    Q5_K,
    Q6_K,
}

impl WeightDtype {
    /// Every weight dtype, as `--weight-dtype` spells them ([`WeightDtype::name`]).
    pub const ALL: [WeightDtype; 7] = [
        WeightDtype::F32,
        WeightDtype::BF16,
        WeightDtype::Q8_0,
        WeightDtype::Q4_0,
        WeightDtype::Q4_K,
        WeightDtype::Q5_K,
        WeightDtype::Q6_K,
    ];

    /// The dtype of the matrices read by matrix products.
    pub fn dtype(self) -> DType {
        match self {
            WeightDtype::F32 => DType::F32,
            WeightDtype::BF16 => DType::BF16,
            WeightDtype::Q8_0 => DType::Q8_0,
            WeightDtype::Q4_0 => DType::Q4_0,
            WeightDtype::Q4_K => DType::Q4_K,
            WeightDtype::Q5_K => DType::Q5_K,
            WeightDtype::Q6_K => DType::Q6_K,
        }
    }

    pub fn name(self) -> &'static str {
        self.dtype().name()
    }

    /// Parses [`WeightDtype::name`] (any case).
    pub fn parse(s: &str) -> Option<WeightDtype> {
        WeightDtype::ALL
            .into_iter()
            .find(|w| w.name().eq_ignore_ascii_case(s))
    }
}

/// See [`GraphOptions::kv_dtype`]: the dtype of the `k_cache.{l}` / `v_cache.{l}` tensors.
/// This step's keys and values are rounded to it as they are written (round to nearest even);
/// attention reads them widened to f32 and computes in f32. 16 bits halve the cache's memory
/// and the bytes a decode step reads of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvDtype {
    #[default]
    F32,
    BF16,
    F16,
}

impl KvDtype {
    /// Every KV cache dtype, as `--kv-dtype` spells them ([`KvDtype::name`]).
    pub const ALL: [KvDtype; 3] = [KvDtype::F32, KvDtype::BF16, KvDtype::F16];

    pub fn dtype(self) -> DType {
        match self {
            KvDtype::F32 => DType::F32,
            KvDtype::BF16 => DType::BF16,
            KvDtype::F16 => DType::F16,
        }
    }

    pub fn name(self) -> &'static str {
        self.dtype().name()
    }

    /// Parses [`KvDtype::name`] (any case).
    pub fn parse(s: &str) -> Option<KvDtype> {
        KvDtype::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
    }
}

/// The KV cache dtype of a model whose graph options do not name one: f16 where the matrix
/// weights are quantized (a GGUF file's blocks, `--weight-dtype q*`), whose logits are already
/// held to llama.cpp's distance from the reference (llama.cpp keeps an f16 cache by default);
/// f32 for f32 and bf16 weights, whose logits the fixtures hold to 1e-4. f16 rather than bf16
/// by the fixtures' distances (`gguf_fidelity.rs`, kiln / llama.cpp on the int8 path): with an
/// f16 cache every file's ratio stays at most 0.86, as with an f32 one; with bf16 (7 mantissa
/// bits to f16's 10) tiny-qwen3's Q8_0 and Q6_K went from 0.82 to 0.98, at the bound. Keys and
/// values stay far inside f16's range (|x| < 65504; llama.cpp's default for every model).
pub fn default_kv_dtype(c: &QwenConfig, opts: &GraphOptions) -> KvDtype {
    let quantized = match opts.weight_dtype {
        Some(w) => w.dtype().is_quantized(),
        None => c.weight_dtype.dtype().is_quantized() || !c.file_quant.is_empty(),
    };
    if quantized {
        KvDtype::F16
    } else {
        KvDtype::F32
    }
}

/// The dtype of model `c`'s KV cache under `opts`: the graph's cache inputs, and the tensors
/// the runtime gives them ([`crate::Model`], [`crate::BatchedModel`]).
pub fn kv_cache_dtype(c: &QwenConfig, opts: &GraphOptions) -> DType {
    opts.kv_dtype
        .unwrap_or_else(|| default_kv_dtype(c, opts))
        .dtype()
}

/// The embedding table: read by the gather of the token ids, and by the LM head when the
/// embedding is tied.
pub const EMBEDDING: &str = "model.embed_tokens.weight";

/// The dtype weight `name` is held in: matrices (the embedding table included) in `w`,
/// vectors (norms, biases) in f32.
pub fn weight_dtype(shape: &[usize], w: WeightDtype) -> DType {
    if shape.len() != 2 {
        DType::F32
    } else {
        w.dtype()
    }
}

/// The weight names and shapes a checkpoint holds, in Hugging Face naming (what the graph
/// reads after [`fuse_projections`]).
pub fn weight_shapes(c: &QwenConfig) -> Vec<(String, Vec<usize>)> {
    weights(c).collect()
}

/// [`weight_shapes`] one at a time, in the same order: a config claiming a million layers can
/// be checked against a checkpoint up to its first missing tensor without listing them all.
pub fn weights(c: &QwenConfig) -> impl Iterator<Item = (String, Vec<usize>)> + '_ {
    let (h, v) = (c.hidden_size, c.vocab_size);
    let head = (!c.tie_word_embeddings).then(|| ("lm_head.weight".to_string(), vec![v, h]));
    std::iter::once(("model.embed_tokens.weight".to_string(), vec![v, h]))
        .chain((0..c.num_layers).flat_map(move |l| layer_weights(c, l)))
        .chain(std::iter::once(("model.norm.weight".to_string(), vec![h])))
        .chain(head)
}

/// How many weight tensors the graph reads.
pub fn weight_count(c: &QwenConfig) -> u64 {
    let per_layer = 9
        + if c.attention_bias { 3 } else { 0 }
        + if c.o_proj_bias() { 1 } else { 0 }
        + if c.arch == Arch::Qwen3 { 2 } else { 0 };
    2 + per_layer * c.num_layers as u64 + if c.tie_word_embeddings { 0 } else { 1 }
}

fn layer_weights(c: &QwenConfig, l: usize) -> Vec<(String, Vec<usize>)> {
    let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let (nh, kv) = (c.num_heads, c.num_kv_heads);
    let p = |n: &str| format!("model.layers.{l}.{n}");
    let mut w = vec![
        (p("input_layernorm.weight"), vec![h]),
        (p("self_attn.q_proj.weight"), vec![nh * d, h]),
        (p("self_attn.k_proj.weight"), vec![kv * d, h]),
        (p("self_attn.v_proj.weight"), vec![kv * d, h]),
    ];
    if c.attention_bias {
        w.push((p("self_attn.q_proj.bias"), vec![nh * d]));
        w.push((p("self_attn.k_proj.bias"), vec![kv * d]));
        w.push((p("self_attn.v_proj.bias"), vec![kv * d]));
    }
    w.push((p("self_attn.o_proj.weight"), vec![h, nh * d]));
    if c.o_proj_bias() {
        w.push((p("self_attn.o_proj.bias"), vec![h]));
    }
    if c.arch == Arch::Qwen3 {
        w.push((p("self_attn.q_norm.weight"), vec![d]));
        w.push((p("self_attn.k_norm.weight"), vec![d]));
    }
    w.push((p("post_attention_layernorm.weight"), vec![h]));
    w.push((p("mlp.gate_proj.weight"), vec![i, h]));
    w.push((p("mlp.up_proj.weight"), vec![i, h]));
    w.push((p("mlp.down_proj.weight"), vec![h, i]));
    w
}

/// The fused projections: for each (fused name, parts) the parts are concatenated along the
/// output dimension (rows of the `[out, in]` weights, elements of the biases), in order.
pub(crate) fn fused_projections(c: &QwenConfig) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for l in 0..c.num_layers {
        let attn = format!("model.layers.{l}.self_attn");
        let mut suffixes = vec!["weight"];
        if c.attention_bias {
            suffixes.push("bias");
        }
        for suffix in suffixes {
            out.push((
                format!("{attn}.qkv_proj.{suffix}"),
                ["q", "k", "v"]
                    .iter()
                    .map(|x| format!("{attn}.{x}_proj.{suffix}"))
                    .collect(),
            ));
        }
        let mlp = format!("model.layers.{l}.mlp");
        out.push((
            format!("{mlp}.gate_up_proj.weight"),
            vec![
                format!("{mlp}.gate_proj.weight"),
                format!("{mlp}.up_proj.weight"),
            ],
        ));
    }
    out
}

/// Whether the graph reads fused projection `fused` (a name of [`fused_projections`], its
/// `.weight` or `.bias`) as its parts: where a GGUF file keeps the parts in blocks of different
/// types (a Q4_K_M file's attn_v in Q6_K beside Q4_K q and k), `QwenConfig::file_quant` names
/// the parts and not the fused weight, and the graph multiplies by each part and concatenates
/// the products rather than hold the fused weight dequantized to f32.
pub(crate) fn reads_parts(c: &QwenConfig, fused: &str) -> bool {
    if c.file_quant.is_empty() {
        return false;
    }
    let base = fused
        .strip_suffix(".bias")
        .or_else(|| fused.strip_suffix(".weight"))
        .unwrap_or(fused);
    let weight = format!("{base}.weight");
    !c.file_quant.contains_key(&weight)
        && fused_projections(c)
            .into_iter()
            .find(|(name, _)| *name == weight)
            .is_some_and(|(_, parts)| parts.iter().any(|p| c.file_quant.contains_key(p)))
}

/// Replaces the separate q/k/v and gate/up weights of a checkpoint by the concatenated ones
/// the graph reads (one layer at a time, so memory grows by one layer's projections at most),
/// except those the graph reads as their parts ([`reads_parts`]).
pub fn fuse_projections(
    c: &QwenConfig,
    weights: &mut std::collections::BTreeMap<String, kiln_ir::Tensor>,
) -> Result<()> {
    for (fused, parts) in fused_projections(c) {
        if let Some(t) = fuse_projection(c, weights, &fused, &parts)? {
            weights.insert(fused, t);
        }
    }
    Ok(())
}

/// The fused projection `fused` (a name of [`fused_projections`]) made of its `parts`, taken
/// out of `weights`; None where the graph reads it as its parts ([`reads_parts`]). Parts that
/// view a mapped file have their pages dropped once copied.
pub(crate) fn fuse_projection(
    c: &QwenConfig,
    weights: &mut std::collections::BTreeMap<String, kiln_ir::Tensor>,
    fused: &str,
    parts: &[String],
) -> Result<Option<kiln_ir::Tensor>> {
    if reads_parts(c, fused) {
        return Ok(None);
    }
    let tensors: Vec<kiln_ir::Tensor> = parts
        .iter()
        .map(|p| {
            weights.remove(p).ok_or_else(|| kiln_ir::IrError::Input {
                name: p.clone(),
                detail: format!("is needed to build '{fused}'"),
            })
        })
        .collect::<Result<_>>()?;
    let dtype = tensors[0].dtype();
    let rest: Vec<usize> = tensors[0].shape()[1..].to_vec();
    let rows: usize = tensors.iter().map(|t| t.shape()[0]).sum();
    let shape: Vec<usize> = std::iter::once(rows).chain(rest.iter().copied()).collect();
    let mut out = kiln_ir::Tensor::zeros(dtype, &shape);
    let mut at = 0;
    for t in &tensors {
        debug_assert!(t.dtype() == dtype && t.shape()[1..] == rest[..]);
        let n = t.bytes().len();
        out.bytes_mut()[at..at + n].copy_from_slice(t.bytes());
        t.release_pages();
        at += n;
    }
    Ok(Some(out))
}

/// One sequence's part of a forward: its `s` new positions at `p` in its cache (of
/// `capacity` positions, inputs `k_cache.{l}{cache_suffix}`), with the RoPE tables and causal
/// mask of those positions.
struct SeqSpan {
    s: Expr,
    p: Expr,
    capacity: Expr,
    cache_suffix: String,
    cos: NodeId,
    sin: NodeId,
    mask: NodeId,
}

struct Builder<'a> {
    g: Graph,
    c: &'a QwenConfig,
    weights: WeightDtype,
    /// The KV cache's dtype ([`kv_cache_dtype`]).
    kv: DType,
}

impl Builder<'_> {
    /// The weight input `name` (declared at its first use; the batched graph reads the
    /// per-head norms once per slot).
    /// The LM head over the final hidden rows `x`: the `logits` output. A tied head reads the
    /// embedding table `embed` itself, in whatever dtype it is held (quantized blocks too: the
    /// products stream them, as llama.cpp's do).
    fn logits(&mut self, x: NodeId, embed: NodeId) -> Result<()> {
        let c = self.c;
        let head = if c.tie_word_embeddings {
            embed
        } else {
            self.weight("lm_head.weight", &[c.vocab_size, c.hidden_size])?
        };
        let ht = self.g.transpose(head, 0, 1)?;
        let logits = self.g.matmul(x, ht)?;
        self.g.output("logits", logits);
        Ok(())
    }

    fn weight(&mut self, name: &str, shape: &[usize]) -> Result<NodeId> {
        if let Some(id) = self.g.input_id(name) {
            return Ok(id);
        }
        let dims: Vec<Expr> = shape.iter().map(|&d| Expr::from(d)).collect();
        // A weight a GGUF file holds in blocks kiln's kernels read stays in them.
        let dtype = match self.c.file_quant.get(name) {
            Some(&d) => d,
            None => weight_dtype(shape, self.weights),
        };
        self.g.input(name, dtype, &dims)
    }

    /// y = x W^T (+ b) for the fused projection `{pre}.{fused}` whose rows are those of
    /// `parts` (name, rows) in order; where the model reads it as its parts ([`reads_parts`]),
    /// the parts' products concatenated along the columns (the same values).
    fn projection(
        &mut self,
        x: NodeId,
        pre: &str,
        fused: &str,
        parts: &[(&str, usize)],
        inp: usize,
        bias: bool,
    ) -> Result<NodeId> {
        let name = format!("{pre}.{fused}");
        if !reads_parts(self.c, &format!("{name}.weight")) {
            let out = parts.iter().map(|(_, rows)| rows).sum();
            return self.linear(x, &name, out, inp, bias);
        }
        let ys = parts
            .iter()
            .map(|(part, rows)| self.linear(x, &format!("{pre}.{part}"), *rows, inp, bias))
            .collect::<Result<Vec<_>>>()?;
        self.g.concat(&ys, 1)
    }

    /// y = x W^T (+ b), x: [s, in], W: [out, in].
    fn linear(
        &mut self,
        x: NodeId,
        name: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<NodeId> {
        let w = self.weight(&format!("{name}.weight"), &[out, inp])?;
        let wt = self.g.transpose(w, 0, 1)?;
        let y = self.g.matmul(x, wt)?;
        if bias {
            let b = self.weight(&format!("{name}.bias"), &[out])?;
            return self.g.add(y, b);
        }
        Ok(y)
    }

    fn rms_norm(&mut self, x: NodeId, name: &str, dim: usize) -> Result<NodeId> {
        let w = self.weight(name, &[dim])?;
        self.g.rms_norm(x, w, self.c.rms_norm_eps)
    }

    /// Self-attention of layer `l` for the sequence whose rows `x` holds (`[s, hidden]`).
    fn attention(&mut self, l: usize, x: NodeId, seq: &SeqSpan) -> Result<NodeId> {
        let c = self.c;
        let (h, d, nh, kv) = (c.hidden_size, c.head_dim, c.num_heads, c.num_kv_heads);
        let pre = format!("model.layers.{l}.self_attn");
        let parts = [("q_proj", nh * d), ("k_proj", kv * d), ("v_proj", kv * d)];
        let qkv = self.projection(x, &pre, "qkv_proj", &parts, h, c.attention_bias)?;
        let out = self.attend(l, qkv, seq)?;
        self.linear(out, &format!("{pre}.o_proj"), h, nh * d, c.o_proj_bias())
    }

    /// The attention of one sequence between its q/k/v projection (`qkv`, `[seq.s, (nh + 2
    /// kv) * d]`) and the output projection: normalised, rotated heads, this step's keys and
    /// values written into the sequence's cache at `seq.p`, grouped-query attention over the
    /// `p + s` positions the cache holds. Returns `[seq.s, nh * d]`.
    fn attend(&mut self, l: usize, qkv: NodeId, seq: &SeqSpan) -> Result<NodeId> {
        let c = self.c;
        let (d, nh, kv) = (c.head_dim, c.num_heads, c.num_kv_heads);
        let group = nh / kv;
        let (s, p) = (seq.s.clone(), seq.p.clone());
        let (cos, sin, mask) = (seq.cos, seq.sin, seq.mask);
        let pre = format!("model.layers.{l}.self_attn");
        let q = self.g.slice(qkv, 1, 0, nh * d)?;
        let k = self.g.slice(qkv, 1, nh * d, (nh + kv) * d)?;
        let v = self.g.slice(qkv, 1, (nh + kv) * d, (nh + 2 * kv) * d)?;
        let mut q = self.g.reshape(q, &[s.clone(), nh.into(), d.into()])?;
        let mut k = self.g.reshape(k, &[s.clone(), kv.into(), d.into()])?;
        let v = self.g.reshape(v, &[s.clone(), kv.into(), d.into()])?;
        if c.arch == Arch::Qwen3 {
            q = self.rms_norm(q, &format!("{pre}.q_norm.weight"), d)?;
            k = self.rms_norm(k, &format!("{pre}.k_norm.weight"), d)?;
        }
        // [heads, s, d]
        let q = self.g.permute(q, &[1, 0, 2])?;
        let k = self.g.permute(k, &[1, 0, 2])?;
        let v = self.g.permute(v, &[1, 0, 2])?;
        let q = self.g.rope(q, cos, sin)?;
        let k = self.g.rope(k, cos, sin)?;

        // KV cache: this step's keys and values written at position p, in place (rounded to
        // the cache's dtype); attention reads the p + s positions that hold something, where
        // they lie (a 16-bit cache widened to f32 in its kernels).
        let kv_shape = [kv.into(), seq.capacity.clone(), d.into()];
        let suffix = &seq.cache_suffix;
        let k_cache = self
            .g
            .input(&format!("k_cache.{l}{suffix}"), self.kv, &kv_shape)?;
        let v_cache = self
            .g
            .input(&format!("v_cache.{l}{suffix}"), self.kv, &kv_shape)?;
        let (k, v) = (self.g.cast(k, self.kv), self.g.cast(v, self.kv));
        let k_cache = self.g.write_slice(k_cache, k, 1, p.clone())?;
        let v_cache = self.g.write_slice(v_cache, v, 1, p.clone())?;
        self.g.output(&format!("k_cache_out.{l}{suffix}"), k_cache);
        self.g.output(&format!("v_cache_out.{l}{suffix}"), v_cache);
        let t = p.clone().add(s.clone());
        let k_all = self.g.slice(k_cache, 1, 0, t.clone())?;
        let v_all = self.g.slice(v_cache, 1, 0, t)?;

        // Grouped-query attention: query head j reads KV head j / group, so view the queries
        // as [kv, group * s, d] and use each KV head once.
        let t = p.add(s.clone());
        let qg = self
            .g
            .reshape(q, &[kv.into(), s.clone().mul(group as i64), d.into()])?;
        let kt = self.g.transpose(k_all, 1, 2)?;
        let scores = self.g.matmul(qg, kt)?; // [kv, group*s, t]
        let scores = self.g.reshape(scores, &[nh.into(), s.clone(), t.clone()])?;
        let scores = self.g.mul_scalar(scores, 1.0 / (d as f64).sqrt())?;
        let scores = self.g.add(scores, mask)?;
        let probs = self.g.softmax(scores, 2)?;
        let probs = self
            .g
            .reshape(probs, &[kv.into(), s.clone().mul(group as i64), t])?;
        let out = self.g.matmul(probs, v_all)?; // [kv, group*s, d]
        let out = self.g.reshape(out, &[nh.into(), s.clone(), d.into()])?;
        let out = self.g.permute(out, &[1, 0, 2])?;
        self.g.reshape(out, &[s, (nh * d).into()])
    }

    fn mlp(&mut self, l: usize, x: NodeId) -> Result<NodeId> {
        let (h, i) = (self.c.hidden_size, self.c.intermediate_size);
        let pre = format!("model.layers.{l}.mlp");
        let parts = [("gate_proj", i), ("up_proj", i)];
        let gate_up = self.projection(x, &pre, "gate_up_proj", &parts, h, false)?;
        let gate = self.g.slice(gate_up, 1, 0, i)?;
        let up = self.g.slice(gate_up, 1, i, 2 * i)?;
        let act = self.g.silu(gate)?;
        let y = self.g.mul(act, up)?;
        self.linear(y, &format!("{pre}.down_proj"), h, i, false)
    }
}

/// Builds the decoder graph for `c`.
pub fn build_graph(c: &QwenConfig, opts: GraphOptions) -> Result<Graph> {
    let weights = opts.weight_dtype.unwrap_or(c.weight_dtype);
    let mut b = Builder {
        g: Graph::new(),
        c,
        weights,
        kv: kv_cache_dtype(c, &opts),
    };
    let (s, p) = (Expr::sym("s"), Expr::sym("p"));
    let h = c.hidden_size;
    let ids = b.g.input("ids", DType::I32, std::slice::from_ref(&s))?;
    let embed = b.weight(EMBEDDING, &[c.vocab_size, h])?;
    let x = b.g.gather(embed, ids)?;
    let mut x = b.g.cast(x, DType::F32);
    if opts.hidden_states {
        b.g.output("hidden.embed", x);
    }
    let (cos, sin) =
        b.g.rope_tables(p.clone(), s.clone(), c.head_dim, c.rope_theta)?;
    let mask = b.g.causal_mask(p.clone(), s.clone())?;
    let seq = SeqSpan {
        s: s.clone(),
        p,
        capacity: Expr::sym("c"),
        cache_suffix: String::new(),
        cos,
        sin,
        mask,
    };
    for l in 0..c.num_layers {
        let hn = b.rms_norm(x, &format!("model.layers.{l}.input_layernorm.weight"), h)?;
        let a = b.attention(l, hn, &seq)?;
        x = b.g.add(x, a)?;
        let hn = b.rms_norm(
            x,
            &format!("model.layers.{l}.post_attention_layernorm.weight"),
            h,
        )?;
        let m = b.mlp(l, hn)?;
        x = b.g.add(x, m)?;
        if opts.hidden_states {
            b.g.output(&format!("hidden.layer{l}"), x);
        }
    }
    let x = b.rms_norm(x, "model.norm.weight", h)?;
    if opts.hidden_states {
        b.g.output("hidden.final_norm", x);
    }
    let x = if opts.all_logits {
        x
    } else {
        b.g.slice(x, 0, s.clone().sub(1), s)?
    };
    b.logits(x, embed)?;
    Ok(b.g)
}

/// The names of slot `r`'s symbols in the batched graph: its new positions this forward, its
/// cache position, its cache capacity, and its first row among the forward's rows (`n0 + .. +
/// n{r-1}`).
pub fn slot_symbols(r: usize) -> [String; 4] {
    [
        format!("n{r}"),
        format!("p{r}"),
        format!("c{r}"),
        format!("o{r}"),
    ]
}

/// The batched decoder graph: one forward runs the sequences of up to `slots` KV cache slots
/// at once, each with its own tokens, position and length, and reads every weight once for
/// all of them.
///
/// Slot `r` runs `n{r}` positions at `p{r}` of its cache `k_cache.{l}.{r}` / `v_cache.{l}.{r}`
/// (`[kv_heads, c{r}, head_dim]`, carried outputs `k_cache_out.{l}.{r}`, ...); a slot with
/// nothing to run this step has `n{r} = 0`. `ids` (`[n0 + n1 + ..]`, i32) holds the slots'
/// tokens one after another in slot order. Everything that mixes positions of one sequence —
/// RoPE tables, causal mask, the cache write, attention — is built once per slot, exactly as
/// the single-sequence graph builds it (so each slot's kernels compute what
/// [`build_graph`]'s compute for that sequence); everything row-wise (norms, projections, MLP)
/// runs once over all rows. `rows` (`[k]`, i32) names the rows whose logits are wanted
/// (`logits`: `[k, vocab]`), usually each sampled sequence's last one.
///
/// The per-slot symbols keep the op set as it is: no scatter, no per-row index in a kernel.
/// Each slot's rows start at its own symbol `o{r}` (bound to `n0 + .. + n{r-1}`), so slot
/// `r`'s kernels differ from slot 0's only in the names of their symbols and dedupe makes them
/// one compiled kernel; they are still launched per slot (a slot with no rows launches
/// nothing: its kernels have no work units).
pub fn build_batched_graph(c: &QwenConfig, opts: GraphOptions, slots: usize) -> Result<Graph> {
    if slots == 0 {
        return Err(kiln_ir::IrError::Invalid {
            what: "a batched graph needs at least one KV cache slot".into(),
        });
    }
    let weights = opts.weight_dtype.unwrap_or(c.weight_dtype);
    let mut b = Builder {
        g: Graph::new(),
        c,
        weights,
        kv: kv_cache_dtype(c, &opts),
    };
    let h = c.hidden_size;
    let mut spans = Vec::with_capacity(slots);
    let mut offsets = Vec::with_capacity(slots);
    let mut total = Expr::Const(0);
    for r in 0..slots {
        let [n, p, cap, o] = slot_symbols(r);
        let (n, p, o) = (Expr::sym(&n), Expr::sym(&p), Expr::sym(&o));
        // The slot's first row is a symbol of its own, bound to `n0 + .. + n{r-1}`, so that
        // its kernels name only its own symbols: every slot's attention kernels are then one
        // canonical kernel (`Kernel::canonical`), compiled once.
        b.g.require_le(
            o.clone(),
            total.clone(),
            &format!("slot {r}'s first row o{r}: the rows of the slots before it"),
        );
        b.g.require_le(
            total.clone(),
            o.clone(),
            &format!("slot {r}'s first row o{r}: the rows of the slots before it"),
        );
        offsets.push(o);
        total = total.add(n.clone());
        let (cos, sin) =
            b.g.rope_tables(p.clone(), n.clone(), c.head_dim, c.rope_theta)?;
        let mask = b.g.causal_mask(p.clone(), n.clone())?;
        spans.push(SeqSpan {
            s: n,
            p,
            capacity: Expr::sym(&cap),
            cache_suffix: format!(".{r}"),
            cos,
            sin,
            mask,
        });
    }
    let ids = b.g.input("ids", DType::I32, std::slice::from_ref(&total))?;
    let embed = b.weight("model.embed_tokens.weight", &[c.vocab_size, h])?;
    let x = b.g.gather(embed, ids)?;
    let mut x = b.g.cast(x, DType::F32);
    let (d, nh, kv) = (c.head_dim, c.num_heads, c.num_kv_heads);
    for l in 0..c.num_layers {
        let hn = b.rms_norm(x, &format!("model.layers.{l}.input_layernorm.weight"), h)?;
        let pre = format!("model.layers.{l}.self_attn");
        let parts = [("q_proj", nh * d), ("k_proj", kv * d), ("v_proj", kv * d)];
        let qkv = b.projection(hn, &pre, "qkv_proj", &parts, h, c.attention_bias)?;
        let mut outs = Vec::with_capacity(slots);
        for (span, offset) in spans.iter().zip(&offsets) {
            let end = offset.clone().add(span.s.clone());
            let rows = b.g.slice(qkv, 0, offset.clone(), end)?;
            outs.push(b.attend(l, rows, span)?);
        }
        let out = b.g.concat(&outs, 0)?;
        let a = b.linear(out, &format!("{pre}.o_proj"), h, nh * d, c.o_proj_bias())?;
        x = b.g.add(x, a)?;
        let hn = b.rms_norm(
            x,
            &format!("model.layers.{l}.post_attention_layernorm.weight"),
            h,
        )?;
        let m = b.mlp(l, hn)?;
        x = b.g.add(x, m)?;
    }
    let x = b.rms_norm(x, "model.norm.weight", h)?;
    let rows = b.g.input("rows", DType::I32, &[Expr::sym("k")])?;
    let x = b.g.gather(x, rows)?;
    b.logits(x, embed)?;
    Ok(b.g)
}
