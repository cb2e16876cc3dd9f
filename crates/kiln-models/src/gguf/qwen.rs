//! Qwen2, Qwen2.5 and Qwen3 from GGUF files (`general.architecture` = `qwen2` or `qwen3`, as
//! llama.cpp's `convert_hf_to_gguf.py` writes them): the hyper-parameters from the `<arch>.*`
//! metadata keys, the GGUF tensor names mapped to the Hugging Face names kiln's graph reads,
//! and the weights decoded to f32 (or bf16) at load.
//!
//! Like the `config.json` reader, every key that changes the forward pass is either
//! implemented or rejected with an error naming it (RoPE scaling, partial rotary dimensions,
//! per-layer head counts).

use super::{GgufFile, MetaValue, TensorInfo};
use crate::config::{Arch, QwenConfig, MAX_DIM};
use crate::model::WeightDtype;
use crate::weights::load_weights;
use crate::ModelError;
use kiln_ir::{DType, QuantType, Tensor};
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// The GGUF name of a Hugging Face weight name (None for names kiln's Qwen graph never reads).
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let (module, suffix) = part.rsplit_once('.')?;
    let gguf = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}.{suffix}"))
}

/// The tensor types kiln decodes, for error messages.
fn readable_types() -> String {
    QuantType::ALL.map(|t| t.name()).join(", ")
}

/// A GGUF file holding a Qwen model.
pub struct GgufCheckpoint {
    file: GgufFile,
}

impl GgufCheckpoint {
    pub fn open(path: &Path) -> Result<GgufCheckpoint, ModelError> {
        Ok(GgufCheckpoint {
            file: GgufFile::open(path)?,
        })
    }

    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// The model's hyper-parameters from the metadata (and the embedding's shape).
    pub fn config(&self) -> Result<QwenConfig, ModelError> {
        let f = &self.file;
        let arch_key = "general.architecture";
        let arch_name = match f.get(arch_key) {
            None => return Err(f.key_error(arch_key, "missing")),
            Some(v) => v
                .as_str()
                .ok_or_else(|| f.key_error(arch_key, format!("must be a string, got {v:?}")))?,
        };
        let arch = match arch_name {
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            other => {
                return Err(f.key_error(
                    arch_key,
                    format!("architecture '{other}' is not supported (kiln runs qwen2 and qwen3)"),
                ))
            }
        };
        let keys = ArchKeys { f, arch: arch_name };
        let hidden = keys.uint("embedding_length")?;
        let num_layers = keys.uint("block_count")?;
        if num_layers > crate::config::MAX_LAYERS {
            return Err(keys.error(
                "block_count",
                format!(
                    "{num_layers} layers: kiln builds at most {}",
                    crate::config::MAX_LAYERS
                ),
            ));
        }
        let intermediate = keys.uint("feed_forward_length")?;
        let num_heads = keys.uint("attention.head_count")?;
        let num_kv_heads = keys
            .opt_uint("attention.head_count_kv")?
            .unwrap_or(num_heads);
        if num_heads % num_kv_heads != 0 {
            return Err(keys.error(
                "attention.head_count_kv",
                format!("{num_kv_heads} must divide attention.head_count ({num_heads})"),
            ));
        }
        let head_dim = keys
            .opt_uint("attention.key_length")?
            .unwrap_or(hidden / num_heads);
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(keys.error(
                "attention.key_length",
                format!("head dimension {head_dim} must be a positive even number for RoPE"),
            ));
        }
        if let Some(v) = keys.opt_uint("attention.value_length")? {
            if v != head_dim {
                return Err(keys.error(
                    "attention.value_length",
                    format!("{v} differs from the key length {head_dim}; kiln needs them equal"),
                ));
            }
        }
        if let Some(r) = keys.opt_uint("rope.dimension_count")? {
            if r != head_dim {
                return Err(keys.error(
                    "rope.dimension_count",
                    format!("{r}: partial rotary embeddings are not supported (kiln rotates the whole head of {head_dim})"),
                ));
            }
        }
        if let Some(v) = keys.get("rope.scaling.type") {
            if v.as_str() != Some("none") {
                return Err(keys.error(
                    "rope.scaling.type",
                    format!(
                        "{v:?} is not supported: kiln implements the default (unscaled) RoPE only"
                    ),
                ));
            }
        }
        let rope_theta = keys.opt_float("rope.freq_base")?.unwrap_or(10000.0);
        let rms_norm_eps = keys
            .opt_float("attention.layer_norm_rms_epsilon")?
            .unwrap_or(1e-6);
        let max_position_embeddings = keys.opt_uint("context_length")?.unwrap_or(32768);

