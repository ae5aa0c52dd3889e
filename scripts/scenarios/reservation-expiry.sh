#!/usr/bin/env bash
# The seed's "oversell" scenario, shown prevented: the payment takes longer
# than the reservation's TTL, so the stock goes back before the saga commits
# the sale; the commit is refused, the payment refunded, nothing oversold.
# Needs a server started with a short TTL, e.g.
#   backbone serve --checkout-reservation-ttl 1s
# (the script makes each PSP call take LATENCY_MS, 1500 by default, with
# the PSP's other settings neutral, and puts the PSP back as it was when it
# exits).
. "$(dirname "$0")/lib.sh"
keep_settings
LATENCY_MS=${LATENCY_MS:-1500}
sku=EXP-$RUN
product "$sku" 1
set_psp "{\"latency_ms\":$LATENCY_MS}"
say "== one unit of $sku, a checkout, and a PSP that takes $LATENCY_MS ms per call"
one_checkout "exp-$RUN" "$sku" 1 900
say "== reconciliation"
check "checkout" FAILED "$(jq -r .status <<<"$c")"
check "reason" "the reservation expired before the payment completed" "$(jq -r .reason <<<"$c")"
check "payment" REFUNDED "$(api GET "/payments?order_id=$order" | jq -r '.payments[0].state')"
check "unit on hand (sold to nobody)" 1 "$(stock_of "$sku" | jq .on_hand)"
check "unit available again" 1 "$(stock_of "$sku" | jq .available)"
done_
