/* Benchmark guest: dirties 256 pages (1 MiB) starting at 16 MiB, then reports a checkpoint;
 * again and again. */
#include "vmm_guest.h"

#define HC_CHECKPOINT (VMM_HC_USER_BASE + 0)

int main(struct vmm_boot_info *bi) {
  (void)bi;
  for (uint64_t round = 1;; round++) {
    for (uint64_t p = 0; p < 256; p++) *(volatile uint64_t *)(0x1000000 + p * 4096) = round + p;
    vmm_hypercall1(HC_CHECKPOINT, round);
  }
}
