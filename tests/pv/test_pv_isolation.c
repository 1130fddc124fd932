/* Isolation tests of the pv backend: hostile guests (guests/hostile.c) try every Linux system
 * call with syscall, int $0x80 and sysenter, call the vsyscall page, jump into the sandbox
 * stub, and read and write memory outside their RAM. Each attempt must come back as an exit
 * (or a hypercall), and none may have an effect on the host: the file it tries to create does
 * not exist, the sandbox has no child process, the VMM's memory and process are untouched.
 * Last, the sandbox is killed at random moments of a busy guest: the VMM reports VMM_ECHILD and
 * carries on. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "pv_test_util.h"

struct attempt_log {
  int exceptions[256];
  int mmio, io, hypercalls;
  int rip_at_attempt; /* Exceptions whose RIP is the attempt's address (r13). */
  int cr2_at_attempt;
  int children_seen;
};

static char victim_path[256];
static volatile uint64_t *vmm_secret;

static int sandbox_children(pid_t pid) {
  char path[96], buf[256];
  snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)pid, (int)pid);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  return n > 0 && buf[0] != '\0' && buf[0] != '\n';
}

/* Runs a hostile scenario to its end, stepping over each attempt. */
static void run_hostile(const char *what, unsigned cpl, struct attempt_log *log,
                        struct pv_vm *p) {
  char cmd[512];
  snprintf(cmd, sizeof(cmd), "%s %s %d %llx", what, victim_path, (int)getpid(),
           (unsigned long long)(uintptr_t)vmm_secret);
  assert_int_equal(pv_vm_start(p, "pv_hostile", cpl, cmd), 0);
  memset(log, 0, sizeof(*log));
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  for (int steps = 0;; steps++) {
    assert_true(steps < 5000);
    int rc = vmm_vcpu_run(p->vcpu, &ex);
    assert_int_equal(rc, 0);
    pid_t pid = (pid_t)pv_stat(p->vcpu, "pv.sandbox_pid");
    if (pid > 0) log->children_seen += sandbox_children(pid);
    if (ex.reason == VMM_EXIT_GUEST_EXIT) {
      assert_int_equal(ex.guest_exit.status, 0);
      break;
    }
    vmm_regs_t r;
    assert_int_equal(vmm_vcpu_get_regs(p->vcpu, &r), 0);
    if (getenv("PV_TEST_TRACE"))
      fprintf(stderr, "%s: exit %s vec %u rip %#llx r12 %#llx r13 %#llx r14 %#llx rsp %#llx\n",
              what,
              vmm_exit_reason_name(ex.reason), ex.exception.vector,
              (unsigned long long)r.rip, (unsigned long long)r.r12, (unsigned long long)r.r13,
              (unsigned long long)r.r14, (unsigned long long)r.rsp);
    switch (ex.reason) {
      case VMM_EXIT_EXCEPTION:
        log->exceptions[ex.exception.vector]++;
        if (ex.exception.rip == r.r13) log->rip_at_attempt++;
        if (ex.exception.cr2 == r.r13) log->cr2_at_attempt++;
        /* Step over the attempt (the stub's code may have used r12, r14 and rbp: the
         * guest left them in its mailbox too). */
        if (strcmp(what, "stub") == 0) {
          uint64_t mb[3];
          assert_int_equal(vmm_vm_read(p->vm, 0xff000, mb, sizeof(mb)), 0);
          r.rip = mb[0];
          r.rsp = mb[1];
          r.rbp = mb[2];
        } else {
          r.rip = r.r12;
          r.rsp = r.r14;
        }
        assert_int_equal(vmm_vcpu_set_regs(p->vcpu, &r), 0);
        break;
      case VMM_EXIT_MMIO: log->mmio++; break;
      case VMM_EXIT_IO: log->io++; break;
      case VMM_EXIT_HYPERCALL: log->hypercalls++; break;
      default:
        fail_msg("%s: unexpected exit %s (%s)", what, vmm_exit_reason_name(ex.reason),
                 ex.reason == VMM_EXIT_INTERNAL_ERROR ? ex.internal.message : "");
    }
  }
  assert_string_equal(p->console, "survived\n");
}

static void assert_no_effect(const struct attempt_log *log) {
  struct stat sb;
  assert_int_equal(stat(victim_path, &sb), -1);
  assert_int_equal(errno, ENOENT);
  assert_int_equal(log->children_seen, 0);
  assert_int_equal(*vmm_secret, 0x5ec2e75ec2e7ull);
}

static void test_every_syscall_is_ud(void **state) {
  (void)state;
  for (unsigned cpl = 0; cpl <= 3; cpl += 3) {
    struct pv_vm p;
    struct attempt_log log;
    run_hostile("syscall", cpl, &log, &p);
    assert_int_equal(log.exceptions[6], 512);
    assert_int_equal(log.rip_at_attempt, 512);
    assert_true(pv_stat(p.vcpu, "pv.syscall_stops") >= 512);
    pv_vm_stop(&p);
    assert_no_effect(&log);
  }
}

static void test_every_int80_is_an_exception(void **state) {
  (void)state;
  struct pv_vm p;
  struct attempt_log log;
  /* CPL0: the IDT of vmm_vcpu_setup_long_mode reports vector 0x80 after the INT. */
  run_hostile("int80", 0, &log, &p);
  assert_int_equal(log.exceptions[0x80], 512);
  pv_vm_stop(&p);
  assert_no_effect(&log);
  /* CPL3: its gate has DPL 0, so #GP with the IDT error code. */
  run_hostile("int80", 3, &log, &p);
  assert_int_equal(log.exceptions[13], 512);
  assert_int_equal(log.rip_at_attempt, 512);
  pv_vm_stop(&p);
  assert_no_effect(&log);
}

