/*
 * fuzz_support.c: helpers shared by the harnesses.
 */
#include "fuzz.h"

#include "base/base.h"

#include <jansson.h>
#include <string.h>

char *
fuzz_text(const uint8_t *data, size_t size)
{
    char *s = xmalloc(size + 1);
    if (size > 0)
        memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

json_t *
fuzz_json(const uint8_t *data, size_t size)
{
    json_error_t jerr;
    return json_loadb((const char *)data, size,
                      JSON_REJECT_DUPLICATES | JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
}
