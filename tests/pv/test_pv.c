/* Functional tests of the pv backend through the public API: hypercall exits and their
 * registers, exceptions,
 * CPU state round trips with FPU/SSE contents, kicks, changing the run thread, changing the
 * memory map, single-stepping, the sandbox's confinement and the death of the sandbox. */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <libvmm/guest/abi.h>
#include <libvmm/snapshot.h>

#include "pv_test_util.h"

#define HC_STOP (VMM_HC_USER_BASE + 6)

static void test_probe_succeeds(void **state) {
  (void)state;
  assert_int_equal(vmm_backend_probe(VMM_BACKEND_PV), 0);
}

static void test_hello_prints_and_exits(void **state) {
  (void)state;
  struct pv_vm p;
  assert_int_equal(pv_vm_start(&p, "hello", 0, NULL), 0);
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  run_expect(&p, &ex, VMM_EXIT_GUEST_EXIT);
  assert_int_equal(ex.guest_exit.status, 0);
  assert_string_equal(p.console, "Hello from a libvmm guest!\nram=64 MiB cpl=0\n");
  pv_vm_stop(&p);
}

/* An unhandled hypercall shows the registers kvm shows at its OUT: RIP at entry + 5, RAX the
 * number, every other register as the guest had it; completing it returns the result. */
static void test_hypercall_exit_registers(void **state) {
  (void)state;
  struct pv_vm p;
  assert_int_equal(pv_vm_start(&p, "pvtest", 0, "regs"), 0);
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  run_expect(&p, &ex, VMM_EXIT_HYPERCALL);
  assert_int_equal(ex.hypercall.nr, HC_STOP);
  vmm_regs_t r;
  assert_int_equal(vmm_vcpu_get_regs(p.vcpu, &r), 0);
  assert_int_equal(r.rip, VMM_HYPERCALL_PAGE_GPA + HC_STOP * VMM_HC_ENTRY_SIZE + 5);
  assert_int_equal(r.rax, HC_STOP);
  assert_int_equal(r.rbx, 0x1111);
  assert_int_equal(r.rcx, 0x2222);
  assert_int_equal(r.rdx, 0x3333);
  assert_int_equal(r.rsi, 0x4444);
  assert_int_equal(r.rdi, 0x5555);
  assert_int_equal(r.r8, 0x8888);
  assert_int_equal(r.r11, 0xbbbb);
  assert_int_equal(r.r15, 0xffff);
  uint64_t ret;
  assert_int_equal(vmm_vm_read(p.vm, r.rsp, &ret, 8), 0);
  assert_true(ret >= 0x100000 && ret < 0x200000); /* The return address into the guest. */
  assert_int_equal(ex.hypercall.args[0], 0x5555);
  assert_int_equal(ex.hypercall.args[1], 0x4444);
  assert_int_equal(ex.hypercall.args[2], 0x3333);
  assert_int_equal(ex.hypercall.args[3], 0xaaaa);
  ex.hypercall.result = 0xabcdef;
  run_expect(&p, &ex, VMM_EXIT_HLT);
  assert_int_equal(vmm_vcpu_get_regs(p.vcpu, &r), 0);
  assert_int_equal(r.rbp, 0xabcdef);
  assert_int_equal(r.rcx, 0x2222);
  assert_int_equal(r.r11, 0xbbbb);
  assert_int_equal(r.rax, 0x484c54);
  assert_int_equal(r.rflags & VMM_RFLAGS_IF, 0);
  pv_vm_stop(&p);
}

static void test_syscall_outside_page_is_ud(void **state) {
  (void)state;
  struct pv_vm p;
  assert_int_equal(pv_vm_start(&p, "pvtest", 0, "syscall"), 0);
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  run_expect(&p, &ex, VMM_EXIT_EXCEPTION);
  vmm_regs_t r;
  assert_int_equal(vmm_vcpu_get_regs(p.vcpu, &r), 0);
  assert_int_equal(ex.exception.vector, 6);
  assert_int_equal(ex.exception.rip, r.rbx);
  assert_int_equal(r.rip, r.rbx);
  assert_int_equal(r.rax, 39);
  pv_vm_stop(&p);
}

