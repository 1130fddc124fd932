/* A scripted backend for unit tests of the core: vcpu_run returns queued exits and records
 * what the core handed back for completion. */
#ifndef VMM_TEST_MOCK_BACKEND_H
#define VMM_TEST_MOCK_BACKEND_H

#include <stdbool.h>

#include "core/internal.h"

#define MOCK_MAX_EXITS 64

struct mock_vcpu {
  vmm_cpu_state_t state;
  vmm_exit_t script[MOCK_MAX_EXITS];
  size_t nscript, pos;
  vmm_exit_t completed[MOCK_MAX_EXITS]; /* The exit passed back into each vcpu_run call. */
  size_t ncompleted;
  size_t flushes;
  bool pending;
  bool kicked;
  bool fail_set_state;  /* set_state refuses (for error-path tests). */
};

struct mock_vm {
  uint64_t dirty[64];   /* Backend-side dirty bits for every region (first 4096 pages). */
  bool fail_region_add;
  size_t regions_added, regions_removed;
  /* VMs made with mock_vm_create_irqchip(): the "platform" state is this one number, and
   * platform_load refuses the value refuse_platform (0: refuses none). */
  uint64_t platform, refuse_platform;
  size_t platform_loads;
};

extern const struct vmm_backend_ops mock_backend_ops;

/* A VM on the mock backend with RAM at 0 (no RAM when ram is 0). */
vmm_vm_t *mock_vm_create(uint64_t ram);
/* The same with the copy-on-write capability kvm has (first snapshots adopt the memfd). */
vmm_vm_t *mock_vm_create_cow(uint64_t ram);
/* The same with interrupt controllers (VMM_VM_IRQCHIP) whose state is mock_vm.platform. */
vmm_vm_t *mock_vm_create_irqchip(uint64_t ram);
struct mock_vcpu *mock_vcpu_of(vmm_vcpu_t *vcpu);
struct mock_vm *mock_vm_of(vmm_vm_t *vm);
void mock_push_exit(vmm_vcpu_t *vcpu, const vmm_exit_t *exit);
/* A single-element port I/O exit as a backend would produce it. */
vmm_exit_t mock_io_exit(uint16_t port, uint8_t size, int is_write, uint64_t data);

#endif
