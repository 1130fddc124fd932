/* The shared single-instruction emulator: decoding, MMIO and port I/O, table-driven. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "backends/common/x86emu.h"
#include "core/internal.h"

#define CODE_BASE 0x400000ull
#define DATA_BASE 0x600000ull

static uint8_t code_mem[64];
static uint8_t data_mem[64];

static int mem_rw(void *ctx, uint64_t la, void *buf, size_t len, bool write) {
  (void)ctx;
  uint8_t *base;
  uint64_t start;
  if (la >= CODE_BASE && la + len <= CODE_BASE + sizeof(code_mem)) {
    base = code_mem, start = CODE_BASE;
  } else if (la >= DATA_BASE && la + len <= DATA_BASE + sizeof(data_mem)) {
    base = data_mem, start = DATA_BASE;
  } else {
    return VMM_EFAULT;
  }
  if (write) memcpy(base + (la - start), buf, len);
  else memcpy(buf, base + (la - start), len);
  return 0;
}
static int mem_read(void *ctx, uint64_t la, void *buf, size_t len) { return mem_rw(ctx, la, buf, len, false); }
static int mem_write(void *ctx, uint64_t la, const void *buf, size_t len) {
  return mem_rw(ctx, la, (void *)buf, len, true);
}
static const struct vmm_emu_mem mem = {mem_read, mem_write, NULL};

static void init_cpu(struct vmm_emu_cpu *c) {
  memset(c, 0, sizeof(*c));
  for (int i = 0; i < 16; i++) c->gpr[i] = 0x1111111111111111ull * (uint64_t)(i + 1);
  c->gpr[VMM_RAX] = 0xaaaaaaaa12345678ull;
  c->gpr[VMM_RDI] = 0xd0000000;
  c->gpr[VMM_RSI] = 0xd0000010;
  c->gpr[VMM_RBX] = 0xd0000020;
  c->gpr[VMM_RCX] = 0xd0000030;
  c->gpr[VMM_RDX] = 0xd0000040;
  c->rip = CODE_BASE;
  c->rflags = 2;
  c->fs_base = 0x7000000;
}

struct mmio_case {
  const char *name;
  uint8_t bytes[15];
  uint8_t len;
  int rc;              /* Of vmm__emu_mmio_start. */
  uint64_t addr;
  uint8_t size;
  bool is_write;
  uint64_t value;      /* Written value, or the value returned for a read. */
  int dst;             /* Register checked after finish, -1 for none. */
  uint64_t dst_after;
};

