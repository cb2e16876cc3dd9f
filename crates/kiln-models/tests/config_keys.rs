//! Every config key that changes the math is implemented as transformers reads it or rejected
//! with an error naming the key and its value; the published Qwen configs load unchanged.
mod common;

use common::*;
use kiln_models::config::Arch;
use kiln_models::{presets, weight_shapes, QwenConfig};
use serde_json::{json, Value};

/// Qwen/Qwen2.5-0.5B `config.json` as published (revision 060db64).
const QWEN25_05B: &str = r#"{
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151643,
  "hidden_act": "silu",
  "hidden_size": 896,
  "initializer_range": 0.02,
  "intermediate_size": 4864,
  "max_position_embeddings": 32768,
  "max_window_layers": 24,
  "model_type": "qwen2",
  "num_attention_heads": 14,
  "num_hidden_layers": 24,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 32768,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.1",
  "use_cache": true,
  "use_mrope": false,
  "use_sliding_window": false,
  "vocab_size": 151936
}"#;

/// Qwen/Qwen2.5-1.5B-Instruct `config.json` as published: `max_window_layers` (21) is below the
/// depth (28), harmless because `use_sliding_window` is false.
const QWEN25_15B_INSTRUCT: &str = r#"{
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "hidden_act": "silu",
  "hidden_size": 1536,
  "initializer_range": 0.02,
  "intermediate_size": 8960,
  "max_position_embeddings": 32768,
  "max_window_layers": 21,
  "model_type": "qwen2",
  "num_attention_heads": 12,
  "num_hidden_layers": 28,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000.0,
  "sliding_window": 32768,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.43.1",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
}"#;

/// Qwen/Qwen3-0.6B `config.json` as published.
const QWEN3_06B: &str = r#"{
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "head_dim": 128,
  "hidden_act": "silu",
  "hidden_size": 1024,
  "initializer_range": 0.02,
  "intermediate_size": 3072,
  "max_position_embeddings": 40960,
  "max_window_layers": 28,
  "model_type": "qwen3",
  "num_attention_heads": 16,
  "num_hidden_layers": 28,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 151936
}"#;

fn parse(v: &Value) -> Result<QwenConfig, String> {
    QwenConfig::from_json(&v.to_string()).map_err(|e| e.to_string())
}

/// The architecture dimensions of a config, to compare with a preset.
fn dims(c: &QwenConfig) -> (Arch, [usize; 7], bool, bool) {
    (
        c.arch,
        [
            c.vocab_size,
            c.hidden_size,
            c.intermediate_size,
            c.num_layers,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
        ],
        c.tie_word_embeddings,
        c.attention_bias,
    )
}

#[test]
fn published_qwen_configs_load_and_match_the_presets() {
    for (text, preset) in [
        (QWEN25_05B, "qwen2.5-0.5b"),
        (QWEN25_15B_INSTRUCT, "qwen2.5-1.5b"),
        (QWEN3_06B, "qwen3-0.6b"),
    ] {
        let c = QwenConfig::from_json(text).unwrap_or_else(|e| panic!("{preset}: {e}"));
        let p = presets::preset(preset).unwrap();
        assert_eq!(dims(&c), dims(&p), "{preset}");
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.weight_dtype, kiln_models::WeightDtype::BF16);
        assert!(!c.o_proj_bias());
    }
    // The same configs as transformers 5 saves them: `dtype`, `rope_parameters`, and
    // `layer_types` spelled out, `sliding_window` nulled.
    let mut v: Value = serde_json::from_str(QWEN25_15B_INSTRUCT).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("torch_dtype");
    o.remove("rope_theta");
    o.remove("rope_scaling");
    o.insert("dtype".into(), json!("bfloat16"));
    o.insert(
        "rope_parameters".into(),
        json!({"rope_theta": 1000000.0, "rope_type": "default"}),
    );
    o.insert("layer_types".into(), json!(vec!["full_attention"; 28]));
    o.insert("sliding_window".into(), Value::Null);
    let c = parse(&v).unwrap();
    assert_eq!(dims(&c), dims(&presets::preset("qwen2.5-1.5b").unwrap()));
    assert_eq!(c.rope_theta, 1e6);
}

