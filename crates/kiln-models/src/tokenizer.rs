//! Text <-> ids through the `tokenizers` crate, with the Qwen chat markup and a streaming
//! decoder that never prints half a UTF-8 character.

use crate::ModelError;
use std::io::Read;
use std::path::Path;

/// The Qwen3 `tokenizer.json`, gzip-compressed (see assets/QWEN3-TOKENIZER-NOTICE.md).
pub(crate) const EMBEDDED_QWEN: &[u8] = include_bytes!("../assets/qwen3-tokenizer.json.gz");

pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

/// Why a tokenizer could not be loaded, or could not encode or decode.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The file could not be read.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// Not JSON (truncated, mangled).
    #[error("invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// The tokenizers library rejected it (a JSON that is not a tokenizer, an unknown model
    /// type, text it cannot encode).
    #[error("{0}")]
    Library(#[source] tokenizers::Error),
    /// The tokenizers library panicked on it (its message).
    #[error("the tokenizers library failed on this file ({0})")]
    Panicked(String),
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Tokenizer, ModelError> {
        let err = |source| ModelError::Tokenizer {
            context: format!("{}: cannot load tokenizer", path.display()),
            source,
        };
        let bytes = std::fs::read(path).map_err(|e| err(TokenizerError::Io(e)))?;
        Self::from_json(&bytes).map_err(err)
    }

    /// A tokenizer from the bytes of a `tokenizer.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Tokenizer, TokenizerError> {
        // Checked as JSON first, so that a truncated or mangled file is a plain JSON error:
        // tokenizers 0.22 panics on some malformed sections (its decoder deserializer calls
        // `expect("Helper")` on a syntax error). Panics it still raises on well-formed JSON
        // (`expect("Precompiled")` on a bad charsmap, ...) are caught and reported.
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(TokenizerError::Json)?;
        let inner = no_panic(|| tokenizers::Tokenizer::from_bytes(bytes))?
            .map_err(TokenizerError::Library)?;
        Ok(Tokenizer { inner })
    }

    /// The Qwen tokenizer shipped inside kiln.
    pub fn embedded_qwen() -> Result<Tokenizer, ModelError> {
        let err = |source| ModelError::Tokenizer {
            context: "embedded tokenizer".into(),
            source,
        };
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(EMBEDDED_QWEN)
            .read_to_end(&mut json)
            .map_err(|e| err(TokenizerError::Io(e)))?;
        Self::from_json(&json).map_err(err)
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let err = |source| ModelError::Tokenizer {
            context: "cannot tokenize".into(),
            source,
        };
        let enc = no_panic(|| self.inner.encode(text, false))
            .map_err(err)?
            .map_err(|e| err(TokenizerError::Library(e)))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        let err = |source| ModelError::Tokenizer {
            context: "cannot decode".into(),
            source,
        };
        no_panic(|| self.inner.decode(ids, false))
            .map_err(err)?
            .map_err(|e| err(TokenizerError::Library(e)))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Wraps a user message in the Qwen chat markup.
    pub fn chat_prompt(user: &str) -> String {
        format!("{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n")
    }
}

/// Runs a call into the tokenizers library, turning a panic of the library (a tokenizer file
/// it cannot handle) into an error.
fn no_panic<T>(f: impl FnOnce() -> T) -> Result<T, TokenizerError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown".into());
        TokenizerError::Panicked(msg)
    })
}

/// Turns a growing list of ids into text pieces as soon as they are whole characters.
#[derive(Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    printed: usize,
}

impl StreamDecoder {
    /// Adds one id; returns the new text that is complete (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String, ModelError> {
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        // A trailing U+FFFD means the last token ended inside a multi-byte character: wait.
        if text.ends_with('\u{FFFD}')
            || text.len() < self.printed
            || !text.is_char_boundary(self.printed)
        {
            return Ok(String::new());
        }
        let new = text[self.printed..].to_string();
        self.printed = text.len();
        Ok(new)
    }
}
