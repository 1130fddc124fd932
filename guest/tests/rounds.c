/* Rounds of page writes the host chooses, for roll back tests. At each HC_STOP the host may
 * snapshot or roll back; HC_SPEC then says which pages to write this round (first page,
 * count, value: bits 40-63, 20-39 and 0-19), and the guest writes value + i into the first
 * word of page first + i from 16 MiB up. A count of 0 ends the guest. */
#include "vmm_guest.h"

#define HC_STOP (VMM_HC_USER_BASE + 0)
#define HC_SPEC (VMM_HC_USER_BASE + 1)
#define AREA 0x1000000ull

int main(struct vmm_boot_info *bi) {
  (void)bi;
  for (;;) {
    vmm_hypercall0(HC_STOP);
    uint64_t spec = vmm_hypercall0(HC_SPEC);
    uint64_t first = spec >> 40, count = (spec >> 20) & 0xfffff, value = spec & 0xfffff;
    if (count == 0) return 0;
    for (uint64_t i = 0; i < count; i++)
      *(volatile uint64_t *)(AREA + (first + i) * 4096) = value + i;
  }
}
