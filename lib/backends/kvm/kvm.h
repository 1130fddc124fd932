/* The kvm backend's private declarations. */
#ifndef LIBVMM_KVM_H
#define LIBVMM_KVM_H

#include <linux/kvm.h>

#include "../../core/internal.h"

#define VMM_KVM_MAX_SLOTS 512
#define VMM_KVM_MAX_MSRS 16

struct vmm_kvm_vm {
  int kvm_fd;
  int vm_fd;
  size_t run_size;
  uint32_t sync_regs;       /* KVM_SYNC_X86_* fields the kernel keeps in kvm_run. */
  bool has_readonly;
  bool has_xsave;
  bool has_xcrs;
  bool has_debugregs;
  bool has_irqchip;
  bool is_intel;
  uint32_t nr_slots;
  uint64_t slots_used[VMM_KVM_MAX_SLOTS / 64];
  struct kvm_cpuid2 *cpuid;  /* What every vCPU is given. */
  uint64_t xcr0_supported;   /* XSAVE components KVM offers (CPUID 0xD.0). */
  uint32_t msr_index[VMM_KVM_MAX_MSRS];
  size_t nmsrs;
};

struct vmm_kvm_vcpu {
  int fd;
  struct kvm_run *run;
  atomic_int tid;           /* Thread inside vcpu_run, 0 when none. */
  atomic_bool kicked;
  bool pending;             /* KVM will finish an IO/MMIO instruction on the next KVM_RUN. */
  bool regs_valid;          /* run->s.regs.regs holds the current registers. */
  bool single_step;
  uint64_t runs, eintr;
};

static inline struct vmm_kvm_vm *vmm_kvm_vm(const vmm_vm_t *vm) { return vm->backend_data; }
static inline struct vmm_kvm_vcpu *vmm_kvm_vcpu(const vmm_vcpu_t *v) { return v->backend_data; }

int vmm__kvm_vcpu_init(vmm_vcpu_t *vcpu);
void vmm__kvm_vcpu_fini(vmm_vcpu_t *vcpu);
int vmm__kvm_vcpu_run(vmm_vcpu_t *vcpu, vmm_exit_t *exit);
int vmm__kvm_flush_pending(vmm_vcpu_t *vcpu, const vmm_exit_t *exit);
void vmm__kvm_vcpu_kick(vmm_vcpu_t *vcpu);
int vmm__kvm_get_regs(vmm_vcpu_t *vcpu, vmm_regs_t *regs);
int vmm__kvm_set_regs(vmm_vcpu_t *vcpu, const vmm_regs_t *regs);
int vmm__kvm_get_state(vmm_vcpu_t *vcpu, vmm_cpu_state_t *state);
int vmm__kvm_set_state(vmm_vcpu_t *vcpu, const vmm_cpu_state_t *state);
int vmm__kvm_set_single_step(vmm_vcpu_t *vcpu, bool enable);
size_t vmm__kvm_vcpu_stats(vmm_vcpu_t *vcpu, vmm_stat_t *out, size_t cap);

/* ioctl that retries on EINTR and returns a VMM_E* code, logging failures. */
int vmm__kvm_ioctl(int fd, unsigned long req, void *arg, const char *what);

#endif /* LIBVMM_KVM_H */
