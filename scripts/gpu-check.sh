#!/usr/bin/env bash
# The GPU checks of the CUDA backend, as one run on a GPU machine (the `device` tool):
#   here:   bash scripts/gpu-kit.sh
#   device: bash scripts/gpu-check.sh [PHASE,...]     (carry: .gpu-kit; default all = tests,bench)
# `tests` (~2-3 min) runs the GPU tests (interpreter property tests, fixtures, cpu vs cuda on
# qwen3-0.6b), then the small ones under compute-sanitizer (racecheck, memcheck); `bench`
# (~5 min) runs `kiln bench compile` at 1-16 threads (cuda and cpu) and `kiln bench decode`
# on cuda for qwen3-0.6b (bf16 and q4_0) and qwen3-8b. Everything lands in $OUT/gpu-check.log and
# $OUT/gpu-results.tgz (or ./gpu-results without $OUT); the bench phase ends with a summary
# (the tables for docs/benchmarks.md) that the device tool's output tail shows. Each step has
# a timeout so that one hang cannot eat the machine's time; the timeouts add up to 21 min, the
# expected total is 7-8 (`all` should fit one 600 s call; the log in $OUT survives a kill).
# Not in `all`, for a second call on the still-warm machine (`wgpu,profile`, ~4 min: make it
# only with 5 minutes of device time left): `wgpu` unpacks the Vulkan loader the kit carries,
# finds NVIDIA's Vulkan driver and runs kiln's wgpu backend on the GPU (`kiln run`, the fixture
# tests with KILN_REQUIRE_WGPU=1, `kiln bench decode`); `profile` runs one decode token of
# qwen3-0.6b under Nsight Compute (ncu): each kernel's time and DRAM throughput, what making
# decode bandwidth-bound (issue 29, step 4) starts from.
# KILN_REQUIRE_CUDA=1 (set here unless the caller sets it) makes a GPU test that finds no CUDA
# device fail instead of skipping. A dry run on a machine without a GPU
# (`KILN_REQUIRE_CUDA=0 bash scripts/gpu-check.sh`) goes through every step: the GPU tests
# skip, saying so, and the cuda run and decode steps fail with "needs an NVIDIA GPU".
set -u
cd "$(dirname "$0")/.."
phases=,${1:-all},
phases=${phases//,all,/,tests,bench,}
has() { [[ $phases == *",$1,"* ]]; }
for p in ${phases//,/ }; do
  case $p in tests | bench | wgpu | profile) ;; *) echo "unknown phase '$p': tests, bench, all (= tests,bench), wgpu, profile" >&2; exit 2 ;; esac
done
kit=$PWD/.gpu-kit
[ -x "$kit/kiln" ] || { echo "no $kit/kiln: run scripts/gpu-kit.sh first and carry .gpu-kit" >&2; exit 2; }
out=${OUT:-$PWD/gpu-results}
mkdir -p "$out"
res=$(mktemp -d)
log="$out/gpu-check.log"
export KILN_FIXTURES=$kit/fixtures KILN_CACHE_DIR=$res/cache
export KILN_REQUIRE_CUDA=${KILN_REQUIRE_CUDA-1}
step() { echo "== $* ($(date +%T))" | tee -a "$log"; }
run() {
  local limit=$1
  shift
  # -k: a step that ignores the TERM (or hangs on its way out) is killed 15 s later.
  timeout -k 15 "$limit" "$@" 2>&1 | tee -a "$log"
  echo "-> exit ${PIPESTATUS[0]}" | tee -a "$log"
}

step "machine (kit built from $(cat "$kit/commit" 2>/dev/null))"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  nproc
  grep -m1 'model name' /proc/cpuinfo
  ls /usr/local/cuda/lib64/libnvrtc.so* 2>&1
  command -v cc g++
  nvcc --version 2>/dev/null | tail -2
  # The NVRTC kiln finds, as the compile report names it.
  "$kit/kiln" compile --model qwen3-0.6b --layers 1 --backend cuda --arch sm_90 --no-cache --json |
    python3 -c 'import json, sys; print("kiln cuda compiler:", json.load(sys.stdin)["compiler"])'
} 2>&1 | tee -a "$log"

