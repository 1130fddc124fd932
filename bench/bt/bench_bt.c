/* The bt benchmark: the compute kernels of bench/kernels run natively, on bt, on kvm (CPL3),
 * on pv, under qemu-x86_64 and under Unicorn, in one invocation; prints medians and ratios to
 * native, the hypercall round trip on bt and the translation speed.
 *   bench_bt [--runs N] [--scale F] [--only MODE,...]
 * Each run reports the nanoseconds its kernel took (clock_gettime natively and under
 * qemu-user, a clock hypercall answered by this program in guests), so VM creation, image
 * loading and process start-up are not counted; translation, demand paging and exits are. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libvmm/vmm.h>

#ifdef BENCH_HAVE_UNICORN
#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unicorn/unicorn.h>
#endif

#define KERN_HC_CLOCK 65
#define MAX_RUNS 64

static const char *g_native = KERN_NATIVE_PATH;
static const char *g_guest = KERN_GUEST_PATH;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Parses "NAME=CHECKSUM ns=HEX" from output. */
static int parse_result(const char *out, const char *name, uint64_t *chk, uint64_t *ns) {
  char key[32];
  snprintf(key, sizeof(key), "%s=", name);
  const char *p = strstr(out, key);
  if (!p) return -1;
  *chk = strtoull(p + strlen(key), NULL, 16);
  const char *q = strstr(p, "ns=");
  if (!q) return -1;
  *ns = strtoull(q + 3, NULL, 16);
  return 0;
}

/* ---- native and qemu-user: a child process ---- */

static int run_process(const char *const argv[], char *out, size_t cap) {
  int fd[2];
  if (pipe(fd)) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    dup2(fd[1], 1);
    close(fd[0]);
    close(fd[1]);
    execvp(argv[0], (char *const *)argv);
    _exit(127);
  }
  close(fd[1]);
  size_t n = 0;
  ssize_t r;
  while (n + 1 < cap && (r = read(fd[0], out + n, cap - 1 - n)) > 0) n += (size_t)r;
  out[n] = 0;
  close(fd[0]);
  int st;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

static int run_native(const char *kern, uint64_t iters, bool qemu, uint64_t *chk, uint64_t *ns) {
  char it[32], out[4096];
  snprintf(it, sizeof(it), "%" PRIu64, iters);
  const char *argv_n[] = {g_native, kern, it, NULL};
  const char *argv_q[] = {"qemu-x86_64", g_native, kern, it, NULL};
  if (run_process(qemu ? argv_q : argv_n, out, sizeof(out))) return -1;
  return parse_result(out, kern, chk, ns);
}

/* ---- libvmm backends ---- */

struct console_buf {
  char data[4096];
  size_t len;
};

static void console_cb(const char *d, size_t n, void *ud) {
  struct console_buf *c = ud;
  if (c->len + n >= sizeof(c->data)) n = sizeof(c->data) - 1 - c->len;
  memcpy(c->data + c->len, d, n);
  c->len += n;
  c->data[c->len] = 0;
}

static int clock_hc(vmm_vcpu_t *vcpu, uint64_t nr, const uint64_t args[6], uint64_t *result,
                    void *ud) {
  (void)vcpu, (void)nr, (void)args, (void)ud;
  *result = now_ns();
  return VMM_HANDLED;
}

struct bt_totals {
  uint64_t insns, translate_ns;
};

