#!/usr/bin/env python3
"""Makes the GGUF fixtures in tests/gguf/ (run once; the outputs are committed):

  python3 tests/gguf/make.py

Creates .venv-gguf/ at the repository root with the pinned packages below (llama-cpp-python
builds llama.cpp from its sdist with cmake: minutes, once) and re-runs itself there.

Models:
  tiny-qwen3/  the weights of tests/fixtures/tiny-qwen3 (hidden 64), and BF16 from
               tests/fixtures/tiny-qwen3-bf16
  qwen3-256/   a second tiny Qwen3 whose matrix rows are multiples of 256 (the K-quants' block),
               seeded random weights; its config.json is written beside the files. Only its
               K-quant files are kept (Q8_0 and Q4_0 are tiny-qwen3's, with the same 32-value
               blocks; its F32 file is a temporary, the source of llama.cpp's quantizer), to keep
               the fixtures small

Types: F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 are written by the `gguf` package itself (all
matrices in that type, norms in F32); Q4_K, Q5_K_M, Q6_K and Q4_K_M by llama.cpp's own quantizer
(`llama_model_quantize`, no importance matrix) from an F32 file, "Q4_K" and "Q6_K" with
`pure` (every matrix in that type; where a row is not a multiple of 256, as in tiny-qwen3,
llama.cpp falls back to a 32-block type and says so).

Reference, for each file X.gguf: X.ref.safetensors with, per prompt p1/p2/p3, `<p>.prompt_ids`,
`<p>.greedy_ids` (16 tokens, greedy, full recompute) and `<p>.step_logits` [16, vocab] (row 0:
the prompt's last position), computed by tests/fixtures/numpy_ref.py (float64) on the weights
that the `gguf` package's reader and dequantizer get from X.gguf, with the hyper-parameters
read back from X.gguf's metadata. Every step's top-2 logits are at least 2.5e-4 apart (more than
twice the tests' 1e-4 tolerance, so a run within it picks the same tokens; the smallest gap of
each file is in llama-cpp-distance.json).

Also: dequant.safetensors (for every file and tensor type in it, the first rows of one tensor
as the `gguf` package dequantizes them), quant-source.safetensors (F32 rows of qwen3-256 that
llama.cpp quantized, for kiln's reference quantizers), qwen3-tokenizer.gguf.gz (the real Qwen3
tokenizer as convert_hf_to_gguf.py writes it, metadata only). Each file is also run through
llama.cpp (teacher-forced on the reference tokens); its logits' distance from the reference is
recorded in llama-cpp-distance.json, and must be below 1e-4 for the F32 file (which checks
that llama.cpp reads the files as this script means them; with other types llama.cpp rounds
the activations to the weights' type or to 8 bits before its dot products).
"""
import ctypes
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile

PINNED = ["numpy==2.4.6", "gguf==0.19.0", "cmake==4.4.5", "llama-cpp-python==0.3.36"]
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
VENV = os.path.join(ROOT, ".venv-gguf")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def bootstrap():
    py = os.path.join(VENV, "bin", "python")
    if os.path.abspath(sys.prefix) == os.path.abspath(VENV):
        return
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2),
               CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF")
    subprocess.check_call([py, "-m", "pip", "install", "-q"] + PINNED, env=env)
    os.execv(py, [py] + sys.argv)


bootstrap()

import numpy as np  # noqa: E402
import gguf  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402
import llama_cpp  # noqa: E402

sys.dont_write_bytecode = True  # import numpy_ref without writing into tests/fixtures
sys.path.insert(0, FIXTURES)
import numpy_ref  # noqa: E402

N_NEW = 16
P1 = [1, 17, 42, 99, 3, 250, 7, 8]
P2_LEN, P2_SEED = 37, 1234
P3 = [5]
# The tests compare logits to 1e-4; tokens within that can only differ where the top two are
# closer than 2e-4.
MIN_TOP2_GAP = 2.5e-4

