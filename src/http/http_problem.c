/*
 * http_problem.c: the one place where an `enum err` becomes an RFC 9457
 * problem document.
 */
#include "http/http.h"

json_t *
http_problem_json(const struct bb_error *e, const char *instance)
{
    enum err code = e->code == ERR_OK ? ERR_INTERNAL : e->code;
    char type[96];
    snprintf(type, sizeof type, "urn:backbone:problem:%s", bb_err_slug(code));
    json_t *doc = json_object();
    json_object_set_new(doc, "type", json_string(type));
    json_object_set_new(doc, "title", json_string(bb_err_title(code)));
    json_object_set_new(doc, "status", json_integer(bb_err_http_status(code)));
    /* jansson refuses invalid UTF-8; a detail quoting bad input could be cut
     * mid-character, so fall back to the title rather than drop the member. */
    json_t *detail = json_string(e->detail[0] ? e->detail : bb_err_title(code));
    json_object_set_new(doc, "detail", detail ? detail : json_string(bb_err_title(code)));
    if (e->field[0]) {
        json_t *field = json_string(e->field);
        if (field)
            json_object_set_new(doc, "field", field);
    }
    if (instance) {
        json_t *inst = json_string(instance);
        if (inst)
            json_object_set_new(doc, "instance", inst);
    }
    return doc;
}
