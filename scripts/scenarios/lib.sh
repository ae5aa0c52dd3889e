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
api() { # method path [json] -> body
  curl -sS -X "$1" "${AUTH[@]}" -H 'Content-Type: application/json' "$URL$2" ${3:+-d "$3"}
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
done_() {
  if [ "$failures" -gt 0 ]; then say "$failures check(s) failed"; exit 1; fi
  say "all checks passed"
}
