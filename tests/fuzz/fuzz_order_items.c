/*
 * fuzz_order_items.c: the items of an order or a checkout
 * ([{sku, qty, unit_price}]) through order_items_from_json.
 */
#include "fuzz.h"

#include "base/base.h"
#include "orders/orders.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *items = fuzz_json(data, size);
    if (items == NULL)
        return 0;
    struct order_item out[ORDER_ITEMS_MAX];
    size_t n = 0;
    struct bb_error e;
    enum err rc = order_items_from_json(items, out, &n, &e);
    if (rc == ERR_OK && (n == 0 || n > ORDER_ITEMS_MAX))
        abort();
    if (rc != ERR_OK && (e.detail[0] == '\0' || strncmp(e.field, "items", 5) != 0))
        abort(); /* a refusal names items or items[i].field */
    json_decref(items);
    return 0;
}
