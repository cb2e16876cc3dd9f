//! The Qwen family on kiln: `config.json` -> graph -> compiled kernels, safetensors weights or
//! seeded random ones for the built-in presets, the tokenizer, a KV cache and sampling.

pub mod config;
pub mod model;
pub mod presets;
pub mod runtime;
pub mod sampling;
pub mod tokenizer;
pub mod weights;

pub use config::{Arch, QwenConfig};
pub use model::{build_graph, weight_shapes, GraphOptions, WeightDtype};
pub use runtime::{Device, Generation, KvCache, LoadOptions, Model};
pub use sampling::{argmax, Sampler, Sampling};
pub use tokenizer::{StreamDecoder, Tokenizer};

use std::path::PathBuf;

/// An error for a human: it names the file, tensor or key at fault.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ModelError(pub String);

impl ModelError {
    pub fn new(msg: String) -> ModelError {
        ModelError(msg)
    }
}

impl From<kiln_ir::IrError> for ModelError {
    fn from(e: kiln_ir::IrError) -> Self {
        ModelError(e.to_string())
    }
}

impl From<kiln_compile::CompileError> for ModelError {
    fn from(e: kiln_compile::CompileError) -> Self {
        ModelError(e.to_string())
    }
}

/// Where a model comes from: a built-in preset or a Hugging Face checkpoint folder.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSource {
    Preset(String),
    Dir(PathBuf),
}

impl ModelSource {
    pub fn parse(s: &str) -> Result<ModelSource, ModelError> {
        if presets::preset(s).is_some() {
            return Ok(ModelSource::Preset(s.into()));
        }
        let p = PathBuf::from(s);
        if p.is_dir() {
            return Ok(ModelSource::Dir(p));
        }
        Err(ModelError::new(format!(
            "unknown model '{s}': not a preset ({}) and not a folder with config.json",
            presets::preset_names().join(", ")
        )))
    }

    pub fn config(&self) -> Result<QwenConfig, ModelError> {
        match self {
            ModelSource::Preset(name) => Ok(presets::preset(name).expect("parsed preset")),
            ModelSource::Dir(d) => QwenConfig::from_file(&d.join("config.json")),
        }
    }

    pub fn name(&self) -> String {
        match self {
            ModelSource::Preset(n) => n.clone(),
            ModelSource::Dir(d) => d.display().to_string(),
        }
    }

    /// The tokenizer: the folder's `tokenizer.json`, the embedded Qwen one for presets.
    pub fn tokenizer(&self) -> Result<Option<Tokenizer>, ModelError> {
        match self {
            ModelSource::Preset(_) => Tokenizer::embedded_qwen().map(Some),
            ModelSource::Dir(d) => {
                let p = d.join("tokenizer.json");
                if p.exists() {
                    Tokenizer::from_file(&p).map(Some)
                } else {
                    Ok(None)
                }
            }
        }
    }
}
