//! Text <-> ids through the `tokenizers` crate, the model's chat template (rendered with
//! minijinja, as Hugging Face's `apply_chat_template` renders it with Jinja; the Qwen chat
//! markup for models without one) and a streaming decoder that never prints half a UTF-8
//! character.

use crate::ModelError;
use std::io::Read;
use std::path::Path;

/// The Qwen3 `tokenizer.json`, gzip-compressed (see assets/QWEN3-TOKENIZER-NOTICE.md).
pub(crate) const EMBEDDED_QWEN: &[u8] = include_bytes!("../assets/qwen3-tokenizer.json.gz");

pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    chat: Option<ChatTemplate>,
}

/// A Jinja chat template and the special tokens it may name.
#[derive(Clone)]
struct ChatTemplate {
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

/// Why a tokenizer could not be loaded, or could not encode or decode.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The embedded tokenizer could not be unpacked.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// The file is not one kiln reads: not a regular file, outside its folder, too large or
    /// unreadable (what is wrong, from `kiln_fs`).
    #[error("{0}")]
    File(String),
    /// Not JSON (truncated, mangled).
    #[error("invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// The tokenizers library rejected it (a JSON that is not a tokenizer, an unknown model
    /// type, text it cannot encode).
    #[error("{0}")]
    Library(#[source] tokenizers::Error),
    /// A tokenizer description kiln reads itself is wrong (a `tokenizer.ggml.*` key of a GGUF
    /// file, a chat template): what is wrong where.
    #[error("{0}")]
    Invalid(String),
    /// The tokenizers library panicked on it (its message).
    #[error("the tokenizers library failed on this file ({0})")]
    Panicked(String),
}

impl Tokenizer {
    /// Reads `path` (a regular file in its model folder, at most [`crate::files::TOKENIZER`]).
    pub fn from_file(path: &Path) -> Result<Tokenizer, ModelError> {
        let err = |source| ModelError::Tokenizer {
            context: format!("{}: cannot load tokenizer", path.display()),
            source,
        };
        let bytes = crate::files::read_bytes(path, crate::files::TOKENIZER)
            .map_err(|e| err(TokenizerError::File(crate::files::problem(&e))))?;
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
        Ok(Tokenizer { inner, chat: None })
    }

    /// The same tokenizer with a chat template (`tokenizer.chat_template` of a GGUF file,
    /// `chat_template` of a `tokenizer_config.json`) and the bos/eos strings it may use.
    pub fn with_chat_template(
        mut self,
        template: Option<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Tokenizer {
        self.chat = template.map(|source| ChatTemplate {
            source,
            bos_token,
            eos_token,
        });
        self
    }

    /// The chat template, when the model has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat.as_ref().map(|c| c.source.as_str())
    }

    /// One user message as the model's chat template writes it, ready for the assistant's
    /// answer (`add_generation_prompt`); [`Tokenizer::chat_prompt`] for a model without one.
    pub fn apply_chat_template(&self, user: &str) -> Result<String, ModelError> {
        let Some(chat) = &self.chat else {
            return Ok(Self::chat_prompt(user));
        };
        let err = |e: minijinja::Error| {
            let mut detail = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                detail.push_str(&format!(": {s}"));
                source = s.source();
            }
            ModelError::Tokenizer {
                context: "the chat template failed".into(),
                source: TokenizerError::Invalid(detail),
            }
        };
        let mut env = minijinja::Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        // Python's str methods (`.startswith`, `.split`, `.strip`, ...), which HF templates use.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<(), minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", &chat.source).map_err(err)?;
        let ctx = minijinja::context! {
            messages => vec![minijinja::context! { role => "user", content => user }],
            add_generation_prompt => true,
            bos_token => chat.bos_token.clone().unwrap_or_default(),
            eos_token => chat.eos_token.clone().unwrap_or_default(),
        };
        env.get_template("chat")
            .and_then(|t| t.render(ctx))
            .map_err(err)
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

