//! Generation at the context limit (`max_position_embeddings`): a prompt that does not fit is
//! an error before any work; a generation that fills the context stops there and keeps what it
//! generated; every generation says why it stopped.
mod common;

use common::*;
use kiln_models::{FinishReason, Sampling};

/// tiny-qwen3 with a context of `ctx` positions (the weights do not depend on it).
fn with_context(ctx: u64) -> tempfile::TempDir {
    let d = copy_fixture("tiny-qwen3");
    edit_config(d.path(), |v| v["max_position_embeddings"] = ctx.into());
    d
}

#[test]
fn generation_stops_at_the_context_limit_and_keeps_its_tokens() {
    let (prompt, greedy) = reference("tiny-qwen3", "p1"); // 8 prompt ids
    let d = with_context(12);
    let mut m = load(d.path()).unwrap();
    let mut streamed = vec![];
    let g = m
        .generate(&prompt, 16, &Sampling::default(), &[], |id| {
            streamed.push(id)
        })
        .expect("a generation that reaches the context limit is not an error");
    // 12 positions hold the 8 prompt tokens and 4 new ones: transformers' first 4.
    assert_eq!(g.generated_ids, greedy[..4]);
    assert_eq!(streamed, g.generated_ids);
    assert_eq!(g.finish_reason, FinishReason::Length);
    assert_eq!(g.step_logits.len(), 4);

    // A prompt that fills the context exactly leaves no room: nothing generated, no error.
    let d = with_context(8);
    let mut m = load(d.path()).unwrap();
    let g = m
        .generate(&prompt, 16, &Sampling::default(), &[], |_| {})
        .unwrap();
    assert!(g.generated_ids.is_empty());
    assert_eq!(g.finish_reason, FinishReason::Length);
}

#[test]
fn a_prompt_longer_than_the_context_is_an_error_before_any_work() {
    let (prompt, _) = reference("tiny-qwen3", "p1");
    let d = with_context(7);
    let mut m = load(d.path()).unwrap();
    let e = m
        .generate(&prompt, 4, &Sampling::default(), &[], |_| {})
        .err()
        .expect("8 tokens do not fit a context of 7")
        .to_string();
    assert!(
        e.contains("8 tokens") && e.contains("max_position_embeddings = 7"),
        "{e}"
    );
    assert_eq!(
        m.exe.last_run().launches,
        0,
        "nothing may run for a prompt that does not fit"
    );
    let config = kiln_models::QwenConfig::from_file(&d.path().join("config.json")).unwrap();
    assert!(config.check_prompt(&prompt).is_err());
    assert!(config.check_prompt(&prompt[..7]).is_ok());
    assert!(config.check_prompt(&[]).is_err());
}

#[test]
fn finish_reasons_say_why_generation_stopped() {
    let (prompt, greedy) = reference("tiny-qwen3", "p1");
    let mut m = load(&fixture("tiny-qwen3")).unwrap();
    let g = m
        .generate(&prompt, 3, &Sampling::default(), &[], |_| {})
        .unwrap();
    assert_eq!(g.generated_ids, greedy[..3]);
    assert_eq!(g.finish_reason, FinishReason::MaxNewTokens);

    // Stop at transformers' second greedy token.
    let g = m
        .generate(&prompt, 16, &Sampling::default(), &[greedy[1]], |_| {})
        .unwrap();
    assert_eq!(g.generated_ids, greedy[..2]);
    assert_eq!(g.finish_reason, FinishReason::Eos);

    // The stop token wins over the other limits when they coincide.
    let g = m
        .generate(&prompt, 2, &Sampling::default(), &[greedy[1]], |_| {})
        .unwrap();
    assert_eq!(g.finish_reason, FinishReason::Eos);

    let g = m
        .generate(&prompt, 0, &Sampling::default(), &[], |_| {})
        .unwrap();
    assert!(g.generated_ids.is_empty());
    assert_eq!(g.finish_reason, FinishReason::MaxNewTokens);
}
