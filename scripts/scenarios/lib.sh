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
done_() {
  if [ "$failures" -gt 0 ]; then say "$failures check(s) failed"; exit 1; fi
  say "all checks passed"
}
