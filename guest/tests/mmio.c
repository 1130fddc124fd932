/* MMIO: accesses to a handled window and to an address that is neither RAM nor handled. */
#include "vmm_guest.h"

#define MMIO_DEV 0xd0000000ull     /* Host handler: register file of 8 64-bit slots. */
#define MMIO_NOWHERE 0xe0000000ull /* Nothing there: the caller sees an MMIO exit. */

int main(struct vmm_boot_info *bi) {
  (void)bi;
  volatile uint64_t *dev = (volatile uint64_t *)MMIO_DEV;
  volatile uint32_t *dev32 = (volatile uint32_t *)MMIO_DEV;
  dev[1] = 0x1122334455667788ull;
  dev32[4] = 0xcafef00d;
  uint64_t a = dev[1];
  uint32_t b = dev32[4];
  uint64_t c = dev[7];
  volatile uint32_t *nowhere = (volatile uint32_t *)MMIO_NOWHERE;
  *nowhere = 0xdeadbeef;
  uint32_t d = *nowhere;
  vmm_printf("mmio a=%016lx b=%08x c=%016lx d=%08x\n", a, b, c, d);
  return 0;
}
