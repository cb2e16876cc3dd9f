//! The token-bytes table `kiln run` decodes its output with once the tokenizer is dropped
//! (`kiln_models::Detokenizer`) against the tokenizer's own decode: every id, random id
//! sequences (characters split across tokens, ids without a token), streaming, and the
//! fallback for a tokenizer whose decoder is not byte-level.

use kiln_models::gguf::{tokenizer::from_gguf, GgufFile};
use kiln_models::{Decode, Detokenizer, StreamDecoder, Tokenizer};

fn table(tok: &Tokenizer) -> Detokenizer {
    let d = Detokenizer::new(tok.clone());
    assert!(
        matches!(d, Detokenizer::Table(_)),
        "a byte-level tokenizer gets a table"
    );
    d
}

/// Every id up to `ids` (and past the vocabulary), and 2,000 random sequences of up to 12
/// ids (a few of them with no token), decode alike; so do the unknown ids and the size.
fn agrees_with(tok: &Tokenizer, ids: u32) {
    let d = table(tok);
    for id in 0..ids + 8 {
        assert_eq!(
            d.decode(&[id]).unwrap(),
            tok.decode(&[id]).unwrap(),
            "id {id}"
        );
    }
    assert_eq!(d.vocab_size(), tok.vocab_size());
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..2000 {
        let n = 1 + next() % 12;
        let seq: Vec<u32> = (0..n)
            .map(|_| {
                let r = next();
                if r % 50 == 0 {
                    ids + (r >> 8) as u32 % 1000
                } else {
                    (r >> 8) as u32 % ids
                }
            })
            .collect();
        assert_eq!(
            d.decode(&seq).unwrap(),
            tok.decode(&seq).unwrap(),
            "{seq:?}"
        );
        assert_eq!(d.unknown_ids(&seq), tok.unknown_ids(&seq), "{seq:?}");
    }
}

#[test]
fn the_embedded_tokenizers_table_decodes_every_id_as_it_does() {
    agrees_with(&Tokenizer::embedded_qwen().unwrap(), 151_669);
}

#[test]
fn a_gguf_tokenizers_table_decodes_every_id_as_it_does() {
    // The file's padded vocabulary: its [PADn] ids have no token.
    let dir = tempfile::tempdir().unwrap();
    let f = GgufFile::open(&kiln_models::testing::tokenizer_gguf_in(dir.path())).unwrap();
    agrees_with(&from_gguf(&f).unwrap().unwrap(), 151_936);
}

#[test]
fn characters_split_across_tokens_stream_whole() {
    let tok = Tokenizer::embedded_qwen().unwrap();
    let d = table(&tok);
    let text = "Grüße, 世界! 🦀𝔘ꙮ𓀀 — naïve café ½ «ok» 😀😀";
    let ids = tok.encode(text).unwrap();
    // Some character's bytes are spread over more than one token.
    assert!(
        ids.iter()
            .any(|&i| d.decode(&[i]).unwrap().contains('\u{FFFD}')),
        "{ids:?}"
    );
    let mut by_table = StreamDecoder::default();
    let mut by_tokenizer = StreamDecoder::default();
    let mut streamed = String::new();
    for &id in &ids {
        let piece = by_table.push(&d, id).unwrap();
        assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
        assert_eq!(piece, by_tokenizer.push(&tok, id).unwrap());
        streamed += &piece;
    }
    assert_eq!(by_table.finish(&d).unwrap(), "");
    assert_eq!(streamed, text);
    assert_eq!(d.decode(&ids).unwrap(), text);
}

#[test]
fn a_tokenizer_without_a_byte_level_decoder_is_kept_whole() {
    let mut json: serde_json::Value =
        serde_json::from_slice(&kiln_models::testing::small_qwen_tokenizer_json(300)).unwrap();
    // Fuse joins the tokens' strings as they are: no per-token bytes to tabulate.
    json["decoder"] = serde_json::json!({"type": "Fuse"});
    let tok = Tokenizer::from_json(&serde_json::to_vec(&json).unwrap()).unwrap();
    let d = Detokenizer::new(tok.clone());
    assert!(matches!(d, Detokenizer::Tokenizer(_)));
    let ids = [71, 72, 220, 400];
    assert_eq!(d.decode(&ids).unwrap(), tok.decode(&ids).unwrap());
    assert_eq!(d.unknown_ids(&ids), vec![400]);
}

#[test]
fn a_model_id_past_the_vocabulary_size_is_in_the_table() {
    let mut json: serde_json::Value =
        serde_json::from_slice(&kiln_models::testing::small_qwen_tokenizer_json(300)).unwrap();
    json["added_tokens"] = serde_json::json!([]);
    // The vocabulary's last token moved from id 299 to 5000: 300 tokens, ids up to 5000.
    let vocab = json["model"]["vocab"].as_object_mut().unwrap();
    let last = vocab
        .iter()
        .find(|(_, id)| id.as_u64() == Some(299))
        .map(|(t, _)| t.clone())
        .unwrap();
    vocab[&last] = 5000.into();
    let tok = Tokenizer::from_json(&serde_json::to_vec(&json).unwrap()).unwrap();
    let d = table(&tok);
    assert!(!d.decode(&[5000]).unwrap().is_empty());
    for id in [0, 1, 298, 299, 300, 4999, 5000, 5001] {
        assert_eq!(
            d.decode(&[id]).unwrap(),
            tok.decode(&[id]).unwrap(),
            "id {id}"
        );
    }
    assert_eq!(d.unknown_ids(&[299, 5000, 7]), vec![299]);
    assert_eq!(d.vocab_size(), tok.vocab_size());
}
