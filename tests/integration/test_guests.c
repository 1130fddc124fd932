/* Differential integration test: every test guest runs through the public API on every
 * backend this host has; each result is checked against what the guest must produce, and the
 * results of all backends are compared with each other (console, final exit, registers).
 *
 * usage: test_guests --guest-dir DIR [--backend NAME]... [--verbose]
 * Exits 0 when everything that ran passed, 1 on a failure, 77 when no requested backend can
 * run here (the reasons are printed). */
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libvmm/vmm.h>

#define MAX_EVENTS 16

struct result {
  char console[4096];
  size_t console_len;
  char events[MAX_EVENTS][64];
  int nevents;
  vmm_exit_t final;
  vmm_regs_t regs;
  bool ok;            /* The run finished with a terminal exit. */
  char error[256];
};

struct harness {
  struct result *res;
  uint32_t echo;
  uint64_t regfile[8];
};

struct guest_case {
  const char *name;
  unsigned cpl;
  const char *cmdline;
  void (*check)(const struct result *r, char *why, size_t n);
};

static const char *guest_dir = ".";
static bool verbose;

/* ---- host side devices of the harness ---- */

static void console_sink(const char *d, size_t n, void *ud) {
  struct result *r = ud;
  for (size_t i = 0; i < n && r->console_len + 1 < sizeof(r->console); i++)
    r->console[r->console_len++] = d[i];
  r->console[r->console_len] = '\0';
}

static int echo_port(vmm_vcpu_t *vcpu, uint64_t off, uint32_t size, int is_write, uint64_t *data,
                     void *ud) {
  (void)vcpu, (void)off, (void)size;
  struct harness *h = ud;
  if (is_write) h->echo = (uint32_t)*data;
  else *data = h->echo + 1;
  return VMM_HANDLED;
}

static int regfile_mmio(vmm_vcpu_t *vcpu, uint64_t off, uint32_t size, int is_write,
                        uint64_t *data, void *ud) {
  (void)vcpu;
  struct harness *h = ud;
  uint8_t *bytes = (uint8_t *)h->regfile;
  if (off + size > sizeof(h->regfile)) return VMM_UNHANDLED;
  if (is_write) memcpy(bytes + off, data, size);
  else memcpy(data, bytes + off, size);
  return VMM_HANDLED;
}

static void add_event(struct result *r, const char *fmt, ...) {
  if (r->nevents >= MAX_EVENTS) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->events[r->nevents++], sizeof(r->events[0]), fmt, ap);
  va_end(ap);
}

/* A watchdog kicks a guest that runs too long, so a hang is a failure, not a stuck test. */
struct watchdog {
  vmm_vcpu_t *vcpu;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool done;
  bool fired;
};

static void *watchdog_main(void *arg) {
  struct watchdog *w = arg;
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 60;
  pthread_mutex_lock(&w->lock);
  while (!w->done) {
    if (pthread_cond_timedwait(&w->cond, &w->lock, &until) != 0) {
      w->fired = true;
      vmm_vcpu_kick(w->vcpu);
      break;
    }
  }
  pthread_mutex_unlock(&w->lock);
  return NULL;
}

static bool terminal(uint32_t reason) {
  return reason == VMM_EXIT_GUEST_EXIT || reason == VMM_EXIT_HLT ||
         reason == VMM_EXIT_EXCEPTION || reason == VMM_EXIT_SHUTDOWN ||
         reason == VMM_EXIT_INTERNAL_ERROR;
}

