#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test in the workspace.
# Installs what the tests need that a fresh machine may lack: a C compiler (CPU backend) and
# NVRTC from the `nvidia-cuda-nvrtc-cu12` wheel in a local virtualenv (CUDA compile tests).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v "${CC:-cc}" >/dev/null 2>&1; then
  echo "installing a C compiler (gcc) for the CPU backend" >&2
  as_root apt-get update -qq && as_root apt-get install -y -qq gcc
fi

NVRTC_VERSION=12.8.93   # matches cudarc's pinned cuda-12080 feature
venv=.venv-nvrtc
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import nvidia.cuda_nvrtc" 2>/dev/null; then
  echo "installing NVRTC (nvidia-cuda-nvrtc-cu12==$NVRTC_VERSION) into $venv" >&2
  if ! python3 -m venv "$venv" 2>/dev/null; then
    as_root apt-get update -qq && as_root apt-get install -y -qq python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q "nvidia-cuda-nvrtc-cu12==$NVRTC_VERSION"
fi
KILN_NVRTC_LIB="$("$venv/bin/python" -c 'import os, nvidia.cuda_nvrtc as m; print(os.path.join(list(m.__path__)[0], "lib", "libnvrtc.so.12"))')"
export KILN_NVRTC_LIB

cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --release
