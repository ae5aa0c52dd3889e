#!/usr/bin/env bash
# The PSP hangs past the step's timeout (--psp-timeout, 2 s by default):
# the authorization is retried with the "sagas" queue's backoff, then the
# saga compensates: the order is CANCELLED, the stock is back, nothing is
# captured. (Sets the "sagas" queue to 3 attempts, 200 ms apart, for the
# demonstration.)
. "$(dirname "$0")/lib.sh"
sku=HANG-$RUN
product "$sku" 5
api PUT /queues/sagas '{"max_attempts":3,"backoff":{"base_ms":200,"factor":1}}' >/dev/null
api PUT /psp/config '{"hang_next":3}' >/dev/null
say "== a checkout while the PSP hangs on the next 3 calls"
c=$(settle "$(checkout "hang-$RUN" "$sku" 1 700)")
saga=$(saga_of "$(jq -r .checkout_id <<<"$c")")
say "  checkout: $(jq -r '"\(.status): \(.reason)"' <<<"$c")"
timeline "$saga"
order=$(jq -r .order_id <<<"$c")
say "== reconciliation"
check "checkout" FAILED "$(jq -r .status <<<"$c")"
check "authorization attempts" 3 "$(jq '[.timeline[] | select(.step=="authorize_payment" and .phase=="action")] | length' <<<"$saga")"
check "order" CANCELLED "$(api GET "/orders/$order" | jq -r .status)"
check "stock available again" 5 "$(stock_of "$sku" | jq .available)"
check "money captured" 0 "$(api GET "/payments?order_id=$order" | jq '[.payments[].captured_amount] | add // 0')"
done_
