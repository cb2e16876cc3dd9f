//! The embedded tokenizer against the Python `tokenizers` reference encodings.
mod common;
use kiln_models::{StreamDecoder, Tokenizer};

fn reference() -> serde_json::Value {
    let p = common::fixtures();
    serde_json::from_str(
        &std::fs::read_to_string(p.join("qwen3-tokenizer/reference/tokenize.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn every_reference_case_encodes_and_decodes() {
    let tok = Tokenizer::embedded_qwen().unwrap();
    let cases = reference();
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 27);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ids = tok.encode(c["text"].as_str().unwrap()).unwrap();
        assert_eq!(ids, want, "case {name}: ids");
        assert_eq!(
            tok.decode(&ids).unwrap(),
            c["decoded"].as_str().unwrap(),
            "case {name}: decoded"
        );
        // Streaming token by token gives the same text, never half a character.
        let mut s = StreamDecoder::default();
        let streamed: String = ids.iter().map(|&i| s.push(&tok, i).unwrap()).collect();
        assert_eq!(
            streamed,
            c["decoded"].as_str().unwrap(),
            "case {name}: streamed"
        );
    }
}

#[test]
fn chat_markup_uses_the_special_tokens() {
    let tok = Tokenizer::embedded_qwen().unwrap();
    let ids = tok.encode(&Tokenizer::chat_prompt("Hello")).unwrap();
    assert_eq!(ids[0], 151644);
    assert!(ids.contains(&151645));
    assert_eq!(tok.token_id("<|im_end|>"), Some(151645));
}
