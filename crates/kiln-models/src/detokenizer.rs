//! Output ids -> text without the tokenizer: the bytes of every token in one table (~2 MB for
//! a Qwen vocabulary, where the `tokenizers` BPE with its vocabulary and merge maps holds ~31
//! MB). `kiln run` encodes its prompt, keeps only this and drops the tokenizer before the
//! weights are loaded, so that the tokenizer is not part of the peak beside them.
//!
//! Exact for a byte-level BPE (the GPT-2 / Qwen family: the `ByteLevel` decoder), whose decode
//! is per token: each token's characters map back to bytes through GPT-2's byte <-> character
//! table (a token with a character outside it, an added token's text, is its own UTF-8
//! bytes), and the concatenated bytes are read as UTF-8 with U+FFFD for invalid sequences.
//! A tokenizer with another decoder is kept whole ([`Detokenizer::Tokenizer`]).

use crate::tokenizer::{Decode, Tokenizer};
use crate::ModelError;

/// Decodes output ids: a byte table when the tokenizer allows one, the tokenizer itself when not.
pub enum Detokenizer {
    Table(TokenBytes),
    /// Boxed: the tokenizer's struct is ~10x the table's.
    Tokenizer(Box<Tokenizer>),
}

impl Detokenizer {
    /// `tok`'s table when its decoder is byte-level; `tok` itself otherwise.
    pub fn new(tok: Tokenizer) -> Detokenizer {
        match TokenBytes::of(&tok) {
            Some(t) => Detokenizer::Table(t),
            None => Detokenizer::Tokenizer(Box::new(tok)),
        }
    }

    /// The ids among `ids` that have no token, each once, in order ([`Tokenizer::unknown_ids`]).
    pub fn unknown_ids(&self, ids: &[u32]) -> Vec<u32> {
        match self {
            Detokenizer::Table(t) => {
                let mut out: Vec<u32> = Vec::new();
                for &id in ids {
                    if t.bytes(id).is_none() && !out.contains(&id) {
                        out.push(id);
                    }
                }
                out
            }
            Detokenizer::Tokenizer(t) => t.unknown_ids(ids),
        }
    }

    /// Tokens in the tokenizer, its added tokens included ([`Tokenizer::vocab_size`]).
    pub fn vocab_size(&self) -> usize {
        match self {
            Detokenizer::Table(t) => t.vocab_size,
            Detokenizer::Tokenizer(t) => t.vocab_size(),
        }
    }
}

impl Decode for Detokenizer {
    fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        match self {
            Detokenizer::Table(t) => Ok(t.decode(ids)),
            Detokenizer::Tokenizer(t) => t.decode(ids),
        }
    }
}

/// The bytes of every token id of a byte-level BPE tokenizer, end to end.
pub struct TokenBytes {
    /// Every token's bytes, in id order.
    bytes: Vec<u8>,
    /// Token `id`'s bytes are `bytes[starts[id]..starts[id + 1]]`.
    starts: Vec<u32>,
    /// Whether id `id` has a token (a GGUF file's unused padding ids have none).
    known: Vec<bool>,
    vocab_size: usize,
}

impl TokenBytes {
    /// The table of `tok`, or None when its decoder is not a plain byte-level one (its decode
    /// may then depend on neighbouring tokens).
    pub fn of(tok: &Tokenizer) -> Option<TokenBytes> {
        let inner = tok.inner();
        if !matches!(
            inner.get_decoder(),
            Some(tokenizers::DecoderWrapper::ByteLevel(_))
        ) {
            return None;
        }
        let model = inner.get_model();
        let model_tokens = tokenizers::Model::get_vocab_size(model);
        let added = inner.get_added_vocabulary();
        // `Tokenizer::vocab_size`: the model's strings and the added ones, each once.
        let vocab_size = model_tokens
            + added
                .get_vocab()
                .keys()
                .filter(|s| tokenizers::Model::token_to_id(model, s).is_none())
                .count();
        // The model's ids are 0..its vocabulary size, in every tokenizer kiln has seen (its
        // added tokens after them, a GGUF file's unused padding ids left out): a table of
        // that many, unless some model id was not found below it. Then the bound is read
        // from a copy of the model's vocabulary (~3x the cost, 151,936 strings copied and
        // hashed again).
        let below = added
            .get_added_tokens_decoder()
            .keys()
            .max()
            .map_or(0, |&m| m as usize + 1)
            .max(model_tokens);
        let (t, found) = Self::up_to(inner, below, vocab_size)?;
        if found == model_tokens {
            return Some(t);
        }
        let below = tokenizers::Model::get_vocab(model)
            .into_values()
            .max()
            .map_or(0, |m| m as usize + 1)
            .max(below);
        Some(Self::up_to(inner, below, vocab_size)?.0)
    }

