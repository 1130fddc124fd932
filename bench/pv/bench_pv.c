/* Benchmark of the pv backend, with kvm and bt measured in the same run when this host has
 * them (vmm_backend_probe), and a bare ptrace baseline:
 *   - hypercall round trip (VMM_HC_NOP from the guest, handled by the core) at CPL0 and CPL3;
 *   - trapped port I/O round trip (OUT and IN consumed by a host handler) at CPL0;
 *   - VM creation to the first guest instruction: vmm_vm_create with 64 MiB of RAM, a vCPU,
 *     the ELF loaded, long mode set up, run until the guest's first hypercall reaches the
 *     host (so one hypercall trap is included); and the part of it from the first
 *     vmm_vcpu_run() on (the backend's start of the vCPU);
 *   - baseline: a bare PTRACE_SYSEMU stop with GETREGS + POKEUSER, and with
 *     PTRACE_GET_SYSCALL_INFO only, tracer and tracee pinned to one CPU.
 * Round trips are timed in batches (a marker hypercall stamps the host clock between
 * batches); the table shows the median over batches, and p10/p90 in the detail lines.
 *
 * usage: bench_pv [--reps N] [--iters N] [--create N] [--guest PATH] */

#include <errno.h>
#include <pthread.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libvmm/vmm.h>

#include "../bench_util.h"

#define HC_MARK (VMM_HC_USER_BASE + 1)
#define BENCH_PORT 0x510
#define MAX_MARKS 4096

struct stats {
  double med, p10, p90;
  int n;
};

static struct stats summarize(double *v, int n) {
  struct stats s = {0, 0, 0, n};
  if (n <= 0) return s;
  qsort(v, (size_t)n, sizeof(double), cmp_double);
  s.med = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
  s.p10 = v[n / 10];
  s.p90 = v[(n * 9) / 10 < n ? (n * 9) / 10 : n - 1];
  return s;
}

static const char *guest_path = BENCH_PV_GUEST;
static void *guest_image;
static size_t guest_size;

struct marks {
  double t[MAX_MARKS];
  int n;
  bool stop_at_first;
};

static int mark_hc(vmm_vcpu_t *vcpu, uint64_t nr, const uint64_t args[6], uint64_t *result,
                   void *ud) {
  (void)nr, (void)args;
  struct marks *m = ud;
  if (m->n < MAX_MARKS) m->t[m->n++] = now_us();
  *result = 0;
  if (m->stop_at_first) vmm_vcpu_request_exit(vcpu, 0);
  return VMM_HANDLED;
}

static int bench_port(vmm_vcpu_t *vcpu, uint64_t off, uint32_t size, int is_write,
                      uint64_t *data, void *ud) {
  (void)vcpu, (void)off, (void)size, (void)ud;
  if (!is_write) *data = 0x5a;
  return VMM_HANDLED;
}

static int load_guest(void) {
  FILE *f = fopen(guest_path, "rb");
  if (!f) {
    fprintf(stderr, "bench_pv: cannot open %s: %s\n", guest_path, strerror(errno));
    return -1;
  }
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  guest_image = malloc((size_t)n);
  if (!guest_image || fread(guest_image, 1, (size_t)n, f) != (size_t)n) {
    fclose(f);
    return -1;
  }
  fclose(f);
  guest_size = (size_t)n;
  return 0;
}

/* Creates a VM that runs the bench guest with `cmdline`; returns 0 or a VMM_E* code. */
static int make_vm(vmm_backend_t b, unsigned cpl, const char *cmdline, struct marks *m,
                   vmm_vm_t **vm_out, vmm_vcpu_t **vcpu_out) {
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = b;
  cfg.ram_size = 64ull << 20;
  vmm_vm_t *vm;
  int rc = vmm_vm_create(&cfg, &vm);
  if (rc) return rc;
  vmm_vcpu_t *vcpu;
  vmm_image_info_t info;
  rc = vmm_vcpu_create(vm, 0, &vcpu);
  if (!rc) rc = vmm_vm_add_hypercall_handler(vm, HC_MARK, mark_hc, m, NULL);
  if (!rc) rc = vmm_vm_add_pio_handler(vm, BENCH_PORT, 1, bench_port, NULL, NULL);
  if (!rc) rc = vmm_load_elf(vm, guest_image, guest_size, &info);
  if (!rc) {
    vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
    lm.cpl = cpl;
    lm.entry = info.entry;
    lm.cmdline = cmdline;
    rc = vmm_vcpu_setup_long_mode(vcpu, &lm);
  }
  if (rc) {
    vmm_vm_destroy(vm);
    return rc;
  }
  *vm_out = vm;
  *vcpu_out = vcpu;
  return 0;
}