static void run_guest(vmm_backend_t backend, const struct guest_case *g, struct result *r) {
  memset(r, 0, sizeof(*r));
  struct harness h = {.res = r};
  char path[1024];
  snprintf(path, sizeof(path), "%s/%s.elf", guest_dir, g->name);

  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = backend;
  cfg.ram_size = 64 << 20;
  vmm_vm_t *vm = NULL;
  vmm_vcpu_t *vcpu = NULL;
  int rc = vmm_vm_create(&cfg, &vm);
  if (rc) {
    snprintf(r->error, sizeof(r->error), "vmm_vm_create: %s", vmm_strerror(rc));
    return;
  }
  vmm_image_info_t info;
  vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
  if ((rc = vmm_vm_set_console(vm, console_sink, r)) ||
      (rc = vmm_debugcon_create(vm, 0, console_sink, r, NULL)) ||
      (rc = vmm_debug_exit_create(vm, 0, NULL)) ||
      (rc = vmm_vm_add_pio_handler(vm, 0x500, 4, echo_port, &h, NULL)) ||
      (rc = vmm_vm_add_mmio_handler(vm, 0xd0000000, 0x1000, regfile_mmio, &h, NULL)) ||
      (rc = vmm_vcpu_create(vm, 0, &vcpu)) || (rc = vmm_load_file(vm, path, 0, 0, &info))) {
    snprintf(r->error, sizeof(r->error), "setting up %s: %s", g->name, vmm_strerror(rc));
    goto out;
  }
  lm.cpl = g->cpl;
  lm.entry = info.entry;
  lm.cmdline = g->cmdline;
  if ((rc = vmm_vcpu_setup_long_mode(vcpu, &lm))) {
    snprintf(r->error, sizeof(r->error), "setup_long_mode: %s", vmm_strerror(rc));
    goto out;
  }
  if (g->cmdline && strcmp(g->cmdline, "iopl0") == 0) {
    /* Port access at CPL3 by the TSS bitmap alone. */
    vmm_regs_t regs;
    if ((rc = vmm_vcpu_get_regs(vcpu, &regs)) == 0) {
      regs.rflags &= ~VMM_RFLAGS_IOPL3;
      rc = vmm_vcpu_set_regs(vcpu, &regs);
    }
    if (rc) {
      snprintf(r->error, sizeof(r->error), "clearing IOPL: %s", vmm_strerror(rc));
      goto out;
    }
  }

  struct watchdog w = {.vcpu = vcpu};
  pthread_mutex_init(&w.lock, NULL);
  pthread_cond_init(&w.cond, NULL);
  pthread_t wt;
  pthread_create(&wt, NULL, watchdog_main, &w);
  vmm_exit_t e;
  memset(&e, 0, sizeof(e));
  for (int n = 0; n < 1000; n++) {
    rc = vmm_vcpu_run(vcpu, &e);
    if (rc) {
      snprintf(r->error, sizeof(r->error), "vmm_vcpu_run: %s", vmm_strerror(rc));
      break;
    }
    if (terminal(e.reason)) {
      r->final = e;
      r->ok = true;
      break;
    }
    switch (e.reason) {
      case VMM_EXIT_IO:
        if (e.io.is_write) {
          add_event(r, "IO w %#x %#" PRIx64, e.io.port, e.io.data);
        } else {
          add_event(r, "IO r %#x", e.io.port);
          e.io.data = 0x77;
        }
        break;
      case VMM_EXIT_MMIO:
        if (e.mmio.is_write) {
          add_event(r, "MMIO w %#" PRIx64 "/%u %#" PRIx64, e.mmio.gpa, e.mmio.size, e.mmio.data);
        } else {
          add_event(r, "MMIO r %#" PRIx64 "/%u", e.mmio.gpa, e.mmio.size);
          e.mmio.data = 0x13572468;
        }
        break;
      case VMM_EXIT_KICKED:
        snprintf(r->error, sizeof(r->error), "%s", w.fired ? "timed out" : "unexpected kick");
        goto stop;
      default:
        add_event(r, "%s", vmm_exit_reason_name(e.reason));
        break;
    }
  }
  if (!r->ok && !r->error[0]) snprintf(r->error, sizeof(r->error), "no terminal exit");
stop:
  pthread_mutex_lock(&w.lock);
  w.done = true;
  pthread_cond_signal(&w.cond);
  pthread_mutex_unlock(&w.lock);
  pthread_join(wt, NULL);
  pthread_cond_destroy(&w.cond);
  pthread_mutex_destroy(&w.lock);
  if (r->ok && (rc = vmm_vcpu_get_regs(vcpu, &r->regs)))
    snprintf(r->error, sizeof(r->error), "get_regs: %s", vmm_strerror(rc));
out:
  vmm_vm_destroy(vm);
}

/* ---- what each guest must produce ---- */

#define EXPECT(cond, ...)                   \
  do {                                      \
    if (!(cond)) {                          \
      snprintf(why, n, __VA_ARGS__);        \
      return;                               \
    }                                       \
  } while (0)

static void expect_exit(const struct result *r, int64_t status, char *why, size_t n) {
  EXPECT(r->final.reason == VMM_EXIT_GUEST_EXIT, "exit %s, want GUEST_EXIT",
         vmm_exit_reason_name(r->final.reason));
  EXPECT(r->final.guest_exit.status == status, "status %" PRId64 ", want %" PRId64,
         r->final.guest_exit.status, status);
}