#[test]
fn keys_that_change_the_math_are_rejected_with_key_and_value() {
    let cases: Vec<(Value, &[&str])> = vec![
        (json!({"hidden_act": "gelu"}), &["hidden_act", "gelu"]),
        (
            json!({"hidden_act": "gelu_pytorch_tanh"}),
            &["hidden_act", "gelu_pytorch_tanh"],
        ),
        (
            json!({"hidden_activation": "relu"}),
            &["hidden_activation", "relu"],
        ),
        (
            json!({"rope_scaling": {"type": "yarn", "factor": 4.0,
                "original_max_position_embeddings": 32768}}),
            &["rope_scaling.type", "yarn"],
        ),
        (
            json!({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
            &["rope_scaling.rope_type", "linear"],
        ),
        (
            json!({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}),
            &["rope_scaling.rope_type", "dynamic"],
        ),
        (
            json!({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}),
            &["rope_parameters.rope_type", "llama3"],
        ),
        (
            json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6,
                "partial_rotary_factor": 0.5}}),
            &["partial_rotary_factor", "0.5"],
        ),
        (
            json!({"partial_rotary_factor": 0.25}),
            &["partial_rotary_factor", "0.25"],
        ),
        (
            json!({"layer_types": null, "use_sliding_window": true, "sliding_window": 4096,
                "max_window_layers": 1}),
            &[
                "use_sliding_window",
                "sliding_window",
                "4096",
                "max_window_layers",
            ],
        ),
        (
            json!({"layer_types": ["full_attention", "sliding_attention"]}),
            &["layer_types[1]", "sliding_attention"],
        ),
        (
            json!({"layer_types": ["full_attention"]}),
            &["layer_types", "1 entries", "num_hidden_layers is 2"],
        ),
        (
            json!({"quantization_config": {"quant_method": "awq", "bits": 4}}),
            &["quantization_config", "awq"],
        ),
        (
            json!({"dtype": "int8", "torch_dtype": "int8"}),
            &["dtype", "int8"],
        ),
        (
            json!({"dtype": "bfloat16", "torch_dtype": "float32"}),
            &["dtype", "torch_dtype", "bfloat16", "float32", "disagree"],
        ),
        (
            json!({"model_type": "qwen2"}),
            &["model_type", "qwen2", "Qwen3ForCausalLM"],
        ),
        (json!({"eos_token_id": "2"}), &["eos_token_id", "\"2\""]),
        (
            json!({"num_key_value_heads": 3}),
            &["num_key_value_heads (3)"],
        ),
        (json!({"head_dim": 31}), &["head_dim (31)", "even"]),
        (json!({"rms_norm_eps": -1.0}), &["rms_norm_eps", "-1"]),
        (
            json!({"tie_word_embeddings": "yes"}),
            &["tie_word_embeddings", "yes"],
        ),
        (json!({"attention_bias": 1}), &["attention_bias", "1"]),
        (
            json!({"hidden_size": 1u64 << 40}),
            &["hidden_size", "1099511627776"],
        ),
    ];
    for (patch, needles) in cases {
        let mut v = fixture_config();
        for (k, x) in patch.as_object().unwrap() {
            v[k] = x.clone();
        }
        let e = parse(&v)
            .err()
            .unwrap_or_else(|| panic!("{patch} was accepted"));
        for n in needles {
            assert!(e.contains(n), "{patch}: error lacks '{n}': {e}");
        }
    }
}