static int run_to_end(vmm_vcpu_t *vcpu) {
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  for (;;) {
    int rc = vmm_vcpu_run(vcpu, &ex);
    if (rc) return rc;
    if (ex.reason == VMM_EXIT_GUEST_EXIT) return 0;
    if (ex.reason != VMM_EXIT_KICKED) {
      fprintf(stderr, "bench_pv: unexpected exit %s\n", vmm_exit_reason_name(ex.reason));
      return VMM_EBACKEND;
    }
  }
}

/* Per-iteration round trip in microseconds, one sample per batch. */
static int round_trip(vmm_backend_t b, unsigned cpl, char mode, int iters, int reps,
                      struct stats *out) {
  static struct marks m;
  memset(&m, 0, sizeof(m));
  char cmd[64];
  snprintf(cmd, sizeof(cmd), "%c %d %d", mode, iters, reps);
  vmm_vm_t *vm;
  vmm_vcpu_t *vcpu;
  int rc = make_vm(b, cpl, cmd, &m, &vm, &vcpu);
  if (rc) return rc;
  rc = run_to_end(vcpu);
  vmm_vm_destroy(vm);
  if (rc) return rc;
  double v[MAX_MARKS];
  int n = 0;
  /* Mark 0 is the guest's start; batch i runs from mark i to mark i + 1. Batch 0 warms up. */
  for (int i = 2; i < m.n; i++) v[n++] = (m.t[i] - m.t[i - 1]) / iters;
  *out = summarize(v, n);
  return 0;
}

/* VM creation to the first guest instruction; `from_run` times only the first
 * vmm_vcpu_run() (sandbox start and entry) instead of the whole creation. */
static int creation(vmm_backend_t b, int reps, bool from_run, struct stats *out) {
  double *v = calloc((size_t)reps, sizeof(double));
  if (!v) return VMM_ENOMEM;
  int n = 0, rc = 0;
  for (int i = 0; i < reps + 2; i++) {
    static struct marks m;
    memset(&m, 0, sizeof(m));
    m.stop_at_first = true;
    double t0 = now_us();
    vmm_vm_t *vm;
    vmm_vcpu_t *vcpu;
    rc = make_vm(b, 0, "f 0 0", &m, &vm, &vcpu);
    if (rc) break;
    if (from_run) t0 = now_us();
    rc = run_to_end(vcpu);
    vmm_vm_destroy(vm);
    if (rc) break;
    /* The first two warm the pool of sandbox processes and the page cache. */
    if (i >= 2 && m.n > 0) v[n++] = m.t[0] - t0;
  }
  *out = summarize(v, n);
  free(v);
  return rc;
}

/* ---- bare ptrace baseline ---- */

static void pin_self(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  sched_setaffinity(0, sizeof(s), &s);
}

static int baseline(bool syscall_info, int iters, int reps, struct stats *out) {
  int cpu = sched_getcpu();
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    pin_self(cpu);
    ptrace(PTRACE_TRACEME, 0, 0, 0);
    raise(SIGSTOP);
    for (;;) __asm__ volatile("syscall" ::"a"(39) : "rcx", "r11", "memory");
  }
  cpu_set_t old;
  sched_getaffinity(0, sizeof(old), &old);
  pin_self(cpu);
  int st;
  waitpid(pid, &st, 0);
  double *v = calloc((size_t)reps, sizeof(double));
  int n = 0;
  for (int r = 0; r < reps + 1; r++) {
    double t0 = now_us();
    for (int i = 0; i < iters; i++) {
      ptrace(PTRACE_SYSEMU, pid, 0, 0);
      waitpid(pid, &st, __WALL);
      if (syscall_info) {
        struct __ptrace_syscall_info si;
        ptrace(PTRACE_GET_SYSCALL_INFO, pid, sizeof(si), &si);
      } else {
        struct user_regs_struct u;
        ptrace(PTRACE_GETREGS, pid, 0, &u);
        ptrace(PTRACE_POKEUSER, pid, offsetof(struct user_regs_struct, rax), 0);
      }
    }
    if (r > 0) v[n++] = (now_us() - t0) / iters;
  }
  kill(pid, SIGKILL);
  waitpid(pid, &st, __WALL);
  sched_setaffinity(0, sizeof(old), &old);
  *out = summarize(v, n);
  free(v);
  return 0;
}

/* Each measurement runs on a thread of its own, so that what one backend leaves in its thread
 * (bt keeps its window in the GS base, which makes every context switch of that thread
 * slower on this host) does not bias the next one. */