static int run_vmm(vmm_backend_t be, const char *kern, uint64_t iters, uint64_t *chk,
                   uint64_t *ns, struct bt_totals *tot) {
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = be;
  cfg.ram_size = 256ull << 20;
  vmm_vm_t *vm = NULL;
  vmm_vcpu_t *vcpu = NULL;
  int rc = vmm_vm_create(&cfg, &vm);
  if (rc) return rc;
  struct console_buf con = {.len = 0};
  vmm_vm_set_console(vm, console_cb, &con);
  vmm_vm_add_hypercall_handler(vm, KERN_HC_CLOCK, clock_hc, NULL, NULL);
  char cmd[64];
  snprintf(cmd, sizeof(cmd), "%s %" PRIu64, kern, iters);
  vmm_image_info_t info;
  vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
  if ((rc = vmm_vcpu_create(vm, 0, &vcpu)) || (rc = vmm_load_file(vm, g_guest, 0, 0, &info)))
    goto out;
  lm.cpl = 3;
  lm.entry = info.entry;
  lm.cmdline = cmd;
  lm.image_low = info.low;
  lm.image_high = info.high;
  if ((rc = vmm_vcpu_setup_long_mode(vcpu, &lm))) goto out;
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  for (;;) {
    rc = vmm_vcpu_run(vcpu, &ex);
    if (rc) goto out;
    if (ex.reason == VMM_EXIT_GUEST_EXIT) break;
    if (ex.reason == VMM_EXIT_IO || ex.reason == VMM_EXIT_MMIO) continue;
    fprintf(stderr, "bench: unexpected exit %s\n", vmm_exit_reason_name(ex.reason));
    rc = VMM_EIO;
    goto out;
  }
  rc = parse_result(con.data, kern, chk, ns) ? VMM_EIO : 0;
  if (tot) {
    vmm_stat_t st[64];
    size_t n = 0;
    vmm_vcpu_stats(vcpu, st, 64, &n);
    for (size_t i = 0; i < n && i < 64; i++) {
      if (getenv("BENCH_BT_STATS")) fprintf(stderr, "  %s %s %" PRIu64 "\n", kern, st[i].name, st[i].value);
      if (!strcmp(st[i].name, "bt.insns_translated")) tot->insns += st[i].value;
      if (!strcmp(st[i].name, "bt.translate_ns")) tot->translate_ns += st[i].value;
    }
  }
out:
  vmm_vm_destroy(vm);
  return rc;
}

/* ---- Unicorn ---- */

#ifdef BENCH_HAVE_UNICORN
struct uc_ctx {
  struct console_buf con;
  bool done;
};

static void uc_out_hook(uc_engine *uc, uint32_t port, int size, uint32_t value, void *ud) {
  struct uc_ctx *c = ud;
  (void)size, (void)value;
  if (port != VMM_HC_PORT) return;
  uint64_t rax, rdi, rsi;
  uc_reg_read(uc, UC_X86_REG_RAX, &rax);
  uc_reg_read(uc, UC_X86_REG_RDI, &rdi);
  uc_reg_read(uc, UC_X86_REG_RSI, &rsi);
  uint64_t res = 0;
  if (rax == VMM_HC_CONSOLE_WRITE && rsi < sizeof(c->con.data) - c->con.len) {
    uc_mem_read(uc, rdi, c->con.data + c->con.len, rsi);
    c->con.len += rsi;
    c->con.data[c->con.len] = 0;
    res = rsi;
  } else if (rax == VMM_HC_EXIT) {
    c->done = true;
    uc_emu_stop(uc);
  } else if (rax == KERN_HC_CLOCK) {
    res = now_ns();
  }
  uc_reg_write(uc, UC_X86_REG_RAX, &res);
}

