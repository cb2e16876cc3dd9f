//! The decoder's hyper-parameters, read from a Hugging Face `config.json` (either the
//! transformers 5 spelling — `dtype`, `rope_parameters.rope_theta` — or the older one).
//!
//! Every key that changes the math of a Qwen2/Qwen3 forward pass in `transformers` is either
//! implemented here exactly as `transformers` reads it (`configuration_qwen2.py`,
//! `configuration_qwen3.py`, `modeling_qwen{2,3}.py`, `modeling_rope_utils.py`), or rejected
//! with an error naming the key and its value: kiln never runs a model it would compute
//! differently. Keys that do not change inference (`attention_dropout`, `initializer_range`,
//! `use_cache`, `pad_token_id`, ...) are ignored, as `transformers` ignores them at inference.

use crate::model::WeightDtype;
use crate::ModelError;
use serde_json::{Map, Value};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Qwen2 and Qwen2.5: q/k/v projections have biases.
    Qwen2,
    /// Qwen3: per-head RMSNorm on q and k before RoPE, no biases.
    Qwen3,
}

impl Arch {
    /// The `model_type` transformers pairs with the architecture.
    fn model_type(self) -> &'static str {
        match self {
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct QwenConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    /// Biases on the q/k/v projections: always for Qwen2; for Qwen3 when `attention_bias`
    /// says so, and then on `o_proj` too (see [`QwenConfig::o_proj_bias`]).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// How the matrix weights are held: bf16 when the checkpoint says `bfloat16`, else f32.
    pub weight_dtype: WeightDtype,
    /// Weights (graph names, fused projections included) a GGUF file holds in blocks kiln's
    /// kernels read, which stay quantized in memory whatever `weight_dtype` says; empty for
    /// every other source and when `--weight-dtype` is given.
    pub file_quant: std::collections::BTreeMap<String, kiln_ir::DType>,
}

/// Activations `transformers` maps to SiLU (`ACT2FN` in `activations.py`: both are
/// `SiLUActivation`).
const SILU_NAMES: [&str; 2] = ["silu", "swish"];

/// Largest value any dimension may have: shapes are `i64` expressions and kernels index with
/// 64-bit products of two dimensions, so each must stay well inside 32 bits.
pub const MAX_DIM: u64 = i32::MAX as u64;

/// The most decoder layers a model (or `kiln compile --layers`) may have. The deepest
/// published decoders have about 130; each layer adds about 240 graph nodes and 13 kernel
/// launches (some 130 KB of graph while compiling), so 10 000 layers take a few GB to compile
/// and anything deeper is a typo or an attack, not a model.
pub const MAX_LAYERS: usize = 10_000;

/// `config.json` as a JSON object, with readers that name the key at fault.
struct Keys<'a>(&'a Map<String, Value>);

