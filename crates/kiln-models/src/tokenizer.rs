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

impl Tokenizer {
    /// Reads `path` (a regular file in its model folder, at most [`crate::files::TOKENIZER`]).
    pub fn from_file(path: &Path) -> Result<Tokenizer, ModelError> {
        let err = |d: String| {
            ModelError::Tokenizer(format!("{}: cannot load tokenizer: {d}", path.display()))
        };
        let bytes = crate::files::read_bytes(path, crate::files::TOKENIZER)
            .map_err(|e| err(crate::files::problem(&e)))?;
        Self::from_json(&bytes).map_err(err)
    }

    /// A tokenizer from the bytes of a `tokenizer.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Tokenizer, String> {
        // Checked as JSON first, so that a truncated or mangled file is a plain JSON error:
        // tokenizers 0.22 panics on some malformed sections (its decoder deserializer calls
        // `expect("Helper")` on a syntax error). Panics it still raises on well-formed JSON
        // (`expect("Precompiled")` on a bad charsmap, ...) are caught and reported.
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
            .map_err(|e| format!("invalid JSON: {e}"))?;
        let inner =
            no_panic(|| tokenizers::Tokenizer::from_bytes(bytes))?.map_err(|e| e.to_string())?;
        Ok(Tokenizer { inner })
    }

    /// The Qwen tokenizer shipped inside kiln.
    pub fn embedded_qwen() -> Result<Tokenizer, ModelError> {
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(EMBEDDED_QWEN)
            .read_to_end(&mut json)
            .map_err(|e| ModelError::Tokenizer(format!("embedded tokenizer: {e}")))?;
        Self::from_json(&json)
            .map_err(|e| ModelError::Tokenizer(format!("embedded tokenizer: {e}")))
    }

    /// The ids of `text`. A character no token covers (a tokenizer without byte fallback or
    /// an unknown token drops it) is an error naming it: the model would never see it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let enc = no_panic(|| self.inner.encode(text, false))
            .map_err(|e| ModelError::Tokenizer(format!("cannot tokenize: {e}")))?
            .map_err(|e| ModelError::Tokenizer(format!("cannot tokenize: {e}")))?;
        let mut covered = vec![false; text.len()];
        for &(start, end) in enc.get_offsets() {
            covered[start.min(text.len())..end.min(text.len())].fill(true);
        }
        // A character no token's span covers may also have been merged into its neighbour by
        // the normalizer (NFC composes `e` + U+0301): it is dropped only if, alone, it
        // encodes to nothing.
        let dropped = text.char_indices().enumerate().find(|(_, (at, c))| {
            !c.is_whitespace()
                && !covered[*at..*at + c.len_utf8()].iter().any(|&b| b)
                && no_panic(|| self.inner.encode(c.to_string(), false))
                    .ok()
                    .and_then(Result::ok)
                    .is_some_and(|e| e.get_ids().is_empty())
        });
        if let Some((n, (_, c))) = dropped {
            return Err(ModelError::Tokenizer(format!(
                "the prompt's character {n} ({c:?}, U+{:04X}) has no token in this tokenizer \
                 (it would be dropped)",
                c as u32
            )));
        }
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids`. An id the tokenizer has no token for (a model's vocabulary larger
    /// than its tokenizer's) is shown as U+FFFD, never dropped; see [`Tokenizer::unknown_ids`].
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        let mut out = String::new();
        for (i, run) in ids.split(|&id| !self.knows(id)).enumerate() {
            if i > 0 {
                out.push(char::REPLACEMENT_CHARACTER);
            }
            if !run.is_empty() {
                out += &no_panic(|| self.inner.decode(run, false))
                    .map_err(|e| ModelError::Tokenizer(format!("cannot decode: {e}")))?
                    .map_err(|e| ModelError::Tokenizer(format!("cannot decode: {e}")))?;
            }
        }
        Ok(out)
    }

    fn knows(&self, id: u32) -> bool {
        self.inner.id_to_token(id).is_some()
    }

    /// The ids among `ids` that have no token in this tokenizer, each once, in order.
    pub fn unknown_ids(&self, ids: &[u32]) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        for &id in ids {
            if !self.knows(id) && !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }

    /// Tokens in the tokenizer, its added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Fails unless the tokenizer has the Qwen chat tokens (`<|im_start|>`, `<|im_end|>`):
    /// without them the chat markup would be encoded as plain text.
    pub fn check_chat_tokens(&self) -> Result<(), ModelError> {
        match [IM_START, IM_END]
            .into_iter()
            .find(|t| self.token_id(t).is_none())
        {
            Some(missing) => Err(ModelError::Tokenizer(format!(
                "--chat needs the Qwen chat tokens {IM_START} and {IM_END}; this tokenizer has no \
                 {missing}"
            ))),
            None => Ok(()),
        }
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
fn no_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown".into());
        format!("the tokenizers library failed on this file ({msg})")
    })
}

/// Turns a growing list of ids into text pieces as soon as they are whole characters.
#[derive(Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    printed: usize,
}

impl StreamDecoder {
    /// The text not returned yet, whole or not: at the end of a generation, a last token that
    /// ended inside a multi-byte character shows as U+FFFD, as the whole text decodes.
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String, ModelError> {
        let text = tok.decode(&self.ids)?;
        let rest = if text.len() >= self.printed && text.is_char_boundary(self.printed) {
            text[self.printed..].to_string()
        } else {
            String::new()
        };
        self.printed = text.len();
        Ok(rest)
    }

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
