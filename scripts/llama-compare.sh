#!/usr/bin/env bash
# kiln side by side with llama.cpp on the same GGUF files: decode per file type and serve at
# 1,2,4,8 streams. One command; see scripts/llama_compare.py for what it does and its options:
#   cargo build --release -p kiln-cli && bash scripts/llama-compare.sh [--dir /tmp/kiln-llama-compare]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/llama_compare.py "$@"
