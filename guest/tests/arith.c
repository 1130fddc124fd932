/* Integer arithmetic and memory checksums: the results must not depend on the backend. */
#include "vmm_guest.h"

static uint8_t buf[1 << 20];

static uint32_t crc32(const uint8_t *p, size_t n) {
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xedb88320u & -(c & 1));
  }
  return ~c;
}

static uint64_t fnv1a(const uint8_t *p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

static uint64_t fib(unsigned n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

int main(struct vmm_boot_info *bi) {
  (void)bi;
  uint64_t x = 88172645463325252ull;
  for (size_t i = 0; i < sizeof(buf); i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    buf[i] = (uint8_t)x;
  }
  uint64_t acc = 0;
  for (int64_t i = 1; i < 5000; i++) {
    acc += (uint64_t)(i * i * i) / (uint64_t)(i + 7);
    acc ^= (uint64_t)(-i) % 97u;
    acc = (acc << 3) | (acc >> 61);
  }
  int64_t sdiv = (int64_t)-123456789012345ll / 977;
  vmm_printf("crc32=%08x\n", crc32(buf, sizeof(buf)));
  vmm_printf("fnv1a=%016lx\n", fnv1a(buf, sizeof(buf)));
  vmm_printf("acc=%016lx sdiv=%ld fib=%lu\n", acc, sdiv, fib(24));
  return (int)(crc32(buf, 4096) & 0x7f);
}
