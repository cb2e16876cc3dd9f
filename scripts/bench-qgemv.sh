#!/usr/bin/env bash
# The quantized decode GEMV against a streaming read, in per-thread CPU time (a load on the
# machine hardly moves it): crates/kiln-cpu/benches/qgemv.c compiled against the kernels' own
# prelude, assembled here as kiln-cpu's cc.rs does (KILN_NR / MC / NC / KC from codegen.rs and
# the ISA, the shared C helpers in place of their marker, gemm.h + gemm_quant.h in place of
# /* KILN_GEMM */, with gemm_q4k.h, gemm_q6k.h and gemm_q5k.h), with the kernels' flags (-O3 -march=native; -mno-avx512f for AVX2).
#
#   bash scripts/bench-qgemv.sh              # AVX-512 (integer path with VNNI), 2 threads
#   ISA=avx2 bash scripts/bench-qgemv.sh     # the AVX2 kernels (integer path for Q4_0, f32-dequant for the others)
#   THREADS=1 REPS=7 bash scripts/bench-qgemv.sh q4_0   # one type; one core
#   MIN_MB=1 ...        # the weight in cache (compute only);  EXTRA="-DX=1" ... extra C flags
#   EXTRA=-DSMALL_PAGES ...   # weights and stream on 4 KiB pages (default: 2 MiB ones)
#   EXTRA=-DSLOTS=2 ...       # gate/up shapes as an epilogue matmul's launch reads them, unit by
#                             # unit (two column ranges alternating); -DSLOT_MAJOR: slot by slot
#   REV=main ...        # the C headers (c/*.h, cstyle_helpers.h) as a git revision has them, in
#                       # target/bench-qgemv-REV (a baseline beside the working tree's kernels;
#                       # the harness qgemv.c and codegen.rs's constants stay the working tree's)
set -euo pipefail
cd "$(dirname "$0")/.."
ISA=${ISA:-avx512}
REV=${REV:-}
OUT=${OUT:-target/bench-qgemv${REV:+-${REV//\//-}}}
mkdir -p "$OUT"
const() { sed -n "s/^pub const $1: i64 = \([0-9]*\);/\1/p" crates/kiln-cpu/src/codegen.rs; }
case "$ISA" in
  avx512) nr=32 flags=() ;;
  avx2) nr=16 flags=(-mno-avx512f) ;;
  *) echo "ISA=$ISA: avx512 or avx2" >&2; exit 1 ;;
esac
python3 - "$OUT/prelude.h" "$nr" "$(const MM_MC)" "$(const MM_NC)" "$(const MM_KC)" "$REV" <<'PY'
import subprocess, sys
out, nr, mc, nc, kc, rev = sys.argv[1:]
def read(path):  # the working tree's file, or REV's
    if not rev:
        return open(path).read()
    r = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"REV={rev}: no {path} there ({r.stderr.strip()})")
    return r.stdout
c = "crates/kiln-cpu/src/c/"
p = read(c + "prelude.h")
p = p.replace("/* KILN_CSTYLE_HELPERS */", read("crates/kiln-render/src/cstyle_helpers.h"))
p = p.replace("/* KILN_GEMM */", "".join(read(c + h) for h in ["gemm.h", "gemm_quant.h", "gemm_q4k.h", "gemm_q6k.h", "gemm_q5k.h"]))
open(out, "w").write(f"#define KILN_NR {nr}\n#define KILN_MC {mc}\n#define KILN_NC {nc}\n#define KILN_KC {kc}\n" + p)
PY
${CC:-gcc} ${EXTRA:-} -O3 -march=native "${flags[@]}" -std=gnu11 -fno-math-errno -I"$OUT" \
  crates/kiln-cpu/benches/qgemv.c -o "$OUT/qgemv-$ISA" -lpthread
"$OUT/qgemv-$ISA" "$@"
