#!/usr/bin/env bash
# Decode of several kiln binaries on the same GGUF files, interleaved round by round (a binary
# per run, so a minute of bus contention hits all of them alike), each run with KILN_PROFILE=1:
# the tokens/s and bandwidth probe of `kiln bench decode`, the kernels' wall time per decode
# step (the profile's mean over the runs after the prefill), and its "fastest of each step" per
# step (each step's fastest launch over the run's tokens, summed: what a token costs when no
# launch is disturbed), with the executor's work between launches beside it, and a token's wall
# time outside its kernels (1000 / tokens/s less the kernels' ms: binding a run, sizing its
# slots, downloading the logits, sampling). Binaries without
# those profile lines (before branch decodewall) show "-".
#
#   bash scripts/decode-compare.sh [--rounds N] [--types Q4_0,Q8_0] [--tokens 64]
#        [--prompt-len 128] [--dir /tmp/kiln-llama-compare] BIN [BIN ...]
# e.g. bash scripts/decode-compare.sh --rounds 3 /work/bin-f06a7b6/kiln target/release/kiln
set -euo pipefail
rounds=3 types=Q4_0,Q8_0 tokens=64 prompt=128 dir=/tmp/kiln-llama-compare threads=2
bins=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --types) types=$2; shift 2 ;;
    --tokens) tokens=$2; shift 2 ;;
    --prompt-len) prompt=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) bins+=("$1"); shift ;;
  esac
done
[ ${#bins[@]} -gt 0 ] || { echo "name at least one kiln binary" >&2; exit 1; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "| round | file | binary | decode tok/s | bandwidth GB/s | kernels ms/token | outside kernels ms/token | fastest launches ms/token | between launches ms/token | load |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for r in $(seq "$rounds"); do
  for t in ${types//,/ }; do
    f="$dir/qwen3-0.6b-shape-seed600-$t.gguf"
    [ -f "$f" ] || { echo "no $f (scripts/llama-compare.sh makes the files)" >&2; exit 1; }
    for b in "${bins[@]}"; do
      log=$(KILN_PROFILE=1 "$b" bench decode --model "$f" --threads "$threads" \
        --prompt-len "$prompt" --tokens "$tokens" --out "$out" 2>&1) || { echo "$log" >&2; exit 1; }
      rate=$(grep -o 'decode [0-9.]* tokens/s' <<<"$log" | cut -d' ' -f2)
      bw=$(grep -o 'bandwidth [0-9.]* GB/s' <<<"$log" | cut -d' ' -f2)
      # the runs after the first (the prefill): one per decode step
      per=$(grep -o 'later ones [0-9.]* ms each' <<<"$log" | cut -d' ' -f3) || true
      fast=$(grep -o 'fastest of each step: [0-9.]* ms of launches + [0-9.]* ms' <<<"$log" |
        awk '{print $5, $10}') || true
      # a token's wall time less its kernels: the executor before and after the launches
      # (binding, slot sizes, the logits' download) and the sampling on the host
      outside=$([ -n "$per" ] && awk -v r="$rate" -v k="$per" 'BEGIN { printf "%.3f", 1000 / r - k }') || true
      echo "| $r | $t | $b | $rate | $bw | ${per:--} | ${outside:--} | ${fast% *} | ${fast#* } | $(cut -d' ' -f1 /proc/loadavg) |" |
        sed 's/|  |  |/| - | - |/'
    done
  done
done
