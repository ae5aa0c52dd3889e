# Shared by the checkout scenarios: talk to a live Backbone with curl + jq.
#   BACKBONE_URL (default http://127.0.0.1:8080), BACKBONE_API_TOKEN (optional)
# Each scenario prints what it does and what it finds, ends with a
# reconciliation, and exits non-zero if anything does not add up.
set -euo pipefail
URL=${BACKBONE_URL:-http://127.0.0.1:8080}
RUN=$(date +%s%N | tail -c 9)  # keys and SKUs stay unique across runs
AUTH=()
[ -n "${BACKBONE_API_TOKEN:-}" ] && AUTH=(-H "Authorization: Bearer $BACKBONE_API_TOKEN")
failures=0

say() { printf '%s\n' "$*"; }
api() { # method path [json] -> body; a GET answered 5xx is asked again (up to 5 s)
  local out
  for _ in $(seq 100); do
    out=$(curl -sS -X "$1" "${AUTH[@]}" -H 'Content-Type: application/json' -w '\n%{http_code}' \
      "$URL$2" ${3:+-d "$3"})
    if [ "$1" != GET ] || [ "${out##*$'\n'}" -lt 500 ]; then
      printf '%s\n' "${out%$'\n'*}"
      return 0 # explicit: a bare return in a trap handler returns the status before the trap
    fi
    sleep 0.05
  done
  echo "GET $2 kept failing: $out" >&2
  exit 1
}
product() { # sku stock
  api POST /inventory/products "{\"sku\":\"$1\",\"name\":\"$1\",\"stock\":$2}" >/dev/null
}
checkout() { # key sku qty unit_price [card] -> checkout id
  curl -sS -X POST "${AUTH[@]}" -H 'Content-Type: application/json' -H "Idempotency-Key: $1" \
    "$URL/checkout" -d "{\"customer_id\":\"scenario\",\"currency\":\"EUR\",
      \"items\":[{\"sku\":\"$2\",\"qty\":$3,\"unit_price\":$4}],
      \"payment\":{\"method\":\"card\",\"card\":\"${5:-tok_visa}\"}}" | jq -r .checkout_id
}
settle() { # checkout id -> its final JSON (waits up to 120 s)
  for _ in $(seq 12000); do
    local c
    c=$(api GET "/checkout/$1")
    if [ "$(jq -r .status <<<"$c")" != PENDING ]; then echo "$c"; return; fi
    sleep 0.01
  done
  echo "checkout $1 still PENDING after 120 s" >&2
  exit 1
}
saga_of() { # checkout id -> the saga with its timeline
  local id
  id=$(api GET "/sagas?correlation_id=$1" | jq -r '.sagas[0].saga_id')
  api GET "/sagas/$id"
}
timeline() { # saga JSON -> one line per step run
  jq -r '.timeline[] | "    \(.step) \(.phase): \(.outcome)\(if .error then " (\(.error))" else "" end)"' <<<"$1"
}
check() { # description expected actual
  if [ "$2" = "$3" ]; then
    say "  ok    $1: $3"
  else
    say "  FAIL  $1: expected $2, got $3"
    failures=$((failures + 1))
  fi
}
stock_of() { api GET "/inventory/products/$1/availability"; }
one_checkout() { # key sku qty unit_price [card]: sets c, saga, order; prints how it ended
  c=$(settle "$(checkout "$@")")
  saga=$(saga_of "$(jq -r .checkout_id <<<"$c")")
  order=$(jq -r .order_id <<<"$c")
  say "  checkout: $(jq -r '"\(.status): \(.reason)"' <<<"$c")"
  timeline "$saga"
}
captured_for() { api GET "/payments?order_id=$1" | jq '[.payments[].captured_amount] | add // 0'; }
attempts_of() { # saga step -> how many times its action ran
  jq "[.timeline[] | select(.step == \"$2\" and .phase == \"action\")] | length" <<<"$1"
}
# A scenario that changes the live server's settings (the "sagas" queue's,
# the PSP mock's) calls keep_settings first: what it read then is put back
# when the script exits, however it exits (a check that fails, an error, ^C),
# and the exit fails if that cannot be done. Only what changed is written
# back, so a setting the scenario did not touch is left as it is now. It
# takes the EXIT trap.
QUEUE_SETTINGS='["concurrency","key_concurrency","max_attempts","backoff","lease_ms","rate_limit"]'
keep_settings() {
  saved_queue=$(api GET /queues/sagas)
  saved_psp=$(api GET /psp/config)
  if ! jq -e '.name == "sagas"' <<<"$saved_queue" >/dev/null ||
     ! jq -e 'has("hang_next")' <<<"$saved_psp" >/dev/null; then
    echo "cannot read the settings to put back: $saved_queue $saved_psp" >&2
    exit 1
  fi
  # A paused queue runs no saga step: every checkout would stay PENDING.
  # Resuming it is the operator's call, not a demonstration's.
  if jq -e '.paused == true' <<<"$saved_queue" >/dev/null; then
    echo "the sagas queue is paused, so no checkout would end: resume it first" \
      "(backbone queues resume sagas, or POST /queues/sagas/resume)" >&2
    exit 1
  fi
  trap restore_settings EXIT
}
changed_settings() { # saved now keys -> {key: saved value} for each key whose value changed
  jq -cn --argjson a "$1" --argjson b "$2" --argjson keys "$3" \
    '[$keys[] as $k | select($a[$k] != $b[$k]) | {($k): $a[$k]}] | add // {}'
}
restore_one() { # path saved keys: put back what changed; fails if it still differs
  local now body
  now=$(api GET "$1") || return 1
  body=$(changed_settings "$2" "$now" "$3") || return 1
  [ "$body" = "{}" ] && return 0
  api PUT "$1" "$body" >/dev/null || return 1
  now=$(api GET "$1") || return 1
  [ "$(changed_settings "$2" "$now" "$3")" = "{}" ] && say "  (put back $1: $body)"
}
restore_settings() {
  local rc=$?
  trap - EXIT
  set +e
  restore_one /queues/sagas "$saved_queue" "$QUEUE_SETTINGS" || {
    echo "could not put back the sagas queue's settings: $saved_queue" >&2; rc=1; }
  restore_one /psp/config "$saved_psp" "$(jq -c keys <<<"$saved_psp")" || {
    echo "could not put back the PSP's config: $saved_psp" >&2; rc=1; }
  exit "$rc"
}
# A scenario against a live server does not trust the PSP mock's config as
# it finds it (a hang_op, a latency or a decline list left set by someone
# else would change what it shows): after keep_settings it calls set_psp
# with what its demonstration needs, and every other field the mock's
# behaviour depends on is set to its neutral value (no latency, no random
# failures, timeouts or declines, no declined cards or amounts, no pending
# fail_next/hang_next, hang_op ""). The seed is left as it is: with every
# rate 0 nothing is drawn. Exits if the PSP does not take it.
PSP_NEUTRAL='{"latency_ms":0,"failure_rate":0,"timeout_rate":0,"decline_rate":0,
  "decline_cards":[],"decline_amounts":[],"fail_next":0,"hang_next":0,"hang_op":""}'