static const struct mmio_case mmio_cases[] = {
    {"mov %eax,(%rdi)", {0x89, 0x07}, 2, 0, 0xd0000000, 4, true, 0x12345678, -1, 0},
    {"mov (%rdi),%eax", {0x8b, 0x07}, 2, 0, 0xd0000000, 4, false, 0xfedcba98, VMM_RAX, 0xfedcba98},
    {"mov (%rsi),%al", {0x8a, 0x06}, 2, 0, 0xd0000010, 1, false, 0x77, VMM_RAX, 0xaaaaaaaa12345677ull},
    {"mov (%rsi),%ah", {0x8a, 0x26}, 2, 0, 0xd0000010, 1, false, 0x99, VMM_RAX, 0xaaaaaaaa12349978ull},
    {"mov (%rsi),%sil", {0x40, 0x8a, 0x36}, 3, 0, 0xd0000010, 1, false, 0x5, VMM_RSI, 0xd0000005},
    {"movzbl (%rdx),%ecx", {0x0f, 0xb6, 0x0a}, 3, 0, 0xd0000040, 1, false, 0xf0, VMM_RCX, 0xf0},
    {"movsbq 8(%rbx),%r9", {0x4c, 0x0f, 0xbe, 0x4b, 0x08}, 5, 0, 0xd0000028, 1, false, 0x80, VMM_R9,
     0xffffffffffffff80ull},
    {"movswl (%rbx),%edx", {0x0f, 0xbf, 0x13}, 3, 0, 0xd0000020, 2, false, 0x8001, VMM_RDX, 0xffff8001ull},
    {"movslq (%rdi),%rax", {0x48, 0x63, 0x07}, 3, 0, 0xd0000000, 4, false, 0x80000000, VMM_RAX,
     0xffffffff80000000ull},
    {"movq $-1,0x10(%rax)", {0x48, 0xc7, 0x40, 0x10, 0xff, 0xff, 0xff, 0xff}, 8, 0,
     0xaaaaaaaa12345688ull, 8, true, ~0ull, -1, 0},
    {"movw $0x1234,(%rcx)", {0x66, 0xc7, 0x01, 0x34, 0x12}, 5, 0, 0xd0000030, 2, true, 0x1234, -1, 0},
    {"movb $0x7f,(%rdi)", {0xc6, 0x07, 0x7f}, 3, 0, 0xd0000000, 1, true, 0x7f, -1, 0},
    {"mov 0x100(%rip),%rdx", {0x48, 0x8b, 0x15, 0x00, 0x01, 0x00, 0x00}, 7, 0, CODE_BASE + 7 + 0x100,
     8, false, 0x0123456789abcdefull, VMM_RDX, 0x0123456789abcdefull},
    {"mov %fs:8,%rax", {0x64, 0x48, 0x8b, 0x04, 0x25, 0x08, 0x00, 0x00, 0x00}, 9, 0, 0x7000008, 8,
     false, 42, VMM_RAX, 42},
    {"mov (%eax),%ebx", {0x67, 0x8b, 0x18}, 3, 0, 0x12345678, 4, false, 1, VMM_RBX, 1},
    {"mov %r12,(%rdi,%rcx,2)", {0x4c, 0x89, 0x24, 0x4f}, 4, 0, 0xd0000000 + 2 * 0xd0000030ull, 8,
     true, 0xdddddddddddddddd, -1, 0},
    {"mov %bh,(%rdi)", {0x88, 0x3f}, 2, 0, 0xd0000000, 1, true, 0x00, -1, 0},
    {"add %eax,(%rdi)", {0x01, 0x07}, 2, VMM_ENOSYS, 0, 0, false, 0, -1, 0},
    {"movdqu (%rdi),%xmm0", {0xf3, 0x0f, 0x6f, 0x07}, 4, VMM_ENOSYS, 0, 0, false, 0, -1, 0},
};

static void test_mmio_table(void **state) {
  (void)state;
  for (size_t i = 0; i < sizeof(mmio_cases) / sizeof(mmio_cases[0]); i++) {
    const struct mmio_case *c = &mmio_cases[i];
    struct vmm_emu_cpu cpu;
    init_cpu(&cpu);
    memset(code_mem, 0x90, sizeof(code_mem));
    memcpy(code_mem, c->bytes, c->len);
    struct vmm_emu_insn insn;
    assert_int_equal(vmm__emu_decode(&cpu, &mem, &insn), 0);
    if (insn.z.length != c->len) fail_msg("%s: length %u", c->name, insn.z.length);
    assert_int_equal(insn.kind, VMM_EMU_MEM);
    struct vmm_emu_access acc;
    int rc = vmm__emu_mmio_start(&cpu, &insn, &acc);
    if (rc != c->rc) fail_msg("%s: rc %d", c->name, rc);
    if (rc) continue;
    if (acc.addr != c->addr || acc.size != c->size || acc.is_write != c->is_write)
      fail_msg("%s: addr %#llx size %u write %d", c->name, (unsigned long long)acc.addr, acc.size,
               acc.is_write);
    if (c->is_write && acc.value != c->value)
      fail_msg("%s: value %#llx", c->name, (unsigned long long)acc.value);
    struct vmm_emu_cpu before = cpu;
    assert_int_equal(vmm__emu_finish(&cpu, &mem, &insn, &acc, c->is_write ? 0 : c->value), 0);
    assert_int_equal(cpu.rip, CODE_BASE + c->len);
    for (int r = 0; r < 16; r++) {
      uint64_t want = r == c->dst ? c->dst_after : before.gpr[r];
      if (cpu.gpr[r] != want)
        fail_msg("%s: gpr %d = %#llx, want %#llx", c->name, r, (unsigned long long)cpu.gpr[r],
                 (unsigned long long)want);
    }
  }
}

static void test_mmio_bh_source_value(void **state) {
  (void)state;
  struct vmm_emu_cpu cpu;
  init_cpu(&cpu);
  cpu.gpr[VMM_RBX] = 0x4455;
  memcpy(code_mem, (uint8_t[]){0x88, 0x3f}, 2); /* mov %bh,(%rdi) */
  struct vmm_emu_insn insn;
  struct vmm_emu_access acc;
  assert_int_equal(vmm__emu_decode(&cpu, &mem, &insn), 0);
  assert_int_equal(vmm__emu_mmio_start(&cpu, &insn, &acc), 0);
  assert_int_equal(acc.value, 0x44);
}

