/* A small x86-64 encoder for the sequences the translator synthesizes (stack operations,
 * lookups, stubs, helper calls). Guest instructions that are copied keep their own encoding:
 * see vmm__bt_translate.c. The tests decode every template back with Zydis. */
#ifndef LIBVMM_BT_EMIT_H
#define LIBVMM_BT_EMIT_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "bt_layout.h"

/* Register numbers are hardware encodings: 0 rax, 1 rcx, 2 rdx, 3 rbx, 4 rsp, 5 rbp, 6 rsi,
 * 7 rdi, 8-15 r8-r15. */
enum { BT_RAX, BT_RCX, BT_RDX, BT_RBX, BT_RSP, BT_RBP, BT_RSI, BT_RDI, BT_R8 };

struct bt_buf {
  uint8_t *p;      /* Write pointer (read-write view of the code cache). */
  uint32_t off0;   /* Code-cache offset of p[0]. */
  uint32_t len;
  uint32_t cap;
  bool overflow;
};

static inline void bt_e8(struct bt_buf *b, uint8_t x) {
  if (b->len < b->cap) b->p[b->len] = x;
  else b->overflow = true;
  b->len++;
}
static inline void bt_e16(struct bt_buf *b, uint16_t x) {
  bt_e8(b, (uint8_t)x);
  bt_e8(b, (uint8_t)(x >> 8));
}
static inline void bt_e32(struct bt_buf *b, uint32_t x) {
  for (int i = 0; i < 4; i++) bt_e8(b, (uint8_t)(x >> (8 * i)));
}
static inline void bt_e64(struct bt_buf *b, uint64_t x) {
  bt_e32(b, (uint32_t)x);
  bt_e32(b, (uint32_t)(x >> 32));
}
static inline void bt_ebytes(struct bt_buf *b, const uint8_t *s, size_t n) {
  for (size_t i = 0; i < n; i++) bt_e8(b, s[i]);
}
static inline uint32_t bt_pos(const struct bt_buf *b) { return b->off0 + b->len; }
static inline void bt_patch32(struct bt_buf *b, uint32_t at_len, uint32_t v) {
  if (at_len + 4 <= b->cap) memcpy(b->p + at_len, &v, 4);
}

/* A memory operand. base/index: register number or -1. */
struct bt_ea {
  int base, index;
  int scale;        /* 1, 2, 4, 8 */
  int32_t disp;
  bool gs;          /* GS segment override */
  bool a32;         /* address-size override (32-bit addressing) */
};

static inline struct bt_ea bt_ea_ctrl(int32_t ctrl_off) {
  return (struct bt_ea){.base = -1, .index = -1, .scale = 1, .disp = BT_G(ctrl_off), .gs = true};
}
/* [%gs:]disp(%esp) - the guest stack (GS unless the window is the low one). */
static inline struct bt_ea bt_ea_stack(int32_t disp, bool gs) {
  return (struct bt_ea){.base = BT_RSP, .index = -1, .scale = 1, .disp = disp, .gs = gs,
                        .a32 = true};
}

enum { BT_OP66 = 1 << 0, BT_OPW = 1 << 1, BT_OPREX = 1 << 2 /* force REX (byte regs) */ };

/* Emits [65][67][66][REX] opcode modrm [sib] [disp]. reg is the ModRM.reg value (register or
 * opcode extension). */
