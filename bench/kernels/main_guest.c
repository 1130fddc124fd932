/* Guest flavor: the command line is "NAME [ITERATIONS]"; prints "NAME=CHECKSUM ns=NS"
 * through the console hypercall and exits with status 0. The guest-only kernel "hc" times
 * ITERATIONS no-op hypercalls. */
#include "kernels.h"
#include "vmm_guest.h"

uint64_t kern_now_ns(void) { return vmm_hypercall0(KERN_HC_CLOCK); }

static uint64_t parse_u64(const char *s) {
  uint64_t v = 0;
  while (*s >= '0' && *s <= '9') v = v * 10 + (uint64_t)(*s++ - '0');
  return v;
}

int main(struct vmm_boot_info *bi) {
  char name[16] = "int";
  const char *cmd = bi ? (const char *)(uintptr_t)bi->cmdline : "";
  unsigned n = 0;
  while (cmd[n] && cmd[n] != ' ' && n + 1 < sizeof(name)) {
    name[n] = cmd[n];
    n++;
  }
  if (n) name[n] = 0;
  uint64_t it = cmd[n] == ' ' ? parse_u64(cmd + n + 1) : 0;
  if (strcmp(name, "hc") == 0) {
    if (!it) it = 100000;
    uint64_t t0 = kern_now_ns(), r = 0;
    for (uint64_t k = 0; k < it; k++) r += vmm_hypercall0(VMM_HC_NOP);
    uint64_t t1 = kern_now_ns();
    vmm_printf("hc=%016lx ns=%016lx\n", r, t1 - t0);
    return 0;
  }
  for (unsigned i = 0; i < kern_count; i++) {
    if (strcmp(kern_table[i].name, name) != 0) continue;
    if (!it) it = kern_table[i].default_iterations;
    kern_table[i].fn(0); /* warm up: first-touch page faults and translation */
    uint64_t t0 = kern_now_ns();
    uint64_t r = kern_table[i].fn(it);
    uint64_t t1 = kern_now_ns();
    vmm_printf("%s=%016lx ns=%016lx\n", name, r, t1 - t0);
    return 0;
  }
  vmm_puts("unknown kernel\n");
  return 2;
}
