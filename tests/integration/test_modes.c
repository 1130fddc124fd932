/* Real-mode and 32-bit protected-mode start states on every backend that runs them: a few
 * bytes of code write a port and halt. Backends that only run 64-bit code must refuse the
 * state with VMM_ENOSYS or fail the run with a clear internal error, not crash.
 * usage: test_modes [--backend NAME]... ; exit 77 when no backend could run. */
#include <stdio.h>
#include <string.h>

#include <libvmm/vmm.h>

/* mov $0x42,%al; out %al,$0x80; hlt */
static const uint8_t real_code[] = {0xb0, 0x42, 0xe6, 0x80, 0xf4};
/* mov $0x12345678,%eax; out %eax,$0x80; push %eax; pop %ebx; hlt (push/pop use the 32-bit stack) */
static const uint8_t prot_code[] = {0xb8, 0x78, 0x56, 0x34, 0x12, 0xe7, 0x80, 0x50, 0x5b, 0xf4};

/* 0 pass, 1 fail, 2 refused cleanly. */
static int run_mode(vmm_backend_t b, int protected_mode) {
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = b;
  cfg.ram_size = 2 << 20;
  vmm_vm_t *vm;
  vmm_vcpu_t *vcpu;
  if (vmm_vm_create(&cfg, &vm) != 0 || vmm_vcpu_create(vm, 0, &vcpu) != 0) return 1;
  int result = 1, rc;
  const uint8_t *code = protected_mode ? prot_code : real_code;
  size_t len = protected_mode ? sizeof(prot_code) : sizeof(real_code);
  vmm_load_flat(vm, 0x8000, code, len, NULL);
  rc = protected_mode ? vmm_vcpu_setup_protected_mode(vcpu, 0x8000, 0x7000)
                      : vmm_vcpu_setup_real_mode(vcpu, 0x0800, 0x0000, 0xfff0);
  if (rc == VMM_ENOSYS) {
    result = 2;
    goto out;
  }
  if (rc != 0) goto out;
  vmm_exit_t e;
  memset(&e, 0, sizeof(e));
  rc = vmm_vcpu_run(vcpu, &e);
  if (rc == 0 && e.reason == VMM_EXIT_INTERNAL_ERROR) {
    printf("     %s refused at run time: %s\n", vmm_backend_name(b), e.internal.message);
    result = 2;
    goto out;
  }
  uint64_t want = protected_mode ? 0x12345678 : 0x42;
  if (rc || e.reason != VMM_EXIT_IO || e.io.port != 0x80 || e.io.data != want) {
    printf("     first exit %s port %#x data %#llx\n", vmm_exit_reason_name(e.reason), e.io.port,
           (unsigned long long)e.io.data);
    goto out;
  }
  rc = vmm_vcpu_run(vcpu, &e);
  if (rc || e.reason != VMM_EXIT_HLT) goto out;
  vmm_regs_t r;
  if (vmm_vcpu_get_regs(vcpu, &r) != 0) goto out;
  if (protected_mode && r.rbx != 0x12345678) goto out;
  result = 0;
out:
  vmm_vm_destroy(vm);
  return result;
}

int main(int argc, char **argv) {
  vmm_backend_t all[3] = {VMM_BACKEND_KVM, VMM_BACKEND_BT, VMM_BACKEND_PV};
  int n = 3;
  if (argc == 3 && strcmp(argv[1], "--backend") == 0) {
    if (vmm_backend_parse(argv[2], &all[0]) != 0) return 2;
    n = 1;
  }
  int ran = 0, failed = 0;
  for (int i = 0; i < n; i++) {
    int rc = vmm_backend_probe(all[i]);
    if (rc) {
      printf("SKIP %s: %s\n", vmm_backend_name(all[i]), rc == VMM_ENOSYS ? "not built in" : vmm_strerror(rc));
      continue;
    }
    ran++;
    for (int pm = 0; pm < 2; pm++) {
      int r = run_mode(all[i], pm);
      const char *mode = pm ? "32-bit protected mode" : "real mode";
      printf("%s %s %s%s\n", r == 1 ? "FAIL" : r == 2 ? "SKIP" : "PASS", vmm_backend_name(all[i]), mode,
             r == 2 ? ": not supported by this backend (refused cleanly)" : "");
      failed += r == 1;
    }
  }
  return !ran ? 77 : failed ? 1 : 0;
}