    /// The ids of `text`. A character no token covers (a tokenizer without byte fallback or
    /// an unknown token drops it) is an error naming it: the model would never see it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let err = |source| ModelError::Tokenizer {
            context: "cannot tokenize".into(),
            source,
        };
        let enc = no_panic(|| self.inner.encode(text, false))
            .map_err(err)?
            .map_err(|e| err(TokenizerError::Library(e)))?;
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
            return Err(err(TokenizerError::Invalid(format!(
                "the prompt's character {n} ({c:?}, U+{:04X}) has no token in this tokenizer \
                 (it would be dropped)",
                c as u32
            ))));
        }
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids`. An id the tokenizer has no token for (a model's vocabulary larger
    /// than its tokenizer's) is shown as U+FFFD, never dropped; see [`Tokenizer::unknown_ids`].
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        let err = |source| ModelError::Tokenizer {
            context: "cannot decode".into(),
            source,
        };
        let mut out = String::new();
        for (i, run) in ids.split(|&id| !self.knows(id)).enumerate() {
            if i > 0 {
                out.push(char::REPLACEMENT_CHARACTER);
            }
            if !run.is_empty() {
                out += &no_panic(|| self.inner.decode(run, false))
                    .map_err(err)?
                    .map_err(|e| err(TokenizerError::Library(e)))?;
            }
        }
        Ok(out)
    }

    /// The `tokenizers` tokenizer (for [`crate::detokenizer`]'s table).
    pub(crate) fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
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
            Some(missing) => Err(ModelError::Tokenizer {
                context: "--chat".into(),
                source: TokenizerError::Invalid(format!(
                    "the Qwen chat markup needs the tokens {IM_START} and {IM_END}; this \
                     tokenizer has no {missing}"
                )),
            }),
            None => Ok(()),
        }
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Wraps a user message in the Qwen chat markup.
    pub fn chat_prompt(user: &str) -> String {
        Self::chat_messages_prompt(&[("user", user)])
    }

    /// A conversation in the Qwen chat markup (ChatML), `(role, content)` in order (roles
    /// `system`, `user`, `assistant`), ending with the opening of the assistant's reply.
    /// No system message is added when there is none (Qwen3's template adds none).
    pub fn chat_messages_prompt(messages: &[(&str, &str)]) -> String {
        let mut s = String::new();
        for (role, content) in messages {
            s.push_str(&format!("{IM_START}{role}\n{content}{IM_END}\n"));
        }
        s.push_str(&format!("{IM_START}assistant\n"));
        s
    }
}

/// The chat template of a `tokenizer_config.json` (its `chat_template`: a string, or a list
/// of `{name, template}` whose `default` one is used) and its `bos_token`/`eos_token` strings.
pub type ChatTemplateParts = (Option<String>, Option<String>, Option<String>);

pub fn chat_template_of_config(path: &Path) -> Result<ChatTemplateParts, ModelError> {
    let err = |d: String| ModelError::Tokenizer {
        context: path.display().to_string(),
        source: TokenizerError::Invalid(d),
    };
    let text = crate::files::read_bytes(path, crate::files::CONFIG)
        .map_err(|e| err(crate::files::problem(&e)))?;
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| err(format!("invalid JSON: {e}")))?;
    let template = match v.get("chat_template") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(t)) => Some(t.clone()),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str())
            .map(str::to_string),
        Some(other) => {
            return Err(err(format!(
                "key 'chat_template' must be a string or a list of named templates, got {other}"
            )))
        }
    };
    // A special token is a string or an AddedToken object with its `content`.
    let token = |k: &str| {
        let t = v.get(k)?;
        t.as_str()
            .or_else(|| t.get("content")?.as_str())
            .map(str::to_string)
    };
    Ok((template, token("bos_token"), token("eos_token")))
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

/// Ids -> text: a [`Tokenizer`], or a [`crate::Detokenizer`] (what `kiln run` keeps of one
/// once its prompt is encoded).
pub trait Decode {
    fn decode(&self, ids: &[u32]) -> Result<String, ModelError>;
}

impl Decode for Tokenizer {
    fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        Tokenizer::decode(self, ids)
    }
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
    pub fn finish(&mut self, tok: &impl Decode) -> Result<String, ModelError> {
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
    pub fn push(&mut self, tok: &impl Decode, id: u32) -> Result<String, ModelError> {
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

#[cfg(test)]
mod tests {
    use super::Tokenizer;

    #[test]
    fn chat_markup_of_a_conversation() {
        assert_eq!(
            Tokenizer::chat_messages_prompt(&[("system", "Be brief."), ("user", "Hi")]),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        assert_eq!(
            Tokenizer::chat_prompt("Hi"),
            Tokenizer::chat_messages_prompt(&[("user", "Hi")])
        );
    }
}
