/* Writes one byte to each of a few known pages above 4 MiB, stops at a hypercall (the host
 * reads the log there), writes the same pages again, then exits: each round's log must show
 * exactly those pages among the ones at 4-32 MiB. The second round checks that reading the
 * log made the pages log their next write again. */
#include "vmm_guest.h"

#define HC_ROUND (VMM_HC_USER_BASE + 7)

int main(struct vmm_boot_info *bi) {
  (void)bi;
  static const unsigned pages[] = {0, 1, 5, 100, 1000};
  for (unsigned round = 0; round < 2; round++) {
    for (unsigned i = 0; i < sizeof(pages) / sizeof(pages[0]); i++) {
      volatile uint8_t *p = (volatile uint8_t *)(uintptr_t)(0x400000 + pages[i] * 4096ull + 123);
      *p = (uint8_t)(round * 16 + i + 1);
    }
    if (round == 0) vmm_hypercall0(HC_ROUND);
  }
  return 0;
}
