//! The tokenizer of a GGUF file, from its `tokenizer.ggml.*` metadata, built into the same
//! `tokenizers` byte-level BPE that a Qwen `tokenizer.json` describes.
//!
//! `convert_hf_to_gguf.py` writes a Qwen tokenizer as: `tokenizer.ggml.model` = `gpt2`
//! (byte-level BPE), `.pre` = `qwen2` (the pre-tokenizer regex), `.tokens` (every id's
//! string, padded to the model's vocabulary with `[PADn]` tokens of type UNUSED), `.token_type`
//! (1 normal, 3 control, 4 user-defined, 5 unused, ...), `.merges` (`"a b"` strings, in
//! rank order), the bos/eos/padding ids and `tokenizer.chat_template`. This module rebuilds
//! the `tokenizer.json` those came from: normal tokens and the merges form the BPE model,
//! control and user-defined tokens are its added tokens (special for control tokens), unused
//! padding ids are left out (as they are absent from `tokenizer.json`), and the normalizer
//! (NFC), pre-tokenizer (the Qwen2 split regex, then byte-level) and decoder are Qwen2's.

use super::{GgufFile, MetaArray, MetaValue};
use crate::tokenizer::Tokenizer;
use crate::ModelError;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{json, Value};
use std::collections::HashSet;

/// The Qwen2 pre-tokenizer's split regex (`tokenizer.json`'s, and llama.cpp's for `qwen2`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// `llama_token_type` values.
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;
const TYPE_UNUSED: i64 = 5;

