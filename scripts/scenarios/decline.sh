#!/usr/bin/env bash
# A decline is permanent: the saga compensates at once, without retries.
# (The PSP's other settings are made neutral for it, and the PSP is put
# back as it was when the script exits.)
. "$(dirname "$0")/lib.sh"
keep_settings
sku=DECL-$RUN
product "$sku" 5
set_psp '{"decline_cards":["tok_stolen"]}'
say "== a checkout paid with a card the PSP declines (tok_stolen)"
one_checkout "decline-$RUN" "$sku" 2 100 tok_stolen
say "== reconciliation"
check "checkout" FAILED "$(jq -r .status <<<"$c")"
check "reason" "the payment was declined" "$(jq -r .reason <<<"$c")"
check "authorization attempts (no retries)" 1 "$(attempts_of "$saga" authorize_payment)"
check "order" CANCELLED "$(api GET "/orders/$order" | jq -r .status)"
check "stock available again" 5 "$(stock_of "$sku" | jq .available)"
check "money captured" 0 "$(captured_for "$order")"
done_
