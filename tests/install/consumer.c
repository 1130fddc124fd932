/* A program built against an installed libvmm, with pkg-config or CMake. */
#include <stdio.h>

#include <libvmm/vmm.h>

int main(void) {
  if (vmm_version() != VMM_VERSION_HEX) {
    printf("header/library version mismatch\n");
    return 1;
  }
  printf("libvmm %s: %s\n", vmm_version_string(), vmm_strerror(VMM_ENODEV));
  return 0;
}
