/*
 * fuzz.h: the request decoders' fuzz harnesses (STYLE.md section 9). Each
 * fuzz_*.c defines LLVMFuzzerTestOneInput. Built with clang and
 * -fsanitize=fuzzer (the fuzz preset, scripts/fuzz.sh) they are libFuzzer
 * targets; built otherwise, driver.c runs them over their seed corpus
 * (tests/fuzz/corpus/NAME/) as a CTest test, under ASan in CI.
 *
 * job_spec, cron, order_items and text call one decoder each. api sends
 * each input to the real server, started in process (cli_serve): any route
 * that takes a body, a query string or a path parameter (every lock, job,
 * queue, schedule, dead-letter, outbox, inventory, order, payment, PSP,
 * saga and checkout route), with or without an Idempotency-Key, to a
 * fixture or to an object made for the input, and checks that it answers
 * without a 5xx, that every 4xx is a problem document, that a path
 * parameter that cannot be a name is refused and that a request
 * idempotent on a key is answered the same twice (fuzz_api.c says how an
 * input is read).
 */
#ifndef BB_FUZZ_H
#define BB_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A NUL-terminated copy of the input (heap; free it). */
char *fuzz_text(const uint8_t *data, size_t size);

/* The input parsed as the HTTP layer parses a body (any JSON value,
 * duplicate names refused, \u0000 allowed); NULL when it is not JSON. */
struct json_t;
struct json_t *fuzz_json(const uint8_t *data, size_t size);

#endif /* BB_FUZZ_H */
