//! Text <-> ids through the `tokenizers` crate, with the Qwen chat markup and a streaming
//! decoder that never prints half a UTF-8 character.

use crate::ModelError;
use std::io::Read;
use std::path::Path;

/// The Qwen3 `tokenizer.json`, gzip-compressed (see assets/QWEN3-TOKENIZER-NOTICE.md).
const EMBEDDED_QWEN: &[u8] = include_bytes!("../assets/qwen3-tokenizer.json.gz");

pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Tokenizer, ModelError> {
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| {
            ModelError::Tokenizer(format!("{}: cannot load tokenizer: {e}", path.display()))
        })?;
        Ok(Tokenizer { inner })
    }

    /// The Qwen tokenizer shipped inside kiln.
    pub fn embedded_qwen() -> Result<Tokenizer, ModelError> {
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(EMBEDDED_QWEN)
            .read_to_end(&mut json)
            .map_err(|e| ModelError::Tokenizer(format!("embedded tokenizer: {e}")))?;
        let inner = tokenizers::Tokenizer::from_bytes(&json)
            .map_err(|e| ModelError::Tokenizer(format!("embedded tokenizer: {e}")))?;
        Ok(Tokenizer { inner })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(format!("cannot tokenize: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner
            .decode(ids, false)
            .map_err(|e| ModelError::Tokenizer(format!("cannot decode: {e}")))
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Wraps a user message in the Qwen chat markup.
    pub fn chat_prompt(user: &str) -> String {
        format!("{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n")
    }
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