static inline void bt_emit_rm(struct bt_buf *b, unsigned flags, const uint8_t *op, unsigned nop,
                              unsigned reg, const struct bt_ea *m) {
  if (m->gs) bt_e8(b, 0x65);
  if (m->a32) bt_e8(b, 0x67);
  if (flags & BT_OP66) bt_e8(b, 0x66);
  unsigned rex = 0x40 | ((flags & BT_OPW) ? 8 : 0) | ((reg & 8) ? 4 : 0);
  if (m->index >= 0 && (m->index & 8)) rex |= 2;
  if (m->base >= 0 && (m->base & 8)) rex |= 1;
  if (rex != 0x40 || (flags & BT_OPREX)) bt_e8(b, (uint8_t)rex);
  bt_ebytes(b, op, nop);
  unsigned r = reg & 7;
  if (m->base < 0 && m->index < 0) {
    bt_e8(b, (uint8_t)(0x04 | (r << 3)));
    bt_e8(b, 0x25);
    bt_e32(b, (uint32_t)m->disp);
    return;
  }
  unsigned ss = m->scale == 8 ? 3 : m->scale == 4 ? 2 : m->scale == 2 ? 1 : 0;
  if (m->base < 0) {
    bt_e8(b, (uint8_t)(0x04 | (r << 3)));
    bt_e8(b, (uint8_t)((ss << 6) | ((m->index & 7) << 3) | 5));
    bt_e32(b, (uint32_t)m->disp);
    return;
  }
  unsigned mod;
  if (m->disp == 0 && (m->base & 7) != 5) mod = 0;
  else if (m->disp >= -128 && m->disp <= 127) mod = 1;
  else mod = 2;
  if (m->index >= 0 || (m->base & 7) == 4) {
    bt_e8(b, (uint8_t)((mod << 6) | (r << 3) | 4));
    unsigned idx = m->index >= 0 ? (unsigned)(m->index & 7) : 4;
    bt_e8(b, (uint8_t)((ss << 6) | (idx << 3) | (m->base & 7)));
  } else {
    bt_e8(b, (uint8_t)((mod << 6) | (r << 3) | (m->base & 7)));
  }
  if (mod == 1) bt_e8(b, (uint8_t)(int8_t)m->disp);
  else if (mod == 2) bt_e32(b, (uint32_t)m->disp);
}