#[test]
fn float_values_no_kernel_could_compute_with_are_rejected_naming_the_key() {
    // rms_norm_eps 1e39 is infinite in f32 (its kernels once failed to compile with `inff`);
    // 1e-50 is zero there; a RoPE base below 1 makes inv_freq overflow f32.
    let cases: Vec<(Value, &[&str])> = vec![
        (
            json!({"rms_norm_eps": 1e39}),
            &["rms_norm_eps", "1e+39", "no larger than 1"],
        ),
        (
            json!({"rms_norm_eps": 1e-50}),
            &["rms_norm_eps", "out of range"],
        ),
        (json!({"rms_norm_eps": 2.0}), &["rms_norm_eps", "2"]),
        (
            json!({"rope_parameters": {"rope_theta": 1e-300, "rope_type": "default"}, "rope_theta": 1e-300}),
            &["rope_theta", "1e-300", "below 1"],
        ),
    ];
    for (patch, needles) in cases {
        let mut v = fixture_config();
        for (k, x) in patch.as_object().unwrap() {
            v[k] = x.clone();
        }
        let e = parse(&v)
            .err()
            .unwrap_or_else(|| panic!("{patch} was accepted"));
        for n in needles {
            assert!(e.contains(n), "{patch}: error lacks '{n}': {e}");
        }
    }
    // The values published checkpoints use stay accepted.
    for eps in [1e-5, 1e-6, 1e-12] {
        let mut v = fixture_config();
        v["rms_norm_eps"] = eps.into();
        assert_eq!(parse(&v).unwrap().rms_norm_eps, eps);
    }
}

#[test]
fn accepted_spellings_mean_what_transformers_means() {
    let with = |patch: Value| {
        let mut v = fixture_config();
        for (k, x) in patch.as_object().unwrap() {
            if x.is_null() && k.starts_with('-') {
                v.as_object_mut().unwrap().remove(&k[1..]);
            } else {
                v[k] = x.clone();
            }
        }
        parse(&v).unwrap_or_else(|e| panic!("{patch}: {e}"))
    };
    // SiLU under its other transformers name.
    with(json!({"hidden_act": "swish"}));
    // A window that no layer uses: use_sliding_window false, or every layer below
    // max_window_layers, or layer_types saying full attention.
    with(json!({"use_sliding_window": false, "sliding_window": 4096, "max_window_layers": 0}));
    with(
        json!({"use_sliding_window": true, "sliding_window": 4096, "max_window_layers": 2, "-layer_types": null}),
    );
    with(json!({"use_sliding_window": true, "sliding_window": 4096, "max_window_layers": 0}));
    // Default RoPE in every spelling; a non-empty rope_scaling replaces rope_parameters, and
    // the theta inside the dict is used; a top-level one must then say the same (a
    // disagreement is an error: `quiet_failures.rs`).
    assert_eq!(
        with(json!({"rope_scaling": {"type": "default"}, "rope_theta": 5e5})).rope_theta,
        5e5
    );
    assert_eq!(
        with(json!({"rope_parameters": {"rope_theta": 2e6}, "rope_theta": 2e6})).rope_theta,
        2e6
    );
    assert_eq!(
        with(json!({"rope_parameters": {"rope_theta": 2e6}, "-rope_theta": null})).rope_theta,
        2e6
    );
    assert_eq!(
        with(json!({"rope_scaling": {}, "rope_theta": 1e6})).rope_theta,
        1e6
    );
    assert_eq!(
        with(json!({"-rope_parameters": null, "-rope_theta": null})).rope_theta,
        10000.0
    );
    // dtype: float16 weights are held in f32 (exact), bfloat16 stays bfloat16.
    assert_eq!(
        with(json!({"dtype": "float16", "torch_dtype": "float16"})).weight_dtype,
        kiln_models::WeightDtype::F32
    );
    assert_eq!(
        with(json!({"-dtype": null, "torch_dtype": "bfloat16"})).weight_dtype,
        kiln_models::WeightDtype::BF16
    );
    // Defaults of Qwen3Config: head_dim 128, num_key_value_heads 32 when absent (null: MHA).
    let c =
        with(json!({"-head_dim": null, "num_attention_heads": 32, "-num_key_value_heads": null}));
    assert_eq!((c.head_dim, c.num_kv_heads), (128, 32));
    assert_eq!(with(json!({"num_key_value_heads": null})).num_kv_heads, 4);
    // Qwen2 has no head_dim default: hidden_size // num_attention_heads.
    let c = with(
        json!({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "-head_dim": null}),
    );
    assert_eq!(c.head_dim, 16);
    assert!(c.attention_bias && !c.o_proj_bias());
}