static void test_pio_in_out(void **state) {
  (void)state;
  struct {
    uint8_t bytes[4];
    uint8_t len;
    enum vmm_emu_kind kind;
    uint16_t port;
    uint8_t size;
    bool write;
    uint64_t value;
    uint64_t rax_after;
  } cases[] = {
      {{0xe6, 0xf5}, 2, VMM_EMU_OUT, 0xf5, 1, true, 0x78, 0xaaaaaaaa12345678ull},
      {{0x66, 0xef}, 2, VMM_EMU_OUT, 0x0040, 2, true, 0x5678, 0xaaaaaaaa12345678ull},
      {{0xe7, 0x80}, 2, VMM_EMU_OUT, 0x80, 4, true, 0x12345678, 0xaaaaaaaa12345678ull},
      {{0xed}, 1, VMM_EMU_IN, 0x0040, 4, false, 0xcafebabe, 0xcafebabeull},
      {{0xe4, 0x60}, 2, VMM_EMU_IN, 0x60, 1, false, 0x1c, 0xaaaaaaaa1234561cull},
      {{0x66, 0xe5, 0x61}, 3, VMM_EMU_IN, 0x61, 2, false, 0xbeef, 0xaaaaaaaa1234beefull},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct vmm_emu_cpu cpu;
    init_cpu(&cpu);
    memcpy(code_mem, cases[i].bytes, cases[i].len);
    struct vmm_emu_insn insn;
    struct vmm_emu_access acc;
    assert_int_equal(vmm__emu_decode(&cpu, &mem, &insn), 0);
    assert_int_equal(insn.kind, cases[i].kind);
    assert_int_equal(vmm__emu_pio_start(&cpu, &mem, &insn, &acc), 0);
    assert_int_equal(acc.addr, cases[i].port);
    assert_int_equal(acc.size, cases[i].size);
    assert_int_equal(acc.is_write, cases[i].write);
    if (cases[i].write) assert_int_equal(acc.value, cases[i].value);
    assert_int_equal(vmm__emu_finish(&cpu, &mem, &insn, &acc, cases[i].value), 0);
    assert_int_equal(cpu.gpr[VMM_RAX], cases[i].rax_after);
    assert_int_equal(cpu.rip, CODE_BASE + cases[i].len);
  }
}

static void test_rep_outsb_one_element_per_step(void **state) {
  (void)state;
  struct vmm_emu_cpu cpu;
  init_cpu(&cpu);
  memcpy(code_mem, (uint8_t[]){0xf3, 0x6e}, 2); /* rep outsb */
  memcpy(data_mem, "xyz", 3);
  cpu.gpr[VMM_RSI] = DATA_BASE;
  cpu.gpr[VMM_RCX] = 3;
  char seen[4] = {0};
  for (int step = 0; step < 3; step++) {
    struct vmm_emu_insn insn;
    struct vmm_emu_access acc;
    assert_int_equal(vmm__emu_decode(&cpu, &mem, &insn), 0);
    assert_int_equal(insn.kind, VMM_EMU_OUTS);
    assert_int_equal(vmm__emu_pio_start(&cpu, &mem, &insn, &acc), 0);
    seen[step] = (char)acc.value;
    assert_int_equal(vmm__emu_finish(&cpu, &mem, &insn, &acc, 0), 0);
    assert_int_equal(cpu.rip, step < 2 ? CODE_BASE : CODE_BASE + 2);
  }
  assert_string_equal(seen, "xyz");
  assert_int_equal(cpu.gpr[VMM_RCX], 0);
  assert_int_equal(cpu.gpr[VMM_RSI], DATA_BASE + 3);
}

