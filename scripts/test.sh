#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test in the workspace.
# Installs what the tests need that a fresh machine may lack (a C compiler).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v "${CC:-cc}" >/dev/null 2>&1; then
  echo "installing a C compiler (gcc) for the CPU backend" >&2
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq gcc; else sudo apt-get update -qq && sudo apt-get install -y -qq gcc; fi
fi

cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --release