impl Keys<'_> {
    /// The value of `k`, `None` when absent or `null`.
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    fn uint_value(x: &Value, k: &str) -> Result<usize, ModelError> {
        x.as_u64()
            .filter(|&n| n > 0 && n <= MAX_DIM)
            .map(|n| n as usize)
            .ok_or_else(|| {
                ModelError::config(format!(
                    "key '{k}' must be a positive integer (at most {MAX_DIM}), got {x}"
                ))
            })
    }

    fn uint(&self, k: &str) -> Result<usize, ModelError> {
        match self.get(k) {
            None => Err(ModelError::config(format!("missing key '{k}'"))),
            Some(x) => Self::uint_value(x, k),
        }
    }

    fn opt_uint(&self, k: &str) -> Result<Option<usize>, ModelError> {
        self.get(k).map(|x| Self::uint_value(x, k)).transpose()
    }

    fn positive_float(x: &Value, k: &str) -> Result<f64, ModelError> {
        x.as_f64()
            .filter(|f| f.is_finite() && *f > 0.0)
            .ok_or_else(|| {
                ModelError::config(format!("key '{k}' must be a positive number, got {x}"))
            })
    }

    /// A number in `lo..=hi`; `range` says what the bound is and why.
    fn bounded_float(x: &Value, k: &str, lo: f64, hi: f64, range: &str) -> Result<f64, ModelError> {
        let v = Self::positive_float(x, k)?;
        if !(lo..=hi).contains(&v) {
            return Err(ModelError::config(format!(
                "key '{k}' = {x} is out of range: {range}"
            )));
        }
        Ok(v)
    }

    /// `rms_norm_eps`: added to a mean of squares in f32, it must be a normal f32 (a larger
    /// one is infinite there, a smaller one zero) and no more than 1 (past that it dominates
    /// every activation).
    fn eps(x: &Value, k: &str) -> Result<f64, ModelError> {
        Self::bounded_float(
            x,
            k,
            f32::MIN_POSITIVE as f64,
            1.0,
            "it must be a normal f32 (at least 1.2e-38) no larger than 1",
        )
    }

    /// A RoPE base: below 1 the frequencies grow with the dimension, past f32's range.
    fn rope_base(x: &Value, k: &str) -> Result<f64, ModelError> {
        Self::bounded_float(
            x,
            k,
            1.0,
            f64::MAX,
            "it must be at least 1 (below 1 the RoPE frequencies grow past f32's range)",
        )
    }

    fn bool(&self, k: &str, default: bool) -> Result<bool, ModelError> {
        match self.get(k) {
            None => Ok(default),
            Some(x) => x.as_bool().ok_or_else(|| {
                ModelError::config(format!("key '{k}' must be true or false, got {x}"))
            }),
        }
    }

    fn str(&self, k: &str) -> Result<Option<&str>, ModelError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(x) => Err(ModelError::config(format!(
                "key '{k}' must be a string, got {x}"
            ))),
        }
    }

    /// A token id or a list of them.
    fn ids(&self, k: &str) -> Result<Vec<u32>, ModelError> {
        let id = |x: &Value| {
            x.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    ModelError::config(format!(
                        "key '{k}' must be a token id or a list of token ids, got {x}"
                    ))
                })
        };
        match self.get(k) {
            None => Ok(vec![]),
            Some(Value::Array(a)) => a.iter().map(id).collect(),
            Some(x) => Ok(vec![id(x)?]),
        }
    }
}

impl QwenConfig {
    /// Reads `path` (a regular file in its model folder, at most [`crate::files::CONFIG`]).
    pub fn from_file(path: &Path) -> Result<QwenConfig, ModelError> {
        let text = crate::files::read_text(path, crate::files::CONFIG).map_err(|e| {
            ModelError::Config {
                path: Some(path.to_path_buf()),
                detail: crate::files::problem(&e),
            }
        })?;
        Self::from_json(&text).map_err(|e| match e {
            ModelError::Config { path: None, detail } => ModelError::Config {
                path: Some(path.to_path_buf()),
                detail,
            },
            e => e,
        })
    }

