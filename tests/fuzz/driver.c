/*
 * driver.c: runs a harness over files, for builds without libFuzzer: each
 * argument is a file (one input) or a directory (every file in it, one
 * input each). Exits 0 when every input ran (a crash or a sanitizer report
 * ends it otherwise), 2 when an argument cannot be read.
 */
#include "fuzz.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int
run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "fuzz driver: cannot open %s\n", path);
        return 2;
    }
    size_t cap = 4096, n = 0;
    uint8_t *buf = malloc(cap);
    size_t got;
    while (buf != NULL && (got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            uint8_t *bigger = realloc(buf, cap * 2);
            if (bigger == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf == NULL) {
        fprintf(stderr, "fuzz driver: out of memory reading %s\n", path);
        return 2;
    }
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    return 0;
}

static int
run_path(const char *path, int *count)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "fuzz driver: cannot read %s\n", path);
        return 2;
    }
    if (!S_ISDIR(st.st_mode)) {
        (*count)++;
        return run_file(path);
    }
    DIR *d = opendir(path);
    if (d == NULL) {
        fprintf(stderr, "fuzz driver: cannot list %s\n", path);
        return 2;
    }
    int rc = 0;
    struct dirent *ent;
    while (rc == 0 && (ent = readdir(d)) != NULL) {
        if (ent->d_name[0] == '.')
            continue;
        char child[4096];
        int len = snprintf(child, sizeof child, "%s/%s", path, ent->d_name);
        if (len < 0 || (size_t)len >= sizeof child) {
            rc = 2;
            break;
        }
        rc = run_path(child, count);
    }
    closedir(d);
    return rc;
}

int
main(int argc, char **argv)
{
    int count = 0;
    for (int i = 1; i < argc; i++) {
        int rc = run_path(argv[i], &count);
        if (rc != 0)
            return rc;
    }
    printf("fuzz driver: %d inputs ran\n", count);
    return count > 0 ? 0 : 2;
}
