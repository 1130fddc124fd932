/* kvm backend: the in-kernel PIC + I/O APIC + local APICs (KVM_CREATE_IRQCHIP) and PIT
 * (KVM_CREATE_PIT2) that VMM_VM_IRQCHIP asks for. With them KVM delivers interrupts, runs the
 * timer and keeps a halted vCPU inside KVM_RUN until an interrupt wakes it. */
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>

#include "kvm_platform.h"

int vmm__kvm_platform_init(vmm_vm_t *vm, struct vmm_kvm_vm *k) {
  (void)vm;
  static const struct {
    int cap;
    const char *name;
  } needed[] = {
      {KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"},
      {KVM_CAP_PIT2, "KVM_CAP_PIT2"},
      {KVM_CAP_IRQ_INJECT_STATUS, "KVM_CAP_IRQ_INJECT_STATUS"},
  };
  for (size_t i = 0; i < VMM_ARRAY_SIZE(needed); i++) {
    if (ioctl(k->vm_fd, KVM_CHECK_EXTENSION, needed[i].cap) <= 0) {
      VMM_LOG_E("kvm: VMM_VM_IRQCHIP needs %s, which this KVM lacks", needed[i].name);
      return VMM_ENOSYS;
    }
  }
  if (ioctl(k->vm_fd, KVM_CREATE_IRQCHIP, 0) != 0) {
    int e = errno;
    VMM_LOG_E("kvm: KVM_CREATE_IRQCHIP failed: %s", strerror(e));
    return e == ENOMEM ? VMM_ENOMEM : VMM_EBACKEND;
  }
  /* The dummy speaker makes KVM answer port 0x61 too, which Linux polls while it calibrates
   * the TSC against PIT channel 2. */
  struct kvm_pit_config pit;
  memset(&pit, 0, sizeof(pit));
  pit.flags = KVM_PIT_SPEAKER_DUMMY;
  if (ioctl(k->vm_fd, KVM_CREATE_PIT2, &pit) != 0) {
    int e = errno;
    VMM_LOG_E("kvm: KVM_CREATE_PIT2 failed: %s", strerror(e));
    return e == ENOMEM ? VMM_ENOMEM : VMM_EBACKEND;
  }
  k->has_irqchip = true;
  return 0;
}
