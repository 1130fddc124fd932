/* Tests of the bt backend through the public API: the integration guests (and, where /dev/kvm
 * works, the same guests compared with kvm), the sandbox, kicks, self-modifying code, the code
 * cache bound, CPU state round trips, single-stepping, hypercall register preservation and the
 * counters. GUEST_DIR is where the build put the test guests. */
#define _GNU_SOURCE
#include <cpuid.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <errno.h>
#include <unistd.h>

#include <cmocka.h>
#include <libvmm/vmm.h>

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

#define LOAD_GPA 0x100000ull

/* cmocka replaces crash handlers around each test without chaining; put the backend's back. */
static const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP};
static struct sigaction saved[5];
static bool saved_ok;

static void restore_handlers(void) {
  if (saved_ok)
    for (int i = 0; i < 5; i++) sigaction(sigs[i], &saved[i], NULL);
}

struct run {
  vmm_vm_t *vm;
  vmm_vcpu_t *vcpu;
  char con[8192];
  size_t conlen;
};

static void console(const char *d, size_t n, void *ud) {
  struct run *r = ud;
  if (r->conlen + n >= sizeof(r->con)) n = sizeof(r->con) - 1 - r->conlen;
  memcpy(r->con + r->conlen, d, n);
  r->conlen += n;
  r->con[r->conlen] = 0;
}

static uint64_t echo_val;
static int echo_io(vmm_vcpu_t *vcpu, uint64_t off, uint32_t size, int is_write, uint64_t *data,
                   void *ud) {
  (void)vcpu, (void)off, (void)size, (void)ud;
  if (is_write) echo_val = *data;
  else *data = echo_val + 1;
  return VMM_HANDLED;
}

static uint64_t mmio_regs[8];
static int mmio_io(vmm_vcpu_t *vcpu, uint64_t off, uint32_t size, int is_write, uint64_t *data,
                   void *ud) {
  (void)vcpu, (void)ud;
  if (off / 8 >= 8) return VMM_UNHANDLED;
  uint64_t mask = size >= 8 ? ~0ull : ((1ull << (size * 8)) - 1);
  unsigned sh = (unsigned)(off % 8) * 8;
  if (is_write) mmio_regs[off / 8] = (mmio_regs[off / 8] & ~(mask << sh)) | ((*data & mask) << sh);
  else *data = (mmio_regs[off / 8] >> sh) & mask;
  return VMM_HANDLED;
}

static void run_open(struct run *r, vmm_backend_t be, uint64_t ram) {
  memset(r, 0, sizeof(*r));
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = be;
  cfg.ram_size = ram;
  assert_int_equal(vmm_vm_create(&cfg, &r->vm), 0);
  assert_int_equal(vmm_vcpu_create(r->vm, 0, &r->vcpu), 0);
  vmm_vm_set_console(r->vm, console, r);
  if (!saved_ok) {
    for (int i = 0; i < 5; i++) sigaction(sigs[i], NULL, &saved[i]);
    saved_ok = true;
  }
  restore_handlers();
}

static void run_guest_file(struct run *r, vmm_backend_t be, const char *name, unsigned cpl,
                           const char *cmdline) {
  run_open(r, be, 64u << 20);
  vmm_vm_add_pio_handler(r->vm, 0x500, 4, echo_io, NULL, NULL);
  vmm_vm_add_mmio_handler(r->vm, 0xd0000000ull, 0x1000, mmio_io, NULL, NULL);
  vmm_debug_exit_create(r->vm, 0, NULL);
  char path[512];
  snprintf(path, sizeof(path), "%s/%s.elf", GUEST_DIR, name);
  vmm_image_info_t info;
  assert_int_equal(vmm_load_file(r->vm, path, 0, 0, &info), 0);
  vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
  lm.cpl = cpl;
  lm.entry = info.entry;
  lm.cmdline = cmdline;
  lm.image_low = info.low;
  lm.image_high = info.high;
  assert_int_equal(vmm_vcpu_setup_long_mode(r->vcpu, &lm), 0);
}

static void run_flat(struct run *r, const uint8_t *start, const uint8_t *end) {
  run_open(r, VMM_BACKEND_BT, 16u << 20);
  vmm_image_info_t info;
  assert_int_equal(vmm_load_flat(r->vm, LOAD_GPA, start, (size_t)(end - start), &info), 0);
  vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
  lm.entry = LOAD_GPA;
  assert_int_equal(vmm_vcpu_setup_long_mode(r->vcpu, &lm), 0);
}

/* Runs to the first exit that is not an I/O or MMIO exit the test answers with all-ones. */
static void run_until(struct run *r, vmm_exit_t *ex, unsigned *io_exits) {
  memset(ex, 0, sizeof(*ex));
  for (int i = 0; i < 1000; i++) {
    assert_int_equal(vmm_vcpu_run(r->vcpu, ex), 0);
    if (ex->reason == VMM_EXIT_HYPERCALL) { /* e.g. the benchmark clock: any value */
      ex->hypercall.result = 0;
      continue;
    }
    if ((ex->reason == VMM_EXIT_IO && ex->io.port != 0x80) || ex->reason == VMM_EXIT_MMIO) {
      if (io_exits) (*io_exits)++;
      continue;
    }
    return;
  }
  fail_msg("too many exits");
}

static uint32_t crc32_buf(const uint8_t *p, size_t n) {
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xedb88320u & -(c & 1));
  }
  return ~c;
}

/* ---- the integration guests ---- */

struct outcome {
  uint32_t reason;
  int64_t status;
  uint8_t vector;
  uint64_t rip, rbx, ram_crc;
  char con[1024];
  unsigned io_exits;
};

static void guest_outcome(vmm_backend_t be, const char *name, unsigned cpl, const char *cmd,
                          struct outcome *o) {
  struct run r;
  run_guest_file(&r, be, name, cpl, cmd);
  vmm_exit_t ex;
  memset(o, 0, sizeof(*o));
  run_until(&r, &ex, &o->io_exits);
  o->reason = ex.reason;
  o->status = ex.reason == VMM_EXIT_GUEST_EXIT ? ex.guest_exit.status : 0;
  o->vector = ex.reason == VMM_EXIT_EXCEPTION ? ex.exception.vector : 0;
  vmm_regs_t regs;
  assert_int_equal(vmm_vcpu_get_regs(r.vcpu, &regs), 0);
  o->rip = regs.rip;
  o->rbx = regs.rbx;
  void *ram;
  assert_int_equal(vmm_vm_gpa_to_hva(r.vm, 0x100000, 16u << 20, &ram), 0);
  o->ram_crc = crc32_buf(ram, 16u << 20);
  memcpy(o->con, r.con, sizeof(o->con) - 1);
  o->con[sizeof(o->con) - 1] = 0;
  vmm_vm_destroy(r.vm);
}

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

static uint64_t stat_value(vmm_vcpu_t *vcpu, const char *name) {
  vmm_stat_t st[64];
  size_t n = 0;
  vmm_vcpu_stats(vcpu, st, 64, &n);
  for (size_t i = 0; i < n && i < 64; i++)
    if (!strcmp(st[i].name, name)) return st[i].value;
  return UINT64_MAX;
}

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
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
