#!/usr/bin/env python3
"""Where the integer path's logit error comes from: a float64 NumPy model of the GGUF fixtures
(tests/gguf) with the activations of the int8 matmuls rounded as a scheme rounds them, measured
like tests/gguf/make.py measures llama.cpp (teacher-forced on the reference's tokens, 3 prompts
x 16 steps; max and rms of |logit - reference|).

  python3 scripts/activation-error.py            # every int8 fixture file, every scheme
  python3 scripts/activation-error.py --parts    # also: one kind of matmul quantized at a time

Needs numpy and gguf (tests/gguf/make.py's .venv-gguf has both). Schemes (per matmul, by the
weight's type; the other types are dequantized to f32 at load, as kiln does):
  kiln       per 16 values for Q8_0/Q4_0, per 32 for Q4_K/Q5_K/Q6_K (d = amax/127 in f32,
             round-half-even): the kernels' rounding (c/gemm_quant.h, c/gemm_q4k.h)
  kiln-per32 per 32, per 256 for Q4_K/Q5_K (kiln before: llama.cpp's block sizes)
  llama.cpp  q8_0 (per 32, roundf, d rounded to f16) and q8_K for the K types (per 256, d =
             -max/127 in f32): reproduces llama.cpp's recorded distance (llama-cpp-distance.json)
             to 4 digits on the Q8_0, Q4_0, Q6_K and Q5_K_M files
This is a model of the rounding, not of kiln's f32 arithmetic; the test
(crates/kiln-models/tests/gguf_fidelity.rs) measures kiln itself.
"""
import json
import os
import sys

import gguf
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
import numpy_ref  # noqa: E402

GGUF = os.path.join(ROOT, "tests", "gguf")
FILES = ["tiny-qwen3/tiny-qwen3-Q8_0.gguf", "tiny-qwen3/tiny-qwen3-Q4_0.gguf",
         "tiny-qwen3/tiny-qwen3-Q4_K_M.gguf", "tiny-qwen2/tiny-qwen2-Q8_0.gguf",
         "qwen3-256/qwen3-256-Q4_K.gguf", "qwen3-256/qwen3-256-Q4_K_M.gguf",
         "qwen3-256/qwen3-256-Q5_K_M.gguf", "qwen3-256/qwen3-256-Q6_K.gguf"]
INT8 = ("Q8_0", "Q4_0", "Q4_K", "Q5_K", "Q6_K")  # kept in blocks, on the integer path
K_TYPES = ("Q4_K", "Q5_K", "Q6_K")


def rounding(scheme, wtype):
    """(values per activation scale, rounding) of `scheme` for a weight of `wtype`."""
    if scheme == "kiln":
        return (32, "rne") if wtype in K_TYPES else (16, "rne")
    if scheme == "kiln-per32":
        return (256, "rne") if wtype in ("Q4_K", "Q5_K") else (32, "rne")
    return (256, "q8_K") if wtype in K_TYPES else (32, "q8_0")


def quantize(x, n, how):
    """x's last axis rounded to int8 per n values and scaled back."""
    b = x.astype(np.float32).reshape(-1, x.shape[-1] // n, n)
    if how == "q8_K":  # ggml's quantize_row_q8_K: iscale = -127 / (the value of largest |x|)
        mx = np.take_along_axis(b, np.abs(b).argmax(-1)[..., None], -1)
        isc = np.where(mx != 0, np.float32(-127) / np.where(mx != 0, mx, 1), 0).astype(np.float32)
        q = np.minimum(np.rint(isc * b), 127)
        d = np.where(isc != 0, np.float32(1) / np.where(isc != 0, isc, 1), 0).astype(np.float32)
        return (q * d.astype(np.float64)).reshape(x.shape)
    d = (np.abs(b).max(-1, keepdims=True) / np.float32(127)).astype(np.float32)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, 1), 0).astype(np.float32)
    v = (b * inv).astype(np.float64)
    if how == "q8_0":  # ggml_compute_fp32_to_fp16 scale, roundf (half away from zero)
        q, d = np.trunc(v + np.copysign(0.5, v)), d.astype(np.float16)
    else:  # kiln: vcvtps2dq, round half to even
        q = np.rint(v)
    return (q * d.astype(np.float64)).reshape(x.shape)


def load(path):
    r = gguf.GGUFReader(path)
    kv = {f.name: f.contents() for f in r.fields.values()}
    arch = kv["general.architecture"]
    cfg = {k: kv[f"{arch}.{v}"] for k, v in [("L", "block_count"), ("H", "attention.head_count"),
           ("KV", "attention.head_count_kv"), ("D", "attention.key_length"),
           ("eps", "attention.layer_norm_rms_epsilon"), ("theta", "rope.freq_base")]}
    W, types = {}, {}
    for t in r.tensors:
        shape = [int(x) for x in reversed(t.shape)]
        W[t.name] = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float64).reshape(shape)
        types[t.name] = t.tensor_type.name
    return cfg, W, types


