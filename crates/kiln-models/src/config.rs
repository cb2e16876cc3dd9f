//! The decoder's hyper-parameters, read from a Hugging Face `config.json` (either the
//! transformers 5 spelling — `dtype`, `rope_parameters.rope_theta` — or the older one).

use crate::model::WeightDtype;
use crate::ModelError;
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Qwen2 and Qwen2.5: q/k/v projections have biases.
    Qwen2,
    /// Qwen3: per-head RMSNorm on q and k before RoPE, no biases.
    Qwen3,
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
    /// Biases on q/k/v projections (Qwen2 family).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// How the matrix weights are held: bf16 when the checkpoint says `bfloat16`, else f32.
    pub weight_dtype: WeightDtype,
}

impl QwenConfig {
    pub fn from_file(path: &Path) -> Result<QwenConfig, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::Config {
            path: Some(path.to_path_buf()),
            detail: format!("cannot read: {e}"),
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
        let arch_name = v
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
        let uint = |k: &str| -> Result<usize, ModelError> {
            match v.get(k) {
                None | Some(Value::Null) => Err(ModelError::config(format!("missing key '{k}'"))),
                Some(x) => x
                    .as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| n as usize)
                    .ok_or_else(|| {
                        ModelError::config(format!("key '{k}' must be a positive integer, got {x}"))
                    }),
            }
        };
        let opt_uint = |k: &str| -> Result<Option<usize>, ModelError> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(_) => uint(k).map(Some),
            }
        };
        let float = |x: &Value, k: &str| {
            x.as_f64()
                .filter(|f| f.is_finite() && *f > 0.0)
                .ok_or_else(|| {
                    ModelError::config(format!("key '{k}' must be a positive number, got {x}"))
                })
        };
        let hidden_size = uint("hidden_size")?;
        let num_heads = uint("num_attention_heads")?;
        let num_kv_heads = opt_uint("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = opt_uint("head_dim")?.unwrap_or(hidden_size / num_heads);
        if num_heads % num_kv_heads != 0 {
            return Err(ModelError::config(format!("num_attention_heads ({num_heads}) must be a multiple of num_key_value_heads ({num_kv_heads})")));
        }
        if head_dim % 2 != 0 {
            return Err(ModelError::config(format!(
                "head_dim ({head_dim}) must be even for RoPE"
            )));
        }
        let rope_theta = match (
            v.get("rope_theta"),
            v.get("rope_parameters").and_then(|r| r.get("rope_theta")),
        ) {
            (Some(x), _) if !x.is_null() => float(x, "rope_theta")?,
            (_, Some(x)) => float(x, "rope_parameters.rope_theta")?,
            _ => 10000.0,
        };
        let rms_norm_eps = match v.get("rms_norm_eps") {
            Some(x) => float(x, "rms_norm_eps")?,
            None => 1e-6,
        };
        let bool_key = |k: &str, default: bool| -> Result<bool, ModelError> {
            match v.get(k) {
                None | Some(Value::Null) => Ok(default),
                Some(x) => x.as_bool().ok_or_else(|| {
                    ModelError::config(format!("key '{k}' must be true or false, got {x}"))
                }),
            }
        };
        let ids = |k: &str| -> Vec<u32> {
            match v.get(k) {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as u32)
                    .collect(),
                Some(x) => x.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
                None => vec![],
            }
        };
        Ok(QwenConfig {
            arch,
            vocab_size: uint("vocab_size")?,
            hidden_size,
            intermediate_size: uint("intermediate_size")?,
            num_layers: uint("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            tie_word_embeddings: bool_key("tie_word_embeddings", false)?,
            max_position_embeddings: opt_uint("max_position_embeddings")?.unwrap_or(32768),
            // Qwen2's q/k/v projections always carry biases; Qwen3's only if the config says so.
            attention_bias: arch == Arch::Qwen2 || bool_key("attention_bias", false)?,
            bos_token_id: ids("bos_token_id").first().copied(),
            eos_token_ids: ids("eos_token_id"),
            weight_dtype: match v
                .get("torch_dtype")
                .or_else(|| v.get("dtype"))
                .and_then(|d| d.as_str())
            {
                Some("bfloat16") => WeightDtype::BF16,
                _ => WeightDtype::F32,
            },
        })
    }

    /// Bytes of weights in memory: matrices in `weight_dtype`, vectors in f32.
    pub fn weight_bytes(&self) -> u64 {
        crate::model::weight_shapes(self)
            .iter()
            .map(|(_, s)| {
                s.iter().product::<usize>() as u64
                    * crate::model::weight_dtype(s, self.weight_dtype).size_bytes() as u64
            })
            .sum()
    }

    /// Number of parameters (weights) of the model.
    pub fn num_params(&self) -> u64 {
        let (h, i, d) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.head_dim as u64,
        );
        let (nh, kv) = (self.num_heads as u64, self.num_kv_heads as u64);
        let attn = h * nh * d * 2 + h * kv * d * 2;
        let norms = 2 * h + if self.arch == Arch::Qwen3 { 2 * d } else { 0 };
        let bias = if self.attention_bias {
            nh * d + 2 * kv * d
        } else {
            0
        };
        let layer = attn + 3 * h * i + norms + bias;
        let embed = self.vocab_size as u64 * h;
        embed * if self.tie_word_embeddings { 1 } else { 2 } + h + layer * self.num_layers as u64
    }
}
