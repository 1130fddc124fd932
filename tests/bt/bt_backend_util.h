/* Shared by the bt backend tests (test_bt_backend.c, test_bt_programs.c): a VM with its
 * console captured, the test devices (PIO echo at 0x500, an MMIO register file at
 * 0xd0000000), guests from files or flat programs, and running to the next exit the test does
 * not answer. */
#ifndef LIBVMM_TEST_BT_BACKEND_UTIL_H
#define LIBVMM_TEST_BT_BACKEND_UTIL_H

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

#define LOAD_GPA 0x100000ull

/* cmocka replaces crash handlers around each test without chaining; put the backend's back. */
static const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP};
static struct sigaction saved[5];
static bool saved_ok;

static inline void restore_handlers(void) {
  if (saved_ok)
    for (int i = 0; i < 5; i++) sigaction(sigs[i], &saved[i], NULL);
}

struct run {
  vmm_vm_t *vm;
  vmm_vcpu_t *vcpu;
  char con[8192];
  size_t conlen;
};

static inline void console(const char *d, size_t n, void *ud) {
  struct run *r = ud;
  if (r->conlen + n >= sizeof(r->con)) n = sizeof(r->con) - 1 - r->conlen;
  memcpy(r->con + r->conlen, d, n);
  r->conlen += n;
  r->con[r->conlen] = 0;
}

static uint64_t echo_val;
static inline int echo_io(vmm_vcpu_t *vcpu, uint64_t off, uint32_t size, int is_write, uint64_t *data,
                   void *ud) {
  (void)vcpu, (void)off, (void)size, (void)ud;
  if (is_write) echo_val = *data;
  else *data = echo_val + 1;
  return VMM_HANDLED;
}

static uint64_t mmio_regs[8];
static inline int mmio_io(vmm_vcpu_t *vcpu, uint64_t off, uint32_t size, int is_write, uint64_t *data,
                   void *ud) {
  (void)vcpu, (void)ud;
  if (off / 8 >= 8) return VMM_UNHANDLED;
  uint64_t mask = size >= 8 ? ~0ull : ((1ull << (size * 8)) - 1);
  unsigned sh = (unsigned)(off % 8) * 8;
  if (is_write) mmio_regs[off / 8] = (mmio_regs[off / 8] & ~(mask << sh)) | ((*data & mask) << sh);
  else *data = (mmio_regs[off / 8] >> sh) & mask;
  return VMM_HANDLED;
}

static inline void run_open(struct run *r, vmm_backend_t be, uint64_t ram) {
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

static inline void run_guest_file(struct run *r, vmm_backend_t be, const char *name, unsigned cpl,
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

static inline void run_flat(struct run *r, const uint8_t *start, const uint8_t *end) {
  run_open(r, VMM_BACKEND_BT, 16u << 20);
  vmm_image_info_t info;
  assert_int_equal(vmm_load_flat(r->vm, LOAD_GPA, start, (size_t)(end - start), &info), 0);
  vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
  lm.entry = LOAD_GPA;
  assert_int_equal(vmm_vcpu_setup_long_mode(r->vcpu, &lm), 0);
}

/* Runs to the first exit that is not an I/O or MMIO exit the test answers with all-ones. */
static inline void run_until(struct run *r, vmm_exit_t *ex, unsigned *io_exits) {
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

static inline uint64_t stat_value(vmm_vcpu_t *vcpu, const char *name) {
  vmm_stat_t st[64];
  size_t n = 0;
  vmm_vcpu_stats(vcpu, st, 64, &n);
  for (size_t i = 0; i < n && i < 64; i++)
    if (!strcmp(st[i].name, name)) return st[i].value;
  return UINT64_MAX;
}

static inline uint32_t crc32_buf(const uint8_t *p, size_t n) {
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

static inline void guest_outcome(vmm_backend_t be, const char *name, unsigned cpl, const char *cmd,
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

#endif
