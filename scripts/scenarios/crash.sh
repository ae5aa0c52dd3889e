#!/usr/bin/env bash
# kill -9 of the server at random points during N checkouts (1000 by
# default), restarted each time; a client retries each checkout with its
# key until it is accepted; the PSP declines a share of the payments
# (DECLINE_RATE, 0.1), so failures and their compensations are crashed into
# too. At the end there is one saga per checkout, every one COMPLETED or
# FAILED, and money (the ledger's and the PSP's own record), stock and
# orders reconcile exactly. This one starts its own server (it has to kill
# it):
#   BACKBONE_BIN  the binary (default ./build/backbone)
#   BACKBONE_DB   its database (default a fresh SQLite file under /tmp)
#   N=1000 KILLS=5 DECLINE_RATE=0.1 scripts/scenarios/crash.sh
BACKBONE_URL=http://127.0.0.1:${PORT:-18400}
. "$(dirname "$0")/lib.sh"
N=${N:-1000} KILLS=${KILLS:-5} DECLINE_RATE=${DECLINE_RATE:-0.1}
BIN=${BACKBONE_BIN:-./build/backbone}
work=$(mktemp -d /tmp/backbone-crash.XXXXXX)
DB=${BACKBONE_DB:-sqlite:$work/crash.db}
pid=
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
up() {
  "$BIN" serve --db "$DB" --port "${PORT:-18400}" --log-level warn --psp-latency-ms 2 \
    --psp-decline-rate "$DECLINE_RATE" 2>>"$work/server.log" &
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
accepted() { if [ -f "$work/accepted" ]; then wc -l <"$work/accepted"; else echo 0; fi; }
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
pages() { # path -> every item of its pages (field $2) as one JSON array
  local out=$work/pages.json after='' page
  echo '[]' >"$out"
  while :; do
    page=$(api GET "$1${after:+&after=$after}")
    jq -s --arg f "$2" '.[0] + .[1][$f]' "$out" <(echo "$page") >"$out.new" && mv "$out.new" "$out"
    after=$(jq -r '.next_after // empty' <<<"$page")
    [ -z "$after" ] && break
  done
  cat "$out"
}
# The server's own account: every saga (also of checkouts whose 202 was lost
# in a crash), and the PSP's.
sagas=$work/sagas.json
pages "/sagas?type=checkout&limit=1000" sagas >"$sagas"
pages "/psp/charges?limit=1000" charges >"$work/charges.json"
# Each saga with its order and its payments, as the services record them.
facts=$work/facts.jsonl
jq -r '.[] | "\(.state) \(.data.order_id // "-")"' "$sagas" | while read -r state order; do
  if [ "$order" = - ]; then
    printf '{"state":"%s","order":null,"payments":{"payments":[]}}\n' "$state"
  else
    printf '{"state":"%s","order":%s,"payments":%s}\n' "$state" "$(api GET "/orders/$order")" \
      "$(api GET "/payments?order_id=$order")"
  fi
done >"$facts"
of() { jq -s "$1" "$facts"; }                     # a number from the sagas' facts
psp() { jq "$1" "$work/charges.json"; }           # a number from the PSP's record
running=$(jq '[.[] | select(.state != "COMPLETED" and .state != "FAILED")] | length' "$sagas")
completed=$(jq '[.[] | select(.state == "COMPLETED")] | length' "$sagas")
failed=$(jq '[.[] | select(.state == "FAILED")] | length' "$sagas")
total=$(jq length "$sagas")
sold=$(jq '[.[] | select(.state == "COMPLETED") | .data.items[].qty] | add // 0' "$sagas")
stock=$(stock_of "$sku")
captured=$(of '[.[].payments.payments[] | .captured_amount - .refunded_amount] | add // 0')
say "== reconciliation ($(wc -l <"$work/accepted") accepted with a 202, $total sagas, $completed completed, $failed failed)"
check "checkouts accepted, one per key" "$N" "$(sort -u "$work/accepted" | wc -l | tr -d ' ')"
check "sagas, one per checkout" "$N" "$total"
check "checkouts with more than one saga" 0 "$(jq '[group_by(.correlation_id)[] | select(length > 1)] | length' "$sagas")"
check "every accepted checkout has its saga" 0 "$(comm -23 <(sort "$work/accepted") <(jq -r '.[].correlation_id' "$sagas" | sort) | wc -l | tr -d ' ')"
check "sagas still running" 0 "$running"
check "units on hand (100000 - sold)" "$((100000 - sold))" "$(jq .on_hand <<<"$stock")"
check "units reserved" 0 "$(jq .reserved <<<"$stock")"
check "money kept = 100 per completed checkout" "$((completed * 100))" "$captured"
check "orders with more than one payment" 0 "$(of '[.[] | select((.payments.payments | length) > 1)] | length')"
check "orders of COMPLETED checkouts CONFIRMED" "$completed" "$(of '[.[] | select(.state == "COMPLETED" and .order.status == "CONFIRMED")] | length')"
check "orders of FAILED checkouts CANCELLED" "$failed" "$(of '[.[] | select(.state == "FAILED" and .order.status == "CANCELLED")] | length')"
check "payments whose outcome is not known (PENDING)" 0 "$(of '[.[].payments.payments[] | select(.state == "PENDING")] | length')"
check "AUTHORIZED payments of FAILED checkouts" 0 "$(of '[.[] | select(.state == "FAILED") | .payments.payments[] | select(.state == "AUTHORIZED")] | length')"
# The PSP's own record (psp_charges: one row per call key, authorize:K,
# capture:K and void:K for the payment of key K) against the ledger.
approved='[.[] | select(.outcome == "approved")]'
check "money kept by the PSP (captures - refunds)" "$((completed * 100))" \
  "$(psp "$approved | (map(select(.op == \"capture\") | .amount) | add // 0) - (map(select(.op == \"refund\") | .amount) | add // 0)")"
check "PSP authorizations the ledger does not know, or the reverse" 0 \
  "$(jq -n --slurpfile f "$facts" --slurpfile c "$work/charges.json" \
      '([$c[0][] | select(.op == "authorize" and .outcome == "approved") | .reference] | sort) as $psp
       | ([$f[].payments.payments[] | select(.state != "PENDING" and .state != "FAILED")
           | .psp_reference] | sort) as $ledger
       | ($psp - $ledger | length) + ($ledger - $psp | length)')"
check "PSP captures = payments the ledger captured" \
  "$(of '[.[].payments.payments[] | select(.captured_amount > 0)] | length')" \
  "$(psp "$approved | map(select(.op == \"capture\")) | length")"
check "authorizations the PSP still holds open (neither captured nor voided)" 0 \
  "$(psp "$approved | map(select(.op == \"authorize\" or .op == \"capture\" or .op == \"void\")
     | {op, k: (.key | sub(\"^[a-z]+:\"; \"\"))}) | group_by(.k)
     | map(select(any(.op == \"authorize\") and (any(.op == \"capture\" or .op == \"void\") | not)))
     | length")"
done_
