/*
 * mem.c: allocation that aborts on OOM, bounded string copies, growable
 * buffers and the per-request arena.
 */
#include "base/base.h"

#include <stdlib.h>
#include <string.h>

static BB_NORETURN void
oom(size_t n)
{
    fprintf(stderr, "backbone: out of memory allocating %zu bytes\n", n);
    abort();
}

void *
xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        oom(n);
    return p;
}

void *
xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        oom(n * size);
    return p;
}

void *
xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        oom(n);
    return q;
}

char *
xstrdup(const char *s)
{
    return xstrndup(s, strlen(s));
}

char *
xstrndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *p = xmalloc(len + 1);
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

size_t
bb_strlcpy(char *dst, const char *src, size_t dst_size)
{
    size_t len = strlen(src);
    if (dst_size > 0) {
        size_t n = len < dst_size - 1 ? len : dst_size - 1;
        memcpy(dst, src, n);
        dst[n] = '\0';
    }
    return len;
}

void
bb_buf_init(struct bb_buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void
bb_buf_deinit(struct bb_buf *b)
{
    free(b->data);
    bb_buf_init(b);
}

void
bb_buf_reset(struct bb_buf *b)
{
    b->len = 0;
    if (b->data)
        b->data[0] = '\0';
}

static void
buf_reserve(struct bb_buf *b, size_t extra)
{
    BB_ASSERT(b->len + extra + 1 > b->len); /* no wrap-around */
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1)
        cap *= 2;
    b->data = xrealloc(b->data, cap);
    b->cap = cap;
}

void
bb_buf_append(struct bb_buf *b, const void *p, size_t n)
{
    buf_reserve(b, n);
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void
bb_buf_puts(struct bb_buf *b, const char *s)
{
    bb_buf_append(b, s, strlen(s));
}

void
bb_buf_vprintf(struct bb_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    BB_ASSERT(n >= 0);
    buf_reserve(b, (size_t)n);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
}

void
bb_buf_printf(struct bb_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    bb_buf_vprintf(b, fmt, ap);
    va_end(ap);
}

void
bb_buf_json_stringn(struct bb_buf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    bb_buf_append(b, "\"", 1);
    const unsigned char *p = (const unsigned char *)s, *end = p + len;
    while (p < end) {
        const unsigned char *run = p; /* bytes that need no escape, at once */
        while (p < end && *p >= 0x20 && *p != '"' && *p != '\\')
            p++;
        if (p > run)
            bb_buf_append(b, run, (size_t)(p - run));
        if (p == end)
            break;
        switch (*p) {
        case '"':
            bb_buf_append(b, "\\\"", 2);
            break;
        case '\\':
            bb_buf_append(b, "\\\\", 2);
            break;
        case '\b':
            bb_buf_append(b, "\\b", 2);
            break;
        case '\f':
            bb_buf_append(b, "\\f", 2);
            break;
        case '\n':
            bb_buf_append(b, "\\n", 2);
            break;
        case '\r':
            bb_buf_append(b, "\\r", 2);
            break;
        case '\t':
            bb_buf_append(b, "\\t", 2);
            break;
        default: {
            char esc[6] = {'\\', 'u', '0', '0', hex[*p >> 4], hex[*p & 15]};
            bb_buf_append(b, esc, sizeof esc);
        }
        }
        p++;
    }
    bb_buf_append(b, "\"", 1);
}

void
bb_buf_json_string(struct bb_buf *b, const char *s)
{
    bb_buf_json_stringn(b, s, strlen(s));
}

/* Arena: a list of chunks; big requests get a chunk of their own. */
struct bb_arena_chunk {
    struct bb_arena_chunk *next;
    size_t used;
    size_t cap;
    _Alignas(max_align_t) unsigned char mem[];
};

enum { ARENA_CHUNK_BYTES = 4096 };

void
bb_arena_init(struct bb_arena *a)
{
    a->head = NULL;
}

void
bb_arena_deinit(struct bb_arena *a)
{
    struct bb_arena_chunk *c = a->head;
    while (c) {
        struct bb_arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
}

void *
bb_arena_alloc(struct bb_arena *a, size_t n)
{
    const size_t align = _Alignof(max_align_t);
    n = (n + align - 1) & ~(align - 1);
    struct bb_arena_chunk *c = a->head;
    if (c == NULL || c->cap - c->used < n) {
        size_t cap = n > ARENA_CHUNK_BYTES ? n : ARENA_CHUNK_BYTES;
        c = xmalloc(sizeof *c + cap);
        c->used = 0;
        c->cap = cap;
        c->next = a->head;
        a->head = c;
    }
    void *p = c->mem + c->used;
    c->used += n;
    return p;
}

char *
bb_arena_strdup(struct bb_arena *a, const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = bb_arena_alloc(a, n);
    memcpy(p, s, n);
    return p;
}

char *
bb_arena_printf(struct bb_arena *a, const char *fmt, ...)
{
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    BB_ASSERT(n >= 0);
    char *p = bb_arena_alloc(a, (size_t)n + 1);
    vsnprintf(p, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    return p;
}

/* Length of the valid UTF-8 sequence at `p` (RFC 3629: no overlong forms,
 * no surrogates, nothing above U+10FFFF), or 0. */
static size_t
utf8_sequence_len(const unsigned char *p)
{
    if (p[0] < 0x80)
        return 1;
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF;
    if (p[0] >= 0xC2 && p[0] <= 0xDF) {
        n = 2;
    } else if (p[0] >= 0xE0 && p[0] <= 0xEF) {
        n = 3;
        lo = p[0] == 0xE0 ? 0xA0 : 0x80;
        hi = p[0] == 0xED ? 0x9F : 0xBF;
    } else if (p[0] >= 0xF0 && p[0] <= 0xF4) {
        n = 4;
        lo = p[0] == 0xF0 ? 0x90 : 0x80;
        hi = p[0] == 0xF4 ? 0x8F : 0xBF;
    } else {
        return 0;
    }
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++) {
        if (p[i] < 0x80 || p[i] > 0xBF) /* also stops at the NUL */
            return 0;
    }
    return n;
}

size_t
bb_utf8_copy(char *dst, size_t cap, const char *src)
{
    BB_ASSERT(cap > 0);
    size_t o = 0;
    const unsigned char *p = (const unsigned char *)src;
    while (*p) {
        size_t n = utf8_sequence_len(p);
        if (n == 0 || (n == 1 && (*p < 0x20 || *p == 0x7F))) {
            if (o + 1 >= cap)
                break;
            dst[o++] = n == 0 ? '?' : ' ';
            p++;
            continue;
        }
        if (o + n >= cap)
            break;
        memcpy(dst + o, p, n);
        o += n;
        p += n;
    }
    dst[o] = '\0';
    return o;
}

bool
bb_ident_is_valid(const char *s, size_t max)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (n >= max)
            return false;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-'))
            return false;
    }
    return n > 0;
}
