/*
 * log.c: JSON-lines logging.
 *
 * A line is built in a per-thread buffer and written with one fwrite, so lines
 * from different threads never interleave. Callers go through the log_*()
 * macros, which test the level before evaluating any argument.
 */
#include "base/base.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

_Atomic int bb_log_level = BB_LOG_INFO;

static FILE *log_stream; /* NULL means stderr; set once at start-up */

static _Thread_local char ctx_request_id[64];
static _Thread_local char ctx_traceparent[64];

static const char *const LEVEL_NAMES[] = {"debug", "info", "warn", "error", "off"};

const char *
bb_log_level_name(enum bb_log_level level)
{
    if ((int)level < 0 || (size_t)level >= BB_ARRAY_LEN(LEVEL_NAMES))
        return "unknown";
    return LEVEL_NAMES[level];
}

enum err
bb_log_level_parse(const char *text, enum bb_log_level *out)
{
    for (size_t i = 0; i < BB_ARRAY_LEN(LEVEL_NAMES); i++) {
        if (strcmp(text, LEVEL_NAMES[i]) == 0) {
            *out = (enum bb_log_level)i;
            return ERR_OK;
        }
    }
    return ERR_INVALID;
}

void
bb_log_set_stream(FILE *f)
{
    log_stream = f;
}

void
bb_log_context_set(const char *request_id, const char *traceparent)
{
    bb_strlcpy(ctx_request_id, request_id ? request_id : "", sizeof ctx_request_id);
    bb_strlcpy(ctx_traceparent, traceparent ? traceparent : "", sizeof ctx_traceparent);
}

void
bb_log_context_clear(void)
{
    ctx_request_id[0] = '\0';
    ctx_traceparent[0] = '\0';
}

const char *
bb_log_context_traceparent(void)
{
    return ctx_traceparent[0] ? ctx_traceparent : NULL;
}

/*
 * Length modifiers we accept, in the order to try them (longest first). The
 * conversion letter that follows decides how the argument is read.
 */
static size_t
spec_length(const char *p, char *mod)
{
    if (strncmp(p, "ll", 2) == 0) {
        *mod = 'L';
        return 2;
    }
    if (*p == 'l' || *p == 'z') {
        *mod = *p;
        return 1;
    }
    *mod = '\0';
    return 0;
}

static void
emit_value(struct bb_buf *b, char mod, char conv, va_list *ap)
{
    switch (conv) {
    case 's': {
        const char *s = va_arg(*ap, const char *);
        if (s)
            bb_buf_json_string(b, s);
        else
            bb_buf_puts(b, "null");
        return;
    }
    case 'd':
    case 'i':
        if (mod == 'L')
            bb_buf_printf(b, "%lld", va_arg(*ap, long long));
        else if (mod == 'l')
            bb_buf_printf(b, "%ld", va_arg(*ap, long));
        else if (mod == 'z')
            bb_buf_printf(b, "%zd", va_arg(*ap, ssize_t));
        else
            bb_buf_printf(b, "%d", va_arg(*ap, int));
        return;
    case 'u':
        if (mod == 'L')
            bb_buf_printf(b, "%llu", va_arg(*ap, unsigned long long));
        else if (mod == 'l')
            bb_buf_printf(b, "%lu", va_arg(*ap, unsigned long));
        else if (mod == 'z')
            bb_buf_printf(b, "%zu", va_arg(*ap, size_t));
        else
            bb_buf_printf(b, "%u", va_arg(*ap, unsigned));
        return;
    case 'f':
    case 'g':
        bb_buf_printf(b, "%.6g", va_arg(*ap, double));
        return;
    default:
        bb_panic(__FILE__, __LINE__, "log format: unsupported conversion %%%c", conv);
    }
}

/* Walk "k1=%s k2=%d ..." and append ,"k1":"..","k2":.. to b. */
static void
emit_fields(struct bb_buf *b, const char *fields, va_list *ap)
{
    const char *p = fields;
    while (*p) {
        while (*p == ' ')
            p++;
        if (!*p)
            break;
        const char *eq = strchr(p, '=');
        if (eq == NULL || eq[1] != '%')
            bb_panic(__FILE__, __LINE__, "log format: expected key=%%spec in \"%s\"", fields);
        bb_buf_puts(b, ",\"");
        bb_buf_append(b, p, (size_t)(eq - p));
        bb_buf_puts(b, "\":");
        char mod;
        const char *spec = eq + 2;
        spec += spec_length(spec, &mod);
        emit_value(b, mod, *spec, ap);
        p = spec + 1;
    }
}

void
bb_log_emit(enum bb_log_level level, const char *file, int line, const char *event,
            const char *fields, ...)
{
    struct bb_buf text;
    struct bb_buf *b = &text;
    bb_buf_init(b);

    char ts[32];
    bb_wall_ms_format(bb_wall_ms(), ts);
    bb_buf_printf(b, "{\"ts\":\"%s\",\"level\":\"%s\",\"event\":", ts, bb_log_level_name(level));
    bb_buf_json_string(b, event);

    va_list ap;
    va_start(ap, fields);
    emit_fields(b, fields, &ap);
    va_end(ap);

    if (ctx_request_id[0]) {
        bb_buf_puts(b, ",\"request_id\":");
        bb_buf_json_string(b, ctx_request_id);
    }
    if (ctx_traceparent[0]) {
        bb_buf_puts(b, ",\"traceparent\":");
        bb_buf_json_string(b, ctx_traceparent);
    }
    if (level >= BB_LOG_WARN) {
        const char *base = strrchr(file, '/');
        bb_buf_printf(b, ",\"src\":\"%s:%d\"", base ? base + 1 : file, line);
    }
    bb_buf_puts(b, "}\n");

    FILE *out = log_stream ? log_stream : stderr;
    fwrite(b->data, 1, b->len, out);
    fflush(out);
    bb_buf_deinit(b);
}

bool
bb_log_limit_allow(struct bb_log_limit *lim, int per_sec, int64_t now, int *suppressed_out)
{
    int64_t window = lim->window_ms;
    if (now - window >= 1000) {
        lim->window_ms = now;
        lim->count = 0;
    }
    if (lim->count++ < per_sec) {
        *suppressed_out = lim->suppressed;
        lim->suppressed = 0;
        return true;
    }
    lim->suppressed++;
    return false;
}
