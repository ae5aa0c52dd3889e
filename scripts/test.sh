#!/usr/bin/env bash
# The whole test suite, as `make test` and CI run it: install what is missing,
# build a normal, an ASan+UBSan and a TSan build, start a throwaway PostgreSQL, run
# every test on both engines in both builds, run the concurrency tests again
# under ThreadSanitizer, check formatting and clang-tidy's checks (.clang-tidy),
# fuzz the request decoders for a while, and stop PostgreSQL even when a test
# fails.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh test
jobs=$(nproc)

cmake --preset dev -DBB_TESTS=ON >/dev/null
cmake --build build -j"$jobs"
cmake --preset asan >/dev/null
cmake --build build-asan -j"$jobs"
cmake --preset tsan >/dev/null
cmake --build build-tsan -j"$jobs"

pgdir=$(mktemp -d /tmp/backbone-pg.XXXXXX)
trap 'scripts/pg-test.sh stop "$pgdir"' EXIT
pg_url=$(scripts/pg-test.sh start "$pgdir") # not in `export`: that would hide a failed start
export BACKBONE_TEST_PG_URL=$pg_url
export BACKBONE_TEST_REQUIRE_PG=1
echo "test PostgreSQL: $BACKBONE_TEST_PG_URL"

status=0
for b in build build-asan; do
  echo "== ctest $b"
  ctest --test-dir "$b" --output-on-failure -j2 --timeout 600 || status=1
done
# The concurrency tests: base's (the combiner), every store-backed module's,
# and the servers under load (locks, jobs, sagas, checkouts).
echo "== ctest build-tsan (concurrency tests)"
ctest --test-dir build-tsan --output-on-failure -j2 --timeout 600 \
  -R 'unit\.base\.|store\.|e2e_.*(lock|job|saga|checkout)' || status=1
echo "== clang-format"
scripts/format.sh --check || status=1
echo "== clang-tidy"
scripts/tidy.sh build || status=1
echo "== fuzz (libFuzzer, 20 s per harness; the API also on PostgreSQL)"
scripts/fuzz.sh 20 || status=1
exit $status
