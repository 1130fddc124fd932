/* Table-driven translation tests and the randomized differential test of the bt backend:
 * every piece of code runs natively and translated, from the same addresses, and must leave
 * the same registers, flags and memory.
 * Environment: BT_RANDOM_SEED (default 1) and BT_RANDOM_PROGRAMS (default 300) tune the
 * randomized test; a longer run is e.g. BT_RANDOM_PROGRAMS=100000. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <Zydis/Zydis.h>

#include "bt_harness.h"

#define SNIPPETS(X) \
  X(alu_rr) X(alu_imm_mem) X(muldiv) X(shifts) X(strings) X(stack) X(riprel) X(branches) \
  X(atomics) X(sse) X(avx) X(gather) X(fsgs) X(misc)

#define DECL(n) extern const uint8_t snip_##n##_start[], snip_##n##_end[];
SNIPPETS(DECL)

static struct bth_result res_native, res_bt;
static uint8_t init_data[BTH_DATA_SIZE];

static void check_code(const uint8_t *code, size_t len, uint64_t seed, const char *what) {
  struct bth_cpu in;
  char err[256];
  bth_initial(seed, &in, init_data);
  assert_int_equal(bth_run_native(code, len, &in, init_data, &res_native), 0);
  if (bth_run_bt(code, len, &in, init_data, &res_bt, err, sizeof(err)) != 0)
    fail_msg("%s: bt run failed: %s", what, err);
  if (bth_compare(&res_native, &res_bt, err, sizeof(err)) != 0) fail_msg("%s: %s", what, err);
}

#define TEST_FN(n)                                                                     \
  static void test_translate_##n##_matches_native(void **state) {                      \
    (void)state;                                                                       \
    for (uint64_t seed = 1; seed <= 3; seed++)                                         \
      check_code(snip_##n##_start, (size_t)(snip_##n##_end - snip_##n##_start), seed, #n); \
  }
SNIPPETS(TEST_FN)

/* ---- random straight-line programs, encoded with Zydis ---- */

static uint64_t rng;
static uint64_t rnd(void) {
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return rng;
}

static const ZydisRegister gpr64[] = {ZYDIS_REGISTER_RAX, ZYDIS_REGISTER_RBX, ZYDIS_REGISTER_RCX,
                                      ZYDIS_REGISTER_RDX, ZYDIS_REGISTER_RSI, ZYDIS_REGISTER_RDI,
                                      ZYDIS_REGISTER_RBP, ZYDIS_REGISTER_R8,  ZYDIS_REGISTER_R9,
                                      ZYDIS_REGISTER_R10, ZYDIS_REGISTER_R11, ZYDIS_REGISTER_R12,
                                      ZYDIS_REGISTER_R13};

static ZydisRegister pick_reg(unsigned bits) {
  ZydisRegister r = gpr64[rnd() % (sizeof(gpr64) / sizeof(gpr64[0]))];
  unsigned id = (unsigned)(r - ZYDIS_REGISTER_RAX);
  switch (bits) {
    case 32: return (ZydisRegister)(ZYDIS_REGISTER_EAX + id);
    case 16: return (ZydisRegister)(ZYDIS_REGISTER_AX + id);
    case 8: return id < 4 ? (ZydisRegister)(ZYDIS_REGISTER_AL + id) : (ZydisRegister)(ZYDIS_REGISTER_SPL + id - 4);
    default: return r;
  }
}

static void op_reg(ZydisEncoderOperand *o, ZydisRegister r) {
  o->type = ZYDIS_OPERAND_TYPE_REGISTER;
  o->reg.value = r;
}

static void op_imm(ZydisEncoderOperand *o, int64_t v) {
  o->type = ZYDIS_OPERAND_TYPE_IMMEDIATE;
  o->imm.s = v;
}

