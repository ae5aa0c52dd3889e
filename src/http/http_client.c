/*
 * http_client.c: a small blocking HTTP client over libcurl (the one file
 * that includes <curl/curl.h>), used by the CLI and the benchmarks.
 */
#include "http/http.h"

#include <curl/curl.h>
#include <string.h>

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
        return ERR_OK;
    }
    const char *why = errbuf[0] ? errbuf : curl_easy_strerror(cc);
    if (cc == CURLE_COULDNT_CONNECT) {
        *retry = true;
        return bb_fail(e, ERR_UNAVAILABLE, "server", "cannot connect: %s", why);
    }
    if (cc == CURLE_OPERATION_TIMEDOUT)
        return bb_fail(e, ERR_TIMEOUT, "", "request timed out: %s", why);
    if (cc == CURLE_URL_MALFORMAT || cc == CURLE_UNSUPPORTED_PROTOCOL)
        return bb_fail(e, ERR_USAGE, "server", "bad server URL: %s", why);
    return bb_fail(e, ERR_IO, "", "HTTP request failed: %s", why);
}

enum err
http_client_request(const char *method, const char *url, const char *token, const char *body,
                    int64_t timeout_ms, struct http_client_response *resp, struct bb_error *e)
{
    CURL *h = curl_easy_init();
    if (h == NULL)
        return bb_fail(e, ERR_INTERNAL, "", "curl_easy_init failed");
    struct curl_slist *headers = NULL;
    headers = curl_slist_append(headers, "Accept: application/json");
    if (body)
        headers = curl_slist_append(headers, "Content-Type: application/json");
    struct bb_buf auth;
    bb_buf_init(&auth);
    if (token && *token) {
        bb_buf_printf(&auth, "Authorization: Bearer %s", token);
        headers = curl_slist_append(headers, auth.data);
    }
    resp->status = 0;
    bb_buf_init(&resp->body);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &resp->body);
    if (body) {
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
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
    curl_slist_free_all(headers);
    bb_buf_deinit(&auth);
    curl_easy_cleanup(h);
    return rc;
}