/// The file's tokenizer; None when it has no `tokenizer.ggml.model`.
pub fn from_gguf(f: &GgufFile) -> Result<Option<Tokenizer>, ModelError> {
    let err = |key: &str, detail: String| ModelError::Tokenizer {
        context: format!("{}: metadata key '{key}'", f.path().display()),
        source: crate::TokenizerError::Invalid(detail),
    };
    let model = match f.get("tokenizer.ggml.model") {
        None => return Ok(None),
        Some(MetaValue::Str(m)) => m.as_str(),
        Some(v) => {
            return Err(err(
                "tokenizer.ggml.model",
                format!("must be a string, got {}", v.type_name()),
            ))
        }
    };
    if model != "gpt2" {
        return Err(err(
            "tokenizer.ggml.model",
            format!("'{model}' is not supported; kiln builds byte-level BPE tokenizers ('gpt2')"),
        ));
    }
    match f.get("tokenizer.ggml.pre") {
        None => tracing::warn!(
            "{}: no tokenizer.ggml.pre; assuming the Qwen2 pre-tokenizer",
            f.path().display()
        ),
        Some(MetaValue::Str(p)) if p == "qwen2" => {}
        Some(v) => {
            return Err(err(
                "tokenizer.ggml.pre",
                format!("{v:?} is not supported; kiln implements the 'qwen2' pre-tokenizer"),
            ))
        }
    }
    let strings = |key: &str| -> Result<&Vec<String>, ModelError> {
        match f.get(key) {
            Some(MetaValue::Array(MetaArray::Str(v))) => Ok(v),
            None => Err(err(key, "missing".into())),
            Some(v) => Err(err(
                key,
                format!("must be an array of strings, got {}", v.type_name()),
            )),
        }
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types = match f.get("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(MetaValue::Array(a)) if a.len() == tokens.len() => a.to_i64s().ok_or_else(|| {
            err(
                "tokenizer.ggml.token_type",
                "must be an array of integers".into(),
            )
        })?,
        Some(v) => {
            return Err(err(
                "tokenizer.ggml.token_type",
                format!(
                    "must be an array of {} integers (one per token), got {}",
                    tokens.len(),
                    match v {
                        MetaValue::Array(a) => format!("{} of {}", a.len(), v.type_name()),
                        _ => v.type_name(),
                    }
                ),
            ))
        }
    };
    if tokens.len() > u32::MAX as usize {
        return Err(err("tokenizer.ggml.tokens", "more than 2^32 tokens".into()));
    }

    // The vocabulary and merges are serialized from the metadata's strings as they are, not
    // through a `serde_json::Value` tree: 300,000 small allocations freed just before the
    // tokenizer makes its own would leave the heap fragmented, ~100 MB that a Qwen
    // vocabulary's process then holds for good (resident beside the weights).
    let mut seen = HashSet::new();
    let mut vocab = Vec::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, (token, &ty)) in tokens.iter().zip(&types).enumerate() {
        if ty == TYPE_UNUSED {
            continue;
        }
        // The first id of a string wins, as a JSON vocabulary can hold each string once.
        if !seen.insert(token.as_str()) {
            continue;
        }
        vocab.push((token.as_str(), id));
        if ty == TYPE_CONTROL || ty == TYPE_USER_DEFINED {
            added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == TYPE_CONTROL,
            }));
        }
    }
    drop(seen);
    let merges: Vec<(&str, &str)> = merges
        .iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => Ok((a, b)),
            _ => Err(err(
                "tokenizer.ggml.merges",
                format!("merge #{i} {m:?} is not two tokens separated by one space"),
            )),
        })
        .collect::<Result<_, _>>()?;
    let byte_level = json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false
    });
    let tokenizer_json = TokenizerJson {
        version: "1.0",
        truncation: None,
        padding: None,
        added_tokens: added,
        normalizer: json!({"type": "NFC"}),
        pre_tokenizer: json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": false},
            byte_level,
        ]}),
        post_processor: byte_level.clone(),
        decoder: byte_level,
        model: BpeJson {
            kind: "BPE",
            dropout: None,
            unk_token: None,
            continuing_subword_prefix: "",
            end_of_word_suffix: "",
            fuse_unk: false,
            byte_fallback: false,
            ignore_merges: false,
            vocab: Vocab(&vocab),
            merges,
        },
    };
    let bytes = serde_json::to_vec(&tokenizer_json).expect("a JSON value serializes");
    drop(tokenizer_json);
    drop(vocab);
    let tokenizer = Tokenizer::from_json(&bytes).map_err(|source| ModelError::Tokenizer {
        context: format!(
            "{}: cannot build the tokenizer from tokenizer.ggml.*",
            f.path().display()
        ),
        source,
    })?;
    let token_text = |key: &str| {
        f.get(key)
            .and_then(MetaValue::as_u64)
            .and_then(|id| tokens.get(id as usize))
            .cloned()
    };
    let template = match f.get("tokenizer.chat_template") {
        None => None,
        Some(MetaValue::Str(t)) => Some(t.clone()),
        Some(v) => {
            return Err(err(
                "tokenizer.chat_template",
                format!("must be a string, got {}", v.type_name()),
            ))
        }
    };
    Ok(Some(tokenizer.with_chat_template(
        template,
        token_text("tokenizer.ggml.bos_token_id"),
        token_text("tokenizer.ggml.eos_token_id"),
    )))
}

/// `tokenizer.json`, as [`from_gguf`] writes it (the fields in its order).
#[derive(serde::Serialize)]
struct TokenizerJson<'a> {
    version: &'static str,
    truncation: Option<()>,
    padding: Option<()>,
    added_tokens: Vec<Value>,
    normalizer: Value,
    pre_tokenizer: Value,
    post_processor: Value,
    decoder: Value,
    model: BpeJson<'a>,
}

/// Its byte-level BPE model; the merges as `[a, b]` pairs.
#[derive(serde::Serialize)]
struct BpeJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    dropout: Option<()>,
    unk_token: Option<()>,
    continuing_subword_prefix: &'static str,
    end_of_word_suffix: &'static str,
    fuse_unk: bool,
    byte_fallback: bool,
    ignore_merges: bool,
    vocab: Vocab<'a>,
    merges: Vec<(&'a str, &'a str)>,
}

/// The vocabulary as a JSON object `{token: id}`, in id order.
struct Vocab<'a>(&'a [(&'a str, usize)]);

impl Serialize for Vocab<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (token, id) in self.0 {
            m.serialize_entry(token, id)?;
        }
        m.end()
    }
}