def forward(cfg, W, types, ids, quantized):
    """numpy_ref's forward pass on GGUF names; `quantized(kind, wtype)`: (n, how) or None."""
    T, H, KV, D, eps = len(ids), cfg["H"], cfg["KV"], cfg["D"], cfg["eps"]
    pos, mask = np.arange(T, dtype=np.float64), np.triu(np.full((T, T), -np.inf), k=1)

    def linear(x, name, kind):
        q = quantized(kind, types[name + ".weight"]) if types[name + ".weight"] in INT8 else None
        y = (quantize(x, *q) if q else x) @ W[name + ".weight"].T
        return y + W[name + ".bias"] if name + ".bias" in W else y

    x = W["token_embd.weight"][np.asarray(ids)]
    for i in range(cfg["L"]):
        p = f"blk.{i}."
        h = numpy_ref.rms_norm(x, W[p + "attn_norm.weight"], eps)
        q = linear(h, p + "attn_q", "q/k/v").reshape(T, H, D)
        k = linear(h, p + "attn_k", "q/k/v").reshape(T, KV, D)
        v = linear(h, p + "attn_v", "q/k/v").reshape(T, KV, D)
        if p + "attn_q_norm.weight" in W:
            q = numpy_ref.rms_norm(q, W[p + "attn_q_norm.weight"], eps)
            k = numpy_ref.rms_norm(k, W[p + "attn_k_norm.weight"], eps)
        q, k = numpy_ref.rope(q, pos, cfg["theta"]), numpy_ref.rope(k, pos, cfg["theta"])
        k, v = np.repeat(k, H // KV, 1), np.repeat(v, H // KV, 1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(D) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        o = np.einsum("hts,shd->thd", s / s.sum(-1, keepdims=True), v).reshape(T, H * D)
        x = x + linear(o, p + "attn_output", "o")
        h = numpy_ref.rms_norm(x, W[p + "ffn_norm.weight"], eps)
        g = linear(h, p + "ffn_gate", "gate/up")
        x = x + linear(g / (1 + np.exp(-g)) * linear(h, p + "ffn_up", "gate/up"), p + "ffn_down", "down")
    x = numpy_ref.rms_norm(x, W["output_norm.weight"], eps)
    return linear(x, "output" if "output.weight" in W else "token_embd", "lm head")


def read_ref(path):
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        data = f.read()
    dt = {"F32": "<f4", "I32": "<i4"}
    return {n: np.frombuffer(data[i["data_offsets"][0]:i["data_offsets"][1]], dt[i["dtype"]]).reshape(i["shape"])
            for n, i in header.items() if n != "__metadata__"}


def distance(model, ref, quantized):
    worst, sq, n = 0.0, 0.0, 0
    for p in ("p1", "p2", "p3"):
        prompt, greedy = list(ref[f"{p}.prompt_ids"]), list(ref[f"{p}.greedy_ids"])
        got = forward(*model, (prompt + greedy)[:-1], quantized)[len(prompt) - 1:]
        diff = got - ref[f"{p}.step_logits"].astype(np.float64)
        worst, sq, n = max(worst, np.abs(diff).max()), sq + (diff ** 2).sum(), n + diff.size
    return worst, np.sqrt(sq / n)


def main():
    parts = "--parts" in sys.argv
    llama = {f["file"]: f["llama_cpp_max_abs_logit_diff"]
             for f in json.load(open(os.path.join(GGUF, "llama-cpp-distance.json")))["files"]}
    print("| file | scheme | max | rms | max / llama.cpp's recorded |")
    print("| --- | --- | --- | --- | --- |")
    for f in FILES:
        model, ref = load(os.path.join(GGUF, f)), read_ref(os.path.join(GGUF, f[:-5] + ".ref.safetensors"))
        rows = [(s, lambda kind, t, s=s: rounding(s, t)) for s in ("kiln", "kiln-per32", "llama.cpp")]
        if parts:
            rows += [(f"kiln-per32, {k} only", lambda kind, t, k=k: rounding("kiln-per32", t) if kind == k else None)
                     for k in ("q/k/v", "o", "gate/up", "down", "lm head")]
        for name, quantized in rows:
            m, r = distance(model, ref, quantized)
            print(f"| {f} | {name} | {m:.4f} | {r:.4f} | {m / llama[f]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
