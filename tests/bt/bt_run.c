/* Runs a guest image on a backend and prints console output, exits and final registers.
 * A debugging aid for the bt backend and a building block of its tests:
 *   bt_run [-b bt|kvm|pv] [-c CPL] [-m MiB] [-s] [-v] [--stats] IMAGE [CMDLINE]
 * PIO port 0x500 echoes (write stores, read returns stored + 1), MMIO 0xd0000000 is a
 * register file of eight 64-bit slots; other exits are answered with all-ones. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libvmm/vmm.h>

static uint64_t echo_val;
static uint64_t regs8[8];

static int echo_io(vmm_vcpu_t *vcpu, uint64_t off, uint32_t size, int is_write, uint64_t *data,
                   void *ud) {
  (void)vcpu, (void)off, (void)size, (void)ud;
  if (is_write) echo_val = *data;
  else *data = echo_val + 1;
  return VMM_HANDLED;
}

static int mmio_io(vmm_vcpu_t *vcpu, uint64_t off, uint32_t size, int is_write, uint64_t *data,
                   void *ud) {
  (void)vcpu, (void)ud;
  uint64_t slot = off / 8;
  if (slot >= 8) return VMM_UNHANDLED;
  unsigned shift = (unsigned)(off % 8) * 8;
  uint64_t mask = size >= 8 ? ~0ull : ((1ull << (size * 8)) - 1);
  if (is_write) regs8[slot] = (regs8[slot] & ~(mask << shift)) | ((*data & mask) << shift);
  else *data = (regs8[slot] >> shift) & mask;
  return VMM_HANDLED;
}

static void console(const char *d, size_t n, void *ud) {
  (void)ud;
  fwrite(d, 1, n, stdout);
  fflush(stdout);
}

static void logfn(vmm_log_level_t level, const char *msg, void *ud) {
  (void)ud;
  fprintf(stderr, "[libvmm %d] %s\n", (int)level, msg);
}

int main(int argc, char **argv) {
  const char *backend = "bt", *image = NULL, *cmdline = NULL;
  unsigned cpl = 0, mib = 64;
  int verbose = 0, stats = 0, step = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "-b") && i + 1 < argc) backend = argv[++i];
    else if (!strcmp(argv[i], "-c") && i + 1 < argc) cpl = (unsigned)atoi(argv[++i]);
    else if (!strcmp(argv[i], "-m") && i + 1 < argc) mib = (unsigned)atoi(argv[++i]);
    else if (!strcmp(argv[i], "-v")) verbose = 1;
    else if (!strcmp(argv[i], "-s")) step = 1;
    else if (!strcmp(argv[i], "--stats")) stats = 1;
    else if (!image) image = argv[i];
    else cmdline = argv[i];
  }
  if (!image) {
    fprintf(stderr, "usage: bt_run [-b backend] [-c cpl] [-m MiB] [-s] [-v] IMAGE [CMDLINE]\n");
    return 2;
  }
  if (verbose) vmm_log_set_callback(logfn, VMM_LOG_DEBUG, NULL);
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  vmm_backend_t be;
  if (vmm_backend_parse(backend, &be)) return 2;
  cfg.backend = be;
  cfg.ram_size = (uint64_t)mib << 20;
  vmm_vm_t *vm;
  int rc = vmm_vm_create(&cfg, &vm);
  if (rc) {
    fprintf(stderr, "vm_create: %s\n", vmm_strerror(rc));
    return 1;
  }
  vmm_vm_set_console(vm, console, NULL);
  vmm_vm_add_pio_handler(vm, 0x500, 4, echo_io, NULL, NULL);
  vmm_vm_add_mmio_handler(vm, 0xd0000000ull, 0x1000, mmio_io, NULL, NULL);
  vmm_debug_exit_create(vm, 0, NULL);
  vmm_vcpu_t *vcpu;
  if ((rc = vmm_vcpu_create(vm, 0, &vcpu))) {
    fprintf(stderr, "vcpu_create: %s\n", vmm_strerror(rc));
    return 1;
  }
  vmm_image_info_t info;
  if ((rc = vmm_load_file(vm, image, 0, 0, &info))) {
    fprintf(stderr, "load: %s\n", vmm_strerror(rc));
    return 1;
  }
  vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
  lm.cpl = cpl;
  lm.entry = info.entry;
  lm.cmdline = cmdline;
  lm.image_low = info.low;
  lm.image_high = info.high;
  if ((rc = vmm_vcpu_setup_long_mode(vcpu, &lm))) {
    fprintf(stderr, "setup_long_mode: %s\n", vmm_strerror(rc));
    return 1;
  }
  if (step) vmm_vcpu_set_single_step(vcpu, 1);
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  int result = 0;
  for (int n = 0; n < 1000000; n++) {
    rc = vmm_vcpu_run(vcpu, &ex);
    if (rc) {
      fprintf(stderr, "run: %s\n", vmm_strerror(rc));
      result = 1;
      break;
    }
    if (ex.reason == VMM_EXIT_IO) {
      printf("[exit IO port=%#x size=%u write=%u data=%#" PRIx64 "]\n", ex.io.port, ex.io.size,
             ex.io.is_write, ex.io.data);
      continue;
    }
    if (ex.reason == VMM_EXIT_MMIO) {
      printf("[exit MMIO gpa=%#" PRIx64 " size=%u write=%u data=%#" PRIx64 "]\n", ex.mmio.gpa,
             ex.mmio.size, ex.mmio.is_write, ex.mmio.data);
      continue;
    }
    if (ex.reason == VMM_EXIT_DEBUG) {
      if (verbose) printf("[step %#" PRIx64 "]\n", ex.debug.rip);
      continue;
    }
    printf("[exit %s", vmm_exit_reason_name(ex.reason));
    if (ex.reason == VMM_EXIT_GUEST_EXIT) printf(" status=%" PRId64, ex.guest_exit.status);
    if (ex.reason == VMM_EXIT_EXCEPTION)
      printf(" vector=%u err=%#x rip=%#" PRIx64 " cr2=%#" PRIx64, ex.exception.vector,
             ex.exception.error_code, ex.exception.rip, ex.exception.cr2);
    if (ex.reason == VMM_EXIT_INTERNAL_ERROR) printf(" %s", ex.internal.message);
    printf("]\n");
    break;
  }
  vmm_regs_t r;
  vmm_vcpu_get_regs(vcpu, &r);
  printf("rip=%#" PRIx64 " rsp=%#" PRIx64 " rax=%#" PRIx64 " rbx=%#" PRIx64 " rflags=%#" PRIx64
         "\n",
         r.rip, r.rsp, r.rax, r.rbx, r.rflags);
  if (stats) {
    vmm_stat_t st[64];
    size_t n = 0;
    vmm_vcpu_stats(vcpu, st, 64, &n);
    for (size_t i = 0; i < n && i < 64; i++)
      if (st[i].value) printf("  %-40s %" PRIu64 "\n", st[i].name, st[i].value);
  }
  vmm_vm_destroy(vm);
  return result;
}
