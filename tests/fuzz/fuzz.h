/* Shared by the libFuzzer targets in tests/fuzz: the entry point and an always-on check. */
#ifndef RL_FUZZ_H
#define RL_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Like assert, but kept under NDEBUG: a broken property aborts, which libFuzzer reports as a
   crash and saves the input. */
#define FUZZ_CHECK(x)                                                                      \
    do {                                                                                   \
        if (!(x)) {                                                                        \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #x);          \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

#endif
