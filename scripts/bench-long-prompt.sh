#!/usr/bin/env bash
# Prefill per token at a long prompt against a 128-token one (issues 24 and 25: "a 1536-token
# prompt: prefill per token <= 1.3x that at 128"), for quantized and bf16 weights, in one
# command:
#
#   bash scripts/bench-long-prompt.sh                               # this checkout
#   BASELINE=/path/to/old/kiln bash scripts/bench-long-prompt.sh    # and a binary to compare
#   DTYPES="q4_0 q8_0 q4_k bf16" LONG=1536 ROUNDS=3 THREADS=2 bash scripts/bench-long-prompt.sh
#   KV_DTYPE=f32 DTYPES="q4_0 q8_0" bash scripts/bench-long-prompt.sh  # --kv-dtype for every run
#
# For each binary, weight dtype and round it runs `kiln bench decode --model $MODEL --threads
# $THREADS --weight-dtype D --tokens 2` at a 128-token and a $LONG-token prompt; rounds
# interleave the binaries so that drift on a shared machine hits each alike. With PROFILE=1
# the long runs also print `KILN_PROFILE`'s table (in $OUT/*.log): the attention's share.
# Results: $OUT/*/decode.json and a Markdown table on stdout. Wall clock: run it on a quiet
# machine.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-2}
MODEL=${MODEL:-qwen3-0.6b}
THREADS=${THREADS:-2}
DTYPES=${DTYPES:-q4_0 bf16}
LONG=${LONG:-1536}
OUT=${OUT:-bench-out/long-prompt}
mkdir -p "$OUT"
# --kv-dtype for every run (a BASELINE binary must know the flag); unset: each binary's default.
KV=()
if [ -n "${KV_DTYPE:-}" ]; then KV=(--kv-dtype "$KV_DTYPE"); fi

cargo build --release -q -p kiln-cli
configs=()
if [ -n "${BASELINE:-}" ]; then
  [ -x "$BASELINE" ] || { echo "BASELINE=$BASELINE is not an executable" >&2; exit 1; }
  configs+=("baseline|$BASELINE")
fi
configs+=("this|target/release/kiln")

for round in $(seq 1 "$ROUNDS"); do
  for c in "${configs[@]}"; do
    IFS='|' read -r label bin <<<"$c"
    for dtype in $DTYPES; do
      for prompt in 128 "$LONG"; do
        dir="$OUT/$label-r$round-$dtype-p$prompt"
        echo "[$label r$round] $dtype, prompt $prompt" >&2
        profile=0
        [ "$prompt" = "$LONG" ] && profile=${PROFILE:-0}
        KILN_PROFILE=$profile KILN_CACHE_DIR="$OUT/cache-$label" "$bin" bench decode \
          --model "$MODEL" --threads "$THREADS" --weight-dtype "$dtype" --prompt-len "$prompt" \
          --tokens 2 "${KV[@]}" --out "$dir" >"$dir.out" 2>"$dir.log" ||
          { echo "failed (see $dir.log)" >&2; exit 1; }
      done
    done
  done
done

python3 - "$OUT" "$ROUNDS" "$LONG" "$DTYPES" "${configs[@]}" <<'EOF'
import json, os, sys
out, rounds, long_len, dtypes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split()
labels = [c.split("|")[0] for c in sys.argv[5:]]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"CPU: {cpu}, {os.cpu_count()} cores\n")
print(f"| binary | round | weights | prefill 128 ms | per token | prefill {long_len} ms | per token | {long_len} vs 128 per token |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for label in labels:
    for dtype in dtypes:
        for r in range(1, rounds + 1):
            d = {p: json.load(open(os.path.join(out, f"{label}-r{r}-{dtype}-p{p}", "decode.json")))["prefill_ms"]
                 for p in (128, long_len)}
            a, b = d[128] / 128, d[long_len] / long_len
            print(f"| {label} | {r} | {dtype} | {d[128]:.0f} | {a:.2f} ms | {d[long_len]:.0f} | {b:.2f} ms | {b / a:.2f}x |")
EOF