#[test]
fn qwen3_attention_bias_covers_o_proj_as_in_transformers() {
    let mut v = fixture_config();
    v["attention_bias"] = true.into();
    let c = parse(&v).unwrap();
    let names: Vec<String> = weight_shapes(&c).into_iter().map(|(n, _)| n).collect();
    for p in ["q_proj", "k_proj", "v_proj", "o_proj"] {
        let n = format!("model.layers.1.self_attn.{p}.bias");
        assert!(names.contains(&n), "{n} missing");
    }
    // tiny-qwen3 plus q/k/v biases: without the o_proj bias the checkpoint does not fit.
    let d = copy_fixture("tiny-qwen3");
    std::fs::write(d.path().join("config.json"), v.to_string()).unwrap();
    let st = d.path().join("model.safetensors");
    let (q, kv) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
    rewrite_safetensors(&st, |ts| {
        for l in 0..c.num_layers {
            let p = |n: &str| format!("model.layers.{l}.self_attn.{n}.bias");
            ts.push(zeros_f32(&p("q_proj"), q));
            ts.push(zeros_f32(&p("k_proj"), kv));
            ts.push(zeros_f32(&p("v_proj"), kv));
        }
    });
    let check = || {
        kiln_models::weights::Checkpoint::open(d.path())
            .and_then(|ck| ck.check(&c))
            .map_err(|e| e.to_string())
    };
    let e = check().unwrap_err();
    assert!(
        e.contains("tensor 'model.layers.0.self_attn.o_proj.bias' not found"),
        "{e}"
    );
    rewrite_safetensors(&st, |ts| {
        for l in 0..c.num_layers {
            ts.push(zeros_f32(
                &format!("model.layers.{l}.self_attn.o_proj.bias"),
                c.hidden_size,
            ));
        }
    });
    check().unwrap();
}

#[test]
fn weight_bytes_and_params_agree_with_the_weight_list() {
    let mut configs: Vec<QwenConfig> = presets::preset_names()
        .into_iter()
        .map(|n| presets::preset(n).unwrap())
        .collect();
    let mut v = fixture_config();
    configs.push(parse(&v).unwrap());
    v["attention_bias"] = true.into();
    v["tie_word_embeddings"] = false.into();
    configs.push(parse(&v).unwrap());
    // Every weight dtype whose blocks the config's rows hold whole.
    let configs = configs.into_iter().flat_map(|c| {
        kiln_models::WeightDtype::ALL
            .into_iter()
            .filter(move |w| c.hidden_size % w.dtype().block_elems() == 0)
            .map(move |w| QwenConfig {
                weight_dtype: w,
                ..c.clone()
            })
    });
    for c in configs {
        let shapes = weight_shapes(&c);
        let params: u64 = shapes
            .iter()
            .map(|(_, s)| s.iter().product::<usize>() as u64)
            .sum();
        let held = |s: &[usize]| {
            kiln_models::model::weight_dtype(s, c.weight_dtype)
                .storage_bytes(s.iter().product::<usize>()) as u64
        };
        let bytes: u64 = shapes.iter().map(|(_, s)| held(s)).sum();
        assert_eq!(c.num_params(), params, "{c:?}");
        assert_eq!(kiln_models::model::weight_count(&c), shapes.len() as u64);
        assert_eq!(c.weight_bytes(), bytes, "{c:?}");
        // A tied table is held twice: rows for the gather, the head's layout for the products.
        let table = held(&[c.vocab_size, c.hidden_size]);
        let twice = if c.tie_word_embeddings { table } else { 0 };
        assert_eq!(c.held_weight_bytes(), bytes + twice, "{c:?}");
    }
}
