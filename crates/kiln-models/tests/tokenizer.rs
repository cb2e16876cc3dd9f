//! The embedded tokenizer against the Python `tokenizers` reference encodings.
use kiln_models::{StreamDecoder, Tokenizer};

fn reference() -> serde_json::Value {
    let p = kiln_models::testing::fixtures();
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

#[test]
fn the_embedded_tokenizer_is_the_reference_one() {
    // tests/fixtures keeps the reference tokenizer.json only here, gzipped (see KILN.md there).
    use std::io::Read;
    let gz = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/qwen3-tokenizer.json.gz"),
    )
    .unwrap();
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut json)
        .unwrap();
    assert_eq!(
        blake3::hash(&json).to_hex().to_string(),
        "b0cb923fc505fdf0a53f0287654fa26577d3f333d4134350da0a97664b228739",
        "the embedded tokenizer is no longer the reference tokenizer.json (tests/fixtures/KILN.md)"
    );
}
