/* Stops with interrupts disabled: the run ends with a HLT exit. */
#include "vmm_guest.h"

int main(struct vmm_boot_info *bi) {
  (void)bi;
  vmm_puts("halting\n");
  __asm__ volatile("mov $0x484c54, %%eax\n\tcli\n\thlt" ::: "rax", "memory");
  vmm_puts("resumed after hlt\n");
  return 7;
}
