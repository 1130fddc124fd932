/* Divides by zero: #DE is reported as an exit; rbx holds the address of the DIV. */
#include "vmm_guest.h"

int main(struct vmm_boot_info *bi) {
  volatile uint64_t zero = bi ? 0 : 1;
  uint64_t q;
  __asm__ volatile("lea 1f(%%rip), %%rbx\n\txor %%edx, %%edx\n\tmov $1234, %%eax\n"
                   "1:\tdivq %1"
                   : "=a"(q)
                   : "r"(zero)
                   : "rbx", "rdx", "memory");
  vmm_printf("not reached %lu\n", q);
  return 1;
}
