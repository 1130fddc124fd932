/* Executes UD2: the exception is reported as an exit with the faulting address in rbx. */
#include "vmm_guest.h"

int main(struct vmm_boot_info *bi) {
  (void)bi;
  vmm_puts("before ud2\n");
  __asm__ volatile("lea 1f(%%rip), %%rbx\n1:\tud2" ::: "rbx", "memory");
  vmm_puts("not reached\n");
  return 1;
}