QWEN3_256 = dict(vocab_size=256, hidden_size=256, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64, rope_theta=1e6,
                 rms_norm_eps=1e-6, tie_word_embeddings=True, max_position_embeddings=512,
                 bos_token_id=1, eos_token_id=2)

# HF name -> GGUF name (convert_hf_to_gguf.py's, for Qwen2/Qwen3).
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf):
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, layer, rest = hf.split(".", 3)
    if rest.endswith(".bias"):
        return f"blk.{layer}.{LAYER_NAMES[rest[:-len('bias')] + 'weight'][:-len('weight')]}bias"
    return f"blk.{layer}.{LAYER_NAMES[rest]}"


def hf_name(g):
    inverse = {v: k for k, v in LAYER_NAMES.items()}
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}
    if g in top:
        return top[g]
    _, layer, rest = g.split(".", 2)
    if rest.endswith(".bias"):
        return f"model.layers.{layer}.{inverse[rest[:-len('bias')] + 'weight'][:-len('weight')]}bias"
    return f"model.layers.{layer}.{inverse[rest]}"


# ---------------------------------------------------------------- models

def tiny_qwen3():
    cfg, w = numpy_ref.load_model(os.path.join(FIXTURES, "tiny-qwen3"))
    return cfg, {k: v.astype(np.float32) for k, v in w.items()}


def tiny_qwen3_bf16_bits():
    """The bf16 fixture's weights as raw bf16 bits (uint16), by HF name."""
    path = os.path.join(FIXTURES, "tiny-qwen3-bf16", "model.safetensors")
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "BF16", name
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<u2").reshape(info["shape"])
    return out


def qwen3_256():
    """Seeded random weights: linear weights N(0, (0.2 * sqrt(64 / fan_in))^2) (the spread of
    tiny-qwen3's per input), embedding N(0, 0.2^2), norms 1 + N(0, 0.2^2)."""
    c = dict(QWEN3_256)
    rng = np.random.default_rng(256)
    h, i, d = c["hidden_size"], c["intermediate_size"], c["head_dim"]
    nh, kv = c["num_attention_heads"], c["num_key_value_heads"]

    def linear(out, inp):
        return rng.normal(0.0, 0.2 * np.sqrt(64 / inp), (out, inp)).astype(np.float32)

    def norm(n):
        return (1.0 + rng.normal(0.0, 0.2, n)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.normal(0.0, 0.2, (c["vocab_size"], h)).astype(np.float32)}
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        w[p + "input_layernorm.weight"] = norm(h)
        w[p + "self_attn.q_proj.weight"] = linear(nh * d, h)
        w[p + "self_attn.k_proj.weight"] = linear(kv * d, h)
        w[p + "self_attn.v_proj.weight"] = linear(kv * d, h)
        w[p + "self_attn.o_proj.weight"] = linear(h, nh * d)
        w[p + "self_attn.q_norm.weight"] = norm(d)
        w[p + "self_attn.k_norm.weight"] = norm(d)
        w[p + "post_attention_layernorm.weight"] = norm(h)
        w[p + "mlp.gate_proj.weight"] = linear(i, h)
        w[p + "mlp.up_proj.weight"] = linear(i, h)
        w[p + "mlp.down_proj.weight"] = linear(h, i)
    w["model.norm.weight"] = norm(h)
    config = {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "attention_bias": False,
        "hidden_act": "silu", "dtype": "float32", "head_dim": d, "hidden_size": h,
        "intermediate_size": i, "num_attention_heads": nh, "num_hidden_layers": c["num_hidden_layers"],
        "num_key_value_heads": kv, "rms_norm_eps": c["rms_norm_eps"], "rope_theta": c["rope_theta"],
        "tie_word_embeddings": True, "vocab_size": c["vocab_size"],
        "max_position_embeddings": c["max_position_embeddings"], "bos_token_id": 1, "eos_token_id": 2,
    }
    return config, w