static void expect_exception(const struct result *r, unsigned vector, char *why, size_t n) {
  EXPECT(r->final.reason == VMM_EXIT_EXCEPTION, "exit %s, want EXCEPTION",
         vmm_exit_reason_name(r->final.reason));
  EXPECT(r->final.exception.vector == vector, "vector %u, want %u", r->final.exception.vector,
         vector);
  /* Each exception guest puts the address of the faulting instruction in rbx. */
  EXPECT(r->final.exception.rip == r->regs.rbx, "exception rip %#" PRIx64 ", want %#" PRIx64,
         r->final.exception.rip, r->regs.rbx);
  EXPECT(r->regs.rip == r->regs.rbx, "vCPU rip %#" PRIx64 " is not at the fault", r->regs.rip);
}

static void check_hello0(const struct result *r, char *why, size_t n) {
  EXPECT(strcmp(r->console, "Hello from a libvmm guest!\nram=64 MiB cpl=0\n") == 0, "console '%s'",
         r->console);
  expect_exit(r, 0, why, n);
}

static void check_hello3(const struct result *r, char *why, size_t n) {
  EXPECT(strcmp(r->console, "Hello from a libvmm guest!\nram=64 MiB cpl=3\n") == 0, "console '%s'",
         r->console);
  expect_exit(r, 0, why, n);
}

/* The arith guest's computation, redone on the host. */
static void arith_expected(char *out, size_t cap, int *status) {
  static uint8_t buf[1 << 20];
  uint64_t x = 88172645463325252ull;
  for (size_t i = 0; i < sizeof(buf); i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    buf[i] = (uint8_t)x;
  }
  uint32_t c = 0xffffffffu, c4k = 0;
  for (size_t i = 0; i < sizeof(buf); i++) {
    c ^= buf[i];
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xedb88320u & -(c & 1));
    if (i == 4095) c4k = ~c;
  }
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < sizeof(buf); i++) h = (h ^ buf[i]) * 0x100000001b3ull;
  uint64_t acc = 0;
  for (int64_t i = 1; i < 5000; i++) {
    acc += (uint64_t)(i * i * i) / (uint64_t)(i + 7);
    acc ^= (uint64_t)(-i) % 97u;
    acc = (acc << 3) | (acc >> 61);
  }
  uint64_t f0 = 0, f1 = 1;
  for (int i = 0; i < 24; i++) {
    uint64_t t = f0 + f1;
    f0 = f1;
    f1 = t;
  }
  snprintf(out, cap, "crc32=%08x\nfnv1a=%016" PRIx64 "\nacc=%016" PRIx64 " sdiv=%" PRId64
           " fib=%" PRIu64 "\n",
           ~c, h, acc, (int64_t)-123456789012345ll / 977, f0);
  *status = (int)(c4k & 0x7f);
}

static void check_arith(const struct result *r, char *why, size_t n) {
  char want[256];
  int status;
  arith_expected(want, sizeof(want), &status);
  EXPECT(strcmp(r->console, want) == 0, "console '%s', want '%s'", r->console, want);
  expect_exit(r, status, why, n);
}

static void check_pio(const struct result *r, char *why, size_t n) {
  EXPECT(strcmp(r->console, "pio sum=120016 nobody=77\n") == 0, "console '%s'", r->console);
  EXPECT(r->nevents == 2 && strcmp(r->events[0], "IO w 0x5ff 0x5a") == 0 &&
             strcmp(r->events[1], "IO r 0x5ff") == 0,
         "events: %d '%s' '%s'", r->nevents, r->events[0], r->events[1]);
  expect_exit(r, 0, why, n);
}

static void check_mmio(const struct result *r, char *why, size_t n) {
  EXPECT(strcmp(r->console,
                "mmio a=1122334455667788 b=cafef00d c=0000000000000000 d=13572468\n") == 0,
         "console '%s'", r->console);
  EXPECT(r->nevents == 2 && strcmp(r->events[0], "MMIO w 0xe0000000/4 0xdeadbeef") == 0 &&
             strcmp(r->events[1], "MMIO r 0xe0000000/4") == 0,
         "events: %d '%s' '%s'", r->nevents, r->events[0], r->events[1]);
  expect_exit(r, 0, why, n);
}

