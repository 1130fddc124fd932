/* Run with --cpl 3: reports its privilege level, uses port I/O (IOPL 3) and the console, then
 * tries HLT, which user mode may not execute: the #GP is reported as an exit. */
#include "vmm_guest.h"

int main(struct vmm_boot_info *bi) {
  unsigned cpl = vmm_read_cs() & 3;
  vmm_printf("running at cpl %u (boot info says %u)\n", cpl, bi ? bi->cpl : 99);
  outb(VMM_DEBUGCON_PORT, 'o');
  outb(VMM_DEBUGCON_PORT, 'k');
  outb(VMM_DEBUGCON_PORT, '\n');
  if (cpl != 3) return 3;
  __asm__ volatile("lea 1f(%%rip), %%rbx\n1:\thlt" ::: "rbx", "memory");
  return 4;
}