    pub fn from_json(text: &str) -> Result<QwenConfig, ModelError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| ModelError::config(format!("invalid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| ModelError::config("must be a JSON object"))?;
        let keys = Keys(obj);

        let arch_name = keys
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str())
            .ok_or_else(|| {
                ModelError::config("missing key 'architectures' (e.g. [\"Qwen3ForCausalLM\"])")
            })?;
        let arch = match arch_name {
            "Qwen2ForCausalLM" => Arch::Qwen2,
            "Qwen3ForCausalLM" => Arch::Qwen3,
            other => return Err(ModelError::config(format!("architecture '{other}' is not supported (supported: Qwen2ForCausalLM, Qwen3ForCausalLM)"))),
        };
        if let Some(mt) = keys.str("model_type")? {
            if mt != arch.model_type() {
                return Err(ModelError::config(format!(
                    "key 'model_type' = \"{mt}\" does not match architecture '{arch_name}' \
                     (model_type \"{}\")",
                    arch.model_type()
                )));
            }
        }
        if let Some(q) = keys.get("quantization_config") {
            let method = q
                .get("quant_method")
                .map(|m| m.to_string())
                .unwrap_or_else(|| q.to_string());
            return Err(ModelError::config(format!(
                "key 'quantization_config' (quant_method {method}) is not supported: kiln reads \
                 unquantized F32, F16 and BF16 weights"
            )));
        }
        for k in ["hidden_act", "hidden_activation"] {
            // transformers looks a null activation up in ACT2FN and fails: no default here.
            if obj.get(k).is_some_and(Value::is_null) {
                return Err(ModelError::config(format!(
                    "key '{k}' is null; kiln implements silu (the Qwen activation)"
                )));
            }
            if let Some(act) = keys.str(k)? {
                if !SILU_NAMES.contains(&act) {
                    return Err(ModelError::config(format!(
                        "key '{k}' = \"{act}\" is not supported: kiln implements silu (the \
                         Qwen activation)"
                    )));
                }
            }
        }

        let hidden_size = keys.uint("hidden_size")?;
        let num_heads = keys.uint("num_attention_heads")?;
        let num_layers = keys.uint("num_hidden_layers")?;
        if num_layers > MAX_LAYERS {
            return Err(ModelError::config(format!(
                "key 'num_hidden_layers' = {num_layers}: kiln builds at most {MAX_LAYERS} layers"
            )));
        }
        // transformers' Qwen2Config/Qwen3Config: `num_key_value_heads: int | None = 32`, and
        // `None` means `num_attention_heads`; so an absent key is 32, a null one MHA.
        let num_kv_heads = match obj.get("num_key_value_heads") {
            None => 32,
            Some(Value::Null) => num_heads,
            Some(x) => Keys::uint_value(x, "num_key_value_heads")?,
        };
        if num_heads % num_kv_heads != 0 {
            return Err(ModelError::config(format!("num_attention_heads ({num_heads}) must be a multiple of num_key_value_heads ({num_kv_heads})")));
        }
        // Qwen3Config declares `head_dim: int = 128`; Qwen2Config has no such field and
        // modeling_qwen2 uses `hidden_size // num_attention_heads` unless the key is present.
        let head_dim = match (obj.get("head_dim"), arch) {
            (Some(x), _) => Keys::uint_value(x, "head_dim")?,
            (None, Arch::Qwen3) => 128,
            (None, Arch::Qwen2) => hidden_size / num_heads,
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(ModelError::config(format!(
                "head_dim ({head_dim}) must be a positive even number for RoPE{}",
                if obj.contains_key("head_dim") {
                    String::new()
                } else {
                    format!(" (hidden_size {hidden_size} // num_attention_heads {num_heads})")
                }
            )));
        }
        check_attention_kinds(&keys, num_layers)?;
        let rope_theta = rope_theta(&keys)?;
        let rms_norm_eps = match keys.get("rms_norm_eps") {
            Some(x) => Keys::eps(x, "rms_norm_eps")?,
            None => 1e-6,
        };
        let c = QwenConfig {
            arch,
            vocab_size: keys.uint("vocab_size")?,
            hidden_size,
            intermediate_size: keys.uint("intermediate_size")?,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            tie_word_embeddings: keys.bool("tie_word_embeddings", false)?,
            max_position_embeddings: keys.opt_uint("max_position_embeddings")?.unwrap_or(32768),
            // modeling_qwen2 builds q/k/v with `bias=True` whatever the config says (Qwen2Config
            // has no `attention_bias`); modeling_qwen3 uses `bias=config.attention_bias` on
            // q, k, v and o.
            attention_bias: arch == Arch::Qwen2 || keys.bool("attention_bias", false)?,
            bos_token_id: keys.ids("bos_token_id")?.first().copied(),
            eos_token_ids: keys.ids("eos_token_id")?,
            weight_dtype: weight_dtype(&keys)?,
            file_quant: Default::default(),
        };
        // Special token ids name rows of the embedding: one past the vocabulary is no token.
        check_special_ids(&keys, c.vocab_size)?;
        let bytes = c.weight_bytes();
        if bytes >= 1 << 62 {
            return Err(ModelError::config(format!(
                "the sizes describe {} parameters, more than any machine holds",
                c.num_params()
            )));
        }
        Ok(c)
    }