static void test_int3_reports_rip_after(void **state) {
  (void)state;
  for (unsigned cpl = 0; cpl <= 3; cpl += 3) {
    struct pv_vm p;
    assert_int_equal(pv_vm_start(&p, "pvtest", cpl, "int3"), 0);
    vmm_exit_t ex;
    memset(&ex, 0, sizeof(ex));
    run_expect(&p, &ex, VMM_EXIT_EXCEPTION);
    vmm_regs_t r;
    assert_int_equal(vmm_vcpu_get_regs(p.vcpu, &r), 0);
    assert_int_equal(ex.exception.vector, 3);
    assert_int_equal(ex.exception.rip, r.rbx);
    pv_vm_stop(&p);
  }
}

static void test_access_beyond_identity_map_is_page_fault(void **state) {
  (void)state;
  struct pv_vm p;
  assert_int_equal(pv_vm_start(&p, "pvtest", 0, "far 8000000000"), 0);
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  run_expect(&p, &ex, VMM_EXIT_EXCEPTION);
  vmm_regs_t r;
  assert_int_equal(vmm_vcpu_get_regs(p.vcpu, &r), 0);
  assert_int_equal(ex.exception.vector, 14);
  assert_int_equal(ex.exception.cr2, 0x8000000000ull);
  assert_true(ex.exception.has_error_code);
  assert_int_equal(ex.exception.error_code & 0x13, 0); /* Not present, read, data. */
  assert_int_equal(ex.exception.rip, r.rbx);
  vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
  assert_int_equal(vmm_vcpu_get_state(p.vcpu, &st), 0);
  assert_int_equal(st.cr2, 0x8000000000ull);
  pv_vm_stop(&p);
}

/* RAM mapped after the sandbox started is visible to the guest when it runs again. */
static void test_ram_added_while_sandbox_exists(void **state) {
  (void)state;
  struct pv_vm p;
  assert_int_equal(pv_vm_start(&p, "pvtest", 0, "stopmem 10000000"), 0);
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  run_expect(&p, &ex, VMM_EXIT_HYPERCALL);
  assert_int_equal(pv_stat(p.vcpu, "pv.sandboxes_started"), 1);
  void *hva;
  assert_int_equal(vmm_vm_map_ram(p.vm, 0x10000000, 1 << 20, 0, &hva), 0);
  uint64_t v = 0x77;
  memcpy(hva, &v, 8);
  ex.hypercall.result = 0;
  run_expect(&p, &ex, VMM_EXIT_GUEST_EXIT);
  assert_string_equal(p.console, "mem 10000000=77\n");
  memcpy(&v, hva, 8);
  assert_int_equal(v, 0x78);
  assert_int_equal(pv_stat(p.vcpu, "pv.sandboxes_started"), 2);
  pv_vm_stop(&p);
}

/* SSE registers travel through get_state/set_state in the XSAVE image. */
static void test_fpu_state_round_trip(void **state) {
  (void)state;
  struct pv_vm p;
  assert_int_equal(pv_vm_start(&p, "pvtest", 0, "fpu"), 0);
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  run_expect(&p, &ex, VMM_EXIT_HYPERCALL);
  vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
  assert_int_equal(vmm_vcpu_get_state(p.vcpu, &st), 0);
  uint64_t x0, x1 = 0xfeedbeefcafe1234ull;
  memcpy(&x0, st.xsave + 160, 8);
  assert_int_equal(x0, 0x0123456789abcdefull);
  memcpy(st.xsave + 176, &x1, 8);
  assert_int_equal(vmm_vcpu_set_state(p.vcpu, &st), 0);
  /* The state was read with the hypercall outstanding (RIP at the trap, as on kvm): writing
   * it back drops the completion and the guest makes the hypercall again. */
  run_expect(&p, &ex, VMM_EXIT_HYPERCALL);
  assert_int_equal(ex.hypercall.nr, HC_STOP);
  ex.hypercall.result = 0;
  run_expect(&p, &ex, VMM_EXIT_GUEST_EXIT);
  assert_string_equal(p.console, "xmm1=feedbeefcafe1234\n");
  pv_vm_stop(&p);
}

