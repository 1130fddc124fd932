/* kvm backend: the in-kernel interrupt controllers and timer (VMM_VM_IRQCHIP). */
#ifndef LIBVMM_KVM_PLATFORM_H
#define LIBVMM_KVM_PLATFORM_H

#include "kvm.h"

/* Creates the PIC, I/O APIC and local APICs, then the PIT. Must run before any vCPU exists. */
int vmm__kvm_platform_init(vmm_vm_t *vm, struct vmm_kvm_vm *k);

#endif /* LIBVMM_KVM_PLATFORM_H */
