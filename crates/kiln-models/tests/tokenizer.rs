//! The embedded tokenizer against the Python `tokenizers` reference encodings.
use kiln_models::testing::TokenizeCase;
use kiln_models::Tokenizer;

#[test]
fn every_reference_case_encodes_and_decodes() {
    let tok = Tokenizer::embedded_qwen().unwrap();
    let cases = TokenizeCase::read_all();
    assert_eq!(cases.len(), 27);
    for c in &cases {
        c.check(&tok);
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
