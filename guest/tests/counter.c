/* Deterministic work with checkpoints, for snapshot tests: a counter and a running hash in
 * memory, a checkpoint hypercall every 1000 steps (the host may snapshot there), and a branch
 * hypercall whose answer, chosen by the host, steers the rest of the run. */
#include "vmm_guest.h"

#define HC_CHECKPOINT (VMM_HC_USER_BASE + 0)
#define HC_BRANCH (VMM_HC_USER_BASE + 1)
#define STEPS 5000

static volatile uint64_t counter;
static uint64_t table[512]; /* Spans a few pages, written as the run goes. */

int main(struct vmm_boot_info *bi) {
  (void)bi;
  uint64_t hash = 1469598103934665603ull;
  uint64_t branch = 0;
  for (uint64_t i = 1; i <= STEPS; i++) {
    counter++;
    hash = (hash ^ (counter * 0x9e3779b97f4a7c15ull)) * 1099511628211ull;
    table[(hash >> 7) % 512] += hash;
    if (i % 1000 == 0) {
      vmm_hypercall1(HC_CHECKPOINT, i);
      branch = vmm_hypercall0(HC_BRANCH);
      hash ^= branch << 32;
    }
  }
  uint64_t sum = 0;
  for (int k = 0; k < 512; k++) sum += table[k] * (uint64_t)(k + 1);
  vmm_printf("counter=%lu hash=%016lx sum=%016lx\n", counter, hash, sum);
  return (int)(hash & 0x7f);
}
