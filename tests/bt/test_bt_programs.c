/* Tests of the bt backend with the small programs of guests/rawguests.S: kicks, faults with
 * pending stack updates, self-modifying code, roll back of rewritten code, lookup tables, the
 * x87 state, privilege checks on returns, the code cache bound, CPU state round trips,
 * single-stepping, hypercall register preservation, the low window and vector state. */
#include "bt_backend_util.h"

extern const uint8_t prog_spin_start[], prog_spin_end[], prog_spin_mem_start[], prog_spin_mem_end[];
extern const uint8_t prog_spin_indirect_start[], prog_spin_indirect_end[];
extern const uint8_t prog_spin_stack_start[], prog_spin_stack_end[];
extern const uint8_t prog_stack_fault_start[], prog_stack_fault_end[];
extern const uint8_t prog_rollback_start[], prog_rollback_end[];
extern const uint8_t prog_emptyslot_start[], prog_emptyslot_end[];
extern const uint8_t prog_fxrstor_start[], prog_fxrstor_end[];
extern const uint8_t prog_retpriv_start[], prog_retpriv_far[], prog_retpriv_end[];
extern const uint8_t prog_smc_start[], prog_smc_end[], prog_hcregs_start[], prog_hcregs_end[];
extern const uint8_t prog_steps_start[], prog_steps_end[], prog_sandbox_start[], prog_sandbox_end[];
extern const uint64_t prog_sandbox_table[];
extern const uint8_t prog_lowpage_start[], prog_lowpage_end[], prog_ymm_start[], prog_ymm_end[];
extern const uint8_t prog_lowfloor_start[], prog_lowfloor_end[];


/* ---- kick ---- */

struct kicker {
  vmm_vcpu_t *vcpu;
  unsigned delay_ms;
};

static void *kick_thread(void *arg) {
  struct kicker *k = arg;
  struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)k->delay_ms * 1000000};
  nanosleep(&ts, NULL);
  vmm_vcpu_kick(k->vcpu);
  return NULL;
}

static uint64_t ms_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Kicks the spinning program `rounds` times, `delay_ms` after each run starts; with
 * check_cd, rcx and rdx must hold what the program put there. */
static void kick_program_n(const uint8_t *start, const uint8_t *end, int rounds,
                           unsigned delay_ms, bool check_cd) {
  struct run r;
  run_flat(&r, start, end);
  for (int round = 0; round < rounds; round++) {
    struct kicker k = {r.vcpu, delay_ms};
    pthread_t t;
    pthread_create(&t, NULL, kick_thread, &k);
    uint64_t t0 = ms_now();
    vmm_exit_t ex;
    memset(&ex, 0, sizeof(ex));
    assert_int_equal(vmm_vcpu_run(r.vcpu, &ex), 0);
    uint64_t dt = ms_now() - t0;
    pthread_join(t, NULL);
    if (ex.reason != VMM_EXIT_KICKED)
      fail_msg("exit %s %s", vmm_exit_reason_name(ex.reason),
               ex.reason == VMM_EXIT_INTERNAL_ERROR ? ex.internal.message : "");
    assert_true(dt < 1000);
    /* The state is at an instruction boundary inside the program. */
    vmm_regs_t regs;
    assert_int_equal(vmm_vcpu_get_regs(r.vcpu, &regs), 0);
    assert_true(regs.rip >= LOAD_GPA && regs.rip < LOAD_GPA + (uint64_t)(end - start));
    if (check_cd && regs.rip >= LOAD_GPA + 17) {
      assert_int_equal(regs.rcx, 0x1234);
      assert_int_equal(regs.rdx, 0x5678);
    }
  }
  /* A kick while nothing runs makes the next run return at once. */
  vmm_vcpu_kick(r.vcpu);
  vmm_exit_t ex;
  assert_int_equal(vmm_vcpu_run(r.vcpu, &ex), 0);
  assert_int_equal(ex.reason, VMM_EXIT_KICKED);
  vmm_vm_destroy(r.vm);
}

static void kick_program(const uint8_t *start, const uint8_t *end) {
  kick_program_n(start, end, 3, 50, false);
}

