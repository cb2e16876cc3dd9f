#!/usr/bin/env bash
# Fuzzes kiln's readers of untrusted files with cargo-fuzz (libFuzzer), SECONDS per target:
#   scripts/fuzz.sh SECONDS [TARGET...]
# Targets: safetensors_header shard_index config_json cache_entry tokenizer_file gguf_header
# (default: all).
# Needs the nightly toolchain (rustup toolchain install nightly) and cargo-fuzz
# (cargo install cargo-fuzz). The corpus grows in fuzz/corpus/<target>/ (seeded from the real
# fixtures on first use); a crash leaves its input in fuzz/artifacts/<target>/ and fails the
# script. Prints, per target, the inputs tried and the corpus size.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}"
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(safetensors_header shard_index config_json cache_entry tokenizer_file gguf_header)
fi
cargo +nightly fuzz --version >/dev/null 2>&1 || {
  echo "cargo-fuzz on the nightly toolchain is needed: rustup toolchain install nightly && cargo install cargo-fuzz" >&2
  exit 2
}

export KILN_FIXTURES="$PWD/tests/fixtures"
export KILN_GGUF_FIXTURES="$PWD/tests/gguf"
corpus=fuzz/corpus
# Seeds from the real fixtures, once per target (kept between runs, like the corpus it grows
# into).
for t in "${targets[@]}"; do
  if [ ! -d "$corpus/$t" ]; then
    cargo +nightly run -q --release --manifest-path fuzz/Cargo.toml -p kiln-fuzz-seeds -- "$corpus"
    break
  fi
done
cargo +nightly fuzz build -O --fuzz-dir fuzz >/dev/null

status=0
for t in "${targets[@]}"; do
  log="fuzz/artifacts/$t.log"
  mkdir -p "fuzz/artifacts/$t" "$corpus/$t"
  echo "== $t: ${secs}s" >&2
  # -max_len: room for the seeds (a 460 KB checkpoint) plus growth; -rss_limit_mb: an input
  # that makes kiln allocate without bound is a bug too.
  if cargo +nightly fuzz run -O --fuzz-dir fuzz "$t" "$corpus/$t" -- \
      -max_total_time="$secs" -max_len=600000 -rss_limit_mb=2048 -timeout=20 \
      -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result="CRASH (input in fuzz/artifacts/$t/, log in $log)"
    status=1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  echo "$t: $result; $runs inputs tried in ${secs}s; corpus $(ls "$corpus/$t" | wc -l) files" >&2
done
exit $status