def tiny_qwen2():
    """A Qwen2.5-shaped model: q/k/v biases, no q/k norms, head_dim = hidden / heads, and an
    untied LM head (`output.weight`). Seeded random weights as qwen3_256's, biases N(0, 0.1^2)."""
    rng = np.random.default_rng(2)
    vocab, h, i, layers, nh, kv = 256, 64, 128, 2, 4, 2
    d = h // nh

    def linear(out, inp):
        return rng.normal(0.0, 0.2 * np.sqrt(64 / inp), (out, inp)).astype(np.float32)

    def vec(n, mean, std):
        return (mean + rng.normal(0.0, std, n)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.normal(0.0, 0.2, (vocab, h)).astype(np.float32)}
    for layer in range(layers):
        p = f"model.layers.{layer}."
        w[p + "input_layernorm.weight"] = vec(h, 1.0, 0.2)
        w[p + "self_attn.q_proj.weight"] = linear(nh * d, h)
        w[p + "self_attn.q_proj.bias"] = vec(nh * d, 0.0, 0.1)
        w[p + "self_attn.k_proj.weight"] = linear(kv * d, h)
        w[p + "self_attn.k_proj.bias"] = vec(kv * d, 0.0, 0.1)
        w[p + "self_attn.v_proj.weight"] = linear(kv * d, h)
        w[p + "self_attn.v_proj.bias"] = vec(kv * d, 0.0, 0.1)
        w[p + "self_attn.o_proj.weight"] = linear(h, nh * d)
        w[p + "post_attention_layernorm.weight"] = vec(h, 1.0, 0.2)
        w[p + "mlp.gate_proj.weight"] = linear(i, h)
        w[p + "mlp.up_proj.weight"] = linear(i, h)
        w[p + "mlp.down_proj.weight"] = linear(h, i)
    w["model.norm.weight"] = vec(h, 1.0, 0.2)
    w["lm_head.weight"] = linear(vocab, h)
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "dtype": "float32", "hidden_size": h, "intermediate_size": i, "num_attention_heads": nh,
        "num_hidden_layers": layers, "num_key_value_heads": kv, "rms_norm_eps": 1e-6,
        "rope_theta": 1e6, "tie_word_embeddings": False, "vocab_size": vocab,
        "max_position_embeddings": 512, "bos_token_id": 1, "eos_token_id": 2,
        "use_sliding_window": False,
    }
    return config, w


# ---------------------------------------------------------------- writing

