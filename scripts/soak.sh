#!/usr/bin/env bash
# Soak test of the kernel cache: PROCS processes run COMPILES compiles each (alternating
# `kiln compile` and `kiln run`) on one cache, while a chaos loop sends KILLS random `kill -9`s
# to them and injects CORRUPTIONS damaged entries (a flipped byte, a truncation, another key's
# entry copied over, garbage). Then it checks every entry, the digest of every compile and the
# tokens of every run against a clean reference, and counts leftover temp files.
#
#   scripts/soak.sh [PROCS=8] [COMPILES=20] [KILLS=20] [CORRUPTIONS=KILLS]
#
# Environment: KILN (the binary; default target/release/kiln, built if missing), MODEL (default
# the tiny Qwen3 fixture), KILN_THREADS (compile threads per process, default 2), SEED (for
# $RANDOM), KEEP=1 (keep the work folder). Exits 1 unless every figure is 0.
set -euo pipefail
cd "$(dirname "$0")/.."

procs=${1:-8}
compiles=${2:-20}
kills=${3:-20}
corruptions=${4:-$kills}
model=${MODEL:-tests/fixtures/tiny-qwen3}
threads=${KILN_THREADS:-2}
RANDOM=${SEED:-12}
prompt=1,17,42,99,3,250,7,8

kiln=${KILN:-target/release/kiln}
if [ ! -x "$kiln" ]; then
  echo "building $kiln" >&2
  cargo build --release -q -p kiln-cli
fi
kiln=$(realpath "$kiln")

work=$(mktemp -d -t kiln-soak-XXXXXX)
cache=$work/cache
export TMPDIR=$work/tmp KILN_CACHE_DIR=$cache
mkdir -p "$TMPDIR" "$cache" "$work/results" "$work/pids"
unset KILN_COMPILE_THREADS KILN_CACHE_MAX_MB NO_COLOR
trap '[ -n "${KEEP:-}" ] && echo "kept $work" >&2 || rm -rf "$work"' EXIT

digest() { grep -o '"artifact_digest":"[0-9a-f]*"' | cut -d'"' -f4; }
tokens() { grep -o '"generated_ids":\[[0-9,]*\]' | cut -d: -f2; }
run_args=(run --model "$model" --prompt-ids "$prompt" --max-new-tokens 8 --ignore-eos --json --threads "$threads")
compile_args=(compile --model "$model" --json --threads "$threads")

# The reference: a clean, cold compile and run in a cache of its own.
ref_json=$(KILN_CACHE_DIR=$work/reference "$kiln" "${run_args[@]}" 2>/dev/null)
ref_digest=$(digest <<<"$ref_json")
ref_tokens=$(tokens <<<"$ref_json")
echo "reference: digest ${ref_digest:0:16}, tokens $ref_tokens"

# One worker: COMPILES compiles, then more while the chaos loop runs, then one last one.
# Each result line: "<kind> <exit status> <digest or -> <tokens or ->". The pid of the kiln
# process running is in $work/pids/<worker>, for the chaos loop.
worker() {
  local id=$1 n=0 status kind pid
  local log=$work/results/$id.log out=$work/results/$id.out
  while :; do
    if [ "$n" -ge "$compiles" ] && [ -e "$work/chaos-done" ]; then
      [ -e "$work/final.$id" ] && break
      touch "$work/final.$id"
    fi
    if [ $((n % 2)) = 0 ]; then kind=compile; args=("${compile_args[@]}"); else kind=run; args=("${run_args[@]}"); fi
    "$kiln" "${args[@]}" >"$out" 2>>"$work/results/$id.err" &
    pid=$!
    echo "$pid" >"$work/pids/$id"
    status=0
    wait "$pid" || status=$?
    rm -f "$work/pids/$id"
    if [ "$status" = 0 ]; then
      echo "$kind 0 $(digest <"$out") $( [ "$kind" = run ] && tokens <"$out" || echo -)" >>"$log"
    else
      echo "$kind $status - -" >>"$log"
    fi
    n=$((n + 1))
  done
}

