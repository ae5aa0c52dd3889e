/*
 * digest.c: SHA-256 and HMAC-SHA256 in hex (the one file that includes
 * OpenSSL's headers): request fingerprints for idempotency keys, webhook
 * signatures; FNV-1a; and reading a hex digit.
 */
#include "base/base.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <string.h>

static void
hex(const unsigned char *mac, unsigned len, char out[65])
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len && i < 32; i++) {
        out[2 * i] = digits[mac[i] >> 4];
        out[2 * i + 1] = digits[mac[i] & 15];
    }
    out[64] = '\0';
}

int
bb_hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

void
bb_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_Digest(data, len, md, &n, EVP_sha256(), NULL) != 1)
        bb_panic(__FILE__, __LINE__, "SHA-256 failed");
    hex(md, n, out);
}

void
bb_hmac_sha256_hex(const char *key, const void *data, size_t len, char out[65])
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (HMAC(EVP_sha256(), key, (int)strlen(key), data, len, mac, &n) == NULL)
        bb_panic(__FILE__, __LINE__, "HMAC-SHA256 failed");
    hex(mac, n, out);
}

uint64_t
bb_fnv1a(uint64_t h, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        h = (h ^ *p) * BB_FNV1A_PRIME;
    return h;
}