static void test_kick_stops_tight_loop(void **s) {
  (void)s;
  kick_program(prog_spin_start, prog_spin_end);
  kick_program(prog_spin_mem_start, prog_spin_mem_end);
  /* Many short runs, so that kicks land all over the lookup, the indirect entry and the
   * return cache. */
  kick_program_n(prog_spin_indirect_start, prog_spin_indirect_end, 200, 1, true);
  /* Kicks inside runs of pushes and pops with RSP's update pending: the program checks RSP
   * and the registers itself at the top of each round and ends in ud2 if one was wrong. */
  kick_program_n(prog_spin_stack_start, prog_spin_stack_end, 300, 1, false);
}

/* A fault (here an MMIO read) while pushes still have their RSP update pending: the guest
 * state it is emulated from has RSP below both pushes. */
static void test_fault_with_pending_pushes(void **s) {
  (void)s;
  struct run r;
  run_flat(&r, prog_stack_fault_start, prog_stack_fault_end);
  vmm_exit_t ex;
  run_until(&r, &ex, NULL);
  assert_int_equal(ex.reason, VMM_EXIT_IO);
  vmm_regs_t regs;
  assert_int_equal(vmm_vcpu_get_regs(r.vcpu, &regs), 0);
  assert_int_equal(regs.r10, UINT64_MAX); /* run_until answers MMIO reads with all-ones */
  assert_int_equal(regs.rsi, 0x22);
  assert_int_equal(regs.rdi, 0x11);
  assert_int_equal(regs.r9, regs.rbp);
  assert_int_equal(regs.rsp, regs.rbp);
  vmm_vm_destroy(r.vm);
}

/* ---- vCPU memory reused across VMs (bt_pool.c) ---- */

/* A destroyed vCPU's window, code cache and tables go to the next vCPU emptied: a second VM
 * that runs different code at the same address runs its own, and a guest-physical page the
 * first VM had mapped is not RAM in the second, whose RAM ends below it. */
static void test_reused_vcpu_memory_starts_empty(void **s) {
  (void)s;
  static const uint8_t first[] = {
      0xc7, 0x04, 0x25, 0x00, 0x00, 0x80, 0x00, 0x11, 0x11, 0x00, 0x00, /* mov dword [8M], 0x1111 */
      0x8b, 0x1c, 0x25, 0x00, 0x00, 0x80, 0x00,                         /* mov ebx, [8M] */
      0xf4};                                                            /* hlt */
  static const uint8_t second[] = {0x8b, 0x1c, 0x25, 0x00, 0x00, 0x80, 0x00, 0xf4};
  for (int round = 0; round < 3; round++) {
    struct run a, b;
    run_flat(&a, first, first + sizeof(first));
    vmm_exit_t ex;
    run_until(&a, &ex, NULL);
    assert_int_equal(ex.reason, VMM_EXIT_HLT);
    vmm_regs_t regs;
    assert_int_equal(vmm_vcpu_get_regs(a.vcpu, &regs), 0);
    assert_int_equal(regs.rbx, 0x1111);
    uint64_t low = stat_value(a.vcpu, "bt.low_window");
    vmm_vm_destroy(a.vm);

    run_open(&b, VMM_BACKEND_BT, 4u << 20);
    vmm_image_info_t info;
    assert_int_equal(vmm_load_flat(b.vm, LOAD_GPA, second, sizeof(second), &info), 0);
    vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
    lm.entry = LOAD_GPA;
    assert_int_equal(vmm_vcpu_setup_long_mode(b.vcpu, &lm), 0);
    assert_int_equal(stat_value(b.vcpu, "bt.reused_memory"), 1);
    assert_int_equal(stat_value(b.vcpu, "bt.low_window"), low);
    memset(&ex, 0, sizeof(ex));
    assert_int_equal(vmm_vcpu_run(b.vcpu, &ex), 0);
    if (ex.reason != VMM_EXIT_MMIO)
      fail_msg("round %d: exit %s, not the MMIO read of 8 MiB", round,
               vmm_exit_reason_name(ex.reason));
    assert_int_equal(ex.mmio.gpa, 0x800000);
    assert_false(ex.mmio.is_write);
    ex.mmio.data = 0x2222;
    assert_int_equal(vmm_vcpu_run(b.vcpu, &ex), 0);
    assert_int_equal(ex.reason, VMM_EXIT_HLT);
    assert_int_equal(vmm_vcpu_get_regs(b.vcpu, &regs), 0);
    assert_int_equal(regs.rbx, 0x2222);
    vmm_vm_destroy(b.vm);
  }
}

/* ---- self-modifying code ---- */

