#!/usr/bin/env bash
# More buyers than stock: the excess fail "out of stock", nothing oversold.
# (The PSP's settings are made neutral for it and put back when it exits.)
. "$(dirname "$0")/lib.sh"
keep_settings
set_psp # no declines, failures or hangs: a checkout that gets its stock completes
BUYERS=${BUYERS:-20} STOCK=${STOCK:-5}
sku=SHORT-$RUN
product "$sku" "$STOCK"
say "== $BUYERS buyers at once for the last $STOCK units of $sku"
tmp=$(mktemp -d)
for i in $(seq "$BUYERS"); do checkout "short-$RUN-$i" "$sku" 1 100 >"$tmp/$i" & done
wait
ok=0 out=0
for i in $(seq "$BUYERS"); do
  c=$(settle "$(cat "$tmp/$i")")
  case "$(jq -r '"\(.status) \(.reason)"' <<<"$c")" in
    "COMPLETED null") ok=$((ok + 1)) ;;
    "FAILED out of stock") out=$((out + 1)) ;;
    *) say "  unexpected: $c" ;;
  esac
done
rm -rf "$tmp"
say "== reconciliation"
check "completed" "$STOCK" "$ok"
check "failed out of stock" "$((BUYERS - STOCK))" "$out"
check "stock left (never below zero)" 0 "$(stock_of "$sku" | jq .on_hand)"
check "stock still reserved" 0 "$(stock_of "$sku" | jq .reserved)"
done_
