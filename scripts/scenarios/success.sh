#!/usr/bin/env bash
# Many concurrent checkouts all end COMPLETED; stock, payments and orders
# agree exactly.   N=50 scripts/scenarios/success.sh
# (The PSP's settings are made neutral for it and put back when it exits.)
. "$(dirname "$0")/lib.sh"
keep_settings
set_psp # no declines, failures or hangs: a checkout that gets its stock completes
N=${N:-50}
sku=OK-$RUN
product "$sku" 1000
say "== $N concurrent checkouts of 1 to 3 units of $sku (1000 in stock)"
declare -a ids qtys
tmp=$(mktemp -d)
for i in $(seq "$N"); do
  q=$((RANDOM % 3 + 1))
  qtys[$i]=$q
  checkout "ok-$RUN-$i" "$sku" "$q" 250 >"$tmp/$i" &
done
wait
total_qty=0 total_amount=0 completed=0 captured=0 confirmed=0
for i in $(seq "$N"); do
  c=$(settle "$(cat "$tmp/$i")")
  total_qty=$((total_qty + qtys[i]))
  total_amount=$((total_amount + qtys[i] * 250))
  [ "$(jq -r .status <<<"$c")" = COMPLETED ] && completed=$((completed + 1))
  order=$(jq -r .order_id <<<"$c")
  captured=$((captured + $(captured_for "$order")))
  [ "$(api GET "/orders/$order" | jq -r .status)" = CONFIRMED ] && confirmed=$((confirmed + 1))
done
rm -rf "$tmp"
stock=$(stock_of "$sku")
say "== reconciliation"
check "checkouts completed" "$N" "$completed"
check "orders confirmed" "$N" "$confirmed"
check "units sold (on hand 1000 - sold)" "$((1000 - total_qty))" "$(jq .on_hand <<<"$stock")"
check "units still reserved" 0 "$(jq .reserved <<<"$stock")"
check "money captured (minor units)" "$total_amount" "$captured"
done_
