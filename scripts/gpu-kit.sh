#!/usr/bin/env bash
# Packs .gpu-kit/ for scripts/gpu-check.sh on a GPU machine without a Rust toolchain or network
# (the `device` machine): the release `kiln` binary and CUDA test binary built here, and the
# fixtures the GPU tests read. .gpu-kit/ is git-ignored; name it in the device run's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
kit=.gpu-kit
rm -rf "$kit"
mkdir -p "$kit/fixtures"

cargo build --release -p kiln-cli
tests=$(cargo test --release -p kiln-cuda --test cuda --no-run --message-format=json |
  python3 -c 'import json, sys
for m in map(json.loads, sys.stdin):
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda":
        print(m["executable"])')
cp target/release/kiln "$kit/kiln"
cp "$tests" "$kit/cuda-tests"
strip "$kit/kiln" "$kit/cuda-tests"

fixtures=${KILN_FIXTURES:-tests/fixtures}
for f in tiny-qwen3 tiny-qwen3-sharded tiny-qwen3-bf16; do
  cp -r "$fixtures/$f" "$kit/fixtures/"
done
git rev-parse HEAD >"$kit/commit"
du -sh "$kit"
