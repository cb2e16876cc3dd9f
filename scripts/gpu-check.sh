#!/usr/bin/env bash
# The GPU checks of the CUDA backend, as one run on a GPU machine (the `device` tool):
#   here:   bash scripts/gpu-kit.sh
#   device: bash scripts/gpu-check.sh [tests|bench|all]     (carry: .gpu-kit)
# `tests` (~2 min) runs the GPU tests (interpreter property tests, fixtures, cpu vs cuda on
# qwen3-0.6b); `bench` (~5 min) runs `kiln bench compile` at 1-16 threads (cuda and cpu) and
# `kiln bench decode` on cuda for qwen3-0.6b and qwen3-8b. Everything lands in
# $OUT/gpu-check.log and $OUT/gpu-results.tgz (or ./gpu-results without $OUT).
# Each step has a timeout so that one hang cannot eat the machine's time.
set -u
cd "$(dirname "$0")/.."
phase=${1:-all}
kit=$PWD/.gpu-kit
[ -x "$kit/kiln" ] || { echo "no $kit/kiln: run scripts/gpu-kit.sh first and carry .gpu-kit" >&2; exit 2; }
out=${OUT:-$PWD/gpu-results}
mkdir -p "$out"
res=$(mktemp -d)
log="$out/gpu-check.log"
export KILN_FIXTURES=$kit/fixtures KILN_CACHE_DIR=$res/cache
step() { echo "== $* ($(date +%T))" | tee -a "$log"; }
run() {
  local limit=$1
  shift
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  echo "-> exit ${PIPESTATUS[0]}" | tee -a "$log"
}

step "machine (kit built from $(cat "$kit/commit" 2>/dev/null))"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  nproc
  grep -m1 'model name' /proc/cpuinfo
  ls /usr/local/cuda/lib64/libnvrtc.so* 2>&1
  command -v cc g++
} 2>&1 | tee -a "$log"

if [ "$phase" = tests ] || [ "$phase" = all ]; then
  step "GPU tests (the emulated ones ran in CI)"
  run 240 "$kit/cuda-tests" --skip emulated
  step "kiln run on cuda"
  run 90 "$kit/kiln" run --model qwen3-0.6b --backend cuda --prompt "Hello, my name is" \
    --max-new-tokens 16 --json
fi
if [ "$phase" = bench ] || [ "$phase" = all ]; then
  step "compile bench, cuda sm_90"
  run 150 "$kit/kiln" bench compile --model qwen3-0.6b --backend cuda --arch sm_90 \
    --threads 1,2,4,8,16 --repeat 2 --out "$res/compile-cuda"
  step "compile bench, cpu"
  run 150 "$kit/kiln" bench compile --model qwen3-0.6b --threads 1,2,4,8,16 --repeat 2 \
    --out "$res/compile-cpu"
  step "decode bench, qwen3-0.6b on cuda"
  run 90 "$kit/kiln" bench decode --model qwen3-0.6b --backend cuda --out "$res/decode-qwen3-0.6b"
  step "decode bench, qwen3-8b on cuda"
  run 180 "$kit/kiln" bench decode --model qwen3-8b --backend cuda --out "$res/decode-qwen3-8b"
fi
step done
tar czf "$out/gpu-results.tgz" -C "$res" --exclude cache .