static void test_smc_runs_new_code(void **s) {
  (void)s;
  struct run r;
  run_flat(&r, prog_smc_start, prog_smc_end);
  vmm_exit_t ex;
  run_until(&r, &ex, NULL);
  assert_int_equal(ex.reason, VMM_EXIT_IO);
  vmm_regs_t regs;
  assert_int_equal(vmm_vcpu_get_regs(r.vcpu, &regs), 0);
  assert_int_equal(regs.r12, 5);       /* patched before it first ran */
  assert_int_equal(regs.rcx, 1 + 7);   /* patched after it ran once */
  vmm_stat_t st[64];
  size_t n;
  assert_int_equal(vmm_vcpu_stats(r.vcpu, st, 64, &n), 0);
  bool found = false;
  for (size_t i = 0; i < n && i < 64; i++)
    if (!strcmp(st[i].name, "bt.smc_invalidations")) found = st[i].value >= 2;
  assert_true(found);
  vmm_vm_destroy(r.vm);
}

/* ---- code cache bound ---- */


/* Runs until the exit at port `port`. */
static void run_to_port(struct run *r, uint16_t port) {
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  do {
    assert_int_equal(vmm_vcpu_run(r->vcpu, &ex), 0);
    assert_int_equal(ex.reason, VMM_EXIT_IO);
  } while (ex.io.port != port);
}

/* A restore keeps translations whose state did not change, so it must drop those of code the
 * guest rewrote after the snapshot. */
static void test_rollback_runs_restored_code(void **s) {
  (void)s;
  struct run r;
  run_flat(&r, prog_rollback_start, prog_rollback_end);
  run_to_port(&r, 0x81);
  vmm_snapshot_t *snap;
  assert_int_equal(vmm_vm_snapshot(r.vm, &snap), 0);
  for (int round = 0; round < 3; round++) {
    run_to_port(&r, 0x80);
    vmm_regs_t regs;
    assert_int_equal(vmm_vcpu_get_regs(r.vcpu, &regs), 0);
    assert_int_equal(regs.rcx, 28);
    assert_int_equal(vmm_vm_restore(r.vm, snap), 0);
  }
  vmm_snapshot_release(snap);
  vmm_vm_destroy(r.vm);
}

/* IRETQ and far RET from CPL3 to a DPL0 code segment through an RPL3 selector are #GP. */
static void test_return_to_kernel_segment_is_gp(void **s) {
  (void)s;
  for (int far = 0; far < 2; far++) {
    struct run r;
    run_open(&r, VMM_BACKEND_BT, 16u << 20);
    vmm_image_info_t info;
    size_t len = (size_t)(prog_retpriv_end - prog_retpriv_start);
    assert_int_equal(vmm_load_flat(r.vm, LOAD_GPA, prog_retpriv_start, len, &info), 0);
    vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
    lm.cpl = 3;
    lm.entry = LOAD_GPA + (far ? (uint64_t)(prog_retpriv_far - prog_retpriv_start) : 0);
    assert_int_equal(vmm_vcpu_setup_long_mode(r.vcpu, &lm), 0);
    vmm_exit_t ex;
    run_until(&r, &ex, NULL);
    assert_int_equal(ex.reason, VMM_EXIT_EXCEPTION);
    assert_int_equal(ex.exception.vector, 13);
    assert_int_equal(ex.exception.error_code, 8);
    vmm_vm_destroy(r.vm);
  }
}

/* The guest's x87 state and the host's stay apart even when FXRSTOR/FXSAVE are the only x87
 * instructions the guest runs. */
static void test_guest_x87_state_stays_in_the_guest(void **s) {
  (void)s;
  volatile long double secret = 1234.5L;
  secret = secret * 3.0L; /* leaves x87 registers in use on the host */
  struct run r;
  run_flat(&r, prog_fxrstor_start, prog_fxrstor_end);
  vmm_exit_t ex;
  run_until(&r, &ex, NULL);
  assert_int_equal(ex.reason, VMM_EXIT_IO);
  uint16_t cw = 0, sw = 0;
  __asm__ volatile("fnstcw %0" : "=m"(cw));
  __asm__ volatile("fnstsw %0" : "=m"(sw));
  assert_int_equal(cw, 0x37f);
  assert_int_equal(sw & 0xff, 0);
  volatile long double x = 3.0L;
  x = x / 7.0L; /* would raise SIGFPE with the guest's control word */
  assert_true(x > 0.4L && x < 0.5L);
  /* What the guest stored is its own state: FCW 0, FSW 0x81. */
  uint16_t img[2];
  assert_int_equal(vmm_vm_read(r.vm, 0x200200, img, sizeof(img)), 0);
  assert_int_equal(img[0] & 0x3f, 0); /* bit 6 reads as 1 on some CPUs */
  assert_int_equal(img[1] & 0xff, 0x81);
  vmm_vm_destroy(r.vm);
}