/* get_state returns what set_state wrote, including what pv only shadows. */
static void test_state_shadow_round_trip(void **state) {
  (void)state;
  struct pv_vm p;
  assert_int_equal(pv_vm_start(&p, "pvtest", 0, "int3"), 0);
  vmm_cpu_state_t a = VMM_CPU_STATE_INIT, b = VMM_CPU_STATE_INIT;
  assert_int_equal(vmm_vcpu_get_state(p.vcpu, &a), 0);
  a.cr3 = 0x18000;
  a.star = 0x0023001000000000ull;
  a.lstar = 0xffffffff81000000ull;
  a.gdt.limit = 0x3f;
  a.dr7 = 0x400;
  a.regs.r13 = 0x1313;
  assert_int_equal(vmm_vcpu_set_state(p.vcpu, &a), 0);
  assert_int_equal(vmm_vcpu_get_state(p.vcpu, &b), 0);
  b.tsc = a.tsc;
  assert_memory_equal(&a, &b, offsetof(vmm_cpu_state_t, xsave));
  assert_memory_equal(a.xsave, b.xsave, 512);
  /* And after running: the registers come back from the sandbox. */
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  run_expect(&p, &ex, VMM_EXIT_EXCEPTION);
  assert_int_equal(vmm_vcpu_get_state(p.vcpu, &b), 0);
  assert_int_equal(b.cr3, 0x18000);
  assert_int_equal(b.lstar, 0xffffffff81000000ull);
  assert_int_equal(b.regs.r13, 0x1313);
  assert_int_equal(b.cs.selector, a.cs.selector);
  pv_vm_stop(&p);
}

static void test_non_long_mode_refused(void **state) {
  (void)state;
  struct pv_vm p;
  assert_int_equal(pv_vm_start(&p, "hello", 0, NULL), 0);
  assert_int_equal(vmm_vcpu_setup_protected_mode(p.vcpu, 0x100000, 0x8000), VMM_ENOSYS);
  assert_int_equal(vmm_vcpu_setup_real_mode(p.vcpu, 0, 0x7c00, 0x7000), VMM_ENOSYS);
  /* The vCPU still holds its long-mode state. */
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  run_expect(&p, &ex, VMM_EXIT_GUEST_EXIT);
  pv_vm_stop(&p);
}

struct kicker {
  vmm_vcpu_t *vcpu;
  int delay_ms;
};

static void *kick_later(void *arg) {
  struct kicker *k = arg;
  struct timespec ts = {0, k->delay_ms * 1000000L};
  nanosleep(&ts, NULL);
  vmm_vcpu_kick(k->vcpu);
  return NULL;
}

static void test_kick_stops_spinning_guest(void **state) {
  (void)state;
  struct pv_vm p;
  assert_int_equal(pv_vm_start(&p, "pvtest", 0, "spin"), 0);
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  for (int i = 0; i < 3; i++) {
    struct kicker k = {p.vcpu, 30};
    pthread_t t;
    pthread_create(&t, NULL, kick_later, &k);
    run_expect(&p, &ex, VMM_EXIT_KICKED);
    pthread_join(t, NULL);
  }
  assert_string_equal(p.console, "spinning\n");
  /* A kick before the run makes the next run return at once. */
  assert_int_equal(vmm_vcpu_kick(p.vcpu), 0);
  run_expect(&p, &ex, VMM_EXIT_KICKED);
  pv_vm_stop(&p);
}

struct runner {
  struct pv_vm *p;
  vmm_exit_t ex;
  int rc;
};

static void *run_on_thread(void *arg) {
  struct runner *r = arg;
  r->rc = vmm_vcpu_run(r->p->vcpu, &r->ex);
  return NULL;
}

/* ptrace belongs to one thread; running the vCPU from another moves it to a new sandbox with
 * exactly the same state. */
