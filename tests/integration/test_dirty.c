/* Dirty-page logging on every backend that has it: a guest writes known pages; the log shows
 * them, and no page the guest did not touch; then it writes them again and the next log shows
 * them again. Also checks get-and-clear and host writes.
 * usage: test_dirty --guest-dir DIR [--backend NAME]... ; exit 77 when nothing could run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libvmm/vmm.h>

#include "itest.h"

#define RAM (64ull << 20)
#define NPAGES (RAM / 4096)
#define HC_ROUND (VMM_HC_USER_BASE + 7)

static int bit(const uint64_t *bm, uint64_t page) { return (bm[page / 64] >> (page % 64)) & 1; }

/* Returns 0 on success, 1 on failure, 77 when the backend cannot log dirty pages. */
static int check_backend(vmm_backend_t b, const char *guest_dir) {
  char path[1024];
  snprintf(path, sizeof(path), "%s/dirty.elf", guest_dir);
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = b;
  cfg.ram_size = RAM;
  vmm_vm_t *vm;
  vmm_vcpu_t *vcpu;
  vmm_image_info_t img;
  vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
  static uint64_t bm[NPAGES / 64];
  int status = 1;
  if (vmm_vm_create(&cfg, &vm) != 0) return 1;
  int rc = vmm_vcpu_create(vm, 0, &vcpu);
  if (rc == 0) rc = vmm_load_file(vm, path, 0, 0, &img);
  lm.entry = img.entry;
  if (rc == 0) rc = vmm_vcpu_setup_long_mode(vcpu, &lm);
  if (rc != 0) {
    printf("FAIL %s: setup: %s\n", vmm_backend_name(b), vmm_strerror(rc));
    goto out;
  }
  rc = vmm_vm_dirty_log_enable(vm, 0, 1);
  if (rc == VMM_ENOSYS) {
    printf("SKIP %s: no dirty logging on this backend (%s)\n", vmm_backend_name(b), vmm_strerror(rc));
    status = 77;
    goto out;
  }
  if (rc != 0 || (rc = vmm_vm_dirty_log_get(vm, 0, bm, sizeof(bm))) != 0) {
    printf("FAIL %s: enable/clear: %s\n", vmm_backend_name(b), vmm_strerror(rc));
    goto out;
  }
  int bad = 0;
  vmm_exit_t e;
  memset(&e, 0, sizeof(e));
  for (int round = 0; round < 2 && !bad; round++) {
    /* Round 0 ends at the guest's HC_ROUND hypercall, round 1 when the guest exits. */
    while ((rc = vmm_vcpu_run(vcpu, &e)) == 0 && e.reason != VMM_EXIT_GUEST_EXIT &&
           e.reason != VMM_EXIT_EXCEPTION && e.reason != VMM_EXIT_INTERNAL_ERROR &&
           e.reason != VMM_EXIT_HYPERCALL) {
    }
    vmm_exit_reason_t want_exit = round == 0 ? VMM_EXIT_HYPERCALL : VMM_EXIT_GUEST_EXIT;
    if (rc != 0 || e.reason != want_exit || (round == 0 && e.hypercall.nr != HC_ROUND)) {
      printf("FAIL %s: round %d ended with %s\n", vmm_backend_name(b), round,
             vmm_exit_reason_name(e.reason));
      goto out;
    }
    if (round == 0) e.hypercall.result = 0;
    uint8_t host = 1;
    uint64_t host_gpa = (30ull << 20) + (uint64_t)round * 4096;
    vmm_vm_write(vm, host_gpa, &host, 1); /* A host write counts too. */
    if ((rc = vmm_vm_dirty_log_get(vm, 0, bm, sizeof(bm))) != 0) {
      printf("FAIL %s: get: %s\n", vmm_backend_name(b), vmm_strerror(rc));
      goto out;
    }
    const uint64_t base = 0x400000 / 4096;
    const unsigned want[] = {0, 1, 5, 100, 1000};
    for (uint64_t p = base; p < (32ull << 20) / 4096; p++) {
      int expected = p == host_gpa / 4096;
      for (unsigned i = 0; i < 5; i++) expected |= p == base + want[i];
      if (bit(bm, p) != expected) {
        if (bad++ < 5)
          printf("     round %d, page %#llx: dirty=%d, expected %d\n", round,
                 (unsigned long long)p, bit(bm, p), expected);
      }
    }
  }
  const uint64_t base = 0x400000 / 4096;
  /* The log was cleared by the read. */
  if (vmm_vm_dirty_log_get(vm, 0, bm, sizeof(bm)) == 0)
    for (uint64_t p = base; p < (32ull << 20) / 4096; p++) bad += bit(bm, p);
  if (vmm_vm_dirty_log_get(vm, 0, bm, 8) != VMM_ERANGE) bad++;
  printf("%s %s: dirty log%s\n", bad ? "FAIL" : "PASS", vmm_backend_name(b), bad ? " wrong" : "");
  status = bad ? 1 : 0;
out:
  vmm_vm_destroy(vm);
  return status;
}

int main(int argc, char **argv) {
  const char *dir = ".";
  vmm_backend_t want[3];
  int nwant;
  if (itest_args(argc, argv, &dir, want, &nwant, NULL)) return 2;
  int ran = 0, failed = 0;
  for (int i = 0; i < nwant; i++) {
    int rc = vmm_backend_probe(want[i]);
    if (rc != 0) {
      printf("SKIP %s: %s\n", vmm_backend_name(want[i]), rc == VMM_ENOSYS ? "not built in" : vmm_strerror(rc));
      continue;
    }
    int r = check_backend(want[i], dir);
    if (r == 77) continue;
    ran++;
    failed += r != 0;
  }
  if (!ran) return 77;
  return failed ? 1 : 0;
}