static void check_halt(const struct result *r, char *why, size_t n) {
  EXPECT(strcmp(r->console, "halting\n") == 0, "console '%s'", r->console);
  EXPECT(r->final.reason == VMM_EXIT_HLT, "exit %s, want HLT", vmm_exit_reason_name(r->final.reason));
  EXPECT(r->regs.rax == 0x484c54, "rax %#" PRIx64, r->regs.rax);
}

static void check_ud(const struct result *r, char *why, size_t n) {
  EXPECT(strcmp(r->console, "before ud2\n") == 0, "console '%s'", r->console);
  expect_exception(r, 6, why, n);
}

static void check_de(const struct result *r, char *why, size_t n) {
  EXPECT(r->console_len == 0, "console '%s'", r->console);
  expect_exception(r, 0, why, n);
}

static void check_cpl3(const struct result *r, char *why, size_t n) {
  EXPECT(strcmp(r->console, "running at cpl 3 (boot info says 3)\nok\n") == 0, "console '%s'",
         r->console);
  expect_exception(r, 13, why, n);
  if (why[0]) return;
  EXPECT(r->final.exception.has_error_code && r->final.exception.error_code == 0,
         "#GP error code %u/%#x", r->final.exception.has_error_code, r->final.exception.error_code);
}

static void check_iomap(const struct result *r, char *why, size_t n) {
  EXPECT(strcmp(r->console, "iopl 0, bitmap at 0x68\nok\n") == 0, "console '%s'", r->console);
  expect_exception(r, 13, why, n);
  if (why[0]) return;
  EXPECT(r->final.exception.has_error_code && r->final.exception.error_code == 0,
         "#GP error code %u/%#x", r->final.exception.has_error_code, r->final.exception.error_code);
}

static void check_exit_hc(const struct result *r, char *why, size_t n) { expect_exit(r, 42, why, n); }
static void check_exit_port(const struct result *r, char *why, size_t n) {
  expect_exit(r, (0x21 << 1) | 1, why, n);
}

static const struct guest_case cases[] = {
    {"hello", 0, NULL, check_hello0},     {"hello", 3, NULL, check_hello3},
    {"arith", 3, NULL, check_arith},      {"pio", 0, NULL, check_pio},
    {"mmio", 0, NULL, check_mmio},        {"halt", 0, NULL, check_halt},
    {"ud", 0, NULL, check_ud},            {"de", 0, NULL, check_de},
    {"cpl3", 3, NULL, check_cpl3},        {"iomap", 3, "iopl0", check_iomap},
    {"exitcode", 0, NULL, check_exit_hc},
    {"exitcode", 0, "port", check_exit_port},
};
#define NCASES (sizeof(cases) / sizeof(cases[0]))

/* RF (bit 16) depends on how the exception was delivered; nothing else may differ... */
#define RFLAGS_COMPARE_MASK (~(1ull << 16))

/* ...but kvm_pvm runs guest user mode at the host's CPL3 with IOPL 0 and reports that IOPL
 * (docs/kvm.md): on such hosts IOPL at CPL3 is not compared with kvm's. */
static bool kvm_drops_user_iopl(void) {
  static int known = -1;
  if (known < 0) {
    known = access("/sys/module/kvm_pvm", F_OK) == 0 && access("/sys/module/kvm_intel", F_OK) != 0 &&
            access("/sys/module/kvm_amd", F_OK) != 0;
    if (known) printf("NOTE kvm_pvm host: IOPL at CPL3 is not compared with kvm's\n");
  }
  return known != 0;
}

static bool same_result(const struct result *a, const struct result *b, unsigned cpl,
                        bool with_kvm, char *why, size_t n) {
  if (strcmp(a->console, b->console) != 0) {
    snprintf(why, n, "console differs");
    return false;
  }
  if (a->final.reason != b->final.reason) {
    snprintf(why, n, "exit %s vs %s", vmm_exit_reason_name(a->final.reason),
             vmm_exit_reason_name(b->final.reason));
    return false;
  }
  const uint64_t *ra = (const uint64_t *)&a->regs, *rb = (const uint64_t *)&b->regs;
  static const char *const names[] = {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
                                      "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15",
                                      "rip", "rflags"};
  for (size_t i = 0; i < 18; i++) {
    uint64_t m = i == 17 ? RFLAGS_COMPARE_MASK : ~0ull;
    if (i == 17 && cpl == 3 && with_kvm && kvm_drops_user_iopl()) m &= ~VMM_RFLAGS_IOPL3;
    if ((ra[i] & m) != (rb[i] & m)) {
      snprintf(why, n, "%s %#" PRIx64 " vs %#" PRIx64, names[i], ra[i], rb[i]);
      return false;
    }
  }
  return true;
}

