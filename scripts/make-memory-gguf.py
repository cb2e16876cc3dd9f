#!/usr/bin/env python3
"""Writes qwen3-0.6b-shaped GGUF files with random weights, to measure `kiln run`'s peak memory
against the file size (issue 24: peak RSS <= 1.15x the file):

  python3 -m venv .venv-gguf && .venv-gguf/bin/pip install numpy==2.4.6 gguf==0.19.0
  .venv-gguf/bin/python scripts/make-memory-gguf.py OUT_DIR [q8_0 q4_0 q4_k_m q5_k_m]

The weights are random blocks written directly in the file's byte layout (random quants, small
finite f16 scales): memory depends on the tensor types and shapes only, and writing blocks
is seconds where quantizing 600M floats is minutes. "q4_k_m" mixes types as llama.cpp's
Q4_K_M does for this shape (no output.weight: token_embd in Q6_K; attn_v and ffn_down in Q6_K
in the first and last eighth of the layers and every third layer between, Q4_K elsewhere), so
its memory is that of a real Q4_K_M file without llama.cpp's quantizer; "q5_k_m" the same mix
with Q5_K where Q4_K_M has Q4_K (llama.cpp's Q5_K_M). The tokenizer is the
real Qwen3 one (tests/gguf/qwen3-tokenizer.gguf.gz).
"""
import gzip
import os
import sys
import tempfile

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# qwen3-0.6b (crates/kiln-models/src/presets.rs)
VOCAB, HIDDEN, INTER, LAYERS, HEADS, KV, HEAD_DIM = 151936, 1024, 3072, 28, 16, 8, 128
FILE_TYPE = {"q8_0": 7, "q4_0": 2, "q4_k_m": 15, "q5_k_m": 17}
RNG = np.random.default_rng(0)


def f16_scales(n, scale):
    return (RNG.uniform(0.5, 1.0, n) * scale).astype(np.float16).view(np.uint8).reshape(n, 2)


def blocks(qtype, rows, cols):
    """`rows` x `cols` random values in `qtype`'s blocks: uint8 [rows, bytes per row]."""
    elems, size = gguf.GGML_QUANT_SIZES[qtype]
    n = rows * cols // elems
    b = RNG.integers(0, 256, (n, size), dtype=np.uint8)
    if qtype in (T.Q8_0, T.Q4_0):  # d first
        b[:, 0:2] = f16_scales(n, 0.02 / (127 if qtype == T.Q8_0 else 8))
    elif qtype == T.Q4_K:  # d, dmin, then 6-bit scales and mins
        b[:, 0:2] = f16_scales(n, 0.02 / 15 / 63)
        b[:, 2:4] = f16_scales(n, 0.02 / 63)
    elif qtype == T.Q5_K:  # as Q4_K: d, dmin, then 6-bit scales and mins
        b[:, 0:2] = f16_scales(n, 0.02 / 31 / 63)
        b[:, 2:4] = f16_scales(n, 0.02 / 63)
    elif qtype == T.Q6_K:  # ql, qh, int8 scales, then d last
        b[:, size - 2:] = f16_scales(n, 0.02 / 32 / 127)
    else:
        raise ValueError(qtype)
    return b.reshape(rows, cols // elems * size)


def more_bits(layer):
    """llama.cpp's use_more_bits: the layers whose attn_v/ffn_down Q4_K_M keeps in Q6_K."""
    return layer < LAYERS // 8 or layer >= 7 * LAYERS // 8 or (layer - LAYERS // 8) % 3 == 2


def matrix_type(kind, name, layer):
    if kind == "q8_0":
        return T.Q8_0
    if kind == "q4_0":
        return T.Q4_0
    if name == "token_embd":
        return T.Q6_K
    if name in ("attn_v", "ffn_down") and more_bits(layer):
        return T.Q6_K
    return T.Q5_K if kind == "q5_k_m" else T.Q4_K


def copy_tokenizer(w):
    with gzip.open(os.path.join(ROOT, "tests", "gguf", "qwen3-tokenizer.gguf.gz")) as f:
        data = f.read()
    with tempfile.NamedTemporaryFile(suffix=".gguf") as tmp:
        tmp.write(data)
        tmp.flush()
        r = gguf.GGUFReader(tmp.name)
        for field in r.fields.values():
            if not field.name.startswith("tokenizer."):
                continue
            vtype = field.types[0]
            if vtype == gguf.GGUFValueType.ARRAY:
                sub = field.types[1]
                if sub == gguf.GGUFValueType.STRING:
                    val = [bytes(field.parts[i]) for i in field.data]
                else:
                    val = [field.parts[i][0].item() for i in field.data]
                w.add_key_value(field.name, val, vtype, sub_type=sub)
            elif vtype == gguf.GGUFValueType.STRING:
                w.add_key_value(field.name, bytes(field.parts[-1]).decode(), vtype)
            else:
                w.add_key_value(field.name, field.parts[-1][0].item(), vtype)


def write(path, kind):
    w = gguf.GGUFWriter(path, "qwen3")
    w.add_name(f"qwen3-0.6b shape, random {kind}")
    w.add_block_count(LAYERS)
    w.add_context_length(40960)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(INTER)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(FILE_TYPE[kind])
    copy_tokenizer(w)

    def matrix(name, layer, rows, cols):
        qtype = matrix_type(kind, name.split(".")[-1], layer)
        full = name if layer < 0 else f"blk.{layer}.{name}"
        w.add_tensor(f"{full}.weight", blocks(qtype, rows, cols), raw_dtype=qtype)

    def norm(name, n):
        w.add_tensor(name, (1.0 + 0.1 * RNG.standard_normal(n)).astype(np.float32))

    matrix("token_embd", -1, VOCAB, HIDDEN)
    for layer in range(LAYERS):
        p = f"blk.{layer}"
        norm(f"{p}.attn_norm.weight", HIDDEN)
        matrix("attn_q", layer, HEADS * HEAD_DIM, HIDDEN)
        matrix("attn_k", layer, KV * HEAD_DIM, HIDDEN)
        matrix("attn_v", layer, KV * HEAD_DIM, HIDDEN)
        matrix("attn_output", layer, HIDDEN, HEADS * HEAD_DIM)
        norm(f"{p}.attn_q_norm.weight", HEAD_DIM)
        norm(f"{p}.attn_k_norm.weight", HEAD_DIM)
        norm(f"{p}.ffn_norm.weight", HIDDEN)
        matrix("ffn_gate", layer, INTER, HIDDEN)
        matrix("ffn_up", layer, INTER, HIDDEN)
        matrix("ffn_down", layer, HIDDEN, INTER)
    norm("output_norm.weight", HIDDEN)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    out = sys.argv[1]
    kinds = sys.argv[2:] or list(FILE_TYPE)
    os.makedirs(out, exist_ok=True)
    for kind in kinds:
        path = os.path.join(out, f"qwen3-0.6b-{kind}.gguf")
        write(path, kind)
        print(path, os.path.getsize(path))


if __name__ == "__main__":
    main()
