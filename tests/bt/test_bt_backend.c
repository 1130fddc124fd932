/* Tests of the bt backend through the public API: the integration guests (and, where /dev/kvm
 * works, the same guests compared with kvm) and the sandbox. The small programs of
 * guests/rawguests.S are tested in test_bt_programs.c. GUEST_DIR is where the build put the
 * test guests. */
#include "bt_backend_util.h"

extern const uint8_t prog_sandbox_start[], prog_sandbox_end[];
extern const uint64_t prog_sandbox_table[];

/* With kvm at hand, the same guest must give the same result there. */
static void compare_with_kvm(const char *name, unsigned cpl, const char *cmd, const struct outcome *bt) {
  if (vmm_backend_probe(VMM_BACKEND_KVM) != 0) return;
  struct outcome k;
  guest_outcome(VMM_BACKEND_KVM, name, cpl, cmd, &k);
  assert_int_equal(bt->reason, k.reason);
  assert_int_equal(bt->status, k.status);
  assert_int_equal(bt->vector, k.vector);
  assert_int_equal(bt->rip, k.rip);
  assert_int_equal(bt->rbx, k.rbx);
  assert_string_equal(bt->con, k.con);
  assert_int_equal(bt->ram_crc, k.ram_crc);
}

static void test_guest_hello_prints_greeting(void **s) {
  (void)s;
  struct outcome o;
  guest_outcome(VMM_BACKEND_BT, "hello", 0, NULL, &o);
  assert_int_equal(o.reason, VMM_EXIT_GUEST_EXIT);
  assert_int_equal(o.status, 0);
  assert_string_equal(o.con, "Hello from a libvmm guest!\nram=64 MiB cpl=0\n");
  compare_with_kvm("hello", 0, NULL, &o);
}

/* The arithmetic guest's checksums, computed here natively. */
static void test_guest_arith_matches_native(void **s) {
  (void)s;
  static uint8_t buf[1 << 20];
  uint64_t x = 88172645463325252ull;
  for (size_t i = 0; i < sizeof(buf); i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    buf[i] = (uint8_t)x;
  }
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < sizeof(buf); i++) h = (h ^ buf[i]) * 0x100000001b3ull;
  char want[128];
  snprintf(want, sizeof(want), "crc32=%08x\nfnv1a=%016" PRIx64 "\n", crc32_buf(buf, sizeof(buf)), h);
  struct outcome o;
  guest_outcome(VMM_BACKEND_BT, "arith", 0, NULL, &o);
  assert_int_equal(o.reason, VMM_EXIT_GUEST_EXIT);
  assert_int_equal(o.status, (int64_t)(crc32_buf(buf, 4096) & 0x7f));
  assert_memory_equal(o.con, want, strlen(want));
  assert_non_null(strstr(o.con, "sdiv=-126363141261 fib=46368"));
  /* Compared with kvm at CPL3: kvm_pvm emulates CPL0 code at about 1 us per instruction
   * (a minute for this guest); user mode runs natively there. */
  struct outcome u;
  guest_outcome(VMM_BACKEND_BT, "arith", 3, NULL, &u);
  assert_memory_equal(u.con, want, strlen(want));
  compare_with_kvm("arith", 3, NULL, &u);
}

static void test_guest_pio_reaches_handlers_and_caller(void **s) {
  (void)s;
  struct outcome o;
  guest_outcome(VMM_BACKEND_BT, "pio", 0, NULL, &o);
  assert_int_equal(o.reason, VMM_EXIT_GUEST_EXIT);
  assert_int_equal(o.io_exits, 2);
  assert_string_equal(o.con, "pio sum=120016 nobody=ff\n");
  compare_with_kvm("pio", 0, NULL, &o);
}

static void test_guest_mmio_reaches_handlers_and_caller(void **s) {
  (void)s;
  struct outcome o;
  guest_outcome(VMM_BACKEND_BT, "mmio", 0, NULL, &o);
  assert_int_equal(o.reason, VMM_EXIT_GUEST_EXIT);
  assert_int_equal(o.io_exits, 2);
  assert_string_equal(o.con, "mmio a=1122334455667788 b=cafef00d c=0000000000000000 d=ffffffff\n");
  compare_with_kvm("mmio", 0, NULL, &o);
}

static void test_guest_halt_exits_hlt(void **s) {
  (void)s;
  struct outcome o;
  guest_outcome(VMM_BACKEND_BT, "halt", 0, NULL, &o);
  assert_int_equal(o.reason, VMM_EXIT_HLT);
  assert_string_equal(o.con, "halting\n");
  compare_with_kvm("halt", 0, NULL, &o);
}

static void test_guest_ud_reports_exception_at_ud2(void **s) {
  (void)s;
  struct outcome o;
  guest_outcome(VMM_BACKEND_BT, "ud", 0, NULL, &o);
  assert_int_equal(o.reason, VMM_EXIT_EXCEPTION);
  assert_int_equal(o.vector, 6);
  assert_int_equal(o.rip, o.rbx);
  compare_with_kvm("ud", 0, NULL, &o);
}

static void test_guest_de_reports_exception_at_div(void **s) {
  (void)s;
  struct outcome o;
  guest_outcome(VMM_BACKEND_BT, "de", 0, NULL, &o);
  assert_int_equal(o.reason, VMM_EXIT_EXCEPTION);
  assert_int_equal(o.vector, 0);
  assert_int_equal(o.rip, o.rbx);
  compare_with_kvm("de", 0, NULL, &o);
}

