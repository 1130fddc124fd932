/* Memory-bound kernel: 48 MiB of 64-bit words, well past any cache. */
#include "kernels.h"

#define WORDS (6u << 20)

static uint64_t arr[WORDS];

uint64_t kern_mem(uint64_t iterations) {
  for (uint64_t i = 0; i < WORDS; i++) arr[i] = i * 0x9e3779b97f4a7c15ull;
  uint64_t sum = 0;
  for (uint64_t it = 0; it < iterations; it++) {
    if (it % 2 == 0) {
      /* Streaming read-modify-write. */
      for (uint64_t i = 0; i < WORDS; i++) {
        sum += arr[i];
        arr[i] = sum ^ i;
      }
    } else {
      /* Strided gather: one word per 64-byte line, in a scrambled line order. */
      uint64_t mask = WORDS / 8 - 1, line = it;
      for (uint64_t i = 0; i < WORDS / 8; i++) {
        line = (line * 1664525u + 1013904223u) & mask;
        sum += arr[line * 8 + (i & 7)];
      }
    }
  }
  return sum;
}