static void op_mem(ZydisEncoderOperand *o, unsigned bytes) {
  o->type = ZYDIS_OPERAND_TYPE_MEMORY;
  o->mem.base = ZYDIS_REGISTER_R15;
  o->mem.size = (ZyanU16)bytes;
  if (rnd() % 3 == 0) {
    o->mem.index = ZYDIS_REGISTER_R14;
    o->mem.scale = (ZyanU8)(1u << (rnd() % 4));
  }
  o->mem.displacement = (int64_t)((rnd() % 0x3000) & ~(uint64_t)(bytes - 1));
}

/* Appends one random instruction; returns its length (0 when the template did not encode). */
static size_t gen_insn(uint8_t *out) {
  static const ZydisMnemonic alu[] = {ZYDIS_MNEMONIC_ADD, ZYDIS_MNEMONIC_ADC, ZYDIS_MNEMONIC_SUB,
                                      ZYDIS_MNEMONIC_SBB, ZYDIS_MNEMONIC_AND, ZYDIS_MNEMONIC_OR,
                                      ZYDIS_MNEMONIC_XOR, ZYDIS_MNEMONIC_CMP, ZYDIS_MNEMONIC_TEST,
                                      ZYDIS_MNEMONIC_MOV};
  static const ZydisMnemonic shifts[] = {ZYDIS_MNEMONIC_SHL, ZYDIS_MNEMONIC_SHR, ZYDIS_MNEMONIC_SAR,
                                         ZYDIS_MNEMONIC_ROL, ZYDIS_MNEMONIC_ROR, ZYDIS_MNEMONIC_RCL,
                                         ZYDIS_MNEMONIC_RCR};
  static const ZydisMnemonic unary[] = {ZYDIS_MNEMONIC_INC, ZYDIS_MNEMONIC_DEC, ZYDIS_MNEMONIC_NEG,
                                        ZYDIS_MNEMONIC_NOT};
  static const ZydisMnemonic cmov[] = {ZYDIS_MNEMONIC_CMOVZ, ZYDIS_MNEMONIC_CMOVNZ, ZYDIS_MNEMONIC_CMOVB,
                                       ZYDIS_MNEMONIC_CMOVL, ZYDIS_MNEMONIC_CMOVS, ZYDIS_MNEMONIC_CMOVO,
                                       ZYDIS_MNEMONIC_CMOVP, ZYDIS_MNEMONIC_CMOVNBE};
  static const ZydisMnemonic setcc[] = {ZYDIS_MNEMONIC_SETZ, ZYDIS_MNEMONIC_SETB, ZYDIS_MNEMONIC_SETL,
                                        ZYDIS_MNEMONIC_SETS, ZYDIS_MNEMONIC_SETO, ZYDIS_MNEMONIC_SETP};
  ZydisEncoderRequest req;
  memset(&req, 0, sizeof(req));
  req.machine_mode = ZYDIS_MACHINE_MODE_LONG_64;
  unsigned sizes[] = {8, 16, 32, 64};
  unsigned bits = sizes[rnd() % 4];
  switch (rnd() % 12) {
    case 0: case 1: case 2: { /* ALU reg/reg, reg/imm, reg/mem, mem/reg, mem/imm */
      req.mnemonic = alu[rnd() % 10];
      req.operand_count = 2;
      unsigned form = (unsigned)(rnd() % 5);
      if (form == 0) op_reg(&req.operands[0], pick_reg(bits)), op_reg(&req.operands[1], pick_reg(bits));
      else if (form == 1) op_reg(&req.operands[0], pick_reg(bits)), op_imm(&req.operands[1], (int8_t)rnd());
      else if (form == 2) op_reg(&req.operands[0], pick_reg(bits)), op_mem(&req.operands[1], bits / 8);
      else if (form == 3) op_mem(&req.operands[0], bits / 8), op_reg(&req.operands[1], pick_reg(bits));
      else op_mem(&req.operands[0], bits / 8), op_imm(&req.operands[1], (int16_t)rnd() % 100);
      break;
    }
    case 3: /* shifts and rotates by an immediate or CL */
      req.mnemonic = shifts[rnd() % 7];
      req.operand_count = 2;
      if (rnd() % 2) op_reg(&req.operands[0], pick_reg(bits));
      else op_mem(&req.operands[0], bits / 8);
      if (rnd() % 3) op_imm(&req.operands[1], (int64_t)(rnd() % bits));
      else op_reg(&req.operands[1], ZYDIS_REGISTER_CL);
      break;
    case 4:
      req.mnemonic = unary[rnd() % 4];
      req.operand_count = 1;
      if (rnd() % 2) op_reg(&req.operands[0], pick_reg(bits));
      else op_mem(&req.operands[0], bits / 8);
      break;
    case 5:
      req.mnemonic = cmov[rnd() % 8];
      req.operand_count = 2;
      bits = bits < 16 ? 64 : bits;
      op_reg(&req.operands[0], pick_reg(bits));
      if (rnd() % 2) op_reg(&req.operands[1], pick_reg(bits));
      else op_mem(&req.operands[1], bits / 8);
      break;
    case 6:
      req.mnemonic = setcc[rnd() % 6];
      req.operand_count = 1;
      if (rnd() % 2) op_reg(&req.operands[0], pick_reg(8));
      else op_mem(&req.operands[0], 1);
      break;
    case 7: /* imul, lea */
      if (rnd() % 2) {
        req.mnemonic = ZYDIS_MNEMONIC_IMUL;
        req.operand_count = 3;
        bits = bits < 16 ? 64 : bits;
        op_reg(&req.operands[0], pick_reg(bits));
        op_reg(&req.operands[1], pick_reg(bits));
        op_imm(&req.operands[2], (int8_t)rnd());
      } else {
        req.mnemonic = ZYDIS_MNEMONIC_LEA;
        req.operand_count = 2;
        op_reg(&req.operands[0], pick_reg(64));
        req.operands[1].type = ZYDIS_OPERAND_TYPE_MEMORY;
        req.operands[1].mem.base = pick_reg(64);
        req.operands[1].mem.index = pick_reg(64);
        req.operands[1].mem.scale = (ZyanU8)(1u << (rnd() % 4));
        req.operands[1].mem.displacement = (int32_t)rnd();
        req.operands[1].mem.size = 0;
      }
      break;
    case 8: /* push / pop */
      req.mnemonic = rnd() % 2 ? ZYDIS_MNEMONIC_PUSH : ZYDIS_MNEMONIC_POP;
      req.operand_count = 1;
      if (rnd() % 4) op_reg(&req.operands[0], pick_reg(64));
      else op_mem(&req.operands[0], 8);
      break;
    case 9: /* xadd, xchg, bswap, movzx/movsx */
      switch (rnd() % 4) {
        case 0:
          req.mnemonic = ZYDIS_MNEMONIC_XADD;
          req.operand_count = 2;
          op_mem(&req.operands[0], bits / 8);
          op_reg(&req.operands[1], pick_reg(bits));
          if (rnd() % 2) req.prefixes = ZYDIS_ATTRIB_HAS_LOCK;
          break;
        case 1:
          req.mnemonic = ZYDIS_MNEMONIC_XCHG;
          req.operand_count = 2;
          op_reg(&req.operands[0], pick_reg(bits));
          op_mem(&req.operands[1], bits / 8);
          break;
        case 2:
          req.mnemonic = ZYDIS_MNEMONIC_BSWAP;
          req.operand_count = 1;
          op_reg(&req.operands[0], pick_reg(64));
          break;
        default:
          req.mnemonic = rnd() % 2 ? ZYDIS_MNEMONIC_MOVZX : ZYDIS_MNEMONIC_MOVSX;
          req.operand_count = 2;
          op_reg(&req.operands[0], pick_reg(64));
          op_mem(&req.operands[1], rnd() % 2 ? 1 : 2);
          break;
      }
      break;
    case 10: /* bit tests with a register offset into memory */
      req.mnemonic = (ZydisMnemonic[]){ZYDIS_MNEMONIC_BT, ZYDIS_MNEMONIC_BTS, ZYDIS_MNEMONIC_BTR,
                                       ZYDIS_MNEMONIC_BTC}[rnd() % 4];
      req.operand_count = 2;
      bits = bits < 16 ? 32 : bits;
      op_mem(&req.operands[0], bits / 8);
      req.operands[0].mem.index = ZYDIS_REGISTER_NONE;
      req.operands[0].mem.scale = 0;
      req.operands[0].mem.displacement = 0x2000;
      op_reg(&req.operands[1], pick_reg(bits));
      {
        /* The bit offset may reach anywhere: bound it first (natively it is real memory). */
        ZydisEncoderRequest and_req;
        memset(&and_req, 0, sizeof(and_req));
        and_req.machine_mode = ZYDIS_MACHINE_MODE_LONG_64;
        and_req.mnemonic = ZYDIS_MNEMONIC_AND;
        and_req.operand_count = 2;
        ZydisRegister r = req.operands[1].reg.value;
        op_reg(&and_req.operands[0], (ZydisRegister)(ZYDIS_REGISTER_EAX +
               (ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, r) - ZYDIS_REGISTER_RAX)));
        op_imm(&and_req.operands[1], 0x3ff);
        ZyanUSize alen = ZYDIS_MAX_INSTRUCTION_LENGTH;
        if (ZYAN_FAILED(ZydisEncoderEncodeInstruction(&and_req, out, &alen))) return 0;
        ZyanUSize blen = ZYDIS_MAX_INSTRUCTION_LENGTH;
        if (ZYAN_FAILED(ZydisEncoderEncodeInstruction(&req, out + alen, &blen))) return 0;
        return alen + blen;
      }
    default: /* keep register values small enough to make later bit offsets stay inside */
      req.mnemonic = ZYDIS_MNEMONIC_AND;
      req.operand_count = 2;
      op_reg(&req.operands[0], pick_reg(32));
      op_imm(&req.operands[1], 0x3ff);
      break;
  }
  ZyanUSize len = ZYDIS_MAX_INSTRUCTION_LENGTH;
  if (ZYAN_FAILED(ZydisEncoderEncodeInstruction(&req, out, &len))) return 0;
  return len;
}

