/* Helpers shared by the pv backend's tests: a VM with one vCPU running a guest image from the
 * build tree, its console captured. */
#ifndef PV_TEST_UTIL_H
#define PV_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libvmm/vmm.h>

struct pv_vm {
  vmm_vm_t *vm;
  vmm_vcpu_t *vcpu;
  char console[8192];
  size_t console_len;
};

static void pv_console(const char *d, size_t n, void *ud) {
  struct pv_vm *p = ud;
  for (size_t i = 0; i < n && p->console_len + 1 < sizeof(p->console); i++)
    p->console[p->console_len++] = d[i];
  p->console[p->console_len] = '\0';
}

/* Creates a pv VM with 64 MiB of RAM running guest/<name>.elf at `cpl` with `cmdline`. */
static int pv_vm_start(struct pv_vm *p, const char *name, unsigned cpl, const char *cmdline) {
  memset(p, 0, sizeof(*p));
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = VMM_BACKEND_PV;
  cfg.ram_size = 64ull << 20;
  int rc = vmm_vm_create(&cfg, &p->vm);
  if (rc) return rc;
  vmm_vm_set_console(p->vm, pv_console, p);
  rc = vmm_vcpu_create(p->vm, 0, &p->vcpu);
  if (rc) return rc;
  char path[512];
  snprintf(path, sizeof(path), "%s/%s.elf", PV_GUEST_DIR, name);
  vmm_image_info_t info;
  rc = vmm_load_file(p->vm, path, 0, 0, &info);
  if (rc) return rc;
  vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
  lm.cpl = cpl;
  lm.entry = info.entry;
  lm.cmdline = cmdline;
  lm.image_low = info.low;
  lm.image_high = info.high;
  return vmm_vcpu_setup_long_mode(p->vcpu, &lm);
}

/* Runs once; the exit must have `reason` (cmocka must be included before this header). */
static inline void run_expect(struct pv_vm *p, vmm_exit_t *ex, uint32_t reason) {
  int rc = vmm_vcpu_run(p->vcpu, ex);
  assert_int_equal(rc, 0);
  if (ex->reason != reason)
    fail_msg("exit %s, want %s (%s)", vmm_exit_reason_name(ex->reason),
             vmm_exit_reason_name(reason),
             ex->reason == VMM_EXIT_INTERNAL_ERROR ? ex->internal.message : "");
}

static void pv_vm_stop(struct pv_vm *p) {
  vmm_vm_destroy(p->vm);
  p->vm = NULL;
  p->vcpu = NULL;
}

static uint64_t pv_stat(vmm_vcpu_t *vcpu, const char *name) {
  vmm_stat_t st[64];
  size_t n = 0;
  if (vmm_vcpu_stats(vcpu, st, 64, &n) != 0) return 0;
  for (size_t i = 0; i < n && i < 64; i++)
    if (strcmp(st[i].name, name) == 0) return st[i].value;
  return 0;
}

#endif
