/*
 * err.c: the error table's lookups, bb_fail and bb_panic.
 */
#include "base/base.h"

#include <stdlib.h>
#include <string.h>

struct err_row {
    enum err code;
    const char *name;
    int status;
    const char *slug;
    const char *title;
};

static const struct err_row ERR_ROWS[] = {
#define BB_ERR_ROW(name, num, status, slug, title) {ERR_##name, #name, status, slug, title},
    BB_ERR_TABLE(BB_ERR_ROW)
#undef BB_ERR_ROW
};

static const struct err_row *
err_row(enum err code)
{
    for (size_t i = 0; i < BB_ARRAY_LEN(ERR_ROWS); i++) {
        if (ERR_ROWS[i].code == code)
            return &ERR_ROWS[i];
    }
    return NULL;
}

const char *
bb_err_name(enum err code)
{
    const struct err_row *r = err_row(code);
    return r ? r->name : "UNKNOWN";
}

const char *
bb_err_slug(enum err code)
{
    const struct err_row *r = err_row(code);
    return r ? r->slug : "internal";
}

const char *
bb_err_title(enum err code)
{
    const struct err_row *r = err_row(code);
    return r ? r->title : "Internal error";
}

int
bb_err_http_status(enum err code)
{
    const struct err_row *r = err_row(code);
    return r ? r->status : 500;
}

#undef bb_fail /* the analyzer's macro (base.h) */
enum err
bb_fail(struct bb_error *e, enum err code, const char *field, const char *fmt, ...)
{
    if (e == NULL)
        return code;
    e->code = code;
    /* Cut on a character boundary: an error's text ends up in JSON. */
    bb_utf8_copy(e->field, sizeof e->field, field ? field : "");
    char detail[sizeof e->detail];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    bb_utf8_copy(e->detail, sizeof e->detail, detail);
    return code;
}

void
bb_error_clear(struct bb_error *e)
{
    e->code = ERR_OK;
    e->field[0] = '\0';
    e->detail[0] = '\0';
}

void
bb_panic(const char *file, int line, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    bb_log_emit(BB_LOG_ERROR, file, line, "panic", "detail=%s", msg);
    fprintf(stderr, "backbone: panic at %s:%d: %s\n", file, line, msg);
    abort();
}
