/* Asks the VMM for a snapshot in the middle of its work: what it prints after the snapshot
 * depends on memory and registers from before it, so a restored run shows whether both came
 * back. */
#include "vmm_guest.h"

static uint64_t acc[64];

int main(struct vmm_boot_info *bi) {
  (void)bi;
  uint64_t x = 12345;
  for (int i = 0; i < 64; i++) acc[i] = x = x * 6364136223846793005ull + 1442695040888963407ull;
  vmm_puts("before snapshot\n");
  vmm_hypercall0(VMM_HC_SNAPSHOT);
  uint64_t sum = 0;
  for (int i = 0; i < 64; i++) sum ^= acc[i] >> (i % 13);
  vmm_printf("after snapshot: %016lx %016lx\n", sum, x);
  return 5;
}
