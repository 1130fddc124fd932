/* Prints a greeting and the boot information through the console hypercall. */
#include "vmm_guest.h"

int main(struct vmm_boot_info *bi) {
  vmm_puts("Hello from a libvmm guest!\n");
  if (bi) vmm_printf("ram=%lu MiB cpl=%u\n", (unsigned long)(bi->ram_size >> 20), bi->cpl);
  return 0;
}
