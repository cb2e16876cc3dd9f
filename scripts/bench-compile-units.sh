#!/usr/bin/env bash
# Compile parallelism (issue 27) in one command, for docs/benchmarks.md:
#
#   bash scripts/bench-compile-units.sh                                # this checkout
#   BASELINE=/path/to/old/kiln bash scripts/bench-compile-units.sh     # and a binary to compare
#
# For each binary, backend (cpu; cuda where KILN_NVRTC_LIB names NVRTC, as scripts/test.sh sets
# it) and model ($MODELS), $ROUNDS rounds, the binaries interleaved so that drift hits each
# alike: `kiln compile --no-cache --json` at --threads 1 and at --threads 16. Prints one row per
# run: the compile's wall ms and CPU seconds (user + system of kiln and every compiler child,
# from /usr/bin/time: the steady measure on a loaded machine), the units, the critical path
# (longest unit), the available parallelism (sum of unit times / longest), the modelled
# speedup at 16 threads (kiln's list schedule over the run's unit times, as `kiln bench
# compile` models it; 1-thread rows only), kiln's peak RSS (compare 16 threads with 1), and
# the artifact digest (the same for every thread count). Unit times are wall clock: run it on
# a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
MODELS=${MODELS:-qwen3-0.6b qwen3-8b}
ARCH=${ARCH:-sm_90}
OUT=${OUT:-bench-out/compile-units}
mkdir -p "$OUT"

cargo build --release -q -p kiln-cli
bins=("new=$PWD/target/release/kiln")
if [ -n "${BASELINE:-}" ]; then bins=("base=$BASELINE" "${bins[@]}"); fi
backends=(cpu)
if [ -n "${KILN_NVRTC_LIB:-}" ]; then backends+=(cuda); fi

echo "| build | backend | model | threads | wall ms | CPU s | units | critical path ms | available parallelism | modelled speedup at 16 | peak RSS MB | digest |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for round in $(seq 1 "$ROUNDS"); do
  for backend in "${backends[@]}"; do
    for model in $MODELS; do
      for threads in 1 16; do
        for b in "${bins[@]}"; do
          name=${b%%=*} bin=${b#*=}
          tag="$name-$backend-$model-t$threads-r$round"
          extra=()
          if [ "$backend" = cuda ]; then extra=(--arch "$ARCH"); fi
          cache=$(mktemp -d)
          KILN_CACHE_DIR=$cache /usr/bin/time -o "$OUT/$tag.time" -f "%U %S" \
            "$bin" compile --model "$model" --backend "$backend" "${extra[@]}" \
            --threads "$threads" --no-cache --json >"$OUT/$tag.json"
          rm -rf "$cache"
          python3 - "$OUT/$tag.json" "$OUT/$tag.time" "$name" "$backend" "$model" "$threads" <<'EOF'
import json, sys
report, times, name, backend, model, threads = sys.argv[1:]
r = json.load(open(report))
ms = [u["compile_ms"] for u in r["units"] if u.get("compile_ms") is not None]
def makespan(unit_ms, t):  # kiln_compile::modelled_makespan_ms
    free = [0.0] * max(1, min(t, len(unit_ms)))
    for m in unit_ms:
        free[free.index(min(free))] += m
    return max(free)
cpu = sum(float(x) for x in open(times).read().split()[-2:])
crit = max(ms) if ms else 0.0
# Unit times of a run with several threads include waiting for a core: model from 1 thread.
shape = (f"{crit:.0f} | {sum(ms) / crit:.1f} | {makespan(ms, 1) / makespan(ms, 16):.1f}"
         if ms and threads == "1" else "— | — | —")
print(f"| {name} | {backend} | {model} | {threads} | {r['compile_ms']:.0f} | {cpu:.2f} | {len(ms)} "
      f"| {shape} | {r['peak_rss_mb']:.0f} | `{r['artifact_digest'][:12]}` |")
EOF
        done
      done
    done
  done
done
