//! The Qwen family on kiln: `config.json` -> graph -> compiled kernels, safetensors weights or
//! seeded random ones for the built-in presets, GGUF files (hyper-parameters, weights and
//! tokenizer in one file), the tokenizer, a KV cache and sampling.

pub mod batched;
pub mod config;
pub mod detokenizer;
pub mod files;
pub mod gguf;
pub mod memory;
pub mod model;
pub mod presets;
pub mod runtime;
pub mod sampling;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tokenizer;
pub mod weights;

pub use batched::{BatchedModel, SlotWork};
pub use config::{Arch, QwenConfig};
pub use detokenizer::Detokenizer;
pub use model::{
    build_batched_graph, build_graph, kv_cache_dtype, weight_shapes, GraphOptions, KvDtype,
    WeightDtype,
};
pub use runtime::{FinishReason, Generation, KvCache, LoadOptions, Model, SavedCache};
pub use sampling::{argmax, Sampler, Sampling};
pub use tokenizer::{Decode, StreamDecoder, Tokenizer, TokenizerError};
pub use weights::IndexError;

use std::path::PathBuf;

/// An error for a human: it names the file, tensor or key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// `--model` names neither a preset nor a checkpoint folder.
    #[error("{0}")]
    Source(String),
    /// A bad `config.json` (the file, when known, and what is wrong with which key).
    #[error("{}{detail}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
    Config {
        path: Option<PathBuf>,
        detail: String,
    },
    /// A bad checkpoint: the file (or folder) and, where one is at fault, the tensor.
    #[error("{}: {detail}", path.display())]
    Checkpoint {
        path: PathBuf,
        tensor: Option<String>,
        detail: String,
    },
    /// A tokenizer that cannot be loaded (`context` names the file), or text it cannot encode
    /// or decode.
    #[error("{context}: {source}")]
    Tokenizer {
        context: String,
        #[source]
        source: TokenizerError,
    },
    /// A prompt or generation request the model cannot serve (empty, id out of range, too
    /// long for the context, a stale KV cache).
    #[error("{0}")]
    Input(String),
    /// The model does not fit this machine.
    #[error("{0}")]
    Resources(String),
    /// The model computed NaN or infinite logits (NaN or Inf weights, or an overflow):
    /// no token can be chosen from them.
    #[error("{0}")]
    NonFinite(String),
    #[error(transparent)]
    Graph(#[from] kiln_ir::IrError),
    #[error(transparent)]
    Compile(#[from] kiln_compile::CompileError),
    #[error(transparent)]
    Run(#[from] kiln_runtime::RunError),
}

impl From<kiln_compile::LoadError> for ModelError {
    fn from(e: kiln_compile::LoadError) -> Self {
        match e {
            kiln_compile::LoadError::Compile(e) => ModelError::Compile(e),
            kiln_compile::LoadError::Run(e) => ModelError::Run(e),
        }
    }
}

impl ModelError {
    pub(crate) fn config(detail: impl Into<String>) -> ModelError {
        ModelError::Config {
            path: None,
            detail: detail.into(),
        }
    }

    pub(crate) fn checkpoint(path: &std::path::Path, detail: impl Into<String>) -> ModelError {
        ModelError::Checkpoint {
            path: path.to_path_buf(),
            tensor: None,
            detail: detail.into(),
        }
    }

    pub(crate) fn tensor(
        path: &std::path::Path,
        tensor: &str,
        detail: impl Into<String>,
    ) -> ModelError {
        ModelError::Checkpoint {
            path: path.to_path_buf(),
            tensor: Some(tensor.into()),
            detail: detail.into(),
        }
    }
}

/// Where a model comes from: a built-in preset, a Hugging Face checkpoint folder or a GGUF file.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSource {
    Preset(String),
    Dir(PathBuf),
    Gguf(PathBuf),
}

/// The prefix that names a preset whatever folders exist: `preset:qwen3-0.6b`.
pub const PRESET_PREFIX: &str = "preset:";

impl ModelSource {
    /// A folder, else a preset. A name that is both (a checkpoint downloaded into
    /// `./qwen3-0.6b`) is the folder — a real checkpoint is never silently replaced by random
    /// weights — and [`ModelSource::shadowed_preset`] says so; `preset:NAME` is the preset.
    pub fn parse(s: &str) -> Result<ModelSource, ModelError> {
        if let Some(name) = s.strip_prefix(PRESET_PREFIX) {
            return match presets::preset(name) {
                Some(_) => Ok(ModelSource::Preset(name.into())),
                None => Err(ModelError::Source(format!(
                    "unknown preset '{name}' (presets: {})",
                    presets::preset_names().join(", ")
                ))),
            };
        }
        let p = PathBuf::from(s);
        if p.is_dir() {
            return Ok(ModelSource::Dir(p));
        }
        if p.is_file() && gguf::is_gguf_path(&p) {
            return Ok(ModelSource::Gguf(p));
        }
        if p.extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            return Err(ModelError::Source(format!(
                "GGUF file '{s}' not found{}",
                if p.exists() {
                    " (it is not a file)"
                } else {
                    ""
                }
            )));
        }
        if presets::preset(s).is_some() {
            return Ok(ModelSource::Preset(s.into()));
        }
        Err(ModelError::Source(format!(
            "unknown model '{s}': not a preset ({}), a folder with config.json or a GGUF file",
            presets::preset_names().join(", ")
        )))
    }

    /// For a folder whose name (as given) is also a preset's: the notice to show, saying which
    /// was chosen and how to choose the other.
    pub fn shadowed_preset(&self) -> Option<String> {
        let ModelSource::Dir(d) = self else {
            return None;
        };
        let name = d.to_str()?;
        presets::preset(name).map(|_| {
            format!(
                "'{name}' is both a folder and a preset: using the folder {}; for the preset \
                 (random weights) pass --model {PRESET_PREFIX}{name}",
                d.display()
            )
        })
    }

    /// The model's config; for a folder, `config.json` and, when present,
    /// `generation_config.json`, whose `eos_token_id` replaces the config's (as in
    /// transformers: Qwen3's instruct models stop at `<|endoftext|>` only through it).
    pub fn config(&self) -> Result<QwenConfig, ModelError> {
        match self {
            ModelSource::Preset(name) => Ok(presets::preset(name).expect("parsed preset")),
            ModelSource::Dir(d) => {
                let mut c = QwenConfig::from_file(&d.join("config.json"))?;
                let path = d.join("generation_config.json");
                if path.symlink_metadata().is_ok() {
                    let at = |detail: String| ModelError::Config {
                        path: Some(path.clone()),
                        detail,
                    };
                    let text = files::read_text(&path, files::CONFIG)
                        .map_err(|e| at(files::problem(&e)))?;
                    let eos =
                        config::generation_eos_ids(&text, c.vocab_size).map_err(|e| match e {
                            ModelError::Config { detail, .. } => at(detail),
                            e => e,
                        })?;
                    if let Some(eos) = eos {
                        c.eos_token_ids = eos;
                    }
                }
                Ok(c)
            }
            ModelSource::Gguf(p) => gguf::qwen::GgufCheckpoint::open(p)?.config(),
        }
    }

    pub fn name(&self) -> String {
        match self {
            ModelSource::Preset(n) => n.clone(),
            ModelSource::Dir(d) | ModelSource::Gguf(d) => d.display().to_string(),
        }
    }

    /// The tokenizer: the folder's `tokenizer.json` (with the chat template of its
    /// `tokenizer_config.json`), the GGUF file's `tokenizer.ggml.*`, the embedded Qwen one for
    /// presets.
    pub fn tokenizer(&self) -> Result<Option<Tokenizer>, ModelError> {
        match self {
            ModelSource::Preset(_) => Tokenizer::embedded_qwen().map(Some),
            ModelSource::Dir(d) => {
                let p = d.join("tokenizer.json");
                // Anything by that name (a folder, a FIFO, a dangling link) is read, and refused
                // saying what it is, rather than taken for a missing tokenizer.
                if p.symlink_metadata().is_err() {
                    return Ok(None);
                }
                let t = Tokenizer::from_file(&p)?;
                let config = d.join("tokenizer_config.json");
                if config.symlink_metadata().is_ok() {
                    let (template, bos, eos) = tokenizer::chat_template_of_config(&config)?;
                    return Ok(Some(t.with_chat_template(template, bos, eos)));
                }
                Ok(Some(t))
            }
            ModelSource::Gguf(p) => {
                // Built on a thread of its own, so in an allocator arena of its own, and
                // copied here: building it allocates and frees ~100 MB in small pieces (the
                // file's 300,000 token and merge strings, the JSON made of them, the library's
                // own intermediate maps) among the ones the tokenizer keeps, and the holes
                // left would stay resident for the whole run (~15 MB beside a Qwen
                // vocabulary's ~32). The copy is packed; the build's arena is given back whole.
                let built = std::thread::scope(|s| {
                    s.spawn(|| gguf::tokenizer::from_gguf(&gguf::GgufFile::open(p)?))
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })?;
                let kept = built.clone();
                drop(built);
                memory::return_free_heap();
                Ok(kept)
            }
        }
    }
}