    /// The table of ids `0..below`, and how many of them the model has a token for.
    fn up_to(
        inner: &tokenizers::Tokenizer,
        below: usize,
        vocab_size: usize,
    ) -> Option<(TokenBytes, usize)> {
        let model = inner.get_model();
        let added = inner.get_added_vocabulary().get_added_tokens_decoder();
        let byte_of = byte_of_char();
        let mut t = TokenBytes {
            bytes: Vec::new(),
            starts: Vec::with_capacity(below + 1),
            known: Vec::with_capacity(below),
            vocab_size,
        };
        t.starts.push(0);
        let mut found = 0;
        for id in 0..u32::try_from(below).ok()? {
            // As `tokenizers::Tokenizer::id_to_token`: an added token's text first, the
            // model's token otherwise.
            let in_model = tokenizers::Model::id_to_token(model, id);
            found += usize::from(in_model.is_some());
            let token = added
                .get(&id)
                .map(|a| a.content.as_str())
                .or(in_model.as_deref());
            if let Some(token) = token {
                // As tokenizers' ByteLevel decoder: the mapped bytes when every character
                // maps, else the token's own text.
                let start = t.bytes.len();
                for c in token.chars() {
                    match byte_of(c) {
                        Some(b) => t.bytes.push(b),
                        None => {
                            t.bytes.truncate(start);
                            t.bytes.extend_from_slice(token.as_bytes());
                            break;
                        }
                    }
                }
            }
            // 4 GB of token text would be no tokenizer anyone has: refused rather than wrapped.
            t.starts.push(u32::try_from(t.bytes.len()).ok()?);
            t.known.push(token.is_some());
        }
        t.bytes.shrink_to_fit();
        Some((t, found))
    }

    /// Token `id`'s bytes; None for an id with no token.
    pub fn bytes(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        if !*self.known.get(i)? {
            return None;
        }
        Some(&self.bytes[self.starts[i] as usize..self.starts[i + 1] as usize])
    }

    /// The text of `ids`, as [`Tokenizer::decode`] gives it: an id with no token is U+FFFD,
    /// and the runs of known ids between them are decoded each on its own.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut out = String::new();
        let mut run = Vec::new();
        for (i, part) in ids.split(|&id| self.bytes(id).is_none()).enumerate() {
            if i > 0 {
                out.push(char::REPLACEMENT_CHARACTER);
            }
            run.clear();
            for &id in part {
                run.extend_from_slice(self.bytes(id).expect("split at unknown ids"));
            }
            out += &String::from_utf8_lossy(&run);
        }
        out
    }
}

/// GPT-2's byte-level alphabet read backwards: the byte a character stands for. Bytes that
/// are printable Latin-1 (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) stand for themselves; the other 68,
/// in order, are U+0100, U+0101, ...
fn byte_of_char() -> impl Fn(char) -> Option<u8> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || b >= 0xae;
    let mut shifted = [0u8; 68];
    let mut n = 0;
    for b in 0..=255u8 {
        if !printable(b as u32) {
            shifted[n] = b;
            n += 1;
        }
    }
    move |c: char| {
        let c = c as u32;
        match c {
            0..=0xff if printable(c) => Some(c as u8),
            0x100..=0x143 => Some(shifted[(c - 0x100) as usize]),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_alphabet_covers_every_byte_once() {
        let byte_of = byte_of_char();
        let mut seen = [false; 256];
        for c in (0..0x200).filter_map(char::from_u32) {
            if let Some(b) = byte_of(c) {
                assert!(!seen[b as usize], "byte {b} twice");
                seen[b as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
        // 'Ġ' is the space, 'Ċ' the newline (the Qwen vocabulary's "Ġthe", "ĊĊ").
        assert_eq!(byte_of('Ġ'), Some(b' '));
        assert_eq!(byte_of('Ċ'), Some(b'\n'));
        assert_eq!(byte_of('a'), Some(b'a'));
        assert_eq!(byte_of(' '), None);
    }
}