static int run_unicorn(const char *kern, uint64_t iters, uint64_t *chk, uint64_t *ns) {
  int fd = open(g_guest, O_RDONLY);
  if (fd < 0) return -1;
  struct stat sb;
  fstat(fd, &sb);
  uint8_t *img = malloc((size_t)sb.st_size);
  if (!img || read(fd, img, (size_t)sb.st_size) != sb.st_size) {
    close(fd);
    free(img);
    return -1;
  }
  close(fd);
  uc_engine *uc;
  if (uc_open(UC_ARCH_X86, UC_MODE_64, &uc) != UC_ERR_OK) {
    free(img);
    return -1;
  }
  uint64_t ram = 256ull << 20;
  uc_mem_map(uc, 0, ram, UC_PROT_ALL);
  Elf64_Ehdr *eh = (Elf64_Ehdr *)img;
  for (unsigned i = 0; i < eh->e_phnum; i++) {
    Elf64_Phdr *ph = (Elf64_Phdr *)(img + eh->e_phoff + i * sizeof(Elf64_Phdr));
    if (ph->p_type == PT_LOAD) uc_mem_write(uc, ph->p_paddr, img + ph->p_offset, ph->p_filesz);
  }
  /* The kvm-style hypercall page and the boot information the runtime reads. */
  uint8_t page[4096];
  memset(page, 0xcc, sizeof(page));
  for (uint32_t n = 0; n < VMM_HC_COUNT; n++) {
    uint8_t *e = page + n * VMM_HC_ENTRY_SIZE;
    e[0] = 0xb8;
    memcpy(e + 1, &n, 4);
    e[5] = 0xe7;
    e[6] = VMM_HC_PORT;
    e[7] = 0xc3;
  }
  uc_mem_write(uc, VMM_HYPERCALL_PAGE_GPA, page, sizeof(page));
  char cmd[64];
  snprintf(cmd, sizeof(cmd), "%s %" PRIu64, kern, iters);
  uc_mem_write(uc, VMM_CMDLINE_GPA, cmd, strlen(cmd) + 1);
  struct vmm_boot_info bi;
  memset(&bi, 0, sizeof(bi));
  bi.magic = VMM_BOOT_MAGIC;
  bi.version = VMM_BOOT_VERSION;
  bi.size = sizeof(bi);
  bi.hypercall_page = VMM_HYPERCALL_PAGE_GPA;
  bi.ram_size = ram;
  bi.cmdline = VMM_CMDLINE_GPA;
  bi.cpl = 3;
  uc_mem_write(uc, VMM_BOOTINFO_GPA, &bi, sizeof(bi));
  uint64_t rsp = ram - 64, rdi = VMM_BOOTINFO_GPA, rsi = VMM_BOOT_MAGIC;
  uc_reg_write(uc, UC_X86_REG_RSP, &rsp);
  uc_reg_write(uc, UC_X86_REG_RDI, &rdi);
  uc_reg_write(uc, UC_X86_REG_RSI, &rsi);
  struct uc_ctx ctx = {.con.len = 0, .done = false};
  uc_hook h;
  uc_hook_add(uc, &h, UC_HOOK_INSN, (void *)uc_out_hook, &ctx, 1, 0, UC_X86_INS_OUT);
  uc_err e = uc_emu_start(uc, eh->e_entry, 0, 0, 0);
  uc_close(uc);
  free(img);
  if (e != UC_ERR_OK && !ctx.done) return -1;
  return parse_result(ctx.con.data, kern, chk, ns);
}
#endif