static void test_run_from_another_thread(void **state) {
  (void)state;
  struct pv_vm p;
  assert_int_equal(pv_vm_start(&p, "pvtest", 0, "regs"), 0);
  struct runner r = {&p, {0}, 0};
  run_expect(&p, &r.ex, VMM_EXIT_HYPERCALL);
  r.ex.hypercall.result = 0x5151;
  pthread_t t;
  pthread_create(&t, NULL, run_on_thread, &r);
  pthread_join(t, NULL);
  assert_int_equal(r.rc, 0);
  assert_int_equal(r.ex.reason, VMM_EXIT_HLT);
  vmm_regs_t regs;
  assert_int_equal(vmm_vcpu_get_regs(p.vcpu, &regs), 0);
  assert_int_equal(regs.rbp, 0x5151);
  assert_int_equal(regs.r14, 0xeeee);
  assert_int_equal(pv_stat(p.vcpu, "pv.sandboxes_started"), 2);
  pv_vm_stop(&p);
}

struct killer {
  pid_t pid;
  int delay_ms;
};

static void *kill_later(void *arg) {
  struct killer *k = arg;
  struct timespec ts = {0, k->delay_ms * 1000000L};
  nanosleep(&ts, NULL);
  kill(k->pid, SIGKILL);
  return NULL;
}

static void test_sandbox_death_is_echild(void **state) {
  (void)state;
  struct pv_vm p;
  assert_int_equal(pv_vm_start(&p, "pvtest", 0, "spinhc"), 0);
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  assert_int_equal(vmm_vcpu_kick(p.vcpu), 0);
  run_expect(&p, &ex, VMM_EXIT_KICKED);
  pid_t pid = (pid_t)pv_stat(p.vcpu, "pv.sandbox_pid");
  assert_true(pid > 0);
  struct killer k = {pid, 20};
  pthread_t t;
  pthread_create(&t, NULL, kill_later, &k);
  assert_int_equal(vmm_vcpu_run(p.vcpu, &ex), VMM_ECHILD);
  pthread_join(t, NULL);
  assert_int_equal(vmm_vcpu_run(p.vcpu, &ex), VMM_ECHILD);
  /* Reaped: no zombie is left. */
  assert_int_equal(waitpid(pid, NULL, WNOHANG), -1);
  assert_int_equal(kill(pid, 0), -1);
  /* A new state starts a new sandbox. */
  vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
  assert_int_equal(vmm_vcpu_get_state(p.vcpu, &st), 0);
  assert_int_equal(vmm_vcpu_set_state(p.vcpu, &st), 0);
  assert_int_equal(vmm_vcpu_kick(p.vcpu), 0);
  run_expect(&p, &ex, VMM_EXIT_KICKED);
  assert_true(pv_stat(p.vcpu, "pv.sandbox_pid") != (uint64_t)pid);
  pv_vm_stop(&p);
}

static void test_single_step(void **state) {
  (void)state;
  struct pv_vm p;
  assert_int_equal(pv_vm_start(&p, "hello", 0, NULL), 0);
  assert_int_equal(vmm_vcpu_set_single_step(p.vcpu, 1), 0);
  vmm_regs_t r0, r1;
  assert_int_equal(vmm_vcpu_get_regs(p.vcpu, &r0), 0);
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  for (int i = 0; i < 5; i++) {
    run_expect(&p, &ex, VMM_EXIT_DEBUG);
    assert_int_equal(vmm_vcpu_get_regs(p.vcpu, &r1), 0);
    assert_int_equal(ex.debug.rip, r1.rip);
    assert_true(r1.rip != r0.rip);
    r0 = r1;
  }
  assert_int_equal(vmm_vcpu_set_single_step(p.vcpu, 0), 0);
  run_expect(&p, &ex, VMM_EXIT_GUEST_EXIT);
  assert_string_equal(p.console, "Hello from a libvmm guest!\nram=64 MiB cpl=0\n");
  pv_vm_stop(&p);
}

static int count_dir(const char *path) {
  DIR *d = opendir(path);
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)))
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

static bool status_has(pid_t pid, const char *line) {
  char path[64], buf[4096];
  snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return false;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  return strstr(buf, line) != NULL;
}

/* What the guest's process has: no fds, seccomp, no new privileges, its own session, guest
 * RAM at the guest-physical addresses and nothing else but the stub and the kernel's own
 * pages. Destroying the VM reaps it. */
