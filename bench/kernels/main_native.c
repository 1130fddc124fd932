/* Native flavor: kernel NAME [ITERATIONS]; prints "NAME=CHECKSUM ns=NS" with write(2),
 * where NS counts nanoseconds spent in the kernel alone. */
#include <stdlib.h>
#include <time.h>
#include <string.h>
#include <unistd.h>

#include "kernels.h"

uint64_t kern_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void put(const char *s) { (void)!write(1, s, strlen(s)); }

static void put_hex(uint64_t v) {
  char b[17];
  for (int i = 15; i >= 0; i--, v >>= 4) b[i] = "0123456789abcdef"[v & 15];
  b[16] = 0;
  put(b);
}

int main(int argc, char **argv) {
  const char *name = argc > 1 ? argv[1] : "int";
  for (unsigned i = 0; i < kern_count; i++) {
    if (strcmp(kern_table[i].name, name) != 0) continue;
    uint64_t n = argc > 2 ? strtoull(argv[2], NULL, 10) : kern_table[i].default_iterations;
    kern_table[i].fn(0); /* warm up: first-touch page faults and translation */
    uint64_t t0 = kern_now_ns();
    uint64_t r = kern_table[i].fn(n);
    uint64_t t1 = kern_now_ns();
    put(name);
    put("=");
    put_hex(r);
    put(" ns=");
    put_hex(t1 - t0);
    put("\n");
    return 0;
  }
  put("unknown kernel\n");
  return 2;
}
