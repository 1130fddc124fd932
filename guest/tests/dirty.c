/* Writes one byte to each of a few known pages above 4 MiB, then exits: the dirty log must
 * show exactly those pages among the ones at 4-32 MiB. */
#include "vmm_guest.h"

int main(struct vmm_boot_info *bi) {
  (void)bi;
  static const unsigned pages[] = {0, 1, 5, 100, 1000};
  for (unsigned i = 0; i < sizeof(pages) / sizeof(pages[0]); i++) {
    volatile uint8_t *p = (volatile uint8_t *)(uintptr_t)(0x400000 + pages[i] * 4096ull + 123);
    *p = (uint8_t)(i + 1);
  }
  return 0;
}