static void test_guest_cpl3_hlt_is_gp(void **s) {
  (void)s;
  struct outcome o;
  guest_outcome(VMM_BACKEND_BT, "cpl3", 3, NULL, &o);
  assert_int_equal(o.reason, VMM_EXIT_EXCEPTION);
  assert_int_equal(o.vector, 13);
  assert_int_equal(o.rip, o.rbx);
  assert_string_equal(o.con, "running at cpl 3 (boot info says 3)\n");
  compare_with_kvm("cpl3", 3, NULL, &o);
}

static void test_guest_exitcode_both_ways(void **s) {
  (void)s;
  struct outcome o;
  guest_outcome(VMM_BACKEND_BT, "exitcode", 0, NULL, &o);
  assert_int_equal(o.reason, VMM_EXIT_GUEST_EXIT);
  assert_int_equal(o.status, 42);
  compare_with_kvm("exitcode", 0, NULL, &o);
  guest_outcome(VMM_BACKEND_BT, "exitcode", 0, "port", &o);
  assert_int_equal(o.reason, VMM_EXIT_GUEST_EXIT);
  assert_int_equal(o.status, (0x21 << 1) | 1);
  compare_with_kvm("exitcode", 0, "port", &o);
}

static void test_guest_kernels_match_native_checksums(void **s) {
  (void)s;
  /* Small iteration counts; the checksums come from the native build of the same kernels. */
  static const struct { const char *cmd, *want; } k[] = {
      {"int 300", "int="}, {"call 3", "call="}, {"mem 1", "mem="}};
  for (size_t i = 0; i < 3; i++) {
    char native[256] = "";
    char line[512];
    snprintf(line, sizeof(line), "%s %s", KERN_NATIVE, k[i].cmd);
    FILE *p = popen(line, "r");
    assert_non_null(p);
    assert_non_null(fgets(native, sizeof(native), p));
    pclose(p);
    struct run r;
    run_open(&r, VMM_BACKEND_BT, 128u << 20);
    vmm_image_info_t info;
    assert_int_equal(vmm_load_file(r.vm, GUEST_DIR "/kernels.elf", 0, 0, &info), 0);
    vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
    lm.cpl = 3;
    lm.entry = info.entry;
    lm.cmdline = k[i].cmd;
    assert_int_equal(vmm_vcpu_setup_long_mode(r.vcpu, &lm), 0);
    vmm_exit_t ex;
    run_until(&r, &ex, NULL);
    assert_int_equal(ex.reason, VMM_EXIT_GUEST_EXIT);
    /* Compare the checksum part: "NAME=HEX". */
    assert_memory_equal(r.con, native, strlen(k[i].want) + 16);
    vmm_vm_destroy(r.vm);
  }
}

/* ---- sandbox ---- */

static void test_sandbox_guest_never_touches_host_memory(void **s) {
  (void)s;
  size_t len = 1 << 16;
  uint8_t *canary = aligned_alloc(4096, len);
  assert_non_null(canary);
  memset(canary, 0x5a, len);
  for (unsigned a = 0; prog_sandbox_table[a] != (uint64_t)-1; a++) {
    struct run r;
    run_flat(&r, prog_sandbox_start, prog_sandbox_end);
    vmm_regs_t regs;
    assert_int_equal(vmm_vcpu_get_regs(r.vcpu, &regs), 0);
    regs.rip = LOAD_GPA + prog_sandbox_table[a];
    regs.rdi = (uint64_t)(uintptr_t)(canary + 4096);
    regs.rsi = 0x7ffffffffffffff0ull;
    regs.rax = 0x1111111111111111ull;
    assert_int_equal(vmm_vcpu_set_regs(r.vcpu, &regs), 0);
    vmm_exit_t ex;
    run_until(&r, &ex, NULL);
    /* Whatever happened - completion, a guest #PF or #GP - the host memory is untouched. */
    /* An access that lands on no RAM may also be an MMIO access the emulator refuses. */
    bool mmio_refused = ex.reason == VMM_EXIT_INTERNAL_ERROR && strstr(ex.internal.message, "MMIO");
    if (!(ex.reason == VMM_EXIT_IO || ex.reason == VMM_EXIT_EXCEPTION || ex.reason == VMM_EXIT_HLT ||
          mmio_refused))
      fail_msg("attempt %u: exit %s %s", a, vmm_exit_reason_name(ex.reason),
               ex.reason == VMM_EXIT_INTERNAL_ERROR ? ex.internal.message : "");
    for (size_t i = 0; i < len; i++)
      if (canary[i] != 0x5a) fail_msg("attempt %u wrote host memory at offset %zu", a, i);
    /* 0xffc00000 is beyond the guest's RAM: the gather cannot complete. */
    if (a == 17 && ex.reason == VMM_EXIT_IO) fail_msg("attempt 17 read memory below the window");
    if ((a == 14 || a == 16) && ex.reason == VMM_EXIT_IO) {
      assert_int_equal(vmm_vcpu_get_regs(r.vcpu, &regs), 0);
      assert_true(regs.rax != 0x5a5a5a5a5a5a5a5aull);
    }
    vmm_vm_destroy(r.vm);
  }
  free(canary);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_guest_hello_prints_greeting),
      cmocka_unit_test(test_guest_arith_matches_native),
      cmocka_unit_test(test_guest_pio_reaches_handlers_and_caller),
      cmocka_unit_test(test_guest_mmio_reaches_handlers_and_caller),
      cmocka_unit_test(test_guest_halt_exits_hlt),
      cmocka_unit_test(test_guest_ud_reports_exception_at_ud2),
      cmocka_unit_test(test_guest_de_reports_exception_at_div),
      cmocka_unit_test(test_guest_cpl3_hlt_is_gp),
      cmocka_unit_test(test_guest_exitcode_both_ways),
      cmocka_unit_test(test_guest_kernels_match_native_checksums),
      cmocka_unit_test(test_sandbox_guest_never_touches_host_memory),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