    /// Checks that the model can take `prompt`: not empty, every id in the vocabulary, and no
    /// longer than the context (`max_position_embeddings`). Cheap: callers check before
    /// compiling or loading anything.
    pub fn check_prompt(&self, prompt: &[u32]) -> Result<(), ModelError> {
        if prompt.is_empty() {
            return Err(ModelError::Input("the prompt is empty".into()));
        }
        self.check_ids(prompt)?;
        if prompt.len() > self.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "the prompt has {} tokens; the context holds max_position_embeddings = {}",
                prompt.len(),
                self.max_position_embeddings
            )));
        }
        Ok(())
    }

    /// Every id is in the vocabulary.
    pub fn check_ids(&self, ids: &[u32]) -> Result<(), ModelError> {
        match ids.iter().find(|&&i| i as usize >= self.vocab_size) {
            Some(bad) => Err(ModelError::Input(format!(
                "token id {bad} is out of range for a vocabulary of {}",
                self.vocab_size
            ))),
            None => Ok(()),
        }
    }

    /// Whether `o_proj` has a bias: Qwen3 with `attention_bias` (Qwen2 never).
    pub fn o_proj_bias(&self) -> bool {
        self.arch == Arch::Qwen3 && self.attention_bias
    }

    /// Bytes of memory the weights are held in once bound: [`QwenConfig::weight_bytes`], plus
    /// a tied embedding table a second time (the gather reads its rows, the LM head's
    /// products the layout the matmul kernels read: the CPU backend keeps both) unless the
    /// rows are a GGUF file's blocks, which the gather reads from the file's mapping.
    pub fn held_weight_bytes(&self) -> u64 {
        let from_file = self.file_quant.contains_key(crate::model::EMBEDDING);
        let table = if self.tie_word_embeddings && !from_file {
            let shape = [self.vocab_size, self.hidden_size];
            let dtype = match self.file_quant.get(crate::model::EMBEDDING) {
                Some(&d) => d,
                None => crate::model::weight_dtype(&shape, self.weight_dtype),
            };
            (self.vocab_size as u64)
                .saturating_mul(self.hidden_size as u64)
                .div_ceil(dtype.block_elems() as u64)
                .saturating_mul(dtype.storage_bytes(dtype.block_elems()) as u64)
        } else {
            0
        };
        self.weight_bytes().saturating_add(table)
    }

    /// Bytes of weights in memory: matrices in `weight_dtype` (or a GGUF file's blocks, see
    /// `file_quant`), vectors in f32 (saturating: a
    /// config claiming absurd sizes gives a huge number, never an overflow).
    pub fn weight_bytes(&self) -> u64 {
        if !self.file_quant.is_empty() {
            // A GGUF file's weights, some kept in its blocks: tensor by tensor (the file holds
            // every one of them, so the count is bounded by the file).
            return crate::model::weights(self)
                .map(|(name, shape)| {
                    let d = match self.file_quant.get(&name) {
                        Some(&d) => d,
                        None => crate::model::weight_dtype(&shape, self.weight_dtype),
                    };
                    d.storage_bytes(shape.iter().product()) as u64
                })
                .sum::<u64>();
        }
        // Bytes of `n` matrix values in `d` (whole blocks for the quantized types).
        let bytes = |n: u64, d: kiln_ir::DType| {
            let be = d.block_elems() as u64;
            n.div_ceil(be)
                .saturating_mul(d.storage_bytes(d.block_elems()) as u64)
        };
        let matrix = self.weight_dtype.dtype();
        let (h, i, d) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.head_dim as u64,
        );
        let (nh, kv, v) = (
            self.num_heads as u64,
            self.num_kv_heads as u64,
            self.vocab_size as u64,
        );
        let m = |a: u64, b: u64| a.saturating_mul(b);
        let layer_matrices =
            m(m(h, d), m(nh, 2).saturating_add(m(kv, 2))).saturating_add(m(m(h, i), 3));
        let layer_vectors = self.layer_vector_params();
        let per_layer = bytes(layer_matrices, matrix).saturating_add(m(layer_vectors, 4));
        let head = if self.tie_word_embeddings {
            0
        } else {
            bytes(m(v, h), matrix)
        };
        m(per_layer, self.num_layers as u64)
            .saturating_add(bytes(m(v, h), matrix))
            .saturating_add(head)
            .saturating_add(m(h, 4))
    }

    /// Norm weights and biases of one layer.
    fn layer_vector_params(&self) -> u64 {
        let (h, d) = (self.hidden_size as u64, self.head_dim as u64);
        let (nh, kv) = (self.num_heads as u64, self.num_kv_heads as u64);
        let norms = 2 * h + if self.arch == Arch::Qwen3 { 2 * d } else { 0 };
        let bias = if self.attention_bias {
            nh.saturating_mul(d)
                .saturating_add(kv.saturating_mul(d).saturating_mul(2))
        } else {
            0
        };
        let o_bias = if self.o_proj_bias() { h } else { 0 };
        norms.saturating_add(bias).saturating_add(o_bias)
    }

    /// Number of parameters (weights) of the model (saturating).
    pub fn num_params(&self) -> u64 {
        let (h, i, d) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.head_dim as u64,
        );
        let (nh, kv) = (self.num_heads as u64, self.num_kv_heads as u64);
        let m = |a: u64, b: u64| a.saturating_mul(b);
        let attn = m(m(h, d), m(nh, 2).saturating_add(m(kv, 2)));
        let layer = attn
            .saturating_add(m(m(h, i), 3))
            .saturating_add(self.layer_vector_params());
        let embed = m(self.vocab_size as u64, h);
        m(embed, if self.tie_word_embeddings { 1 } else { 2 })
            .saturating_add(h)
            .saturating_add(m(layer, self.num_layers as u64))
    }
}