static void test_dropped_lookup_entry_never_matches(void **s) {
  (void)s;
  struct run r;
  run_flat(&r, prog_emptyslot_start, prog_emptyslot_end);
  vmm_exit_t ex;
  run_until(&r, &ex, NULL);
  assert_int_equal(ex.reason, VMM_EXIT_EXCEPTION);
  assert_true(stat_value(r.vcpu, "bt.smc_invalidations") >= 1);
  vmm_vm_destroy(r.vm);
}

static void test_small_code_cache_flushes_and_stays_correct(void **s) {
  (void)s;
  setenv("LIBVMM_BT_CACHE_KB", "16", 1);
  struct outcome o;
  struct run r;
  run_guest_file(&r, VMM_BACKEND_BT, "arith", 0, NULL);
  unsetenv("LIBVMM_BT_CACHE_KB");
  /* The first flush is the one every set_state() does. */
  vmm_exit_t ex;
  run_until(&r, &ex, NULL);
  assert_int_equal(ex.reason, VMM_EXIT_GUEST_EXIT);
  assert_true(stat_value(r.vcpu, "bt.cache_size") == 16 * 1024);
  assert_true(stat_value(r.vcpu, "bt.cache_flushes") >= 2);
  guest_outcome(VMM_BACKEND_BT, "arith", 0, NULL, &o);
  assert_string_equal(r.con, o.con);
  assert_true(stat_value(r.vcpu, "bt.blocks_translated") > 0);
  assert_true(stat_value(r.vcpu, "bt.insns_translated") > 0);
  vmm_vm_destroy(r.vm);
}

/* ---- state round trip: stop, move to a new VM, continue ---- */

static void test_state_moves_between_vms_mid_run(void **s) {
  (void)s;
  struct run a, b;
  run_open(&a, VMM_BACKEND_BT, 128u << 20);
  vmm_image_info_t info;
  assert_int_equal(vmm_load_file(a.vm, GUEST_DIR "/kernels.elf", 0, 0, &info), 0);
  vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
  lm.cpl = 3;
  lm.entry = info.entry;
  lm.cmdline = "int 20000";
  assert_int_equal(vmm_vcpu_setup_long_mode(a.vcpu, &lm), 0);
  struct kicker k = {a.vcpu, 30};
  pthread_t t;
  pthread_create(&t, NULL, kick_thread, &k);
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  for (;;) {
    assert_int_equal(vmm_vcpu_run(a.vcpu, &ex), 0);
    if (ex.reason != VMM_EXIT_HYPERCALL) break;
    ex.hypercall.result = 0; /* the clock hypercall nobody handles: any value will do */
  }
  pthread_join(t, NULL);
  assert_int_equal(ex.reason, VMM_EXIT_KICKED);
  vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
  assert_int_equal(vmm_vcpu_get_state(a.vcpu, &st), 0);
  /* The new VM gets its system area (and hypercall page) the usual way, then the memory and
   * the CPU state of the old one. */
  run_open(&b, VMM_BACKEND_BT, 128u << 20);
  vmm_long_mode_config_t lm2 = VMM_LONG_MODE_CONFIG_INIT;
  lm2.entry = info.entry;
  assert_int_equal(vmm_vcpu_setup_long_mode(b.vcpu, &lm2), 0);
  void *src, *dst;
  assert_int_equal(vmm_vm_gpa_to_hva(a.vm, 0, 128u << 20, &src), 0);
  assert_int_equal(vmm_vm_gpa_to_hva(b.vm, 0, 128u << 20, &dst), 0);
  memcpy(dst, src, 128u << 20);
  assert_int_equal(vmm_vcpu_set_state(b.vcpu, &st), 0);
  memset(&ex, 0, sizeof(ex));
  for (;;) {
    assert_int_equal(vmm_vcpu_run(b.vcpu, &ex), 0);
    if (ex.reason != VMM_EXIT_HYPERCALL) break;
    ex.hypercall.result = 0;
  }
  assert_int_equal(ex.reason, VMM_EXIT_GUEST_EXIT);
  char native[256] = "";
  FILE *p = popen(KERN_NATIVE " int 20000", "r");
  assert_non_null(p);
  assert_non_null(fgets(native, sizeof(native), p));
  pclose(p);
  assert_memory_equal(b.con, native, 4 + 16);
  vmm_vm_destroy(a.vm);
  vmm_vm_destroy(b.vm);
}

