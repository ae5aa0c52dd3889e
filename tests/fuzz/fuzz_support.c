/*
 * fuzz_support.c: helpers shared by the harnesses.
 */
#include "fuzz.h"

#include "base/base.h"

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