if has tests; then
  step "GPU tests (the emulated ones ran in CI)"
  run 240 "$kit/cuda-tests" --skip emulated
  # What the emulator cannot see: races between warps and out-of-bounds accesses on the GPU
  # (compute-sanitizer ran on the device's Firecracker machines, not on gVisor ones). The small
  # op cases that cover every kernel kind (warp reductions, tiles, the GEMV, writes, epilogues);
  # not the 2^24-element ones, which would take minutes under the sanitizer.
  if command -v compute-sanitizer >/dev/null 2>&1; then
    for tool in racecheck memcheck; do
      step "compute-sanitizer --tool $tool on the small GPU tests"
      run 120 compute-sanitizer --tool "$tool" --error-exitcode 1 --print-limit 20 \
        "$kit/cuda-tests" gpu_attention gpu_ops::reductions gpu_ops::matmul_layouts \
        gpu_ops::write_slice gpu_ops::norm_matmul_softmax gpu_ops::packed_outputs
    done
  fi
  step "kiln run on cuda"
  run 90 "$kit/kiln" run --model qwen3-0.6b --backend cuda --prompt "Hello, my name is" \
    --max-new-tokens 16 --json
fi
if has bench; then
  step "compile bench, cuda sm_90"
  run 150 "$kit/kiln" bench compile --model qwen3-0.6b --backend cuda --arch sm_90 \
    --threads 1,2,4,8,16 --repeat 2 --out "$res/compile-cuda"
  step "compile bench, cpu"
  run 150 "$kit/kiln" bench compile --model qwen3-0.6b --threads 1,2,4,8,16 --repeat 2 \
    --out "$res/compile-cpu"
  step "decode bench, qwen3-0.6b on cuda"
  run 90 "$kit/kiln" bench decode --model qwen3-0.6b --backend cuda --out "$res/decode-qwen3-0.6b"
  step "decode bench, qwen3-0.6b on cuda, q4_0 weights (GGML blocks read in the kernels)"
  run 90 "$kit/kiln" bench decode --model qwen3-0.6b --backend cuda --weight-dtype q4_0 \
    --out "$res/decode-qwen3-0.6b-q4_0"
  step "decode bench, qwen3-8b on cuda"
  run 180 "$kit/kiln" bench decode --model qwen3-8b --backend cuda --out "$res/decode-qwen3-8b"
fi
if has bench; then
  step "summary (the rows for docs/benchmarks.md)"
  python3 - "$res" <<'PY' 2>&1 | tee -a "$log"
import json, pathlib, sys
res = pathlib.Path(sys.argv[1])
for name in ("compile-cuda", "compile-cpu"):
    f = res / name / "compile.json"
    if not f.exists():
        print(f"{name}: no result")
        continue
    d = json.loads(f.read_text())
    m = d.get("modelled") or {}
    modelled = {r["threads"]: r["speedup"] for r in m.get("rows", [])}
    print(f"\n{name} ({d['machine']['cores']} cores, {d['machine']['cpu']}), warm cache {100 * d['warm']['ratio_to_cold']:.1f}% of cold; "
          f"{m.get('units', '?')} units, available parallelism {m.get('available_parallelism', 0):.1f}")
    print("| threads | median ms | speedup | ceiling | speedup / ceiling | modelled speedup | peak RSS MB |\n| --- | --- | --- | --- | --- | --- | --- |")
    for c in d["configs"]:
        mod = modelled.get(c["threads"])
        print(f"| {c['threads']} | {c['median_ms']:.0f} | {c['speedup']:.2f} | {c['ceiling']:.2f} | {c['speedup_vs_ceiling']:.2f} | "
              f"{'-' if mod is None else f'{mod:.2f}'} | {c['peak_rss_mb']:.0f} |")
for f in sorted(res.glob("decode-*/decode.json")):
    d = json.loads(f.read_text())
    print(f"\n{d['model']} on {d['backend']} ({d['machine']['bandwidth_from']}, {d['memory_bandwidth_gb_s']:.0f} GB/s), {d['weight_dtype']} weights: "
          f"prefill {d['prompt_len']} tokens {d['prefill_ms']:.1f} ms, decode {d['decode_tokens_per_s']:.1f} tokens/s = "
          f"{d['decode_pct_of_bound']:.1f}% of the {d['bound_tokens_per_s']:.0f} tokens/s bound, {d['launches_per_token']} launches/token, load {d['load_ms'] / 1e3:.1f} s")
