#!/usr/bin/env bash
# The CPU kernels' benchmark table (issue 25), in one command, for docs/benchmarks.md:
#
#   bash scripts/bench-cpu-isa.sh                      # this checkout, AVX2 forced and AVX-512
#   BASELINE=/path/to/old/kiln bash scripts/bench-cpu-isa.sh   # and a binary to compare with
#
# For each configuration — the baseline binary if given, this checkout with the AVX2 kernels
# forced (KILN_CPU_ISA=avx2), and this checkout's default (AVX-512 where the CPU has it) — it
# runs `kiln bench decode --model $MODEL --threads $THREADS` with f32 and bf16 weights
# (128-token prompt, 64 tokens), bf16 with 16- and 1536-token prompts ($LONG; 16 tokens: prefill
# per token at 1536 against 128, decode at 1536 positions against 16), and the cold compile
# (`kiln compile --no-cache`). Rounds interleave the configurations so that drift on a shared
# machine hits each alike; every run is listed. The bench measures the FMA peak (at the vector
# width the kernels are compiled for) and the memory bandwidth in the same run. Results:
# $OUT/*.json and a Markdown table on stdout. Run it on a quiet machine: the numbers are
# wall-clock.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
MODEL=${MODEL:-qwen3-0.6b}
THREADS=${THREADS:-2}
OUT=${OUT:-bench-out/cpu-isa}
LONG=${LONG:-1536} # the long prompt
mkdir -p "$OUT"

cargo build --release -q -p kiln-cli
new=target/release/kiln

configs=()
if [ -n "${BASELINE:-}" ]; then
  [ -x "$BASELINE" ] || { echo "BASELINE=$BASELINE is not an executable" >&2; exit 1; }
  configs+=("baseline|$BASELINE|")
fi
configs+=("avx2|$new|avx2")
if grep -qw avx512f /proc/cpuinfo; then
  configs+=("avx512|$new|avx512")
else
  echo "this CPU has no AVX-512: only the AVX2 kernels run" >&2
fi

run() { # label isa file command...: stdout to $file.out, stderr to $file.log
  local label=$1 isa=$2 file=$3
  shift 3
  echo "[$label] $*" >&2
  if [ -n "$isa" ]; then
    KILN_CPU_ISA=$isa KILN_CACHE_DIR="$OUT/cache-$label" "$@" >"$file.out" 2>"$file.log"
  else
    env -u KILN_CPU_ISA KILN_CACHE_DIR="$OUT/cache-$label" "$@" >"$file.out" 2>"$file.log"
  fi || { echo "failed: $* (see $file.log)" >&2; exit 1; }
}

for round in $(seq 1 "$ROUNDS"); do
  for c in "${configs[@]}"; do
    IFS='|' read -r label bin isa <<<"$c"
    for spec in "f32 128 64" "bf16 128 64" "bf16 16 16" "bf16 $LONG 16"; do
      read -r dtype prompt tokens <<<"$spec"
      dir="$OUT/$label-r$round-$dtype-p$prompt"
      run "$label" "$isa" "$dir" "$bin" bench decode --model "$MODEL" --threads "$THREADS" \
        --prompt-len "$prompt" --tokens "$tokens" --weight-dtype "$dtype" --out "$dir"
    done
    file="$OUT/$label-r$round-compile"
    run "$label" "$isa" "$file" "$bin" compile --model "$MODEL" --threads "$THREADS" --no-cache --json
  done
done

python3 - "$OUT" "$ROUNDS" "$LONG" "${configs[@]}" <<'EOF'
import json, os, sys
out, rounds, long_len = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
configs = [c.split("|")[0] for c in sys.argv[4:]]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
def decode(label, r, dtype, prompt):
    with open(os.path.join(out, f"{label}-r{r}-{dtype}-p{prompt}", "decode.json")) as f:
        return json.load(f)
print(f"CPU: {cpu}, {os.cpu_count()} cores; model {json.load(open(os.path.join(out, f'{configs[0]}-r1-bf16-p128', 'decode.json')))['model']}\n")
print("| kernels | round | weights | prefill 128 ms | GFLOP/s | % of FMA peak (peak, lanes) | decode tokens/s | % of bandwidth bound (GB/s) | launches/token |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for label in configs:
    for r in range(1, rounds + 1):
        for dtype in ["f32", "bf16"]:
            d = decode(label, r, dtype, 128)
            print(f"| {label} | {r} | {dtype} | {d['prefill_ms']:.0f} | {d['prefill_gflops']:.1f} | "
                  f"{d['prefill_pct_of_peak']:.0f}% ({d['fma_peak_gflops']:.0f}, {d['machine']['vector_lanes_f32']}) | "
                  f"{d['decode_tokens_per_s']:.2f} | {d['decode_pct_of_bound']:.0f}% ({d['memory_bandwidth_gb_s']:.1f}) | "
                  f"{d['launches_per_token']} |")
print(f"\n| kernels | round | prefill {long_len} ms | per token vs 128 | decode after 16 / {long_len} tokens, tokens/s | {long_len} vs 16 | the bounds' ratio | cold compile ms |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for label in configs:
    for r in range(1, rounds + 1):
        short, mid, long_ = (decode(label, r, "bf16", p) for p in (16, 128, long_len))
        per = (long_["prefill_ms"] / long_len) / (mid["prefill_ms"] / 128)
        ratio = long_["decode_tokens_per_s"] / short["decode_tokens_per_s"]
        # What the bound allows: bytes read per step at 16 positions over those at the long
        # prompt (weights, and the KV cache at the mean position), whatever each run's probe read.
        bound = (short["weight_bytes"] + short["kv_cache_bytes_read"]) / (long_["weight_bytes"] + long_["kv_cache_bytes_read"])
        with open(os.path.join(out, f"{label}-r{r}-compile.out")) as f:
            compile_ms = json.load(f)["compile_ms"]
        print(f"| {label} | {r} | {long_['prefill_ms']:.0f} | {per:.2f}x | {short['decode_tokens_per_s']:.2f} / "
              f"{long_['decode_tokens_per_s']:.2f} | {100 * ratio:.0f}% | {100 * bound:.0f}% | {compile_ms:.0f} |")
EOF