static void test_rep_insw_backwards_and_empty(void **state) {
  (void)state;
  struct vmm_emu_cpu cpu;
  init_cpu(&cpu);
  memcpy(code_mem, (uint8_t[]){0xf3, 0x66, 0x6d}, 3); /* rep insw */
  cpu.gpr[VMM_RDI] = DATA_BASE + 8;
  cpu.gpr[VMM_RCX] = 1;
  cpu.rflags |= 1 << 10; /* DF: decrement. */
  struct vmm_emu_insn insn;
  struct vmm_emu_access acc;
  assert_int_equal(vmm__emu_decode(&cpu, &mem, &insn), 0);
  assert_int_equal(vmm__emu_pio_start(&cpu, &mem, &insn, &acc), 0);
  assert_false(acc.is_write);
  assert_int_equal(vmm__emu_finish(&cpu, &mem, &insn, &acc, 0xa1b2), 0);
  assert_int_equal(data_mem[8], 0xb2);
  assert_int_equal(data_mem[9], 0xa1);
  assert_int_equal(cpu.gpr[VMM_RDI], DATA_BASE + 6);
  assert_int_equal(cpu.rip, CODE_BASE + 3);
  /* With RCX = 0 there is nothing to transfer: finishing just skips it. */
  cpu.rip = CODE_BASE;
  assert_int_equal(vmm__emu_decode(&cpu, &mem, &insn), 0);
  assert_int_equal(vmm__emu_pio_start(&cpu, &mem, &insn, &acc), 0);
  assert_int_equal(acc.size, 0);
  assert_int_equal(vmm__emu_finish(&cpu, &mem, &insn, &acc, 0), 0);
  assert_int_equal(cpu.rip, CODE_BASE + 3);
  assert_int_equal(cpu.gpr[VMM_RDI], DATA_BASE + 6);
}

static void test_decode_kinds(void **state) {
  (void)state;
  struct {
    uint8_t bytes[3];
    uint8_t len;
    enum vmm_emu_kind kind;
  } cases[] = {
      {{0xf4}, 1, VMM_EMU_HLT},         {{0xfa}, 1, VMM_EMU_CLI},
      {{0xfb}, 1, VMM_EMU_STI},         {{0x0f, 0x32}, 2, VMM_EMU_RDMSR},
      {{0x0f, 0x30}, 2, VMM_EMU_WRMSR}, {{0x0f, 0x31}, 2, VMM_EMU_RDTSC},
      {{0x0f, 0xa2}, 2, VMM_EMU_CPUID}, {{0x0f, 0x05}, 2, VMM_EMU_SYSCALL},
      {{0xcc}, 1, VMM_EMU_INT3},        {{0xcd, 0x80}, 2, VMM_EMU_INT},
      {{0x0f, 0x0b}, 2, VMM_EMU_UD},    {{0x48, 0x8d, 0x07}, 3, VMM_EMU_OTHER},
      {{0x0f, 0x01, 0xf9}, 3, VMM_EMU_RDTSCP},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    struct vmm_emu_cpu cpu;
    init_cpu(&cpu);
    memset(code_mem, 0x90, sizeof(code_mem));
    memcpy(code_mem, cases[i].bytes, cases[i].len);
    struct vmm_emu_insn insn;
    assert_int_equal(vmm__emu_decode(&cpu, &mem, &insn), 0);
    assert_int_equal(insn.kind, cases[i].kind);
    assert_int_equal(insn.z.length, cases[i].len);
  }
}

static void test_decode_at_end_of_memory_and_garbage(void **state) {
  (void)state;
  struct vmm_emu_cpu cpu;
  init_cpu(&cpu);
  cpu.rip = CODE_BASE + sizeof(code_mem) - 1;
  code_mem[sizeof(code_mem) - 1] = 0xf4;
  struct vmm_emu_insn insn;
  assert_int_equal(vmm__emu_decode(&cpu, &mem, &insn), 0); /* Short fetch still decodes. */
  assert_int_equal(insn.kind, VMM_EMU_HLT);
  cpu.rip = 0x10;
  assert_int_equal(vmm__emu_decode(&cpu, &mem, &insn), VMM_EFAULT);
  cpu.rip = CODE_BASE;
  memset(code_mem, 0xf0, 15); /* Fifteen LOCK prefixes: too long to be an instruction. */
  assert_int_equal(vmm__emu_decode(&cpu, &mem, &insn), VMM_ENOEXEC);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mmio_table),
      cmocka_unit_test(test_mmio_bh_source_value),
      cmocka_unit_test(test_pio_in_out),
      cmocka_unit_test(test_rep_outsb_one_element_per_step),
      cmocka_unit_test(test_rep_insw_backwards_and_empty),
      cmocka_unit_test(test_decode_kinds),
      cmocka_unit_test(test_decode_at_end_of_memory_and_garbage),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