static void test_sandbox_confinement(void **state) {
  (void)state;
  struct pv_vm p;
  assert_int_equal(pv_vm_start(&p, "pvtest", 0, "int3"), 0);
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  run_expect(&p, &ex, VMM_EXIT_EXCEPTION);
  pid_t pid = (pid_t)pv_stat(p.vcpu, "pv.sandbox_pid");
  assert_true(pid > 0);
  char path[128], line[512];
  snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
  assert_int_equal(count_dir(path), 0);
  assert_true(status_has(pid, "Seccomp:\t2"));
  assert_true(status_has(pid, "NoNewPrivs:\t1"));
  assert_int_equal(getsid(pid), pid);
  snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  bool ram = false, stub = false;
  while (fgets(line, sizeof(line), f)) {
    unsigned long lo, hi;
    char perms[8];
    if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3) continue;
    if (lo == 0x1000 && hi == 64ul << 20) ram = strstr(line, "libvmm-ram") != NULL;
    else if (lo >= 0x7e0000000000ul && lo < 0x7e0000100000ul) stub = true;
    else if (!strstr(line, "[stack]") && !strstr(line, "[vdso]") && !strstr(line, "[vvar") &&
             !strstr(line, "[vsyscall]"))
      fail_msg("unexpected mapping in the sandbox: %s", line);
  }
  fclose(f);
  assert_true(ram);
  assert_true(stub);
  pv_vm_stop(&p);
  assert_int_equal(kill(pid, 0), -1);
  assert_int_equal(errno, ESRCH);
}

struct lingering_runner {
  struct pv_vm *p;
  vmm_exit_t ex;
  int rc;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool ran, release;
};

static void *run_and_linger(void *arg) {
  struct lingering_runner *r = arg;
  int rc = vmm_vcpu_run(r->p->vcpu, &r->ex);
  pthread_mutex_lock(&r->lock);
  r->rc = rc;
  r->ran = true;
  pthread_cond_signal(&r->cond);
  while (!r->release) pthread_cond_wait(&r->cond, &r->lock);
  pthread_mutex_unlock(&r->lock);
  return NULL;
}

/* A vCPU stopped anywhere inside a hypercall entry (by single-stepping here; kicks do the
 * same) is snapshotted at a point every backend's entry has, and both the VM and a restore of
 * the snapshot finish the guest with the right output. */
static void test_snapshot_inside_hypercall_entry(void **state) {
  (void)state;
  static const char want[] = "Hello from a libvmm guest!\nram=64 MiB cpl=0\n";
  /* 14, right after the syscall, is reached by kicks only: a single step there is not reported. */
  static const unsigned offsets[] = {8, 9, 11, 12, 15, 17, 18};
  for (size_t k = 0; k < sizeof(offsets) / sizeof(offsets[0]); k++) {
    struct pv_vm p;
    assert_int_equal(pv_vm_start(&p, "hello", 0, NULL), 0);
    assert_int_equal(vmm_vcpu_set_single_step(p.vcpu, 1), 0);
    vmm_exit_t ex;
    memset(&ex, 0, sizeof(ex));
    vmm_regs_t r;
    for (int steps = 0;; steps++) {
      assert_true(steps < 100000);
      run_expect(&p, &ex, VMM_EXIT_DEBUG);
      assert_int_equal(vmm_vcpu_get_regs(p.vcpu, &r), 0);
      uint64_t off = r.rip - VMM_HYPERCALL_PAGE_GPA;
      if (off < 4096 && off % VMM_HC_ENTRY_SIZE == offsets[k]) break;
    }
    assert_int_equal(vmm_vcpu_set_single_step(p.vcpu, 0), 0);
    size_t before = p.console_len;
    vmm_snapshot_t *snap;
    assert_int_equal(vmm_vm_snapshot(p.vm, &snap), 0);
    vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
    assert_int_equal(vmm_snapshot_cpu_state(snap, 0, &st), 0);
    uint64_t off = st.regs.rip - VMM_HYPERCALL_PAGE_GPA;
    assert_true(off >= 4096 || off % VMM_HC_ENTRY_SIZE == 0);
    run_expect(&p, &ex, VMM_EXIT_GUEST_EXIT);
    assert_string_equal(p.console, want);
    /* Again from the snapshot: the rest of the output once more. */
    assert_int_equal(vmm_vm_restore(p.vm, snap), 0);
    run_expect(&p, &ex, VMM_EXIT_GUEST_EXIT);
    assert_int_equal(p.console_len, strlen(want) + strlen(want) - before);
    assert_string_equal(p.console + strlen(want), want + before);
    vmm_snapshot_release(snap);
    pv_vm_stop(&p);
  }
}

