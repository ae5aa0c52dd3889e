#!/usr/bin/env bash
# kill -9 of the server at random points during N checkouts (1000 by
# default), restarted each time; a client retries each checkout with its
# key until it is accepted; at the end every checkout is COMPLETED or
# FAILED, and money, stock and orders reconcile exactly. This one starts
# its own server (it has to kill it):
#   BACKBONE_BIN  the binary (default ./build/backbone)
#   BACKBONE_DB   its database (default a fresh SQLite file under /tmp)
#   N=1000 KILLS=5 scripts/scenarios/crash.sh
BACKBONE_URL=http://127.0.0.1:${PORT:-18400}
. "$(dirname "$0")/lib.sh"
N=${N:-1000} KILLS=${KILLS:-5}
BIN=${BACKBONE_BIN:-./build/backbone}
work=$(mktemp -d /tmp/backbone-crash.XXXXXX)
DB=${BACKBONE_DB:-sqlite:$work/crash.db}
pid=
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
up() {
  "$BIN" serve --db "$DB" --port "${PORT:-18400}" --log-level warn --psp-latency-ms 2 \
    2>>"$work/server.log" &
  pid=$!
  for _ in $(seq 600); do curl -sf "$URL/readyz" >/dev/null 2>&1 && return; sleep 0.05; done
  say "the server did not come up"; exit 1
}
up
sku=CRASH-$RUN
product "$sku" 100000
say "== $N checkouts of $sku (a client retrying each with its Idempotency-Key until it"
say "   gets its 202), the server killed with kill -9 $KILLS times on the way"
(
  for i in $(seq "$N"); do
    until id=$(checkout "crash-$RUN-$i" "$sku" 1 100 2>/dev/null) && [ -n "$id" ] && [ "$id" != null ]; do
      sleep 0.05
    done
    echo "$id" >>"$work/accepted"
  done
) &
load=$!
accepted() { wc -l <"$work/accepted" 2>/dev/null || echo 0; }
for kills in $(seq "$KILLS"); do
  # A random point in the kills-th slice of the run, and a random delay within a request.
  target=$(((kills - 1) * N / KILLS + RANDOM % (N / KILLS / 2 + 1) + 1))
  while [ "$(accepted)" -lt "$target" ]; do sleep 0.01; done
  sleep "0.00$((RANDOM % 10))"
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
  say "  kill -9 #$kills after $(accepted) accepted; restarting"
  up
done
wait "$load"
say "== waiting for every accepted checkout to settle"
while read -r id; do settle "$id" >/dev/null; done <"$work/accepted"
# The server's own account: every saga (also of checkouts whose 202 was lost in a crash).
sagas=$work/sagas.json
echo '[]' >"$sagas"
after=
while :; do
  page=$(api GET "/sagas?type=checkout&limit=1000${after:+&after=$after}")
  jq -s '.[0] + .[1].sagas' "$sagas" <(echo "$page") >"$sagas.new" && mv "$sagas.new" "$sagas"
  after=$(jq -r '.next_after // empty' <<<"$page")
  [ -z "$after" ] && break
done
running=$(jq '[.[] | select(.state != "COMPLETED" and .state != "FAILED")] | length' "$sagas")
completed=$(jq '[.[] | select(.state == "COMPLETED")] | length' "$sagas")
total=$(jq length "$sagas")
sold=$(jq '[.[] | select(.state == "COMPLETED") | .data.items[].qty] | add // 0' "$sagas")
stock=$(stock_of "$sku")
captured=0
while read -r order; do
  captured=$((captured + $(api GET "/payments?order_id=$order" | jq '[.payments[] | .captured_amount - .refunded_amount] | add // 0')))
done < <(jq -r '.[].data.order_id // empty' "$sagas")
say "== reconciliation ($(wc -l <"$work/accepted") accepted with a 202, $total sagas, $completed completed)"
check "every accepted checkout has its saga" 0 "$(comm -23 <(sort "$work/accepted") <(jq -r '.[].correlation_id' "$sagas" | sort) | wc -l | tr -d ' ')"
check "sagas still running" 0 "$running"
check "units on hand (100000 - sold)" "$((100000 - sold))" "$(jq .on_hand <<<"$stock")"
check "units reserved" 0 "$(jq .reserved <<<"$stock")"
check "money kept = 100 per completed checkout" "$((completed * 100))" "$captured"
check "orders confirmed" "$completed" "$(jq -r '.[] | select(.state == "COMPLETED") | .data.order_id' "$sagas" | while read -r o; do api GET "/orders/$o" | jq -r .status; done | grep -c CONFIRMED || true)"
done_
