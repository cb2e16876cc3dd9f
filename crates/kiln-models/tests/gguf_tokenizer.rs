//! The tokenizer kiln builds from a GGUF file's `tokenizer.ggml.*` metadata against the
//! `tokenizer.json` it was converted from: tests/gguf/qwen3-tokenizer.gguf.gz holds the real
//! Qwen3 tokenizer as llama.cpp's convert_hf_to_gguf.py writes it (vocabulary padded with
//! unused `[PADn]` tokens, merges as "a b" strings, added tokens as control/user-defined
//! types, the chat template).

use kiln_models::gguf::{tokenizer::from_gguf, GgufFile, MetaValue};
use kiln_models::testing::TokenizeCase;
use kiln_models::Tokenizer;

/// The fixture, decompressed into a temporary file.
fn tokenizer_gguf() -> (tempfile::TempDir, GgufFile) {
    let dir = tempfile::tempdir().unwrap();
    let f = GgufFile::open(&kiln_models::testing::tokenizer_gguf_in(dir.path())).unwrap();
    (dir, f)
}

#[test]
fn the_27_reference_cases_encode_and_decode_as_with_tokenizer_json() {
    let (_dir, f) = tokenizer_gguf();
    let tok = from_gguf(&f).unwrap().expect("the file has a tokenizer");
    let json = Tokenizer::embedded_qwen().unwrap();
    let cases = TokenizeCase::read_all();
    assert_eq!(cases.len(), 27);
    for c in &cases {
        c.check(&tok);
        assert_eq!(
            json.encode(&c.text).unwrap(),
            c.ids,
            "case {}: tokenizer.json",
            c.name
        );
    }
}

#[test]
fn every_id_and_a_long_text_agree_with_tokenizer_json() {
    let (_dir, f) = tokenizer_gguf();
    let tok = from_gguf(&f).unwrap().unwrap();
    let json = Tokenizer::embedded_qwen().unwrap();
    // Every id of the file's padded vocabulary decodes alike (the [PADn] ids to nothing, as
    // tokenizer.json has no such ids).
    let n = match f.get("tokenizer.ggml.tokens") {
        Some(MetaValue::Array(a)) => a.len() as u32,
        other => panic!("tokens: {other:?}"),
    };
    assert_eq!(n, 151936);
    for id in 0..n {
        assert_eq!(
            tok.decode(&[id]).unwrap(),
            json.decode(&[id]).unwrap(),
            "id {id}"
        );
    }
    // Prose, code, tables and non-ASCII text from the repository's docs.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for doc in [
        "README.md",
        "docs/ARCHITECTURE.md",
        "tests/fixtures/README.md",
    ] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        let ids = tok.encode(&text).unwrap();
        assert_eq!(ids, json.encode(&text).unwrap(), "{doc}");
        assert_eq!(tok.decode(&ids).unwrap(), text, "{doc}");
    }
    for special in [
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<think>",
        "</tool_call>",
    ] {
        assert_eq!(tok.token_id(special), json.token_id(special), "{special}");
    }
}

#[test]
fn the_chat_template_comes_with_the_tokenizer() {
    let (_dir, f) = tokenizer_gguf();
    let tok = from_gguf(&f).unwrap().unwrap();
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            kiln_models::testing::fixtures().join("qwen3-tokenizer/tokenizer_config.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(tok.chat_template(), config["chat_template"].as_str());
    // Qwen3's template, for one user message and no system prompt, writes the ChatML markup
    // kiln used before it read templates.
    let prompt = tok.apply_chat_template("Hi there").unwrap();
    assert_eq!(prompt, Tokenizer::chat_prompt("Hi there"));
    let ids = tok.encode(&prompt).unwrap();
    assert_eq!(ids.first(), Some(&151644));
    assert_eq!(
        f.get("tokenizer.ggml.eos_token_id")
            .and_then(MetaValue::as_u64),
        Some(151645)
    );
}

#[test]
fn a_template_that_fails_is_an_error_naming_it() {
    let tok = Tokenizer::embedded_qwen().unwrap().with_chat_template(
        Some("{{ raise_exception('no system role') }}".into()),
        None,
        None,
    );
    let e = tok.apply_chat_template("x").unwrap_err().to_string();
    assert!(
        e.contains("chat template") && e.contains("no system role"),
        "{e}"
    );
    let tok = Tokenizer::embedded_qwen().unwrap().with_chat_template(
        Some("{% for %}".into()),
        None,
        None,
    );
    let e = tok.apply_chat_template("x").unwrap_err().to_string();
    assert!(e.contains("chat template"), "{e}");
}