static int echo_hc(vmm_vcpu_t *vcpu, uint64_t nr, const uint64_t args[6], uint64_t *result,
                   void *ud) {
  (void)vcpu, (void)nr, (void)ud;
  *result = args[0] * 3 + 1;
  return VMM_HANDLED;
}

struct kick_storm {
  vmm_vcpu_t *vcpu;
  atomic_bool stop;
  atomic_int runs; /* Completed runs of the main thread. */
};

/* Kicks at random moments, at most one per run so that every run makes progress. */
static void *kick_storm_thread(void *arg) {
  struct kick_storm *k = arg;
  unsigned seed = 7;
  while (!atomic_load(&k->stop)) {
    int runs = atomic_load(&k->runs);
    struct timespec ts = {0, 20000 + (long)(rand_r(&seed) % 200000)};
    nanosleep(&ts, NULL);
    vmm_vcpu_kick(k->vcpu);
    while (atomic_load(&k->runs) == runs && !atomic_load(&k->stop)) {
      struct timespec w = {0, 100000};
      nanosleep(&w, NULL);
    }
  }
  return NULL;
}

/* Kicks land anywhere, hypercall entries included; a snapshot after each one moves the vCPU
 * to a restartable point. The guest's hypercall results must all arrive exactly once. */
static void test_kicks_and_snapshots_during_hypercalls(void **state) {
  (void)state;
  struct pv_vm p;
  const uint64_t n = 20000;
  char cmd[32];
  snprintf(cmd, sizeof(cmd), "echo %llx", (unsigned long long)n);
  assert_int_equal(pv_vm_start(&p, "pvtest", 0, cmd), 0);
  assert_int_equal(vmm_vm_add_hypercall_handler(p.vm, VMM_HC_USER_BASE + 7, echo_hc, NULL, NULL),
                   0);
  struct kick_storm k = {p.vcpu, false, 0};
  pthread_t t;
  pthread_create(&t, NULL, kick_storm_thread, &k);
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  int kicks = 0;
  for (;;) {
    assert_int_equal(vmm_vcpu_run(p.vcpu, &ex), 0);
    atomic_fetch_add(&k.runs, 1);
    if (ex.reason != VMM_EXIT_KICKED) break;
    kicks++;
    vmm_snapshot_t *snap;
    assert_int_equal(vmm_vm_snapshot(p.vm, &snap), 0);
    vmm_snapshot_release(snap);
  }
  atomic_store(&k.stop, true);
  pthread_join(t, NULL);
  assert_int_equal(ex.reason, VMM_EXIT_GUEST_EXIT);
  char want[64];
  snprintf(want, sizeof(want), "sum=%llu\n", (unsigned long long)(3 * n * (n - 1) / 2 + n));
  assert_string_equal(p.console, want);
  assert_true(kicks > 0);
  pv_vm_stop(&p);
}

