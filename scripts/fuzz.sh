#!/usr/bin/env bash
# Fuzz the request decoders (tests/fuzz) with libFuzzer, under ASan+UBSan,
# for SECONDS each (default 30), starting from their seed corpus. New
# inputs it finds stay in build-fuzz/corpus/NAME (not committed); a crash
# leaves its input in build-fuzz/ and fails the script: add it to
# tests/fuzz/corpus/NAME once fixed, so every build replays it. With
# BACKBONE_TEST_PG_URL set (as scripts/test.sh does), the API harness runs
# a second time on an empty PostgreSQL database of that server.
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
targets=(job_spec cron order_items text api)
# Flags of one target. api: the server's threads allocate while an input
# runs, which libFuzzer's per-input leak check takes for leaks (the replay
# under ASan checks for leaks at exit instead); its dictionary holds the
# API's member names.
declare -A extra=([api]="-detect_leaks=0 -dict=tests/fuzz/api.dict")
cmake --preset fuzz >/dev/null
if ! cmake --build build-fuzz -j"$(nproc)" --target "${targets[@]/#/fuzz_}" >build-fuzz/build.log 2>&1; then
  tail -40 build-fuzz/build.log
  exit 1
fi
status=0
fuzz() { # target label [VAR=value...]: run it for $secs, report, set status
  local t=$1 label=$2
  shift 2
  mkdir -p "build-fuzz/corpus/$t"
  local log=build-fuzz/fuzz_$label.log
  read -r -a flags <<<"${extra[$t]:-}"
  if env "$@" build-fuzz/tests/fuzz/fuzz_"$t" -max_total_time="$secs" -max_len=4096 -timeout=10 \
    -rss_limit_mb=2048 -artifact_prefix="build-fuzz/$label-" -print_final_stats=1 "${flags[@]}" \
    "build-fuzz/corpus/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1; then
    echo "fuzz $label: $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$') inputs in ${secs}s, no finding"
  else
    echo "fuzz $label: FAILED (log $log)"
    tail -40 "$log"
    status=1
  fi
}
for t in "${targets[@]}"; do fuzz "$t" "$t"; done
if [ -n "${BACKBONE_TEST_PG_URL:-}" ]; then
  PGOPTIONS=--client-min-messages=warning psql -q -d "$BACKBONE_TEST_PG_URL" \
    -c "DROP DATABASE IF EXISTS fuzz_api" \
    -c "CREATE DATABASE fuzz_api" >/dev/null
  fuzz api api-pg "BB_FUZZ_API_DB=${BACKBONE_TEST_PG_URL%/*}/fuzz_api"
fi
exit $status