/* ---- single-step ---- */

static void test_single_step_reports_each_instruction(void **s) {
  (void)s;
  struct run r;
  run_flat(&r, prog_steps_start, prog_steps_end);
  assert_int_equal(vmm_vcpu_set_single_step(r.vcpu, 1), 0);
  static const uint64_t want[] = {5, 8, 11, 12, 13};
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  for (size_t i = 0; i < 5; i++) {
    assert_int_equal(vmm_vcpu_run(r.vcpu, &ex), 0);
    assert_int_equal(ex.reason, VMM_EXIT_DEBUG);
    assert_int_equal(ex.debug.rip, LOAD_GPA + want[i]);
  }
  assert_int_equal(vmm_vcpu_set_single_step(r.vcpu, 0), 0);
  run_until(&r, &ex, NULL);
  assert_int_equal(ex.reason, VMM_EXIT_IO);
  vmm_regs_t regs;
  vmm_vcpu_get_regs(r.vcpu, &regs);
  assert_int_equal(regs.rbx, 9);
  vmm_vm_destroy(r.vm);
}

/* ---- hypercalls ---- */

static void test_hypercall_preserves_registers(void **s) {
  (void)s;
  struct run r;
  run_flat(&r, prog_hcregs_start, prog_hcregs_end);
  vmm_regs_t in;
  assert_int_equal(vmm_vcpu_get_regs(r.vcpu, &in), 0);
  in.rbx = 0x1111, in.rcx = 0x2222, in.rdx = 0x3333, in.rsi = 0x4444, in.rdi = 0x5555;
  in.rbp = 0x6666, in.r8 = 0x7777, in.r9 = 0x8888, in.r10 = 0x9999, in.r11 = 0xaaaa;
  in.r12 = 0xbbbb, in.r13 = 0xcccc, in.r14 = 0xdddd, in.r15 = 0xeeee;
  in.rflags = 0x2 | 0x1 | 0x80; /* CF, SF */
  assert_int_equal(vmm_vcpu_set_regs(r.vcpu, &in), 0);
  vmm_exit_t ex;
  run_until(&r, &ex, NULL);
  assert_int_equal(ex.reason, VMM_EXIT_IO);
  vmm_regs_t out;
  assert_int_equal(vmm_vcpu_get_regs(r.vcpu, &out), 0);
  assert_int_equal(out.rax, 0);
  assert_int_equal(out.rbx, in.rbx);
  assert_int_equal(out.rcx, in.rcx);
  assert_int_equal(out.rdx, in.rdx);
  assert_int_equal(out.rsi, in.rsi);
  assert_int_equal(out.rdi, in.rdi);
  assert_int_equal(out.rbp, in.rbp);
  assert_int_equal(out.r8, in.r8);
  assert_int_equal(out.r11, in.r11);
  assert_int_equal(out.r15, in.r15);
  assert_int_equal(out.rsp, in.rsp);
  assert_int_equal(out.rflags & 0x8d5, in.rflags & 0x8d5);
  assert_true(stat_value(r.vcpu, "bt.fast_exits.HYPERCALL") == 1);
  vmm_vm_destroy(r.vm);
}

/* Guest pages below 64 KiB: in the low window the vCPU moves to its GS window and runs on,
 * with the same results as a vCPU that never had it. */