/* ---- the table ---- */

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static uint64_t median(uint64_t *v, int n) {
  qsort(v, (size_t)n, sizeof(*v), cmp_u64);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

enum { M_NATIVE, M_BT, M_KVM, M_PV, M_QEMU, M_UNICORN, M_COUNT };
static const char *const mode_names[M_COUNT] = {"native", "bt", "kvm-cpl3", "pv", "qemu-x86_64",
                                                "unicorn"};

int main(int argc, char **argv) {
  int runs = 5;
  double scale = 1.0;
  const char *only = NULL, *kernel = NULL;
  bool no_hc = false;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--scale") && i + 1 < argc) scale = atof(argv[++i]);
    else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else if (!strcmp(argv[i], "--kernel") && i + 1 < argc) kernel = argv[++i];
    else if (!strcmp(argv[i], "--no-hc")) no_hc = true;
    else {
      fprintf(stderr, "usage: bench_bt [--runs N] [--scale F] [--only native,bt,kvm,pv,qemu,unicorn] [--kernel int|mem|call] [--no-hc]\n");
      return 2;
    }
  }
  if (runs < 1) runs = 1;
  if (runs > MAX_RUNS) runs = MAX_RUNS;
  static const struct { const char *name; uint64_t iters; } kerns[] = {
      {"int", 60000}, {"mem", 20}, {"call", 400}};
  bool enabled[M_COUNT];
  for (int m = 0; m < M_COUNT; m++) {
    const char *key = m == M_KVM ? "kvm" : m == M_QEMU ? "qemu" : mode_names[m];
    enabled[m] = only == NULL || strstr(only, key) != NULL;
  }
  enabled[M_NATIVE] = true;
  if (vmm_backend_probe(VMM_BACKEND_KVM) != 0) enabled[M_KVM] = false;
  if (vmm_backend_probe(VMM_BACKEND_BT) != 0) enabled[M_BT] = false;
  if (vmm_backend_probe(VMM_BACKEND_PV) != 0) enabled[M_PV] = false;
  if (system("qemu-x86_64 --version > /dev/null 2>&1") != 0) enabled[M_QEMU] = false;
#ifndef BENCH_HAVE_UNICORN
  enabled[M_UNICORN] = false;
#endif
  printf("bench_bt: %d runs per cell, medians of the kernel time; ratio = median / native median\n",
         runs);
  printf("%-6s", "kernel");
  for (int m = 0; m < M_COUNT; m++)
    if (enabled[m]) printf(" %22s", mode_names[m]);
  printf("\n");
  struct bt_totals tot = {0, 0};
  int failures = 0;
  for (size_t k = 0; k < sizeof(kerns) / sizeof(kerns[0]); k++) {
    if (kernel && strcmp(kernel, kerns[k].name) != 0) continue;
    uint64_t iters = (uint64_t)((double)kerns[k].iters * scale);
    if (iters == 0) iters = 1;
    uint64_t med[M_COUNT] = {0}, ref_chk = 0;
    bool have_ref = false;
    for (int m = 0; m < M_COUNT; m++) {
      if (!enabled[m]) continue;
      uint64_t t[MAX_RUNS];
      int ok = 0;
      for (int r = 0; r < runs; r++) {
        uint64_t chk = 0, ns = 0;
        int rc = -1;
        switch (m) {
          case M_NATIVE: rc = run_native(kerns[k].name, iters, false, &chk, &ns); break;
          case M_QEMU: rc = run_native(kerns[k].name, iters, true, &chk, &ns); break;
          case M_BT: rc = run_vmm(VMM_BACKEND_BT, kerns[k].name, iters, &chk, &ns, &tot); break;
          case M_KVM: rc = run_vmm(VMM_BACKEND_KVM, kerns[k].name, iters, &chk, &ns, NULL); break;
          case M_PV: rc = run_vmm(VMM_BACKEND_PV, kerns[k].name, iters, &chk, &ns, NULL); break;
#ifdef BENCH_HAVE_UNICORN
          case M_UNICORN: rc = run_unicorn(kerns[k].name, iters, &chk, &ns); break;
#endif
          default: break;
        }
        if (rc != 0) {
          fprintf(stderr, "bench: %s on %s failed\n", kerns[k].name, mode_names[m]);
          failures++;
          break;
        }
        if (!have_ref) {
          ref_chk = chk;
          have_ref = true;
        } else if (chk != ref_chk) {
          fprintf(stderr, "bench: %s on %s: checksum %016" PRIx64 " differs from %016" PRIx64 "\n",
                  kerns[k].name, mode_names[m], chk, ref_chk);
          failures++;
        }
        t[ok++] = ns;
      }
      med[m] = ok ? median(t, ok) : 0;
    }
    printf("%-6s", kerns[k].name);
    for (int m = 0; m < M_COUNT; m++) {
      if (!enabled[m]) continue;
      char cell[64];
      if (!med[m]) snprintf(cell, sizeof(cell), "failed");
      else if (m == M_NATIVE) snprintf(cell, sizeof(cell), "%.1f ms", (double)med[m] / 1e6);
      else snprintf(cell, sizeof(cell), "%.1f ms x%.2f", (double)med[m] / 1e6,
                    med[M_NATIVE] ? (double)med[m] / (double)med[M_NATIVE] : 0.0);
      printf(" %22s", cell);
    }
    printf("\n");
    fflush(stdout);
  }
  if (enabled[M_BT] && !no_hc) {
    uint64_t t[MAX_RUNS], chk, ns;
    int ok = 0;
    const uint64_t n = 200000;
    for (int r = 0; r < runs; r++)
      if (run_vmm(VMM_BACKEND_BT, "hc", n, &chk, &ns, NULL) == 0) t[ok++] = ns;
    if (ok) printf("hypercall round trip on bt (VMM_HC_NOP, guest to handler and back): %.3f us\n",
                   (double)median(t, ok) / (double)n / 1000.0);
    if (tot.translate_ns)
      printf("translation speed on bt: %.2f M guest instructions/s (%" PRIu64 " instructions)\n",
             (double)tot.insns * 1e3 / (double)tot.translate_ns, tot.insns);
  }
  return failures ? 1 : 0;
}
