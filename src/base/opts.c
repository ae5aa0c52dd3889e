/*
 * opts.c: table-driven options. One table row declares a flag, its
 * environment variable, type, bounds, default and documentation; the same
 * table parses, validates and prints --help (PgBouncer's and Redis's config
 * tables).
 */
#include "base/base.h"

#include <ctype.h>
#include <errno.h>
#include <strings.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static void *
opt_slot(const struct bb_opt *o, void *dst)
{
    return (char *)dst + o->offset;
}

static const char *
type_hint(enum bb_opt_type t)
{
    switch (t) {
    case BB_OPT_STRING:
        return "text";
    case BB_OPT_INT:
        return "integer";
    case BB_OPT_DURATION:
        return "duration (500ms, 30s, 5m, 1h)";
    case BB_OPT_SIZE:
        return "size (512KiB, 1MiB)";
    case BB_OPT_BOOL:
        return "true|false";
    }
    return "value";
}

static enum err
parse_bool(const char *v, bool *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (size_t i = 0; i < BB_ARRAY_LEN(yes); i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = true;
            return ERR_OK;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = false;
            return ERR_OK;
        }
    }
    return ERR_INVALID;
}

static enum err
parse_int(const char *v, int64_t *out)
{
    if (*v == '\0')
        return ERR_INVALID;
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno != 0 || *end != '\0')
        return ERR_INVALID;
    *out = x;
    return ERR_OK;
}

/* Parse `value` into the option's slot; `source` names it in errors. */
static enum err
opt_set(const struct bb_opt *o, void *dst, const char *value, const char *source,
        struct bb_error *e)
{
    void *slot = opt_slot(o, dst);
    int64_t n = 0;
    enum err rc = ERR_OK;
    switch (o->type) {
    case BB_OPT_STRING: {
        char **s = slot;
        free(*s);
        *s = xstrdup(value);
        return ERR_OK;
    }
    case BB_OPT_BOOL:
        if (parse_bool(value, slot) != ERR_OK)
            return bb_fail(e, ERR_USAGE, o->name, "%s: expected true or false, got '%s'", source,
                           value);
        return ERR_OK;
    case BB_OPT_INT:
        rc = parse_int(value, &n);
        break;
    case BB_OPT_DURATION:
        rc = bb_duration_parse(value, &n);
        break;
    case BB_OPT_SIZE:
        rc = bb_size_parse(value, &n);
        break;
    }
    if (rc != ERR_OK)
        return bb_fail(e, ERR_USAGE, o->name, "%s: expected %s, got '%s'", source,
                       type_hint(o->type), value);
    if (n < o->min || n > o->max)
        return bb_fail(e, ERR_USAGE, o->name,
                       "%s: %s is out of range (%" PRId64 " to %" PRId64 "%s)", source, value,
                       o->min, o->max, o->type == BB_OPT_DURATION ? " ms" : "");
    *(int64_t *)slot = n;
    return ERR_OK;
}

static void
env_name(const char *opt_name, char *out, size_t out_size)
{
    size_t n = bb_strlcpy(out, "BACKBONE_", out_size);
    for (const char *p = opt_name; *p && n + 1 < out_size; p++, n++)
        out[n] = (char)(*p == '-' ? '_' : toupper((unsigned char)*p));
    out[n < out_size ? n : out_size - 1] = '\0';
}

static const struct bb_opt *
opt_find(const struct bb_opt *opts, size_t n_opts, const char *name, size_t name_len)
{
    for (size_t i = 0; i < n_opts; i++) {
        if (strlen(opts[i].name) == name_len && strncmp(opts[i].name, name, name_len) == 0)
            return &opts[i];
    }
    return NULL;
}

static enum err
apply_defaults_and_env(const struct bb_opt *opts, size_t n_opts, void *dst, bool use_env,
                       struct bb_error *e)
{
    for (size_t i = 0; i < n_opts; i++) {
        const struct bb_opt *o = &opts[i];
        if (o->def) {
            char source[128];
            snprintf(source, sizeof source, "default of --%s", o->name);
            enum err rc = opt_set(o, dst, o->def, source, e);
            BB_ASSERT(rc == ERR_OK); /* a bad default is a programming error */
        }
        if (!use_env || (o->flags & BB_OPT_NO_ENV))
            continue;
        char var[128];
        env_name(o->name, var, sizeof var);
        const char *v = getenv(var);
        if (v != NULL) {
            enum err rc = opt_set(o, dst, v, var, e);
            if (rc != ERR_OK)
                return rc;
        }
    }
    return ERR_OK;
}

enum err
bb_opts_parse(const struct bb_opt *opts, size_t n_opts, void *dst, int argc, char **argv,
              bool use_env, const char **positional, size_t max_positional, size_t *n_positional,
              struct bb_error *e)
{
    size_t npos = 0;
    enum err rc = apply_defaults_and_env(opts, n_opts, dst, use_env, e);
    if (rc != ERR_OK)
        return rc;
    bool options_done = false;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (options_done || strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
            if (!options_done && strcmp(arg, "--") == 0) {
                options_done = true;
                continue;
            }
            if (npos >= max_positional)
                return bb_fail(e, ERR_USAGE, "", "unexpected argument '%s'", arg);
            positional[npos++] = arg;
            continue;
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
        const struct bb_opt *o = opt_find(opts, n_opts, name, name_len);
        if (o == NULL)
            return bb_fail(e, ERR_USAGE, "", "unknown option '--%.*s' (see --help)", (int)name_len,
                           name);
        const char *value;
        if (eq) {
            value = eq + 1;
        } else if (o->type == BB_OPT_BOOL) {
            /* "--flag", or "--flag false" when a boolean follows. */
            bool ignored;
            if (i + 1 < argc && parse_bool(argv[i + 1], &ignored) == ERR_OK)
                value = argv[++i];
            else
                value = "true";
        } else if (i + 1 < argc) {
            value = argv[++i];
        } else {
            return bb_fail(e, ERR_USAGE, o->name, "--%s: missing value (%s)", o->name,
                           type_hint(o->type));
        }
        char source[128];
        snprintf(source, sizeof source, "--%s", o->name);
        rc = opt_set(o, dst, value, source, e);
        if (rc != ERR_OK)
            return rc;
    }
    if (n_positional)
        *n_positional = npos;
    return ERR_OK;
}

void
bb_opts_free(const struct bb_opt *opts, size_t n_opts, void *dst)
{
    for (size_t i = 0; i < n_opts; i++) {
        if (opts[i].type == BB_OPT_STRING) {
            char **s = opt_slot(&opts[i], dst);
            free(*s);
            *s = NULL;
        }
    }
}

void
bb_opts_help(FILE *out, const struct bb_opt *opts, size_t n_opts, bool show_env)
{
    for (size_t i = 0; i < n_opts; i++) {
        const struct bb_opt *o = &opts[i];
        char var[128] = "";
        bool env = show_env && !(o->flags & BB_OPT_NO_ENV);
        if (env)
            env_name(o->name, var, sizeof var);
        fprintf(out, "  --%-18s %s\n", o->name, o->doc);
        fprintf(out, "  %-20s %s", "", type_hint(o->type));
        if (o->def)
            fprintf(out, ", default %s", o->def);
        if (o->type != BB_OPT_STRING && o->type != BB_OPT_BOOL)
            fprintf(out, ", %" PRId64 "..%" PRId64, o->min, o->max);
        if (env)
            fprintf(out, ", env %s", var);
        fputc('\n', out);
    }
}
