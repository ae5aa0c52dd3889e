#!/usr/bin/env bash
# The same Idempotency-Key sent 10 times at once makes one checkout and one saga.
# (The PSP's settings are made neutral for it and put back when it exits.)
. "$(dirname "$0")/lib.sh"
keep_settings
set_psp # no declines, failures or hangs: a checkout that gets its stock completes
sku=DUP-$RUN
product "$sku" 5
say "== 10 concurrent POST /checkout with Idempotency-Key dup-$RUN"
tmp=$(mktemp -d)
for i in $(seq 10); do checkout "dup-$RUN" "$sku" 1 100 >"$tmp/$i" & done
wait
ids=$(cat "$tmp"/* | sort -u)
rm -rf "$tmp"
c=$(settle "$ids")
say "== reconciliation"
check "distinct checkouts" 1 "$(wc -l <<<"$ids" | tr -d ' ')"
check "sagas for it" 1 "$(api GET "/sagas?correlation_id=$ids" | jq '.sagas | length')"
check "checkout" COMPLETED "$(jq -r .status <<<"$c")"
check "units sold" 4 "$(stock_of "$sku" | jq .on_hand)"
done_
