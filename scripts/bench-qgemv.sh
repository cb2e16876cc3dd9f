#!/usr/bin/env bash
# The quantized decode GEMV against a streaming read, in per-thread CPU time (a load on the
# machine hardly moves it): crates/kiln-cpu/benches/qgemv.c compiled against the kernels' own
# prelude, assembled here as kiln-cpu's cc.rs does (KILN_NR / MC / NC / KC from codegen.rs and
# the ISA, the shared C helpers in place of their marker, gemm.h + gemm_quant.h in place of
# /* KILN_GEMM */, with gemm_q4k.h, gemm_q6k.h and gemm_q5k.h), with the kernels' flags (-O3 -march=native; -mno-avx512f for AVX2).
#
#   bash scripts/bench-qgemv.sh              # AVX-512 (integer path with VNNI), 2 threads
#   ISA=avx2 bash scripts/bench-qgemv.sh     # the AVX2 kernels (f32-dequant path)
#   THREADS=1 REPS=7 bash scripts/bench-qgemv.sh q4_0   # one type; one core
#   MIN_MB=1 ...        # the weight in cache (compute only);  EXTRA="-DX=1" ... extra C flags
#   EXTRA=-DSMALL_PAGES ...   # weights and stream on 4 KiB pages (default: 2 MiB ones)
set -euo pipefail
cd "$(dirname "$0")/.."
ISA=${ISA:-avx512}
OUT=${OUT:-target/bench-qgemv}
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
c = "crates/kiln-cpu/src/c/"
p = open(c + "prelude.h").read()
p = p.replace("/* KILN_CSTYLE_HELPERS */", open("crates/kiln-render/src/cstyle_helpers.h").read())
p = p.replace("/* KILN_GEMM */", open(c + "gemm.h").read() + open(c + "gemm_quant.h").read() + open(c + "gemm_q4k.h").read() + open(c + "gemm_q6k.h").read() + open(c + "gemm_q5k.h").read())
open(out, "w").write(f"#define KILN_NR {nr}\n#define KILN_MC {mc}\n#define KILN_NC {nc}\n#define KILN_KC {kc}\n" + p)
PY
${CC:-gcc} ${EXTRA:-} -O3 -march=native "${flags[@]}" -std=gnu11 -fno-math-errno -I"$OUT" \
  crates/kiln-cpu/benches/qgemv.c -o "$OUT/qgemv-$ISA" -lpthread
"$OUT/qgemv-$ISA" "$@"
