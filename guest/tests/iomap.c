/* Run with --cpl 3 and IOPL 0 (the test harness clears it): port I/O is then allowed by the
 * TSS's I/O permission bitmap alone. The guest prints through the debug console, denies
 * itself that port in the bitmap (the start state's page tables let CPL3 write the TSS), and
 * the next OUT to it must raise #GP. */
#include "vmm_guest.h"

static unsigned read_iopl(void) {
  uint64_t f;
  __asm__ volatile("pushfq; popq %0" : "=r"(f));
  return (unsigned)(f >> 12) & 3;
}

int main(struct vmm_boot_info *bi) {
  (void)bi;
  if ((vmm_read_cs() & 3) != 3) return 3;
  volatile uint8_t *tss = (volatile uint8_t *)VMM_TSS_GPA;
  uint16_t map = (uint16_t)(tss[102] | tss[103] << 8);
  vmm_printf("iopl %u, bitmap at 0x%x\n", read_iopl(), map);
  outb(VMM_DEBUGCON_PORT, 'o');
  outb(VMM_DEBUGCON_PORT, 'k');
  outb(VMM_DEBUGCON_PORT, '\n');
  tss[map + VMM_DEBUGCON_PORT / 8] |= (uint8_t)(1u << (VMM_DEBUGCON_PORT % 8));
  __asm__ volatile("lea 1f(%%rip), %%rbx\n1:\toutb %%al, %0" ::"i"(VMM_DEBUGCON_PORT), "a"('X')
                   : "rbx", "memory");
  return 4;
}