        let embed = f.tensor("token_embd.weight").ok_or_else(|| {
            f.tensor_error(
                "token_embd.weight",
                "tensor 'token_embd.weight' (the token embedding) not found",
            )
        })?;
        let vocab_size = match embed.ne[..] {
            [h, v] if h == hidden as u64 && v > 0 && v <= MAX_DIM => v as usize,
            _ => {
                return Err(f.tensor_error(
                    "token_embd.weight",
                    format!(
                        "tensor 'token_embd.weight' has dimensions {:?}; expected [{hidden} \
                         (embedding_length), vocabulary]",
                        embed.ne
                    ),
                ))
            }
        };
        if let Some(v) = keys.opt_uint("vocab_size")? {
            if v != vocab_size {
                return Err(keys.error(
                    "vocab_size",
                    format!("{v} differs from token_embd.weight's {vocab_size} rows"),
                ));
            }
        }
        let token = |k: &str| -> Result<Option<u32>, ModelError> {
            match f.get(k) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .and_then(|id| u32::try_from(id).ok())
                    .map(Some)
                    .ok_or_else(|| f.key_error(k, format!("must be a token id, got {v:?}"))),
            }
        };
        let mut eos_token_ids = Vec::new();
        for k in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
            if let Some(id) = token(k)? {
                if !eos_token_ids.contains(&id) {
                    eos_token_ids.push(id);
                }
            }
        }
        let c = QwenConfig {
            arch,
            vocab_size,
            hidden_size: hidden,
            intermediate_size: intermediate,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            // convert_hf_to_gguf.py writes no `output.weight` when the embedding is tied.
            tie_word_embeddings: f.tensor("output.weight").is_none(),
            max_position_embeddings,
            // Qwen2 always has q/k/v biases; Qwen3 has q/k/v/o biases when it has any.
            attention_bias: arch == Arch::Qwen2 || f.tensor("blk.0.attn_q.bias").is_some(),
            bos_token_id: token("tokenizer.ggml.bos_token_id")?,
            eos_token_ids,
            // bf16 files stay bf16 (as bf16 safetensors do); every other type is decoded to
            // f32, the precision kiln computes in.
            weight_dtype: if embed.quant_type() == Some(QuantType::BF16) {
                WeightDtype::BF16
            } else {
                WeightDtype::F32
            },
            file_quant: BTreeMap::new(),
        };
        let mut c = c;
        c.file_quant = self.file_quant(&c);
        if c.weight_bytes() >= 1 << 62 {
            return Err(f.error(format!(
                "the sizes describe {} parameters, more than any machine holds",
                c.num_params()
            )));
        }
        Ok(c)
    }

    /// The tensor behind Hugging Face weight `hf`, checked against the shape the config
    /// implies and for a type kiln decodes.
    fn find(&self, hf: &str, shape: &[usize]) -> Result<(&TensorInfo, QuantType), ModelError> {
        let f = &self.file;
        let name = gguf_name(hf).unwrap_or_else(|| hf.to_string());
        let t = f.tensor(&name).ok_or_else(|| {
            f.tensor_error(
                &name,
                format!(
                    "tensor '{name}' ({hf}) not found; the file holds {} tensors",
                    f.tensors().len()
                ),
            )
        })?;
        if t.shape() != shape {
            return Err(f.tensor_error(
                &name,
                format!(
                    "tensor '{name}' ({hf}) has shape {:?} (GGUF dimensions {:?}), the \
                     metadata implies {shape:?}",
                    t.shape(),
                    t.ne
                ),
            ));
        }
        let qt = t.quant_type().ok_or_else(|| {
            f.tensor_error(
                &name,
                format!(
                    "tensor '{name}' has type {}; kiln reads {}",
                    t.type_name(),
                    readable_types()
                ),
            )
        })?;
        Ok((t, qt))
    }

    /// The matrices whose blocks kiln's kernels read (Q8_0, Q4_0, Q4_K, Q6_K, rows of whole blocks):
    /// they stay quantized in memory — the embedding table too (its gather dequantizes the
    /// rows it reads; a tied LM head reads the same blocks). Projections the graph reads fused
    /// (q/k/v, gate/up) are kept fused when all their parts have the same type; parts of
    /// different types (a Q4_K_M file may hold attn_v in Q6_K beside Q4_K q and k) are kept
    /// each in its own, and the graph reads them as parts (`model::reads_parts`). The rest are
    /// dequantized at load.
    fn file_quant(&self, c: &QwenConfig) -> BTreeMap<String, DType> {
        let mut keep = BTreeMap::new();
        for (name, shape) in crate::model::weights(c) {
            // A tensor missing or unreadable: `check` reports it. Stopping here also bounds
            // the work by the file's tensors, whatever layer count the metadata claims.
            let Ok((_, qt)) = self.find(&name, &shape) else {
                return BTreeMap::new();
            };
            if shape.len() != 2 {
                continue;
            }
            if let Some(d) = DType::from_quant(qt) {
                if shape[1] % d.block_elems() == 0 {
                    keep.insert(name, d);
                }
            }
        }
        for (fused, parts) in crate::model::fused_projections(c) {
            let dtypes: Vec<Option<DType>> = parts.iter().map(|p| keep.get(p).copied()).collect();
            // Otherwise the parts stay as they are, each kept or dequantized on its own.
            if let Some(d) = dtypes[0] {
                if dtypes.iter().all(|x| *x == Some(d)) {
                    keep.insert(fused, d);
                }
            }
        }
        keep
    }

    /// Checks, from the tensor table alone, that every tensor config `c` needs is present
    /// with the shape it implies and a type kiln decodes.
    pub fn check(&self, c: &QwenConfig) -> Result<(), ModelError> {
        for (name, shape) in crate::model::weights(c) {
            self.find(&name, &shape)?;
        }
        Ok(())
    }

    /// Loads the named weights (Hugging Face names), in parallel: matrices in `w`, vectors in
    /// f32, each decoded from the file's type.
    /// The weights in `keep` (`QwenConfig::file_quant`) keep the file's blocks.
    pub fn load(
        &self,
        wanted: &[(String, Vec<usize>)],
        w: WeightDtype,
        keep: &BTreeMap<String, DType>,
    ) -> Result<BTreeMap<String, Tensor>, ModelError> {
        load_weights(wanted, w, |name, shape, want| {
            let (t, qt) = self.find(name, shape)?;
            let tensor = self.decode(name, t, qt, shape, want, keep);
            self.file.release(t);
            tensor
        })
    }

    /// A tensor's values in dtype `want` (f32 or bf16): bf16 bytes are kept as stored when
    /// bf16 is wanted, everything else is dequantized, rows in parallel.
    fn decode(
        &self,
        name: &str,
        t: &TensorInfo,
        qt: QuantType,
        shape: &[usize],
        want: DType,
        keep: &BTreeMap<String, DType>,
    ) -> Result<Tensor, ModelError> {
        let data = self.file.data(t);
        // Bytes the kernels read as the file stores them (bf16 wanted as bf16; the blocks of
        // `QwenConfig::file_quant`) stay in the file: a view of its mapping, not a copy, whose
        // pages are resident only while read — packed into the CPU's panels a slice at a
        // time, uploaded to a GPU, or a kept embedding table's rows read by the gather.
        // Copied, every weight would be held twice at the end of the load: as read and as
        // packed (the copies freed into the allocator's lists, resident until trimmed).
        let as_stored = match keep.get(name) {
            Some(&d) => Some(d),
            None => (want == DType::BF16 && qt == QuantType::BF16).then_some(DType::BF16),
        };
        if let Some(d) = as_stored {
            // The embedding table is gathered a few rows a forward: its own mapping, whose
            // rows are made resident without their neighbours (`GgufFile::rows_view`).
            let bytes = (name == crate::model::EMBEDDING)
                .then(|| self.file.rows_view(t))
                .flatten()
                .unwrap_or_else(|| self.file.shared(t));
            if let Some(view) = Tensor::from_shared(d, shape, bytes) {
                return Ok(view);
            }
            return Ok(Tensor::from_bytes(d, shape, data));
        }
        if want.is_quantized() {
            // --weight-dtype: dequantized, then quantized again with ggml's quantizer.
            let f = self.decode(name, t, qt, shape, DType::F32, keep)?;
            return Ok(crate::weights::quantize_parallel(&f, want));
        }
        let mut out = Tensor::zeros(want, shape);
        let row = t.ne[0] as usize;
        if row == 0 || data.is_empty() {
            return Ok(out);
        }
        // Rows per task: enough work to amortize rayon, small enough to spread a matrix.
        const ROWS: usize = 16;
        let row_bytes = data.len() / (out.numel() / row);
        let chunks = data.par_chunks(row_bytes * ROWS);
        let result = match want {
            DType::F32 => out
                .as_f32_mut()
                .par_chunks_mut(row * ROWS)
                .zip(chunks)
                .try_for_each(|(y, b)| qt.dequantize_row(b, y)),
            DType::BF16 => out
                .bytes_mut()
                .par_chunks_mut(row * 2 * ROWS)
                .zip(chunks)
                .try_for_each(|(y, b)| {
                    let mut values = vec![0.0f32; y.len() / 2];
                    qt.dequantize_row(b, &mut values)?;
                    for (o, v) in y.chunks_exact_mut(2).zip(values) {
                        o.copy_from_slice(&half::bf16::from_f32(v).to_le_bytes());
                    }
                    Ok(())
                }),
            other => unreachable!("weights are f32 or bf16, not {other:?}"),
        };
        result.map_err(|e| {
            self.file
                .tensor_error(&t.name, format!("tensor '{}': {e}", t.name))
        })?;
        Ok(out)
    }
}

/// Readers of the `<arch>.` keys that name the key at fault.
struct ArchKeys<'a> {
    f: &'a GgufFile,
    arch: &'a str,
}

impl ArchKeys<'_> {
    fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.arch)
    }

    fn get(&self, k: &str) -> Option<&MetaValue> {
        self.f.get(&self.key(k))
    }

    fn error(&self, k: &str, detail: impl std::fmt::Display) -> ModelError {
        self.f.key_error(&self.key(k), detail)
    }

    fn opt_uint(&self, k: &str) -> Result<Option<usize>, ModelError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0 && n <= MAX_DIM)
                .map(|n| Some(n as usize))
                .ok_or_else(|| {
                    self.error(
                        k,
                        format!("must be a positive integer (at most {MAX_DIM}), got {v:?}"),
                    )
                }),
        }
    }

    fn uint(&self, k: &str) -> Result<usize, ModelError> {
        self.opt_uint(k)?.ok_or_else(|| self.error(k, "missing"))
    }

    fn opt_float(&self, k: &str) -> Result<Option<f64>, ModelError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite() && *x > 0.0)
                .map(Some)
                .ok_or_else(|| self.error(k, format!("must be a positive number, got {v:?}"))),
        }
    }
}