struct job {
  vmm_backend_t b;
  char mode;
  unsigned cpl;
  int iters, reps, creates;
  struct stats s;
  int rc;
};

static void *job_main(void *arg) {
  struct job *j = arg;
  j->rc = j->mode == 'c' || j->mode == 'r'
              ? creation(j->b, j->creates, j->mode == 'r', &j->s)
              : round_trip(j->b, j->cpl, j->mode, j->iters, j->reps, &j->s);
  return NULL;
}

static int run_job(struct job *j) {
  pthread_t t;
  if (pthread_create(&t, NULL, job_main, j) != 0) return VMM_ENOMEM;
  pthread_join(t, NULL);
  return j->rc;
}

static void cell(char *buf, size_t n, int rc, const struct stats *s) {
  if (rc == 1) snprintf(buf, n, "-");
  else if (rc) snprintf(buf, n, "%s", vmm_err_name(rc));
  else snprintf(buf, n, "%.2f", s->med);
}

int main(int argc, char **argv) {
  int reps = 21, iters = 20000, creates = 200;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = atoi(argv[++i]);
    else if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc) iters = atoi(argv[++i]);
    else if (strcmp(argv[i], "--create") == 0 && i + 1 < argc) creates = atoi(argv[++i]);
    else if (strcmp(argv[i], "--guest") == 0 && i + 1 < argc) guest_path = argv[++i];
    else {
      fprintf(stderr, "usage: %s [--reps N] [--iters N] [--create N] [--guest PATH]\n", argv[0]);
      return 2;
    }
  }
  if (reps < 3 || reps > MAX_MARKS - 4 || iters < 1 || creates < 1) return 2;
  if (load_guest() != 0) return 1;

  static const vmm_backend_t backends[] = {VMM_BACKEND_KVM, VMM_BACKEND_BT, VMM_BACKEND_PV};
  bool have[3];
  for (int b = 0; b < 3; b++) {
    int rc = vmm_backend_probe(backends[b]);
    have[b] = rc == 0;
    if (!have[b])
      printf("# backend %s: %s\n", vmm_backend_name(backends[b]),
             rc == VMM_ENOSYS ? "not built in" : vmm_strerror(rc));
  }
  struct {
    const char *name;
    const char *target;
    char mode;
    unsigned cpl;
  } rows[] = {
      {"hypercall round trip, CPL0 (us)", "pv <= 6", 'h', 0},
      {"hypercall round trip, CPL3 (us)", "pv <= 6", 'h', 3},
      {"trapped OUT round trip, CPL0 (us)", "", 'o', 0},
      {"trapped IN round trip, CPL0 (us)", "", 'i', 0},
      {"VM creation to first instruction (us)", "pv <= 100", 'c', 0},
      {"  of which the first run to the first instruction (us)", "", 'r', 0},
  };
  char table[8][3][32];
  for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
    for (int b = 0; b < 3; b++) {
      struct stats s = {0};
      int rc = 1;
      if (have[b]) {
        struct job j = {backends[b], rows[r].mode, rows[r].cpl, iters, reps, creates,
                        {0, 0, 0, 0}, 0};
        rc = run_job(&j);
        s = j.s;
        if (rc == 0)
          printf("# %-40s %-3s median %8.2f  p10 %8.2f  p90 %8.2f  (n=%d)\n", rows[r].name,
                 vmm_backend_name(backends[b]), s.med, s.p10, s.p90, s.n);
        else
          printf("# %-40s %-3s failed: %s\n", rows[r].name, vmm_backend_name(backends[b]),
                 vmm_strerror(rc));
      }
      cell(table[r][b], sizeof(table[r][b]), rc, &s);
    }
  }
  struct stats b1 = {0}, b2 = {0};
  int rb1 = baseline(false, iters, reps, &b1);
  int rb2 = baseline(true, iters, reps, &b2);
  printf("\n| measurement | kvm | bt | pv | target |\n| --- | ---: | ---: | ---: | --- |\n");
  for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++)
    printf("| %s | %s | %s | %s | %s |\n", rows[r].name, table[r][0], table[r][1], table[r][2],
           rows[r].target);
  if (rb1 == 0)
    printf("| bare ptrace SYSEMU stop + GETREGS + POKEUSER (us) | | | %.2f | baseline |\n", b1.med);
  if (rb2 == 0)
    printf("| bare ptrace SYSEMU stop + GET_SYSCALL_INFO (us) | | | %.2f | baseline |\n", b2.med);
  return 0;
}