static void lowpage_run(bool low_allowed, bool *was_low, bool *is_low) {
  const char *env = getenv("LIBVMM_BT_LOW_WINDOW");
  char was[16] = "";
  if (env) snprintf(was, sizeof(was), "%s", env);
  if (!low_allowed) setenv("LIBVMM_BT_LOW_WINDOW", "0", 1);
  struct run r;
  run_flat(&r, prog_lowpage_start, prog_lowpage_end);
  if (env) setenv("LIBVMM_BT_LOW_WINDOW", was, 1);
  else unsetenv("LIBVMM_BT_LOW_WINDOW");
  *was_low = stat_value(r.vcpu, "bt.low_window") == 1;
  vmm_exit_t ex;
  run_until(&r, &ex, NULL);
  assert_int_equal(ex.reason, VMM_EXIT_IO);
  assert_int_equal(ex.io.port, 0x80);
  *is_low = stat_value(r.vcpu, "bt.low_window") == 1;
  vmm_regs_t regs;
  assert_int_equal(vmm_vcpu_get_regs(r.vcpu, &regs), 0);
  assert_int_equal(regs.rbx, 0x1122334455667788ull);
  uint64_t q;
  uint32_t d;
  uint8_t out[64], want[64];
  memset(want, 0x5a, sizeof(want));
  assert_int_equal(vmm_vm_read(r.vm, 0x8000, &q, 8), 0);
  assert_int_equal(q, 0x1122334455667788ull);
  assert_int_equal(vmm_vm_read(r.vm, 0x9000, &d, 4), 0);
  assert_int_equal(d, 0xcafef00du);
  assert_int_equal(vmm_vm_read(r.vm, 0x200000, out, 64), 0);
  assert_memory_equal(out, want, 64);
  vmm_vm_destroy(r.vm);
}

static void test_low_guest_pages_leave_the_low_window(void **s) {
  (void)s;
  bool was_low, is_low;
  lowpage_run(false, &was_low, &is_low);
  assert_false(was_low);
  assert_false(is_low);
  lowpage_run(true, &was_low, &is_low);
  if (!was_low) {
    /* LIBVMM_BT_LOW_WINDOW=0, an ASan shadow, or something of the program's mapped low. */
    printf("     (the low window was not in use here: only the GS window was tested)\n");
    return;
  }
  assert_false(is_low);

  /* A large guest page that covers the floor is mapped from the floor up: host address 0
   * stays unmapped (a host null pointer still faults), and the vCPU keeps the low window. */
  struct run r;
  run_flat(&r, prog_lowfloor_start, prog_lowfloor_end);
  assert_true(stat_value(r.vcpu, "bt.low_window") == 1);
  vmm_exit_t ex;
  run_until(&r, &ex, NULL);
  assert_int_equal(ex.reason, VMM_EXIT_IO);
  assert_true(stat_value(r.vcpu, "bt.low_window") == 1);
  assert_int_equal(msync((void *)0x10000, 4096, MS_ASYNC), 0);
  errno = 0;
  assert_int_equal(msync((void *)0, 4096, MS_ASYNC), -1);
  assert_int_equal(errno, ENOMEM);
  vmm_vm_destroy(r.vm);
}

static bool host_has_avx(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27)) || !(c & (1u << 28))) return false;
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & 6) == 6;
}

static void test_vector_state_survives_exits(void **s) {
  (void)s;
  if (!host_has_avx()) {
    printf("     (skipped: the host has no AVX)\n");
    return;
  }
  struct run r;
  run_flat(&r, prog_ymm_start, prog_ymm_end);
  vmm_exit_t ex;
  run_until(&r, &ex, NULL);
  assert_int_equal(ex.reason, VMM_EXIT_IO);
  assert_true(stat_value(r.vcpu, "bt.fast_exits.HYPERCALL") == 2);
  uint8_t got[96], want[96];
  memset(want, 0xff, 32);
  memset(want + 32, 0xff, 16);
  memset(want + 48, 0, 16);
  memset(want + 64, 0xff, 16);
  memset(want + 80, 0, 16);
  assert_int_equal(vmm_vm_read(r.vm, 0x200000, got, sizeof(got)), 0);
  assert_memory_equal(got, want, sizeof(got));
  vmm_vm_destroy(r.vm);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_kick_stops_tight_loop),
      cmocka_unit_test(test_fault_with_pending_pushes),
      cmocka_unit_test(test_smc_runs_new_code),
      cmocka_unit_test(test_rollback_runs_restored_code),
      cmocka_unit_test(test_dropped_lookup_entry_never_matches),
      cmocka_unit_test(test_guest_x87_state_stays_in_the_guest),
      cmocka_unit_test(test_return_to_kernel_segment_is_gp),
      cmocka_unit_test(test_small_code_cache_flushes_and_stays_correct),
      cmocka_unit_test(test_state_moves_between_vms_mid_run),
      cmocka_unit_test(test_single_step_reports_each_instruction),
      cmocka_unit_test(test_hypercall_preserves_registers),
      cmocka_unit_test(test_low_guest_pages_leave_the_low_window),
      cmocka_unit_test(test_vector_state_survives_exits),
      cmocka_unit_test(test_reused_vcpu_memory_starts_empty),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