PY
fi
if has wgpu; then
  step "wgpu on Vulkan: the loader from the kit, NVIDIA's Vulkan driver"
  for f in "$kit"/debs/*.deb; do dpkg -x "$f" /; done
  ldconfig
  icd=$(ls /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd*.json /usr/share/vulkan/icd.d/nvidia_icd*.json \
    /etc/vulkan/icd.d/nvidia_icd*.json 2>/dev/null | head -1)
  echo "NVIDIA Vulkan driver manifest: ${icd:-none found}" | tee -a "$log"
  [ -n "$icd" ] && export VK_DRIVER_FILES=$icd
  export WGPU_BACKEND=vulkan KILN_WGPU_ADAPTER=${KILN_WGPU_ADAPTER-nvidia} KILN_REQUIRE_WGPU=${KILN_REQUIRE_WGPU-1}
  step "kiln run on wgpu"
  run 90 "$kit/kiln" run --model qwen3-0.6b --backend wgpu --prompt "Hello, my name is" \
    --max-new-tokens 16 --json
  step "wgpu fixture tests (greedy tokens, logits within 1e-3 of transformers)"
  run 180 "$kit/wgpu-fixtures"
  step "decode bench, qwen3-0.6b on wgpu"
  run 120 "$kit/kiln" bench decode --model qwen3-0.6b --backend wgpu --out "$res/decode-wgpu-qwen3-0.6b"
  python3 - "$res" <<'PY' 2>&1 | tee -a "$log"
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("decode-wgpu-*/decode.json")):
    d = json.loads(f.read_text())
    print(f"{d['model']} on {d['backend']} ({d['machine']['bandwidth_from']}, {d['memory_bandwidth_gb_s']:.0f} GB/s): "
          f"prefill {d['prompt_len']} tokens {d['prefill_ms']:.1f} ms, decode {d['decode_tokens_per_s']:.1f} tokens/s, "
          f"{d['launches_per_token']} launches/token")
PY
fi
if has profile; then
  if command -v ncu >/dev/null 2>&1; then
    # qwen3-0.6b launches 375 kernels a token: skip the prefill and two decode tokens, then
    # measure one token's launches (each replayed by ncu for its counters).
    step "ncu: one decode token of qwen3-0.6b (bf16) on cuda, per kernel"
    run 240 ncu --clock-control none --print-units base --csv --log-file "$res/ncu-decode.csv" \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed \
      --launch-skip 1200 --launch-count 375 \
      "$kit/kiln" run --model qwen3-0.6b --backend cuda --prompt "Hello, my name is" --max-new-tokens 8
    python3 - "$res/ncu-decode.csv" <<'PY' 2>&1 | tee -a "$log"
import csv, collections, sys
rows = [r for r in csv.DictReader(l for l in open(sys.argv[1]) if l.startswith('"'))]
# Times to ns, sizes to bytes, whatever unit ncu chose.
scale = {"nsecond": 1, "usecond": 1e3, "msecond": 1e6, "second": 1e9, "byte": 1, "Kbyte": 1e3,
         "Mbyte": 1e6, "Gbyte": 1e9, "%": 1}
launch = collections.defaultdict(dict)
for r in rows:
    v = float(r["Metric Value"].replace(",", "") or 0) * scale.get(r["Metric Unit"], 1)
    launch[(r["ID"], r["Kernel Name"])][r["Metric Name"]] = v
by_kernel = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
for (_, name), m in launch.items():
    k = by_kernel[name.split("(")[0]]
    k[0] += 1
    k[1] += m.get("gpu__time_duration.sum", 0)
    k[2] += m.get("dram__bytes_read.sum", 0) + m.get("dram__bytes_write.sum", 0)
    k[3] += m.get("dram__throughput.avg.pct_of_peak_sustained_elapsed", 0)
total = sum(k[1] for k in by_kernel.values())
print(f"{len(launch)} launches, kernel time {total / 1e3:.0f} us (their sum; a token's wall time adds the gaps)")
print("| kernel | launches | us | share | DRAM GB/s | DRAM % of peak (mean) |\n| --- | --- | --- | --- | --- | --- |")
for name, (n, ns, b, pct) in sorted(by_kernel.items(), key=lambda kv: -kv[1][1])[:15]:
    print(f"| {name[:60]} | {n} | {ns / 1e3:.1f} | {100 * ns / max(total, 1):.0f}% | {b / max(ns, 1):.0f} | {pct / n:.0f} |")
PY
  else
    step "profile: no ncu on this machine"
  fi
fi
step done
tar czf "$out/gpu-results.tgz" -C "$res" --exclude cache .
