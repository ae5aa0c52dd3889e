#!/usr/bin/env bash
# Proves the README's two commands on a fresh Debian 12: debootstraps a
# minimal bookworm (no make, no compiler, no curl) into DIR, clones this
# repository's HEAD into it, and inside it runs `make run` (the server up on
# the embedded SQLite default, answered over HTTP and by the CLI, then
# stopped) and `make test` (the whole suite, its own PostgreSQL included).
# Needs root, the network to deb.debian.org and port 8080 free; about 30
# minutes on 2 cores. Not part of CI, whose clean machine proves the same.
#   scripts/fresh-debian.sh [DIR]   (default /var/tmp/backbone-fresh)
#   KEEP=1 keeps DIR (the logs are DIR.run.log and DIR.test.log either way)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
dir=${1:-/var/tmp/backbone-fresh}
dir=$(realpath -m "$dir")
[ "$(id -u)" -eq 0 ] || { echo "fresh-debian: run as root (debootstrap, chroot)" >&2; exit 1; }
if (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; then
  echo "fresh-debian: port 8080 is taken; make run listens there" >&2
  exit 1
fi

mounts() { findmnt -rn -o TARGET | grep -E "^$dir(/|$)" | sort -r || true; }
in_root() {
  chroot "$dir" /usr/bin/env -i HOME=/root TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
}
inside() { # the processes whose root is DIR
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/root" 2>/dev/null)" = "$dir" ] && echo "${p#/proc/}"
  done
  return 0
}
cleanup() {
  for p in $(inside); do kill -9 "$p" 2>/dev/null || true; done
  for m in $(mounts); do umount "$m" 2>/dev/null || umount -l "$m"; done
  # Never remove a tree that still has the host's /dev or /proc under it.
  if [ -z "$(mounts)" ] && [ "${KEEP:-0}" != 1 ]; then rm -rf "$dir"; fi
}
trap cleanup EXIT

[ -z "$(mounts)" ] || { echo "fresh-debian: $dir has mounts; unmount them first" >&2; exit 1; }
rm -rf "$dir"
command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >/dev/null
echo "fresh-debian: debootstrap bookworm (minbase) into $dir"
debootstrap --variant=minbase bookworm "$dir" http://deb.debian.org/debian >"$dir.debootstrap.log" 2>&1 ||
  { tail -20 "$dir.debootstrap.log" >&2; exit 1; }
cat >"$dir/etc/apt/sources.list" <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
cp /etc/resolv.conf "$dir/etc/resolv.conf"
mount -t proc proc "$dir/proc"
mount -t sysfs sysfs "$dir/sys"
mount --bind /dev "$dir/dev"
mount --bind /dev/pts "$dir/dev/pts"
mount -t tmpfs tmpfs "$dir/dev/shm"
git clone -q "$repo" "$dir/root/backbone"
echo "fresh-debian: $(git -C "$dir/root/backbone" log --oneline -1)"

echo "fresh-debian: apt-get install make; make run (log: $dir.run.log)"
in_root /bin/sh -c 'apt-get update -q && apt-get install -y -q make && cd /root/backbone && make run' \
  >"$dir.run.log" 2>&1 &
server=$!
for _ in $(seq 1800); do
  curl -sf http://127.0.0.1:8080/healthz >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { tail -20 "$dir.run.log" >&2; exit 1; }
  sleep 1
done
curl -sf http://127.0.0.1:8080/readyz
echo
in_root /bin/sh -c 'cd /root/backbone && ./build/backbone locks acquire fresh --owner me --ttl 30s'
for p in $(inside); do
  case "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)" in *"backbone serve"*) kill "$p" ;; esac
done
wait "$server" || { tail -5 "$dir.run.log" >&2; exit 1; }
echo "fresh-debian: make run works"

echo "fresh-debian: make test (log: $dir.test.log)"
rc=0
in_root /bin/sh -c 'cd /root/backbone && make test' >"$dir.test.log" 2>&1 || rc=$?
grep -E "tests passed|tests failed|no finding|clang-tidy:" "$dir.test.log" || true
echo "fresh-debian: make test exited $rc"
exit $rc