# The chaos loop: kill -9 a random kiln process of a worker, and now and then damage an entry.
chaos() {
  local killed=0 damaged=0 victims entries e other
  # Killed = processes that died of the signal (a kill can land on one that just finished).
  while killed=$(cat "$work"/results/*.log 2>/dev/null | grep -c ' 137 ' || true)
    [ "$killed" -lt "$kills" ] || [ "$damaged" -lt "$corruptions" ]; do
    if [ "$killed" -lt "$kills" ]; then
      victims=("$work"/pids/*)
      if ! { [ -e "${victims[0]}" ] && kill -9 "$(cat "${victims[RANDOM % ${#victims[@]}]}" 2>/dev/null)" 2>/dev/null; }; then
        sleep 0.02
        continue
      fi
    fi
    # Spread over the run (cold compiles first, then warm ones): 0.1 to 8 s between kills.
    sleep "$((RANDOM % 8)).$((RANDOM % 9 + 1))"
    if [ "$damaged" -lt "$corruptions" ] && [ $((RANDOM % 2)) = 0 ]; then
      mapfile -t entries < <(find "$cache" -name '*.kart' -type f)
      [ "${#entries[@]}" -ge 2 ] || continue
      e=${entries[RANDOM % ${#entries[@]}]}
      other=${entries[RANDOM % ${#entries[@]}]}
      case $((damaged % 5)) in
        0) head -c 8 /dev/urandom | dd of="$e" bs=1 seek=$(($(stat -c %s "$e") - 9)) conv=notrunc status=none ;;
        1) truncate -s $(($(stat -c %s "$e") / 2)) "$e" ;;
        2) [ "$e" != "$other" ] && cp "$other" "$e" ;;
        3) head -c 4096 /dev/urandom >"$e" ;;
        4) rm -f "$e" ;;
      esac
      damaged=$((damaged + 1))
    fi
  done
  echo "chaos: $killed kills, $damaged damaged entries"
  touch "$work/chaos-done"
}

start=$(date +%s)
workers=()
for i in $(seq 1 "$procs"); do
  worker "$i" 2>/dev/null &
  workers+=($!)
done
chaos
wait "${workers[@]}"
elapsed=$(($(date +%s) - start))

results=$(cat "$work"/results/*.log)
total=$(wc -l <<<"$results")
killed=$(grep -c ' 137 ' <<<"$results" || true)
failed=$(awk '$2 != 0 && $2 != 137' <<<"$results" | wc -l)
digest_changes=$(awk -v d="$ref_digest" '$2 == 0 && $3 != d' <<<"$results" | wc -l)
token_changes=$(awk -v t="$(tr -d ' ' <<<"$ref_tokens")" '$1 == "run" && $2 == 0 && $4 != t' <<<"$results" | wc -l)

# The cache after the soak, before anything repairs it: every entry must check out.
verify=$("$kiln" cache verify --json 2>/dev/null || true)
entries=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["entries"])' <<<"$verify")
poisoned=$(python3 -c 'import json,sys; print(len(json.load(sys.stdin)["bad"]))' <<<"$verify")
temp_files=$(find "$cache" -name '.tmp-*' | wc -l)
scratch=$(find "$TMPDIR" -mindepth 1 -maxdepth 1 -name 'kiln-cc-*' | wc -l)
# A last run through the cache: everything from the cache, the reference digest and tokens.
final=$("$kiln" "${run_args[@]}" 2>"$work/final.stderr")
final_ok=$(python3 -c '
import json, sys
r = json.load(sys.stdin); c = r["compile"]
print(int(c["cache_hits"] == c["kernels_unique"] and c["artifact_digest"] == sys.argv[1] and str(r["generated_ids"]).replace(" ", "") == sys.argv[2]))
' "$ref_digest" "$(tr -d ' ' <<<"$ref_tokens")" <<<"$final")
warnings=$(grep -c warning "$work/final.stderr" || true)

cat <<EOF
soak: $procs processes x $compiles+ compiles on one cache, $(nproc) cores, ${elapsed} s
  compiles and runs:          $total ($killed killed by kill -9, $failed failed otherwise)
  entries in the cache:       $entries
  poisoned entries:           $poisoned
  digest changes:             $digest_changes
  token changes:              $token_changes
  leftover cache temp files:  $temp_files
  leftover kiln-cc-* folders: $scratch
  final run all from cache, same digest and tokens: $([ "$final_ok" = 1 ] && echo yes || echo NO) ($warnings warnings)
EOF
if [ "$failed" -gt 0 ]; then
  echo "failures:" && grep -h '^error' "$work"/results/*.err | sort | uniq -c | sort -rn | head -20
fi
[ "$poisoned" = 0 ] && [ "$digest_changes" = 0 ] && [ "$token_changes" = 0 ] && [ "$failed" = 0 ] \
  && [ "$temp_files" = 0 ] && [ "$scratch" = 0 ] && [ "$final_ok" = 1 ] && [ "$warnings" = 0 ]
