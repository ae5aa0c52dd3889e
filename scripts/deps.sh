#!/usr/bin/env bash
# Install the Debian packages Backbone needs, and only those missing.
# Idempotent: a second run installs nothing and makes no network calls.
#   scripts/deps.sh run     build and run the server (curl and jq: scripts/scenarios/)
#   scripts/deps.sh test    ... plus PostgreSQL 15, cmocka, pytest, promtool, clang
#                           (tidy, libFuzzer) (the test suite)
#   scripts/deps.sh bench   ... plus etcd, Redis, Node.js and Celery (the peers we race)
set -euo pipefail

profile=${1:-run}
run_pkgs=(build-essential cmake pkg-config ca-certificates tzdata curl jq
  libmicrohttpd-dev libcurl4-openssl-dev libjansson-dev libsqlite3-dev libpq-dev libssl-dev
  libjemalloc-dev)
test_pkgs=(postgresql-15 postgresql-client-15 libcmocka-dev python3 python3-pytest python3-requests
  python3-yaml python3-jsonschema
  clang-format clang-tidy clang libclang-rt-14-dev curl procps prometheus)
bench_pkgs=(etcd-server etcd-client redis-server redis-tools nodejs npm curl python3-celery python3-redis)

case "$profile" in
run) want=("${run_pkgs[@]}") ;;
test) want=("${run_pkgs[@]}" "${test_pkgs[@]}") ;;
bench) want=("${run_pkgs[@]}" "${test_pkgs[@]}" "${bench_pkgs[@]}") ;;
*) echo "usage: $0 run|test|bench" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$p")
done
# Node.js is also fine when it came from elsewhere (the machine may have its own).
if [ "$profile" = bench ] && command -v node >/dev/null && command -v npm >/dev/null; then
  missing=($(printf '%s\n' "${missing[@]}" | grep -vx -e nodejs -e npm || true))
fi
[ ${#missing[@]} -eq 0 ] && exit 0

echo "deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "deps: run as root (or install sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
# Only promtool is wanted from prometheus: where systemd started the
# package's server (on every interface), stop it and keep it off.
if printf '%s\n' "${missing[@]}" | grep -qx prometheus && [ -d /run/systemd/system ]; then
  $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