static void test_two_vcpus(void **state) {
  (void)state;
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = VMM_BACKEND_PV;
  cfg.ram_size = 64ull << 20;
  cfg.max_vcpus = 2;
  struct pv_vm p;
  memset(&p, 0, sizeof(p));
  assert_int_equal(vmm_vm_create(&cfg, &p.vm), 0);
  vmm_vcpu_t *v[2];
  vmm_image_info_t info;
  assert_int_equal(vmm_load_file(p.vm, PV_GUEST_DIR "/pvtest.elf", 0, 0, &info), 0);
  static const char *cmd[2] = {"mem 3000000", "mem 3001000"};
  for (int i = 0; i < 2; i++) {
    assert_int_equal(vmm_vcpu_create(p.vm, (uint32_t)i, &v[i]), 0);
    vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
    lm.entry = info.entry;
    lm.cmdline = cmd[i];
    lm.stack_top = (64ull << 20) - (uint64_t)i * (1 << 20);
    assert_int_equal(vmm_vcpu_setup_long_mode(v[i], &lm), 0);
  }
  /* The boot info is one page for the VM, and the second setup wrote its command line there.
   * vCPU 0 gets a copy with its own, through the register that points at it. */
  struct vmm_boot_info bi;
  assert_int_equal(vmm_vm_read(p.vm, VMM_BOOTINFO_GPA, &bi, sizeof(bi)), 0);
  bi.cmdline = 0x3100800;
  assert_int_equal(vmm_vm_write(p.vm, 0x3100000, &bi, sizeof(bi)), 0);
  assert_int_equal(vmm_vm_write(p.vm, 0x3100800, cmd[0], strlen(cmd[0]) + 1), 0);
  vmm_regs_t r;
  assert_int_equal(vmm_vcpu_get_regs(v[0], &r), 0);
  r.rdi = 0x3100000;
  assert_int_equal(vmm_vcpu_set_regs(v[0], &r), 0);
  uint64_t vals[2] = {100, 200};
  assert_int_equal(vmm_vm_write(p.vm, 0x3000000, &vals[0], 8), 0);
  assert_int_equal(vmm_vm_write(p.vm, 0x3001000, &vals[1], 8), 0);
  struct pv_vm p1 = p;
  p1.vcpu = v[1];
  struct runner r1 = {&p1, {0}, 0};
  pthread_t t;
  pthread_create(&t, NULL, run_on_thread, &r1);
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  assert_int_equal(vmm_vcpu_run(v[0], &ex), 0);
  pthread_join(t, NULL);
  assert_int_equal(ex.reason, VMM_EXIT_GUEST_EXIT);
  assert_int_equal(r1.rc, 0);
  assert_int_equal(r1.ex.reason, VMM_EXIT_GUEST_EXIT);
  uint64_t got;
  assert_int_equal(vmm_vm_read(p.vm, 0x3000000, &got, 8), 0);
  assert_int_equal(got, 101);
  assert_int_equal(vmm_vm_read(p.vm, 0x3001000, &got, 8), 0);
  assert_int_equal(got, 201);
  assert_true(pv_stat(v[0], "pv.sandbox_pid") != pv_stat(v[1], "pv.sandbox_pid"));
  vmm_vm_destroy(p.vm);
}

static bool bit(const uint64_t *bm, uint64_t gpa) {
  uint64_t pg = gpa / 4096;
  return (bm[pg / 64] >> (pg % 64)) & 1;
}

/* Dirty logging: pages the guest writes (natively, through emulation, or in a sandbox that was
 * replaced in between) are reported once per get. */