static void test_random_programs_match_native(void **state) {
  (void)state;
  const char *s = getenv("BT_RANDOM_SEED");
  const char *n = getenv("BT_RANDOM_PROGRAMS");
  uint64_t seed = s ? strtoull(s, NULL, 0) : 1;
  unsigned programs = n ? (unsigned)strtoul(n, NULL, 0) : 300;
  rng = seed * 0x9e3779b97f4a7c15ull | 1;
  static uint8_t code[8192];
  for (unsigned p = 0; p < programs; p++) {
    size_t len = 0;
    unsigned count = 10 + (unsigned)(rnd() % 40);
    for (unsigned i = 0; i < count; i++) len += gen_insn(code + len);
    char what[64];
    snprintf(what, sizeof(what), "seed %llu program %u", (unsigned long long)seed, p);
    check_code(code, len, seed + p, what);
  }
}

static int setup(void **state) {
  (void)state;
  if (!bth_init()) {
    print_message("bt harness: cannot set up the VM and its fixed addresses\n");
    return -1;
  }
  print_message("bt harness: the guest runs in the %s window\n",
                bth_low_window() ? "low" : "GS");
  return 0;
}

static int teardown(void **state) {
  (void)state;
  bth_fini();
  return 0;
}

int main(void) {
#define ENTRY(n) cmocka_unit_test(test_translate_##n##_matches_native),
  const struct CMUnitTest tests[] = {SNIPPETS(ENTRY) cmocka_unit_test(test_random_programs_match_native)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
