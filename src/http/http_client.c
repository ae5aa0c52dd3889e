/*
 * http_client.c: a small blocking HTTP client over libcurl (the one file
 * that includes <curl/curl.h>), used by the CLI and the benchmarks.
 */
#include "http/http.h"

#include <curl/curl.h>
#include <string.h>
#include <strings.h>

enum { CONNECT_RETRIES = 2, MAX_RESPONSE_BYTES = 64 << 20 };

void
http_client_global_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

void
http_client_global_cleanup(void)
{
    curl_global_cleanup();
}

static size_t
on_body(char *data, size_t size, size_t nmemb, void *arg)
{
    struct bb_buf *b = arg;
    size_t n = size * nmemb;
    if (b->len + n > MAX_RESPONSE_BYTES)
        return 0; /* makes curl fail with CURLE_WRITE_ERROR */
    bb_buf_append(b, data, n);
    return n;
}

void
http_client_escape(const char *segment, struct bb_buf *out)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)segment; *p; p++) {
        unsigned char c = *p;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_' || c == '.' || c == '~' || c == ':') {
            bb_buf_append(out, p, 1);
        } else {
            char esc[3] = {'%', hex[c >> 4], hex[c & 15]};
            bb_buf_append(out, esc, 3);
        }
    }
}

static enum err
perform(CURL *h, struct http_client_response *resp, struct bb_error *e, bool *retry)
{
    char errbuf[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    bb_buf_reset(&resp->body);
    CURLcode cc = curl_easy_perform(h);
    *retry = false;
    if (cc == CURLE_OK) {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp->status);
        const char *type = NULL;
        curl_easy_getinfo(h, CURLINFO_CONTENT_TYPE, &type);
        snprintf(resp->content_type, sizeof resp->content_type, "%s", type ? type : "");
        return ERR_OK;
    }
    const char *why = errbuf[0] ? errbuf : curl_easy_strerror(cc);
    if (cc == CURLE_COULDNT_CONNECT) {
        *retry = true;
        return bb_fail(e, ERR_UNAVAILABLE, "server", "cannot connect: %s", why);
    }
    if (cc == CURLE_ABORTED_BY_CALLBACK)
        return bb_fail(e, ERR_IO, "", "stopped before the answer came");
    if (cc == CURLE_OPERATION_TIMEDOUT)
        return bb_fail(e, ERR_TIMEOUT, "", "request timed out: %s", why);
    if (cc == CURLE_URL_MALFORMAT || cc == CURLE_UNSUPPORTED_PROTOCOL)
        return bb_fail(e, ERR_USAGE, "server", "bad server URL: %s", why);
    return bb_fail(e, ERR_IO, "", "HTTP request failed: %s", why);
}

struct http_client {
    CURL *h;
    struct curl_slist *headers;
    struct curl_slist *json_headers;
    int64_t timeout_ms;
    http_client_stop_fn *stop; /* NULL: never stopped */
    void *stop_arg;
};

/* libcurl's progress callback: non-zero aborts the transfer. */
static int
on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow)
{
    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    const struct http_client *c = arg;
    return c->stop(c->stop_arg) ? 1 : 0;
}

void
http_client_set_stop(struct http_client *c, http_client_stop_fn *stop, void *arg)
{
    c->stop = stop;
    c->stop_arg = arg;
    curl_easy_setopt(c->h, CURLOPT_XFERINFOFUNCTION, stop ? on_progress : NULL);
    curl_easy_setopt(c->h, CURLOPT_XFERINFODATA, c);
    curl_easy_setopt(c->h, CURLOPT_NOPROGRESS, stop ? 0L : 1L);
}

struct http_client *
http_client_create(const char *token, int64_t timeout_ms)
{
    struct http_client *c = xcalloc(1, sizeof *c);
    c->h = curl_easy_init();
    if (c->h == NULL)
        bb_panic(__FILE__, __LINE__, "curl_easy_init failed");
    c->timeout_ms = timeout_ms;
    c->headers = curl_slist_append(NULL, "Accept: application/json");
    if (token && *token) {
        struct bb_buf auth;
        bb_buf_init(&auth);
        bb_buf_printf(&auth, "Authorization: Bearer %s", token);
        c->headers = curl_slist_append(c->headers, auth.data);
        bb_buf_deinit(&auth);
    }
    /* Same list plus the body's type (curl_slist has no copy: rebuild). */
    for (struct curl_slist *l = c->headers; l; l = l->next)
        c->json_headers = curl_slist_append(c->json_headers, l->data);
    c->json_headers = curl_slist_append(c->json_headers, "Content-Type: application/json");
    if (c->headers == NULL || c->json_headers == NULL)
        bb_panic(__FILE__, __LINE__, "curl_slist_append failed");
    return c;
}

void
http_client_add_header(struct http_client *c, const char *name, const char *value)
{
    struct bb_buf line;
    bb_buf_init(&line);
    bb_buf_printf(&line, "%s: %s", name, value);
    c->headers = curl_slist_append(c->headers, line.data);
    c->json_headers = curl_slist_append(c->json_headers, line.data);
    bb_buf_deinit(&line);
    if (c->headers == NULL || c->json_headers == NULL)
        bb_panic(__FILE__, __LINE__, "curl_slist_append failed");
}

/* `list` without the lines of header `name` (a new list; `list` is freed). */
static struct curl_slist *
slist_without(struct curl_slist *list, const char *name)
{
    size_t n = strlen(name);
    struct curl_slist *out = NULL;
    for (struct curl_slist *l = list; l; l = l->next) {
        if (!(strncasecmp(l->data, name, n) == 0 && l->data[n] == ':') &&
            (out = curl_slist_append(out, l->data)) == NULL)
            bb_panic(__FILE__, __LINE__, "curl_slist_append failed");
    }
    curl_slist_free_all(list);
    return out;
}

void
http_client_set_header(struct http_client *c, const char *name, const char *value)
{
    c->headers = slist_without(c->headers, name);
    c->json_headers = slist_without(c->json_headers, name);
    http_client_add_header(c, name, value);
}

void
http_client_destroy(struct http_client *c)
{
    if (c == NULL)
        return;
    curl_slist_free_all(c->headers);
    curl_slist_free_all(c->json_headers);
    curl_easy_cleanup(c->h);
    free(c);
}

enum err
http_client_do(struct http_client *c, const char *method, const char *url, const char *body,
               struct http_client_response *resp, struct bb_error *e)
{
    CURL *h = c->h;
    resp->status = 0;
    resp->content_type[0] = '\0';
    bb_buf_init(&resp->body);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, body ? c->json_headers : c->headers);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)c->timeout_ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &resp->body);
    if (body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    } else {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, NULL);
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    }
    enum err rc;
    for (int attempt = 0;; attempt++) {
        bool retry;
        rc = perform(h, resp, e, &retry);
        if (!retry || attempt >= CONNECT_RETRIES)
            break;
        bb_sleep_ms(100 << attempt);
    }
    if (rc != ERR_OK)
        bb_buf_deinit(&resp->body);
    return rc;
}

enum err
http_client_request(const char *method, const char *url, const char *token, const char *body,
                    int64_t timeout_ms, struct http_client_response *resp, struct bb_error *e)
{
    struct http_client *c = http_client_create(token, timeout_ms);
    enum err rc = http_client_do(c, method, url, body, resp, e);
    http_client_destroy(c);
    return rc;
}