/// The special token ids (`bos_token_id`, `eos_token_id`, `pad_token_id`: an id or a list)
/// of a config or generation config are inside a vocabulary of `vocab` tokens.
fn check_special_ids(keys: &Keys<'_>, vocab: usize) -> Result<(), ModelError> {
    for k in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        if let Some(bad) = keys.ids(k)?.into_iter().find(|&i| i as usize >= vocab) {
            return Err(ModelError::config(format!(
                "key '{k}' = {bad} is not a token: the vocabulary has {vocab} (vocab_size)"
            )));
        }
    }
    Ok(())
}

/// The stop tokens `generation_config.json` (`text`) gives for a model of `vocab` tokens:
/// its `eos_token_id` (an id or a list), which replaces the config's as in transformers
/// (`GenerationConfig` is what `generate` reads). `None` when the file does not name them.
pub fn generation_eos_ids(text: &str, vocab: usize) -> Result<Option<Vec<u32>>, ModelError> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| ModelError::config(format!("invalid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| ModelError::config("must be a JSON object"))?;
    let keys = Keys(obj);
    check_special_ids(&keys, vocab)?;
    keys.get("eos_token_id")
        .map(|_| keys.ids("eos_token_id"))
        .transpose()
}

/// Every layer must be full (causal) attention: kiln does not implement sliding windows.
/// transformers (Qwen2Config/Qwen3Config `__post_init__`): `sliding_window` only counts when
/// `use_sliding_window` is true; `layer_types`, when given, decides per layer, otherwise layer
/// `i` slides when a window is set and `i >= max_window_layers`.
fn check_attention_kinds(keys: &Keys<'_>, num_layers: usize) -> Result<(), ModelError> {
    if let Some(types) = keys.get("layer_types") {
        let types = types.as_array().ok_or_else(|| {
            ModelError::config(format!(
                "key 'layer_types' must be a list of strings, got {types}"
            ))
        })?;
        if types.len() != num_layers {
            return Err(ModelError::config(format!(
                "key 'layer_types' has {} entries, num_hidden_layers is {num_layers}",
                types.len()
            )));
        }
        for (i, t) in types.iter().enumerate() {
            if t.as_str() != Some("full_attention") {
                return Err(ModelError::config(format!(
                    "key 'layer_types[{i}]' = {t} is not supported: kiln implements \
                     \"full_attention\" layers only"
                )));
            }
        }
        return Ok(());
    }
    let use_sliding = keys.bool("use_sliding_window", false)?;
    let window = keys.opt_uint("sliding_window")?;
    let max_window_layers = keys.opt_uint("max_window_layers")?.unwrap_or(28);
    if let (true, Some(w)) = (use_sliding, window) {
        if max_window_layers < num_layers {
            return Err(ModelError::config(format!(
                "key 'use_sliding_window' = true with 'sliding_window' = {w} and \
                 'max_window_layers' = {max_window_layers}: layers {max_window_layers}..{num_layers} \
                 would use sliding-window attention, which kiln does not implement"
            )));
        }
    }
    Ok(())
}

/// The RoPE base, after checking that the RoPE is the default (unscaled, full-width) one.
/// transformers 5 (`convert_rope_params_to_dict`, `standardize_rope_params`): a non-empty
/// `rope_scaling` replaces `rope_parameters`; the type is its `rope_type`, else its legacy
/// `type`, else "default"; `rope_theta` comes from that dict, else the top-level key, else
/// 10000.
fn rope_theta(keys: &Keys<'_>) -> Result<f64, ModelError> {
    /// A RoPE dict under key `k`: its name and entries (None when absent, null or empty).
    type Dict<'a> = Option<(&'static str, &'a Map<String, Value>)>;
    let dict = |k: &'static str| -> Result<Dict<'_>, ModelError> {
        match keys.get(k) {
            None => Ok(None),
            Some(Value::Object(m)) if m.is_empty() => Ok(None),
            Some(Value::Object(m)) => Ok(Some((k, m))),
            Some(x) => Err(ModelError::config(format!(
                "key '{k}' must be an object or null, got {x}"
            ))),
        }
    };
    let scaling = dict("rope_scaling")?;
    let params = match scaling {
        Some(s) => Some(s),
        None => dict("rope_parameters")?,
    };
    let mut theta = None;
    let mut theta_key = String::new();
    if let Some((name, p)) = params {
        for nested in ["full_attention", "sliding_attention"] {
            if p.contains_key(nested) {
                return Err(ModelError::config(format!(
                    "key '{name}.{nested}': per-layer-type RoPE parameters are not supported"
                )));
            }
        }
        let (type_key, rope_type) = match (p.get("rope_type"), p.get("type")) {
            (Some(t), _) if !t.is_null() => ("rope_type", t),
            (_, Some(t)) if !t.is_null() => ("type", t),
            _ => ("rope_type", &Value::Null),
        };
        if !(rope_type.is_null() || rope_type.as_str() == Some("default")) {
            return Err(ModelError::config(format!(
                "key '{name}.{type_key}' = {rope_type} is not supported: kiln implements the \
                 default (unscaled) RoPE only"
            )));
        }
        if let Some(f) = p.get("partial_rotary_factor").filter(|f| !f.is_null()) {
            if f.as_f64() != Some(1.0) {
                return Err(ModelError::config(format!(
                    "key '{name}.partial_rotary_factor' = {f} is not supported: kiln rotates \
                     the whole head"
                )));
            }
        }
        if let Some(t) = p.get("rope_theta").filter(|t| !t.is_null()) {
            theta_key = format!("{name}.rope_theta");
            theta = Some(Keys::rope_base(t, &theta_key)?);
        }
    }
    if let Some(f) = keys.get("partial_rotary_factor") {
        if f.as_f64() != Some(1.0) {
            return Err(ModelError::config(format!(
                "key 'partial_rotary_factor' = {f} is not supported: kiln rotates the whole head"
            )));
        }
    }
    match (theta, keys.get("rope_theta")) {
        // Both spellings (transformers 5 writes both): they must say the same.
        (Some(t), Some(top)) => {
            let top_value = Keys::rope_base(top, "rope_theta")?;
            if top_value != t {
                return Err(ModelError::config(format!(
                    "keys '{theta_key}' = {t} and 'rope_theta' = {top} disagree"
                )));
            }
            Ok(t)
        }
        (Some(t), None) => Ok(t),
        (None, Some(t)) => Keys::rope_base(t, "rope_theta"),
        (None, None) => Ok(10000.0),
    }
}

/// The dtype the checkpoint's matrices are meant to be used in (`dtype`, or the older
/// `torch_dtype`): bfloat16 stays bfloat16 in memory; float32 and float16 weights are held
/// in f32 (float16 widens exactly, and kiln computes in f32, so a float16 model is computed
/// more precisely than in float16, never less).
fn weight_dtype(keys: &Keys<'_>) -> Result<WeightDtype, ModelError> {
    let new = keys.str("dtype")?;
    let old = keys.str("torch_dtype")?;
    if let (Some(a), Some(b)) = (new, old) {
        if a != b {
            return Err(ModelError::config(format!(
                "keys 'dtype' = \"{a}\" and 'torch_dtype' = \"{b}\" disagree"
            )));
        }
    }
    let (key, name) = match (new, old) {
        (Some(n), _) => ("dtype", n),
        (None, Some(o)) => ("torch_dtype", o),
        (None, None) => return Ok(WeightDtype::F32),
    };
    match name {
        "bfloat16" => Ok(WeightDtype::BF16),
        "float32" | "float16" => Ok(WeightDtype::F32),
        other => Err(ModelError::config(format!(
            "key '{key}' = \"{other}\" is not supported (supported: float32, bfloat16, float16)"
        ))),
    }
}