def bytes_to_unicode():
    """GPT-2's byte-level alphabet: byte b -> the printable character standing for it."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def add_small_tokenizer(w, cfg):
    """A byte-level BPE of 256 tokens for the 256-token models: bytes 0..253 (0xFE and 0xFF
    never occur in UTF-8 text) as ids 0..253, then " t" and "he" with their merges."""
    assert cfg["vocab_size"] == 256
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(254)] + [b2u[0x20] + "t", "he"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.NORMAL] * len(tokens))
    w.add_token_merges([b2u[0x20] + " t", "h e"])
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_chat_template(CHATML)


def add_hparams(w, cfg, name):
    w.add_name(name)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])


FILE_TYPE = {T.F32: 0, T.F16: 1, T.Q4_0: 2, T.Q4_1: 3, T.Q8_0: 7, T.Q5_0: 8, T.Q5_1: 9, T.BF16: 32}


def write_gguf(path, cfg, weights, qtype, name, bf16_bits=None):
    """Matrices in qtype (gguf's own quantizer), vectors in F32, as convert_hf_to_gguf.py lays
    them out. bf16_bits: the raw bf16 bits of every weight, when qtype is BF16."""
    w = gguf.GGUFWriter(path, cfg["model_type"])
    add_hparams(w, cfg, name)
    w.add_file_type(FILE_TYPE[qtype])
    add_small_tokenizer(w, cfg)
    for hf, a in weights.items():
        g = gguf_name(hf)
        if a.ndim == 1:
            w.add_tensor(g, a.astype(np.float32))
        elif qtype == T.BF16:
            w.add_tensor(g, bf16_bits[hf], raw_shape=a.shape, raw_dtype=T.BF16)
        elif qtype == T.F32:
            w.add_tensor(g, a.astype(np.float32))
        elif qtype == T.F16:
            w.add_tensor(g, a.astype(np.float16))
        else:
            w.add_tensor(g, gguf.quants.quantize(a.astype(np.float32), qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama_quantize(src, dst, ftype, pure):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    params.pure = pure
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize {dst}: {rc}"


# ---------------------------------------------------------------- reference

def read_gguf(path):
    """(HF config, HF-named float64 weights, {gguf name: type name}) from a GGUF file, through
    the gguf package's reader and dequantizer."""
    r = gguf.GGUFReader(path)
    kv = {f.name: f for f in r.fields.values()}

    def val(k):
        f = kv[k]
        return f.contents()

    arch = val("general.architecture")
    a = lambda k: val(f"{arch}.{k}")  # noqa: E731
    weights, types = {}, {}
    for t in r.tensors:
        shape = [int(x) for x in reversed(t.shape)]
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        weights[hf_name(t.name)] = np.asarray(values, dtype=np.float64).reshape(shape)
        types[t.name] = t.tensor_type.name
    cfg = {
        "num_hidden_layers": a("block_count"), "hidden_size": a("embedding_length"),
        "intermediate_size": a("feed_forward_length"), "num_attention_heads": a("attention.head_count"),
        "num_key_value_heads": a("attention.head_count_kv"), "head_dim": a("attention.key_length"),
        "rope_theta": a("rope.freq_base"), "rms_norm_eps": a("attention.layer_norm_rms_epsilon"),
        "model_type": arch,
        "tie_word_embeddings": "output.weight" not in types,
    }
    return cfg, weights, types


def prompts(vocab):
    return {"p1": P1, "p2": [int(x) for x in np.random.default_rng(P2_SEED).integers(0, vocab, P2_LEN)], "p3": P3}


def reference(path):
    """Greedy ids and step logits of every prompt, from the gguf-dequantized weights."""
    cfg, weights, types = read_gguf(path)
    vocab = weights["model.embed_tokens.weight"].shape[0]
    out = {}
    min_gap = np.inf
    for p, ids in prompts(vocab).items():
        new, steps = numpy_ref.greedy(cfg, weights, ids, N_NEW)
        for k, row in enumerate(steps):
            top2 = np.sort(row)[-2:]
            gap = top2[1] - top2[0]
            assert gap >= MIN_TOP2_GAP, f"{path} {p} step {k}: top-2 gap {gap:.2e}"
            min_gap = min(min_gap, float(gap))
        out[f"{p}.prompt_ids"] = np.array(ids, dtype=np.int32)
        out[f"{p}.greedy_ids"] = np.array(new, dtype=np.int32)
        out[f"{p}.step_logits"] = steps.astype(np.float32)
    return out, types, min_gap


def llama_cpp_distance(path, ref):
    """Max |llama.cpp logits - reference| over every prompt and step, llama.cpp fed the
    reference tokens (teacher forcing), and whether its own argmax agrees at every step."""
    # An f32 KV cache (llama.cpp's default is f16, which alone moves logits by ~5e-3).
    llm = llama_cpp.Llama(model_path=path, n_ctx=128, n_threads=2, n_batch=128, logits_all=True,
                          type_k=0, type_v=0, verbose=False)
    worst, same = 0.0, True
    for p in ("p1", "p2", "p3"):
        ids = [int(x) for x in ref[f"{p}.prompt_ids"]] + [int(x) for x in ref[f"{p}.greedy_ids"]]
        llm.reset()
        llm.eval(ids[:-1])
        n_prompt = len(ref[f"{p}.prompt_ids"])
        got = np.array(llm.scores[n_prompt - 1:len(ids) - 1], dtype=np.float64)
        want = ref[f"{p}.step_logits"].astype(np.float64)
        worst = max(worst, float(np.abs(got - want).max()))
        same &= bool((got.argmax(-1) == ref[f"{p}.greedy_ids"]).all())
    del llm
    return worst, same


def write_safetensors(path, tensors):
    dtypes = {np.dtype(np.float32): "F32", np.dtype(np.int32): "I32", np.dtype(np.uint8): "U8"}
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        b = a.tobytes()
        header[name] = {"dtype": dtypes[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


# ---------------------------------------------------------------- tokenizer

def looks_special(token):
    """convert_hf_to_gguf.py's does_token_look_special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<start_of_") and token.endswith(">"))
            or (token.startswith("<end_of_") and token.endswith(">")))


def write_tokenizer_gguf(path):
    """The real Qwen3 tokenizer as convert_hf_to_gguf.py writes it (get_vocab_base + SpecialVocab),
    in a metadata-only GGUF, padded to Qwen3's vocabulary of 151936."""
    with gzip.open(os.path.join(ROOT, "crates", "kiln-models", "assets", "qwen3-tokenizer.json.gz")) as f:
        tok_json = json.load(f)
    vocab_size = 151936
    reverse = {i: t for t, i in tok_json["model"]["vocab"].items()}
    added = {a["id"]: a for a in tok_json["added_tokens"]}
    reverse.update({i: a["content"] for i, a in added.items()})
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(reverse[i])
            special = added[i]["special"] or looks_special(reverse[i])
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "tokenizer.json"), "w") as f:
            json.dump(tok_json, f)
        shutil.copy(os.path.join(FIXTURES, "qwen3-tokenizer", "tokenizer_config.json"), d)
        special = gguf.SpecialVocab(d, load_merges=True, n_vocab=vocab_size)
        w = gguf.GGUFWriter(path, "qwen3")
        w.add_name("Qwen3 tokenizer (metadata only)")
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("qwen2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        special.add_to_gguf(w)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.close()
    # Deterministic bytes: no name or time in the gzip header.
    with open(path, "rb") as f, open(path + ".gz", "wb") as out, \
            gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=out, mtime=0) as g:
        shutil.copyfileobj(f, g)
    os.remove(path)


# ---------------------------------------------------------------- main

def main():
    tmp = tempfile.mkdtemp(prefix="kiln-gguf-")
    results = []  # (file, types, llama.cpp distance, llama.cpp argmax agrees)
    dequant_checks, quant_sources = {}, {}

    def finish(path):
        ref, types, min_gap = reference(path)
        write_safetensors(path[: -len(".gguf")] + ".ref.safetensors", ref)
        dist, same = llama_cpp_distance(path, ref)
        rel = os.path.relpath(path, HERE)
        results.append((rel, sorted(set(types.values())), dist, same, min_gap))
        print(f"{rel}: {sorted(set(types.values()))}; llama.cpp max |logit diff| {dist:.2e}, argmax {'same' if same else 'DIFFERS'}",
              flush=True)
        # The first rows of one tensor of each type, as gguf dequantizes them.
        r = gguf.GGUFReader(path)
        seen = set()
        for t in r.tensors:
            if t.tensor_type.name in seen or t.tensor_type == T.F32:
                continue
            seen.add(t.tensor_type.name)
            row_bytes = t.data.shape[-1] if t.data.ndim > 1 else t.data.nbytes
            rows = np.asarray(t.data).reshape(-1, row_bytes)[:4]
            values = gguf.quants.dequantize(rows, t.tensor_type)
            dequant_checks[f"{rel}|{t.name}"] = np.asarray(values, dtype=np.float32).reshape(rows.shape[0], -1)

    # tiny-qwen3
    out = os.path.join(HERE, "tiny-qwen3")
    os.makedirs(out, exist_ok=True)
    cfg, w = tiny_qwen3()
    bits = tiny_qwen3_bf16_bits()
    for q in (T.F32, T.F16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1):
        path = os.path.join(out, f"tiny-qwen3-{q.name}.gguf")
        write_gguf(path, cfg, w, q, "tiny-qwen3")
        finish(path)
    bf16_w = {k: (v.astype(np.uint32) << 16).view(np.float32) for k, v in bits.items()}
    path = os.path.join(out, "tiny-qwen3-BF16.gguf")
    write_gguf(path, cfg, bf16_w, T.BF16, "tiny-qwen3-bf16", bf16_bits=bits)
    finish(path)
    src = os.path.join(out, "tiny-qwen3-F32.gguf")
    for name, ftype, pure in (("Q4_K", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, True),
                              ("Q6_K", llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K, True),
                              ("Q4_K_M", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, False)):
        path = os.path.join(out, f"tiny-qwen3-{name}.gguf")
        llama_quantize(src, path, ftype, pure)
        finish(path)

    # tiny-qwen2: Q8_0 only (the F32 file, a temporary, checks that llama.cpp reads the Qwen2
    # layout, biases and untied head included, as make.py writes it)
    out = os.path.join(HERE, "tiny-qwen2")
    os.makedirs(out, exist_ok=True)
    config, w = tiny_qwen2()
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    src = os.path.join(tmp, "tiny-qwen2-F32.gguf")
    write_gguf(src, config, w, T.F32, "tiny-qwen2")
    ref, _, _ = reference(src)
    dist, same = llama_cpp_distance(src, ref)
    assert dist < 1e-4 and same, f"llama.cpp reads {src} differently: {dist:.2e}"
    print(f"tiny-qwen2 F32 (not kept): llama.cpp max |logit diff| {dist:.2e}", flush=True)
    path = os.path.join(out, "tiny-qwen2-Q8_0.gguf")
    write_gguf(path, config, w, T.Q8_0, "tiny-qwen2")
    finish(path)

    # qwen3-256
    out = os.path.join(HERE, "qwen3-256")
    os.makedirs(out, exist_ok=True)
    config, w = qwen3_256()
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    src = os.path.join(tmp, "qwen3-256-F32.gguf")  # not committed: see README
    write_gguf(src, config, w, T.F32, "qwen3-256")
    for name, ftype, pure in (("Q4_K", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, True),
                              ("Q6_K", llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K, True),
                              ("Q4_K_M", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, False),
                              ("Q5_K_M", llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M, False)):
        path = os.path.join(out, f"qwen3-256-{name}.gguf")
        llama_quantize(src, path, ftype, pure)
        finish(path)
    # Sources of kiln's quantizer checks: the first 8 rows of three matrices.
    for hf in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
               "model.layers.1.mlp.down_proj.weight"):
        quant_sources[gguf_name(hf)] = w[hf][:8]

    write_safetensors(os.path.join(HERE, "dequant.safetensors"), dequant_checks)
    write_safetensors(os.path.join(HERE, "quant-source.safetensors"), quant_sources)
    write_tokenizer_gguf(os.path.join(HERE, "qwen3-tokenizer.gguf"))
    shutil.rmtree(tmp)

    for rel, types, dist, same, _ in results:
        if rel.endswith("-F32.gguf"):
            assert dist < 1e-4 and same, f"llama.cpp reads {rel} differently: {dist:.2e}"
    with open(os.path.join(HERE, "llama-cpp-distance.json"), "w") as f:
        json.dump({"llama_cpp_python": llama_cpp.__version__, "gguf": gguf.__version__ if hasattr(gguf, "__version__") else "0.19.0",
                   "files": [{"file": r, "types": t, "smallest_top2_gap": g, "llama_cpp_max_abs_logit_diff": d,
                              "llama_cpp_argmax_same": s} for r, t, d, s, g in results]},
                  f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