/* A case that cannot run where the CPU itself is wrong says so. */
static const char *skip_reason(vmm_backend_t backend, const struct guest_case *g) {
  if (backend == VMM_BACKEND_KVM && strcmp(g->name, "iomap") == 0 && getenv("LIBVMM_NESTED"))
    return "QEMU's TCG (the nested harness's CPU) checks the I/O bitmap only for a TR of type "
           "9 (available); a loaded TR is busy (11), as VMX requires";
  return NULL;
}

int main(int argc, char **argv) {
  vmm_backend_t want[3];
  int nwant = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--guest-dir") == 0 && i + 1 < argc) {
      guest_dir = argv[++i];
    } else if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc && nwant < 3) {
      if (vmm_backend_parse(argv[++i], &want[nwant]) != 0 || want[nwant] == VMM_BACKEND_AUTO) {
        fprintf(stderr, "unknown backend %s\n", argv[i]);
        return 2;
      }
      nwant++;
    } else if (strcmp(argv[i], "--verbose") == 0) {
      verbose = true;
    } else {
      fprintf(stderr, "usage: %s --guest-dir DIR [--backend kvm|bt|pv]... [--verbose]\n", argv[0]);
      return 2;
    }
  }
  if (nwant == 0) {
    want[0] = VMM_BACKEND_KVM;
    want[1] = VMM_BACKEND_BT;
    want[2] = VMM_BACKEND_PV;
    nwant = 3;
  }
  vmm_backend_t run[3];
  int nrun = 0;
  for (int i = 0; i < nwant; i++) {
    int rc = vmm_backend_probe(want[i]);
    if (rc == 0) {
      run[nrun++] = want[i];
    } else {
      printf("SKIP backend %s: %s\n", vmm_backend_name(want[i]),
             rc == VMM_ENOSYS ? "not built in" : vmm_strerror(rc));
    }
  }
  if (nrun == 0) {
    printf("SKIP: no requested backend can run on this host\n");
    return 77;
  }

  static struct result results[NCASES][3];
  int failures = 0;
  for (size_t c = 0; c < NCASES; c++) {
    for (int b = 0; b < nrun; b++) {
      struct result *r = &results[c][b];
      const char *skip = skip_reason(run[b], &cases[c]);
      if (skip) {
        memset(r, 0, sizeof(*r));
        printf("SKIP %-9s cpl%u %-5s %s\n", cases[c].name, cases[c].cpl, vmm_backend_name(run[b]),
               skip);
        continue;
      }
      run_guest(run[b], &cases[c], r);
      char why[512] = "";
      if (!r->ok) snprintf(why, sizeof(why), "%s", r->error[0] ? r->error : "did not finish");
      else cases[c].check(r, why, sizeof(why));
      bool pass = why[0] == '\0';
      printf("%-4s %-9s cpl%u %-5s %s%s\n", pass ? "PASS" : "FAIL", cases[c].name, cases[c].cpl,
             vmm_backend_name(run[b]), cases[c].cmdline ? cases[c].cmdline : "", why);
      if (!pass || verbose) {
        printf("     console: %s", r->console_len ? r->console : "(empty)\n");
        if (r->ok)
          printf("     exit: %s vector %u rip %#" PRIx64 ", rflags %#" PRIx64 "\n",
                 vmm_exit_reason_name(r->final.reason), r->final.exception.vector,
                 r->final.exception.rip, r->regs.rflags);
      }
      failures += !pass;
    }
    for (int b = 1; b < nrun; b++) {
      char why[256] = "";
      if (results[c][0].ok && results[c][b].ok &&
          !same_result(&results[c][0], &results[c][b], cases[c].cpl,
                       run[0] == VMM_BACKEND_KVM || run[b] == VMM_BACKEND_KVM, why,
                       sizeof(why))) {
        printf("FAIL %-9s cpl%u %s vs %s: %s\n", cases[c].name, cases[c].cpl,
               vmm_backend_name(run[0]), vmm_backend_name(run[b]), why);
        failures++;
      }
    }
  }
  printf("%s: %d failure(s) over %d backend(s)\n", failures ? "FAILED" : "OK", failures, nrun);
  return failures ? 1 : 0;
}
