/* Shared by the integration tests that count failures and go on: CHECK prints a FAIL line
 * and counts it; the test's exit status comes from `failures`. */
#ifndef LIBVMM_TEST_ITEST_CHECK_H
#define LIBVMM_TEST_ITEST_CHECK_H

#include <stdio.h>

static int failures;

#define CHECK(cond, ...)           \
  do {                             \
    if (!(cond)) {                 \
      printf("FAIL " __VA_ARGS__); \
      printf("\n");                \
      failures++;                  \
    }                              \
  } while (0)

#endif
