#!/usr/bin/env bash
# The blocked attention's products over a 16-bit KV cache, f16/bf16 keys and values widened in
# registers against widened through scratch and against an f32 cache, in per-thread CPU time (a
# load on the machine hardly moves it): crates/kiln-cpu/benches/attkv.c compiled against the
# kernels' own prelude, assembled here as kiln-cpu's cc.rs does (KILN_NR / MC / NC / KC from
# codegen.rs and the ISA, the shared C helpers in place of their marker), with the kernels'
# flags (-O3 -march=native; -mno-avx512f for AVX2).
#
#   bash scripts/bench-att-kv.sh                 # this CPU's ISA: 16 query rows x 1536 keys
#   ISA=avx2 bash scripts/bench-att-kv.sh 2      # AVX2 kernels; 2 rows (a decode step)
#   bash scripts/bench-att-kv.sh ROWS T QB REPS  # rows, keys, query blocks per round, rounds
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${ISA:-}" ]; then
  if grep -qw avx512bw /proc/cpuinfo && grep -qw avx512vl /proc/cpuinfo; then ISA=avx512; else ISA=avx2; fi
fi
OUT=${OUT:-target/bench-att-kv}
mkdir -p "$OUT"
const() { sed -n "s/^pub const $1: i64 = \([0-9]*\);/\1/p" crates/kiln-cpu/src/codegen.rs; }
case "$ISA" in
  avx512) nr=32 flags=() ;;
  avx2) nr=16 flags=(-mno-avx512f) ;;
  *) echo "ISA=$ISA: avx512 or avx2" >&2; exit 1 ;;
esac
python3 - "$OUT/prelude.h" "$nr" "$(const MM_MC)" "$(const MM_NC)" "$(const MM_KC)" <<'PY'
import sys
out, nr, mc, nc, kc = sys.argv[1:]
p = open("crates/kiln-cpu/src/c/prelude.h").read()
p = p.replace("/* KILN_CSTYLE_HELPERS */", open("crates/kiln-render/src/cstyle_helpers.h").read())
p = p.replace("/* KILN_GEMM */", "")
open(out, "w").write(f"#define KILN_NR {nr}\n#define KILN_MC {mc}\n#define KILN_NC {nc}\n#define KILN_KC {kc}\n" + p)
PY
# Without the loop vectoriser, as the runtime compiles kiln_mm_nt (runtime.rs MM_NT_OPTIMIZE).
${CC:-gcc} -O3 -march=native "${flags[@]}" -fno-tree-loop-vectorize -std=gnu11 -fno-math-errno \
  -I"$OUT" crates/kiln-cpu/benches/attkv.c -o "$OUT/attkv-$ISA"
"$OUT/attkv-$ISA" "$@"
