/* Writes a snapshot file of a two-vCPU VM, as a program using the library would, with the
 * devices `vmm` gives every VM (debug console, UART, debug-exit port, in that order), for
 * test_vmm_tool.sh: `vmm restore FILE` must run both vCPUs (mp_snapshot_guest.S) and end with
 * status 43, printing "mp ok"; with --save it saves where vCPU 1 asks, with both stopped.
 * usage: mk_mp_snapshot FILE [BACKEND] */
#include <stdio.h>
#include <string.h>

#include <libvmm/snapshot.h>
#include <libvmm/vmm.h>

extern const unsigned char mp_guest_start[], mp_guest_ap[], mp_guest_end[];

#define LOAD_GPA 0x100000ull

static void discard(const char *data, size_t len, void *ud) { (void)data, (void)len, (void)ud; }

int main(int argc, char **argv) {
  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: %s FILE [BACKEND]\n", argv[0]);
    return 2;
  }
  vmm_backend_t b = VMM_BACKEND_AUTO;
  if (argc == 3 && vmm_backend_parse(argv[2], &b) != 0) {
    fprintf(stderr, "%s: unknown backend %s\n", argv[0], argv[2]);
    return 2;
  }
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = b;
  cfg.max_vcpus = 2;
  cfg.ram_size = 16u << 20;
  vmm_vm_t *vm = NULL;
  int rc = vmm_vm_create(&cfg, &vm);
  vmm_uart_config_t u = VMM_UART_CONFIG_INIT;
  u.out_fn = discard;
  if (rc == 0) rc = vmm_vm_set_console(vm, discard, NULL);
  if (rc == 0) rc = vmm_debugcon_create(vm, 0, discard, NULL, NULL);
  if (rc == 0) rc = vmm_uart_create(vm, &u, NULL);
  if (rc == 0) rc = vmm_debug_exit_create(vm, 0, NULL);
  vmm_image_info_t info;
  if (rc == 0)
    rc = vmm_load_flat(vm, LOAD_GPA, mp_guest_start, (size_t)(mp_guest_end - mp_guest_start), &info);
  for (unsigned i = 0; rc == 0 && i < 2; i++) {
    vmm_vcpu_t *v;
    vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
    lm.entry = LOAD_GPA + (i ? (uint64_t)(mp_guest_ap - mp_guest_start) : 0);
    lm.cpl = 3;
    rc = vmm_vcpu_create(vm, i, &v);
    if (rc == 0) rc = vmm_vcpu_setup_long_mode(v, &lm);
  }
  vmm_snapshot_t *s = NULL;
  if (rc == 0) rc = vmm_vm_snapshot(vm, &s);
  if (rc == 0) rc = vmm_snapshot_save(s, argv[1], VMM_SNAPSHOT_SAVE_FULL);
  if (rc != 0) fprintf(stderr, "%s: %s\n", argv[0], vmm_strerror(rc));
  vmm_snapshot_release(s);
  vmm_vm_destroy(vm);
  return rc == 0 ? 0 : 1;
}