set_psp() { # [json]: the PSP's config for the demonstration, the rest neutral
  local over='{}' want now
  [ $# -gt 0 ] && over=$1
  [ -n "${saved_psp:-}" ] || { echo "set_psp before keep_settings" >&2; exit 1; }
  want=$(jq -cn --argjson n "$PSP_NEUTRAL" --argjson w "$over" '$n + $w')
  now=$(api PUT /psp/config "$want")
  if ! jq -e --argjson w "$want" '. as $c | all($w | keys[]; $c[.] == $w[.])' <<<"$now" >/dev/null; then
    echo "the PSP did not take the config $want: $now" >&2
    exit 1
  fi
}
# ---- scenarios that start their own server (crash, faults) ------------------------
# They set BIN, DB, DECLINE_RATE and call own_server NAME first; up [ENV=V...]
# starts the server (again), accept_all runs the checkouts of N units of $sku
# in the background (load=its pid), reconcile checks the end.
own_server() { # name: a work directory and the server's settings
  BIN=${BACKBONE_BIN:-./build/backbone}
  work=$(mktemp -d "/tmp/backbone-$1.XXXXXX")
  DB=${BACKBONE_DB:-sqlite:$work/$1.db}
  pid=
  trap 'cleanup_server' EXIT
}
cleanup_server() { # keeps the work directory (database, logs, pages read) of a failed run, or with KEEP=1
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
  if [ "$failures" -gt 0 ] || [ -n "${KEEP:-}" ]; then say "kept for a look: $work"; else rm -rf "$work"; fi
}
up() { # [NAME=VALUE...]: environment of the server
  env "$@" "$BIN" serve --db "$DB" --port "${PORT:-18400}" --log-level warn --psp-latency-ms 2 \
    --psp-decline-rate "$DECLINE_RATE" 2>>"$work/server.log" &
  pid=$!
  for _ in $(seq 600); do curl -sf "$URL/readyz" >/dev/null 2>&1 && return; sleep 0.05; done
  say "the server did not come up"; exit 1
}
accept_all() { # key-prefix: N checkouts of one unit of $sku, each retried with its key until its 202, from CLIENTS (4) clients
  (
    for k in $(seq "${CLIENTS:-4}"); do
      for i in $(seq "$k" "${CLIENTS:-4}" "$N"); do
        until id=$(checkout "$1-$RUN-$i" "$sku" 1 100 2>/dev/null) && [ -n "$id" ] && [ "$id" != null ]; do
          sleep 0.05
        done
        echo "$id" >>"$work/accepted" # one short line: appended whole
      done &
    done
    wait
  ) &
  load=$!
}
accepted() { if [ -f "$work/accepted" ]; then wc -l <"$work/accepted"; else echo 0; fi; }
# Every accepted checkout settled; then the server's own account (every
# saga, also of checkouts whose 202 was lost, and the PSP's record) against
# the checkouts: one saga each, money, stock ($sku started with 100000),
# orders and the checkouts' status events agree exactly.
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
events_of() { # event type -> every such event as one JSON array (read on while the
  # outbox holds some back: on PostgreSQL a read gives seqs to 10,000 events at most)
  local out=$work/events.json after=0 page
  echo '[]' >"$out"
  while :; do
    page=$(api GET "/outbox?type=$1&limit=1000&after=$after")
    jq -s '.[0] + .[1].events' "$out" <(echo "$page") >"$out.new" && mv "$out.new" "$out"
    after=$(jq -r --argjson a "$after" '.events[-1].seq // $a' <<<"$page")
    [ "$(jq '.next_after == null and .held_back == 0' <<<"$page")" = true ] && break
  done
  cat "$out"
}
reconcile() {
  say "== waiting for every accepted checkout to settle"
  # Read back from the server's account of every saga (also of checkouts
  # whose 202 was lost in a crash) until each accepted checkout's has ended.
  sagas=$work/sagas.json
  for _ in $(seq 600); do
    pages "/sagas?type=checkout&limit=1000" sagas >"$sagas"
    comm -23 <(sort "$work/accepted") \
      <(jq -r '.[] | select(.state == "COMPLETED" or .state == "FAILED") | .correlation_id' "$sagas" | sort) \
      >"$work/unsettled"
    [ -s "$work/unsettled" ] || break
    sleep 0.2
  done
  [ -s "$work/unsettled" ] && say "  still not settled after 120 s: $(wc -l <"$work/unsettled") checkouts"
  pages "/psp/charges?limit=1000" charges >"$work/charges.json"
  # Each saga with its order and its payments, as the services record them
  # (read by 4 clients at once).
  facts=$work/facts.jsonl
  jq -r '.[] | "\(.state) \(.data.order_id // "-")"' "$sagas" >"$work/orders"
  split -n l/4 -d "$work/orders" "$work/orders."
  local readers=()
  for part in "$work"/orders.0?; do
    while read -r state order; do
      if [ "$order" = - ]; then
        printf '{"state":"%s","order":null,"payments":{"payments":[]}}\n' "$state"
      else
        printf '{"state":"%s","order":%s,"payments":%s}\n' "$state" "$(api GET "/orders/$order")" \
          "$(api GET "/payments?order_id=$order")"
      fi
    done <"$part" >"$part.facts" &
    readers+=($!)
  done
  wait "${readers[@]}" # not a bare wait: the server runs in the background too
  cat "$work"/orders.0?.facts >"$facts"
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
  # Each checkout's end announced once, as it ended (checkout.status.changed.v1).
  events_of checkout.status.changed.v1 >"$work/ends.json"
  check "checkout status events, one per ended checkout" "$((completed + failed))" "$(jq length "$work/ends.json")"
  check "ended checkouts without exactly one status event saying how" 0 \
    "$(jq -n --slurpfile s "$sagas" --slurpfile v "$work/ends.json" \
        '($v[0] | group_by(.aggregate_id) | map({key: .[0].aggregate_id, value: map(.data.to)})
          | from_entries) as $to
         | [$s[0][] | select(.state == "COMPLETED" or .state == "FAILED")
            | select($to[.correlation_id] != [.state])] | length')"
  # Fulfilment (the "fulfilment" jobs of queue "default", one submitted with
  # each order's confirmation, in its transaction): one per COMPLETED
  # checkout's order, naming that checkout, none for a FAILED one.
  pages "/jobs?queue=default&limit=1000" jobs |
    jq '[.[] | select(.handler == "fulfilment") | .payload]' >"$work/fulfilments.json"
  fulfil() { # jq over the sagas ($sagas, the COMPLETED ones $done) and the jobs' payloads ($f)
    jq -n --slurpfile s "$sagas" --slurpfile f "$work/fulfilments.json" \
      '$s[0] as $sagas | [$sagas[] | select(.state == "COMPLETED")] as $done | $f[0] as $f | '"$1"
  }
  check "fulfilment jobs, one per COMPLETED checkout" "$completed" "$(jq length "$work/fulfilments.json")"
  check "orders with more than one fulfilment job" 0 \
    "$(fulfil '$f | group_by(.order_id) | map(select(length > 1)) | length')"
  check "COMPLETED checkouts without their order's fulfilment job" 0 \
    "$(fulfil '($f | map({key: .order_id, value: .checkout_id}) | from_entries) as $of
       | [$done[] | select($of[.data.order_id] != .correlation_id)] | length')"
  check "fulfilment jobs of FAILED checkouts' orders" 0 \
    "$(fulfil '($sagas | map(select(.state == "FAILED" and .data.order_id)
                          | {key: .data.order_id, value: true}) | from_entries) as $failed
       | [$f[] | select($failed[.order_id])] | length')"
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
}

done_() {
  if [ "$failures" -gt 0 ]; then say "$failures check(s) failed"; exit 1; fi
  say "all checks passed"
}