static void test_sysenter_is_ud(void **state) {
  (void)state;
  struct pv_vm p;
  struct attempt_log log;
  run_hostile("sysenter", 0, &log, &p);
  assert_int_equal(log.exceptions[6], 8);
  pv_vm_stop(&p);
  assert_no_effect(&log);
}

/* The vsyscall page is the kernel's; pv's seccomp filter stops its emulation, and the guest
 * sees the page fault it would see on kvm and bt, where nothing is mapped there. */
static void test_vsyscall_page_is_page_fault(void **state) {
  (void)state;
  struct pv_vm p;
  struct attempt_log log;
  run_hostile("vsyscall", 0, &log, &p);
  assert_int_equal(log.exceptions[14], 4);
  assert_int_equal(log.rip_at_attempt, 4);
  assert_int_equal(log.cr2_at_attempt, 4);
  pv_vm_stop(&p);
  assert_no_effect(&log);
}

static void test_jump_into_stub_is_ud(void **state) {
  (void)state;
  struct pv_vm p;
  struct attempt_log log;
  run_hostile("stub", 0, &log, &p);
  /* The stub's syscall instruction is a syscall like any other (#UD at it); its entry point
   * runs the stub's code as guest code, with the guest's registers, until that faults or
   * reaches the same syscall: an exception exit either way. */
  int total = 0;
  for (int v = 0; v < 256; v++) total += log.exceptions[v];
  assert_int_equal(total, 2);
  assert_true(log.exceptions[6] >= 1);
  assert_int_equal(log.rip_at_attempt, 1);
  pv_vm_stop(&p);
  assert_no_effect(&log);
}

static void test_memory_outside_ram(void **state) {
  (void)state;
  struct pv_vm p;
  struct attempt_log log;
  run_hostile("peek", 0, &log, &p);
  /* Past RAM (inside the identity map): an MMIO read and an MMIO write. */
  assert_int_equal(log.mmio, 2);
  /* Kernel space: page faults; non-canonical: #GP. The VMM's address is not mapped in the
   * sandbox at all: page faults or MMIO, never the VMM's memory. */
  assert_true(log.exceptions[14] >= 2);
  assert_int_equal(log.exceptions[13], 2);
  pv_vm_stop(&p);
  assert_no_effect(&log);
}

struct killer {
  struct pv_vm *p;
  int delay_us;
  atomic_bool stop;
};

/* Kills the sandbox after the delay (or as soon as it exists), then kicks now and then so that
 * a run that started after the kill returns too. A sandbox killed while it was still starting
 * is replaced by the library without a word; the replacement is killed too. */
static void *kill_sandbox_later(void *arg) {
  struct killer *k = arg;
  struct timespec ts = {0, k->delay_us * 1000L};
  nanosleep(&ts, NULL);
  pid_t last = 0;
  while (!atomic_load(&k->stop)) {
    pid_t pid = (pid_t)pv_stat(k->p->vcpu, "pv.sandbox_pid");
    if (pid > 0 && pid != last) {
      kill(pid, SIGKILL);
      last = pid;
    }
    vmm_vcpu_kick(k->p->vcpu);
    struct timespec w = {0, 2000000L};
    nanosleep(&w, NULL);
  }
  return NULL;
}

/* Killing the sandbox at any moment (while it starts, runs guest code or handles a
 * hypercall, or is parked between runs): the run fails with VMM_ECHILD, the VM can still be
 * destroyed, nothing is left behind. */
static void test_sandbox_killed_at_random_moments(void **state) {
  (void)state;
  srand(12345);
  int echild = 0;
  for (int i = 0; i < 30; i++) {
    struct pv_vm p;
    assert_int_equal(pv_vm_start(&p, "pvtest", 0, i % 2 ? "spinhc" : "spin"), 0);
    struct killer k = {&p, rand() % 3000, false};
    pthread_t t;
    pthread_create(&t, NULL, kill_sandbox_later, &k);
    vmm_exit_t ex;
    memset(&ex, 0, sizeof(ex));
    int rc;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
      rc = vmm_vcpu_run(p.vcpu, &ex);
      clock_gettime(CLOCK_MONOTONIC, &t1);
    } while (rc == 0 && ex.reason == VMM_EXIT_KICKED && t1.tv_sec - t0.tv_sec < 2);
    atomic_store(&k.stop, true);
    pthread_join(t, NULL);
    if (rc == VMM_ECHILD) echild++;
    else assert_int_equal(rc, 0);
    pv_vm_stop(&p);
  }
  assert_int_equal(echild, 30);
  /* No zombie of ours is left behind (the pool's idle sandboxes are alive, if any). */
  int w = waitpid(-1, NULL, WNOHANG);
  assert_true(w == 0 || (w == -1 && errno == ECHILD));
}

int main(void) {
  snprintf(victim_path, sizeof(victim_path), "/tmp/libvmm-pv-hostile-%d", (int)getpid());
  unlink(victim_path);
  vmm_secret = malloc(4096);
  *vmm_secret = 0x5ec2e75ec2e7ull;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_syscall_is_ud),
      cmocka_unit_test(test_every_int80_is_an_exception),
      cmocka_unit_test(test_sysenter_is_ud),
      cmocka_unit_test(test_vsyscall_page_is_page_fault),
      cmocka_unit_test(test_jump_into_stub_is_ud),
      cmocka_unit_test(test_memory_outside_ram),
      cmocka_unit_test(test_sandbox_killed_at_random_moments),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