static void test_dirty_log(void **state) {
  (void)state;
  struct pv_vm p;
  assert_int_equal(pv_vm_start(&p, "pvtest", 0, "dirty 2000000 2100000"), 0);
  static uint64_t bm[(64u << 20) / 4096 / 64];
  int rc = vmm_vm_dirty_log_enable(p.vm, 0, 1);
  if (rc == VMM_ENOSYS) {
    pv_vm_stop(&p);
    skip();
  }
  assert_int_equal(rc, 0);
  assert_int_equal(vmm_vm_dirty_log_get(p.vm, 0, bm, sizeof(bm)), 0);
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  run_expect(&p, &ex, VMM_EXIT_HYPERCALL);
  assert_int_equal(vmm_vm_dirty_log_get(p.vm, 0, bm, sizeof(bm)), 0);
  assert_true(bit(bm, 0x2000000));
  assert_false(bit(bm, 0x2100000));
  assert_false(bit(bm, 0x3000000));
  /* Nothing ran: nothing is dirty. */
  assert_int_equal(vmm_vm_dirty_log_get(p.vm, 0, bm, sizeof(bm)), 0);
  assert_false(bit(bm, 0x2000000));
  /* The second write happens in a new sandbox: another thread runs the vCPU, and stays alive
   * (a sandbox dies with its tracer thread, and with it what it recorded). */
  struct lingering_runner r = {&p, ex, 0, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
                               false, false};
  r.ex.hypercall.result = 0;
  pthread_t t;
  pthread_create(&t, NULL, run_and_linger, &r);
  pthread_mutex_lock(&r.lock);
  while (!r.ran) pthread_cond_wait(&r.cond, &r.lock);
  pthread_mutex_unlock(&r.lock);
  assert_int_equal(r.rc, 0);
  assert_int_equal(r.ex.reason, VMM_EXIT_HYPERCALL);
  /* And the VM's memory map changes, which replaces the sandbox once more. */
  assert_int_equal(vmm_vm_map_ram(p.vm, 0x10000000, 1 << 20, 0, NULL), 0);
  r.ex.hypercall.result = 0;
  run_expect(&p, &r.ex, VMM_EXIT_GUEST_EXIT);
  assert_int_equal(vmm_vm_dirty_log_get(p.vm, 0, bm, sizeof(bm)), 0);
  assert_false(bit(bm, 0x2000000));
  assert_true(bit(bm, 0x2100000));
  assert_int_equal(pv_stat(p.vcpu, "pv.sandboxes_started"), 3);
  assert_int_equal(vmm_vm_dirty_log_enable(p.vm, 0, 0), 0);
  assert_int_equal(vmm_vm_dirty_log_get(p.vm, 0, bm, sizeof(bm)), VMM_ESTATE);
  pthread_mutex_lock(&r.lock);
  r.release = true;
  pthread_cond_signal(&r.cond);
  pthread_mutex_unlock(&r.lock);
  pthread_join(t, NULL);
  pv_vm_stop(&p);
}

static int probe_fails(void) {
  int rc = vmm_backend_probe(VMM_BACKEND_PV);
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = VMM_BACKEND_PV;
  vmm_vm_t *vm = NULL;
  int rc2 = vmm_vm_create(&cfg, &vm);
  printf("probe without a stub: %s, create: %s\n", vmm_err_name(rc), vmm_err_name(rc2));
  printf("%d passed, %d failed\n", rc == VMM_ENODEV && rc2 == VMM_ENODEV && vm == NULL,
         !(rc == VMM_ENODEV && rc2 == VMM_ENODEV && vm == NULL));
  return rc == VMM_ENODEV && rc2 == VMM_ENODEV && vm == NULL ? 0 : 1;
}

static void log_to_stderr(vmm_log_level_t level, const char *msg, void *ud) {
  (void)ud;
  fprintf(stderr, "libvmm[%d]: %s\n", (int)level, msg);
}

int main(int argc, char **argv) {
  if (getenv("PV_TEST_LOG")) vmm_log_set_callback(log_to_stderr, VMM_LOG_DEBUG, NULL);
  if (argc > 1 && strcmp(argv[1], "--probe-fails") == 0) return probe_fails();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_probe_succeeds),
      cmocka_unit_test(test_hello_prints_and_exits),
      cmocka_unit_test(test_hypercall_exit_registers),
      cmocka_unit_test(test_syscall_outside_page_is_ud),
      cmocka_unit_test(test_int3_reports_rip_after),
      cmocka_unit_test(test_access_beyond_identity_map_is_page_fault),
      cmocka_unit_test(test_ram_added_while_sandbox_exists),
      cmocka_unit_test(test_fpu_state_round_trip),
      cmocka_unit_test(test_state_shadow_round_trip),
      cmocka_unit_test(test_non_long_mode_refused),
      cmocka_unit_test(test_kick_stops_spinning_guest),
      cmocka_unit_test(test_run_from_another_thread),
      cmocka_unit_test(test_sandbox_death_is_echild),
      cmocka_unit_test(test_single_step),
      cmocka_unit_test(test_sandbox_confinement),
      cmocka_unit_test(test_dirty_log),
      cmocka_unit_test(test_two_vcpus),
      cmocka_unit_test(test_snapshot_inside_hypercall_entry),
      cmocka_unit_test(test_kicks_and_snapshots_during_hypercalls),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
