/* Spins forever without exits: only a kick (or a timeout) stops it. */
#include "vmm_guest.h"

int main(struct vmm_boot_info *bi) {
  (void)bi;
  vmm_puts("spinning\n");
  volatile uint64_t n = 0;
  for (;;) n++;
}
