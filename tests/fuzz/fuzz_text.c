/*
 * fuzz_text.c: the text parsers behind query arguments, options and JSON
 * members: durations, sizes and RFC 3339 times.
 */
#include "fuzz.h"

#include "base/base.h"

#include <stdlib.h>

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_text(data, size);
    int64_t v;
    if (bb_duration_parse(text, &v) == ERR_OK && v < 0)
        abort();
    if (bb_size_parse(text, &v) == ERR_OK && v < 0)
        abort();
    if (bb_rfc3339_parse(text, &v) == ERR_OK) {
        char back[32];
        bb_wall_ms_format(v, back); /* what it parsed prints again */
    }
    free(text);
    return 0;
}
