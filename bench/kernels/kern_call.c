/* Call-heavy kernel: recursion, indirect calls through tables, tiny leaf functions. */
#include "kernels.h"

typedef uint64_t (*op_fn)(uint64_t, uint64_t);

static __attribute__((noinline)) uint64_t op_add(uint64_t a, uint64_t b) { return a + b; }
static __attribute__((noinline)) uint64_t op_sub(uint64_t a, uint64_t b) { return a - b; }
static __attribute__((noinline)) uint64_t op_xor(uint64_t a, uint64_t b) { return a ^ b; }
static __attribute__((noinline)) uint64_t op_mul(uint64_t a, uint64_t b) { return a * (b | 1); }
static __attribute__((noinline)) uint64_t op_rot(uint64_t a, uint64_t b) {
  return (a << (b & 63)) | (a >> ((64 - (b & 63)) & 63));
}
static __attribute__((noinline)) uint64_t op_min(uint64_t a, uint64_t b) { return a < b ? a : b; }
static __attribute__((noinline)) uint64_t op_max(uint64_t a, uint64_t b) { return a > b ? a : b; }
static __attribute__((noinline)) uint64_t op_avg(uint64_t a, uint64_t b) { return (a >> 1) + (b >> 1); }

static op_fn const ops[8] = {op_add, op_sub, op_xor, op_mul, op_rot, op_min, op_max, op_avg};

static __attribute__((noinline)) uint64_t fib(unsigned n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

struct shape {
  uint64_t (*area)(const struct shape *);
  uint64_t w, h;
};
static __attribute__((noinline)) uint64_t area_rect(const struct shape *s) { return s->w * s->h; }
static __attribute__((noinline)) uint64_t area_tri(const struct shape *s) { return s->w * s->h / 2; }
static __attribute__((noinline)) uint64_t area_sq(const struct shape *s) { return s->w * s->w; }

static __attribute__((noinline)) uint64_t interp(const uint8_t *code, unsigned n, uint64_t x) {
  uint64_t acc = x;
  for (unsigned i = 0; i < n; i++) acc = ops[code[i] & 7](acc, code[i] + i);
  return acc;
}

uint64_t kern_call(uint64_t iterations) {
  uint8_t code[256];
  uint32_t seed = 7;
  for (int i = 0; i < 256; i++) {
    seed = seed * 1103515245u + 12345u;
    code[i] = (uint8_t)(seed >> 16);
  }
  struct shape shapes[16];
  for (int i = 0; i < 16; i++) {
    shapes[i].area = i % 3 == 0 ? area_rect : i % 3 == 1 ? area_tri : area_sq;
    shapes[i].w = (uint64_t)i + 3;
    shapes[i].h = (uint64_t)i * 2 + 1;
  }
  uint64_t acc = 0;
  for (uint64_t it = 0; it < iterations; it++) {
    acc += fib(24 + (unsigned)(it % 3));
    for (int r = 0; r < 400; r++) {
      acc = interp(code, 256, acc + (uint64_t)r);
      acc += shapes[(acc >> 7) & 15].area(&shapes[r & 15]);
    }
  }
  return acc;
}
