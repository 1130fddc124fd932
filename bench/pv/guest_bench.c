/* Guest of bench_pv: round trips of hypercalls and trapped port I/O, in batches that the host
 * times with a marker hypercall between them. The command line is "<mode> <iters> <batches>";
 * mode is hc, out, in or first (return at once: VM creation latency). */
#include "vmm_guest.h"

#define HC_MARK (VMM_HC_USER_BASE + 1)
#define BENCH_PORT 0x510

static uint64_t number(const char **p) {
  while (**p == ' ') (*p)++;
  uint64_t v = 0;
  while (**p >= '0' && **p <= '9') v = v * 10 + (uint64_t)(*(*p)++ - '0');
  return v;
}

int main(struct vmm_boot_info *bi) {
  const char *cmd = (const char *)(uintptr_t)bi->cmdline;
  vmm_hypercall0(HC_MARK);
  char mode = cmd[0];
  while (*cmd && *cmd != ' ') cmd++;
  uint64_t iters = number(&cmd), batches = number(&cmd);
  for (uint64_t b = 0; b < batches; b++) {
    switch (mode) {
      case 'h':
        for (uint64_t i = 0; i < iters; i++) vmm_hypercall0(VMM_HC_NOP);
        break;
      case 'o':
        for (uint64_t i = 0; i < iters; i++) outb(BENCH_PORT, (uint8_t)i);
        break;
      case 'i':
        for (uint64_t i = 0; i < iters; i++) (void)inb(BENCH_PORT);
        break;
      default: break;
    }
    vmm_hypercall0(HC_MARK);
  }
  return 0;
}
