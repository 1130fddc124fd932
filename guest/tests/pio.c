/* Port I/O: writes to a port the host handles, reads values back, and uses a port no handler
 * owns (the host sees an IO exit and supplies the value). */
#include "vmm_guest.h"

#define PORT_ECHO 0x500   /* Host handler: a write stores, a read returns stored + 1. */
#define PORT_NOBODY 0x5ff /* No handler: reaches the caller of vmm_vcpu_run(). */

int main(struct vmm_boot_info *bi) {
  (void)bi;
  uint32_t sum = 0;
  for (uint32_t i = 0; i < 16; i++) {
    outl(PORT_ECHO, i * 1000);
    sum += inl(PORT_ECHO);
  }
  outb(PORT_NOBODY, 0x5a);
  uint8_t v = inb(PORT_NOBODY);
  vmm_printf("pio sum=%u nobody=%02x\n", sum, v);
  return 0;
}