/* mov %reg64, m */
static inline void bt_e_store(struct bt_buf *b, unsigned reg, struct bt_ea m) {
  static const uint8_t op[] = {0x89};
  bt_emit_rm(b, BT_OPW, op, 1, reg, &m);
}
/* mov m, %reg64 */
static inline void bt_e_load(struct bt_buf *b, unsigned reg, struct bt_ea m) {
  static const uint8_t op[] = {0x8b};
  bt_emit_rm(b, BT_OPW, op, 1, reg, &m);
}
/* mov of 1, 2, 4 or 8 bytes between a register and memory. */
static inline void bt_e_mov_sized(struct bt_buf *b, unsigned reg, struct bt_ea m, unsigned size,
                                  bool store) {
  uint8_t op = store ? (size == 1 ? 0x88 : 0x89) : (size == 1 ? 0x8a : 0x8b);
  unsigned fl = size == 8 ? BT_OPW : size == 2 ? BT_OP66 : 0;
  if (size == 1 && reg >= 4) fl |= BT_OPREX;
  bt_emit_rm(b, fl, &op, 1, reg, &m);
}
/* movl $imm32, m (size 4) or movq $simm32, m (size 8) or movw (size 2). */
static inline void bt_e_store_imm(struct bt_buf *b, struct bt_ea m, uint32_t imm, unsigned size) {
  static const uint8_t op[] = {0xc7};
  unsigned fl = size == 8 ? BT_OPW : size == 2 ? BT_OP66 : 0;
  bt_emit_rm(b, fl, op, 1, 0, &m);
  if (size == 2) bt_e16(b, (uint16_t)imm);
  else bt_e32(b, imm);
}
/* lea m, %reg64 */
static inline void bt_e_lea(struct bt_buf *b, unsigned reg, struct bt_ea m) {
  static const uint8_t op[] = {0x8d};
  bt_emit_rm(b, BT_OPW, op, 1, reg, &m);
}
/* lea disp(%rsp), %rsp: moves the guest stack pointer without touching flags. */
static inline void bt_e_lea_rsp(struct bt_buf *b, int32_t disp) {
  struct bt_ea m = {.base = BT_RSP, .index = -1, .scale = 1, .disp = disp};
  bt_e_lea(b, BT_RSP, m);
}
/* jmp *m / call *m */
static inline void bt_e_jmp_mem(struct bt_buf *b, struct bt_ea m) {
  static const uint8_t op[] = {0xff};
  bt_emit_rm(b, 0, op, 1, 4, &m);
}
static inline void bt_e_call_mem(struct bt_buf *b, struct bt_ea m) {
  static const uint8_t op[] = {0xff};
  bt_emit_rm(b, 0, op, 1, 2, &m);
}
/* mov %src, %dst (64-bit) */
static inline void bt_e_mov_rr(struct bt_buf *b, unsigned dst, unsigned src) {
  bt_e8(b, (uint8_t)(0x48 | ((src & 8) ? 4 : 0) | ((dst & 8) ? 1 : 0)));
  bt_e8(b, 0x89);
  bt_e8(b, (uint8_t)(0xc0 | ((src & 7) << 3) | (dst & 7)));
}
/* mov %src32, %dst32: zero-extends, no flags. */
static inline void bt_e_mov_rr32(struct bt_buf *b, unsigned dst, unsigned src) {
  if ((src | dst) & 8) bt_e8(b, (uint8_t)(0x40 | ((src & 8) ? 4 : 0) | ((dst & 8) ? 1 : 0)));
  bt_e8(b, 0x89);
  bt_e8(b, (uint8_t)(0xc0 | ((src & 7) << 3) | (dst & 7)));
}
/* movzwl %src16, %dst32 */
static inline void bt_e_movzwl(struct bt_buf *b, unsigned dst, unsigned src) {
  if ((src | dst) & 8) bt_e8(b, (uint8_t)(0x40 | ((dst & 8) ? 4 : 0) | ((src & 8) ? 1 : 0)));
  bt_e8(b, 0x0f);
  bt_e8(b, 0xb7);
  bt_e8(b, (uint8_t)(0xc0 | ((dst & 7) << 3) | (src & 7)));
}
/* not %reg64 */
static inline void bt_e_not(struct bt_buf *b, unsigned reg) {
  bt_e8(b, (uint8_t)(0x48 | ((reg & 8) ? 1 : 0)));
  bt_e8(b, 0xf7);
  bt_e8(b, (uint8_t)(0xd0 | (reg & 7)));
}
/* mov $imm64, %reg (shortest form that gives the same 64-bit value; no flags). */
static inline void bt_e_mov_imm64(struct bt_buf *b, unsigned reg, uint64_t v) {
  if (v <= 0xffffffffull) {
    if (reg & 8) bt_e8(b, 0x41);
    bt_e8(b, (uint8_t)(0xb8 | (reg & 7)));
    bt_e32(b, (uint32_t)v);
  } else if ((int64_t)v >= INT32_MIN && (int64_t)v <= INT32_MAX) {
    bt_e8(b, (uint8_t)(0x48 | ((reg & 8) ? 1 : 0)));
    bt_e8(b, 0xc7);
    bt_e8(b, (uint8_t)(0xc0 | (reg & 7)));
    bt_e32(b, (uint32_t)v);
  } else {
    bt_e8(b, (uint8_t)(0x48 | ((reg & 8) ? 1 : 0)));
    bt_e8(b, (uint8_t)(0xb8 | (reg & 7)));
    bt_e64(b, v);
  }
}
/* jmp rel32 to a code-cache offset; returns the buffer position of the rel32. */
static inline uint32_t bt_e_jmp_rel32(struct bt_buf *b, uint32_t target_off) {
  bt_e8(b, 0xe9);
  uint32_t at = b->len;
  bt_e32(b, target_off - (bt_pos(b) + 4));
  return at;
}
/* jcc rel32 (cc = condition nibble). */
static inline uint32_t bt_e_jcc_rel32(struct bt_buf *b, unsigned cc, uint32_t target_off) {
  bt_e8(b, 0x0f);
  bt_e8(b, (uint8_t)(0x80 | (cc & 15)));
  uint32_t at = b->len;
  bt_e32(b, target_off - (bt_pos(b) + 4));
  return at;
}
/* Re-targets the rel32 at buffer position `at`. */
static inline void bt_fix_rel32(struct bt_buf *b, uint32_t at, uint32_t target_off) {
  bt_patch32(b, at, target_off - (b->off0 + at + 4));
}

#endif /* LIBVMM_BT_EMIT_H */
