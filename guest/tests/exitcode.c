/* Ends through the isa-debug-exit port when the command line says "port", else through the
 * exit hypercall, with a fixed status. */
#include "vmm_guest.h"

int main(struct vmm_boot_info *bi) {
  const char *cmd = bi ? (const char *)(uintptr_t)bi->cmdline : "";
  if (strcmp(cmd, "port") == 0) {
    outb(VMM_DEBUG_EXIT_PORT, 0x21);
    return 99;
  }
  vmm_exit(42);
}
