#!/usr/bin/env bash
# Fuzz the request decoders (tests/fuzz) with libFuzzer, under ASan+UBSan,
# for SECONDS each (default 30), starting from their seed corpus. New
# inputs it finds stay in build-fuzz/corpus/NAME (not committed); a crash
# leaves its input in build-fuzz/ and fails the script: add it to
# tests/fuzz/corpus/NAME once fixed, so every build replays it.
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
for t in "${targets[@]}"; do
  mkdir -p "build-fuzz/corpus/$t"
  log=build-fuzz/fuzz_$t.log
  read -r -a flags <<<"${extra[$t]:-}"
  if build-fuzz/tests/fuzz/fuzz_"$t" -max_total_time="$secs" -max_len=4096 -timeout=10 \
    -rss_limit_mb=2048 -artifact_prefix="build-fuzz/$t-" -print_final_stats=1 "${flags[@]}" \
    "build-fuzz/corpus/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1; then
    echo "fuzz $t: $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$') inputs in ${secs}s, no finding"
  else
    echo "fuzz $t: FAILED (log $log)"
    tail -40 "$log"
    status=1
  fi
done
exit $status
