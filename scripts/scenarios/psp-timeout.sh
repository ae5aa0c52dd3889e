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
one_checkout "hang-$RUN" "$sku" 1 700
say "== reconciliation"
check "checkout" FAILED "$(jq -r .status <<<"$c")"
check "authorization attempts" 3 "$(attempts_of "$saga" authorize_payment)"
check "order" CANCELLED "$(api GET "/orders/$order" | jq -r .status)"
check "stock available again" 5 "$(stock_of "$sku" | jq .available)"
check "money captured" 0 "$(captured_for "$order")"
done_
