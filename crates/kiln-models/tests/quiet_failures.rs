//! Issue 28, defect 11: things kiln got silently wrong, one test each — a file, key or token
//! it ignored, mistook or dropped without a word.
mod common;

use common::*;
use kiln_models::weights::{Checkpoint, INDEX_FILE};
use kiln_models::{ModelError, ModelSource, Sampling, StreamDecoder, Tokenizer};
use serde_json::{json, Value};

fn config_error(patch: Value) -> String {
    let mut v = fixture_config();
    for (k, x) in patch.as_object().unwrap() {
        v[k] = x.clone();
    }
    match kiln_models::QwenConfig::from_json(&v.to_string()) {
        Ok(_) => panic!("{patch} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn generation_config_eos_ids_replace_the_configs_as_in_transformers() {
    let d = copy_fixture("tiny-qwen3");
    let source = ModelSource::Dir(d.path().to_path_buf());
    assert_eq!(source.config().unwrap().eos_token_ids, vec![2]);
    // Qwen3 instruct: eos [<|im_end|>, <|endoftext|>] in generation_config.json only.
    std::fs::write(
        d.path().join("generation_config.json"),
        json!({"eos_token_id": [19, 85], "bos_token_id": 1}).to_string(),
    )
    .unwrap();
    assert_eq!(source.config().unwrap().eos_token_ids, vec![19, 85]);
    // Absent there: the config's stay.
    std::fs::write(d.path().join("generation_config.json"), "{}").unwrap();
    assert_eq!(source.config().unwrap().eos_token_ids, vec![2]);
    // An id past the vocabulary, or a broken file, is an error naming the file and the key.
    std::fs::write(
        d.path().join("generation_config.json"),
        json!({"eos_token_id": [2, 256]}).to_string(),
    )
    .unwrap();
    let e = source.config().unwrap_err().to_string();
    assert!(
        e.contains("generation_config.json") && e.contains("eos_token_id") && e.contains("256"),
        "{e}"
    );
    std::fs::write(d.path().join("generation_config.json"), "{").unwrap();
    let e = source.config().unwrap_err().to_string();
    assert!(
        e.contains("generation_config.json") && e.contains("JSON"),
        "{e}"
    );
}

#[test]
fn special_token_ids_past_the_vocabulary_and_a_null_activation_are_refused() {
    for k in ["eos_token_id", "bos_token_id", "pad_token_id"] {
        let e = config_error(json!({ k: 256 }));
        assert!(e.contains(k) && e.contains("256"), "{e}");
        let e = config_error(json!({ k: [1, 300] }));
        assert!(e.contains(k) && e.contains("300"), "{e}");
    }
    let e = config_error(json!({"hidden_act": null}));
    assert!(e.contains("hidden_act") && e.contains("null"), "{e}");
}

#[test]
fn a_top_level_rope_theta_disagreeing_with_rope_parameters_is_refused() {
    // The fixture says 1e6 in both places.
    let e = config_error(json!({"rope_theta": 10000.0}));
    assert!(
        e.contains("rope_parameters.rope_theta")
            && e.contains("'rope_theta'")
            && e.contains("disagree"),
        "{e}"
    );
}

#[test]
fn a_tensor_named_twice_in_a_header_is_reported_under_its_own_name() {
    let d = copy_fixture("tiny-qwen3");
    let path = d.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    // The header again with `model.norm.weight` written twice (JSON readers keep one).
    let mut text = String::from("{");
    for (k, v) in &header {
        text += &format!("{}:{v},", Value::from(k.as_str()));
    }
    text += &format!("\"model.norm.weight\":{}}}", header["model.norm.weight"]);
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&path, out).unwrap();
    let e = match Checkpoint::open(d.path()) {
        Ok(_) => panic!("accepted"),
        Err(e) => e,
    };
    match &e {
        ModelError::Checkpoint { tensor, .. } => {
            assert_eq!(tensor.as_deref(), Some("model.norm.weight"), "{e}")
        }
        e => panic!("{e}"),
    }
    assert!(e.to_string().contains("twice"), "{e}");
}

#[test]
fn an_index_entry_with_a_leading_dot_slash_is_a_file_in_the_folder() {
    let d = copy_fixture("tiny-qwen3-sharded");
    let p = d.path().join(INDEX_FILE);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    for f in v["weight_map"].as_object_mut().unwrap().values_mut() {
        *f = format!("./{}", f.as_str().unwrap()).into();
    }
    std::fs::write(&p, v.to_string()).unwrap();
    let ck = Checkpoint::open(d.path()).unwrap();
    ck.check(&kiln_models::QwenConfig::from_file(&d.path().join("config.json")).unwrap())
        .unwrap();
}

#[test]
fn non_finite_logits_are_an_error_not_token_zero_forever() {
    let (prompt, _) = reference("tiny-qwen3", "p1");
    let d = copy_fixture("tiny-qwen3");
    rewrite_safetensors(&d.path().join("model.safetensors"), |ts| {
        let norm = ts.iter_mut().find(|t| t.0 == "model.norm.weight").unwrap();
        norm.3 = f32::NAN.to_le_bytes().repeat(norm.3.len() / 4);
    });
    let mut m = load(d.path()).unwrap();
    let e = match m.generate(&prompt, 4, &Sampling::default(), &[], |_| {}) {
        Ok(g) => panic!("generated {:?}", g.generated_ids),
        Err(e) => e,
    };
    assert!(matches!(e, ModelError::NonFinite(_)), "{e}");
    assert!(e.to_string().contains("not finite"), "{e}");
}

/// The Qwen tokenizer cut to its first `vocab` ids.
fn small(vocab: u32) -> Tokenizer {
    Tokenizer::from_json(&kiln_models::testing::small_qwen_tokenizer_json(vocab)).unwrap()
}

#[test]
fn a_stream_ending_inside_a_character_shows_what_decoding_shows() {
    let tok = Tokenizer::embedded_qwen().unwrap();
    // A character whose bytes are in more than one token: a generation that stops after the
    // first.
    let ids = ["🦀", "𝔘", "ꙮ", "𓀀"]
        .iter()
        .map(|c| tok.encode(c).unwrap())
        .find(|ids| ids.len() > 1)
        .expect("a character split over tokens");
    let first = ids[..1].to_vec();
    let whole = tok.decode(&first).unwrap();
    assert!(whole.contains('\u{FFFD}'), "{whole:?}");
    let mut s = StreamDecoder::default();
    let streamed = s.push(&tok, first[0]).unwrap() + &s.finish(&tok).unwrap();
    assert_eq!(streamed, whole);
    assert_eq!(s.finish(&tok).unwrap(), "", "finish gives the rest once");
}

#[test]
fn ids_without_a_token_show_as_replacement_characters() {
    let tok = small(300);
    let known = tok.encode("hi").unwrap();
    let mut ids = known.clone();
    ids.insert(1, 100_000);
    assert_eq!(tok.unknown_ids(&ids), vec![100_000]);
    let text = tok.decode(&ids).unwrap();
    assert_eq!(text.matches('\u{FFFD}').count(), 1, "{text:?}");
    assert_eq!(text.replace('\u{FFFD}', ""), tok.decode(&known).unwrap());
}

#[test]
fn a_prompt_character_without_a_token_is_an_error_naming_it() {
    // The first 100 ids hold no byte of "é" (two bytes, 0xC3 0xA9).
    let tok = small(100);
    assert!(tok.encode("hello").is_ok());
    let e = tok.encode("hé llo").unwrap_err().to_string();
    assert!(e.contains("'é'") && e.contains("U+00E9"), "{e}");
    // The full tokenizer covers every byte.
    Tokenizer::embedded_qwen()
        .unwrap()
        .encode("hé llo")
        .unwrap();
}

#[test]
fn chat_needs_the_chat_tokens() {
    Tokenizer::embedded_qwen()
        .unwrap()
        .check_chat_tokens()
        .unwrap();
    let mut v: Value =
        serde_json::from_slice(&kiln_models::testing::small_qwen_tokenizer_json(300)).unwrap();
    v["added_tokens"]
        .as_array_mut()
        .unwrap()
        .retain(|t| t["content"] != "<|im_start|>");
    let tok = Tokenizer::from_json(v.to_string().as_bytes()).unwrap();
    let e = tok.check_chat_tokens().unwrap_err().to_string();
    assert!(e.contains("<|im_start|>") && e.contains("--chat"), "{e}");
}
