/* kvm backend: the in-kernel interrupt controllers and timer (VMM_VM_IRQCHIP). */
#ifndef LIBVMM_KVM_PLATFORM_H
#define LIBVMM_KVM_PLATFORM_H

#include "kvm.h"

/* Creates the PIC, I/O APIC and local APICs, then the PIT. Must run before any vCPU exists. */
int vmm__kvm_platform_init(vmm_vm_t *vm, struct vmm_kvm_vm *k);

/* Snapshots: the chips', timer's, clock's and local APICs' state as JSON, a check of such
 * JSON (sizes, MSR names, one entry per vCPU) that changes nothing, and its load. */
cJSON *vmm__kvm_platform_save(vmm_vm_t *vm, int *rc);
int vmm__kvm_platform_check(vmm_vm_t *vm, const cJSON *j);
int vmm__kvm_platform_load(vmm_vm_t *vm, const cJSON *j);
/* The load without what writes guest RAM (the wall-clock MSRs), for a restore's trial. */
int vmm__kvm_platform_try(vmm_vm_t *vm, const cJSON *j);

#endif /* LIBVMM_KVM_PLATFORM_H */
