#!/usr/bin/env bash
# The PSP hangs past the step's timeout (--psp-timeout, 2 s by default):
# the authorization is retried with the "sagas" queue's backoff, then the
# saga compensates: the order is CANCELLED, the stock is back, nothing is
# captured. Then the captures hang: the PSP takes the money each time but no
# answer arrives, so the compensation's void is refused (a PSP settles an
# authorization once) and the capture is refunded instead. (Sets the
# "sagas" queue to 3 attempts, 200 ms apart, and the PSP's other settings to
# their neutral values, for the demonstration; the queue and the PSP are put
# back as they were when it exits.)
. "$(dirname "$0")/lib.sh"
keep_settings
sku=HANG-$RUN
product "$sku" 5
api PUT /queues/sagas '{"max_attempts":3,"backoff":{"base_ms":200,"factor":1}}' >/dev/null
set_psp '{"hang_next":3}'
say "== a checkout while the PSP hangs on the next 3 calls"
one_checkout "hang-$RUN" "$sku" 1 700
say "== reconciliation"
check "checkout" FAILED "$(jq -r .status <<<"$c")"
check "authorization attempts" 3 "$(attempts_of "$saga" authorize_payment)"
check "order" CANCELLED "$(api GET "/orders/$order" | jq -r .status)"
check "stock available again" 5 "$(stock_of "$sku" | jq .available)"
check "money captured" 0 "$(captured_for "$order")"
set_psp '{"hang_next":3,"hang_op":"capture"}'
say "== a checkout whose 3 captures are made but never answered"
one_checkout "lost-$RUN" "$sku" 1 700
say "== reconciliation"
check "checkout" FAILED "$(jq -r .status <<<"$c")"
check "capture attempts" 3 "$(attempts_of "$saga" capture_payment)"
payment=$(api GET "/payments?order_id=$order" | jq -c '.payments[0]')
check "payment" REFUNDED "$(jq -r .state <<<"$payment")"
check "money refunded" 700 "$(jq .refunded_amount <<<"$payment")"
check "order" CANCELLED "$(api GET "/orders/$order" | jq -r .status)"
check "stock available again" 5 "$(stock_of "$sku" | jq .available)"
done_
