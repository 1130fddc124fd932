/* Fuzz target for the Linux loader: bzImage setup header, payload decompression (gzip, xz,
 * zstd, lz4), ELF vmlinux, zero page, initrd placement. Input: one flags byte (bit 0: the
 * kernel decompresses itself; bit 1: the last quarter is an initrd), then the kernel image.
 *
 * Built two ways: with libFuzzer (clang -fsanitize=fuzzer,address; `make fuzz`), and as a
 * plain program that runs files given on its command line once each, which ctest uses to
 * replay the seed corpus in every build (under ASan + UBSan in `make check-asan`). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mock_backend.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int last_rc;

static vmm_vm_t *fuzz_vm(void) {
  static vmm_vm_t *vm;
  if (vm == NULL) {
    /* Small RAM and a small kernel limit keep each input cheap; the checks are the same. */
    vm = mock_vm_create(48u << 20);
    if (vm == NULL) abort();
  }
  return vm;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  uint8_t flags = data[0];
  data++;
  size--;
  size_t initrd = (flags & 2) ? size / 4 : 0;
  vmm_linux_config_t c = VMM_LINUX_CONFIG_INIT;
  c.kernel = data;
  c.kernel_size = size - initrd;
  c.initrd = initrd ? data + size - initrd : NULL;
  c.initrd_size = initrd;
  c.flags = (flags & 1) ? VMM_LINUX_IN_KERNEL_DECOMPRESS : 0;
  c.cmdline = "console=ttyS0";
  c.max_kernel_size = 32u << 20;
  vmm_linux_info_t info = VMM_LINUX_INFO_INIT;
  int rc = vmm_linux_load(fuzz_vm(), &c, &info);
  last_rc = rc;
  if (rc == 0 && (info.kernel_start < VMM_LINUX_LOW_RESERVED_END || info.entry == 0)) abort();
  return 0;
}

#ifndef VMM_LIBFUZZER
int main(int argc, char **argv) {
  int n = 0;
  for (int i = 1; i < argc; i++) {
    FILE *f = fopen(argv[i], "rb");
    if (f == NULL) {
      perror(argv[i]);
      return 1;
    }
    static uint8_t buf[16u << 20];
    size_t len = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, len);
    printf("%-60s %s\n", argv[i], vmm_err_name(last_rc));
    n++;
  }
  printf("fuzz_linux: %d inputs replayed\n", n);
  return 0;
}
#endif
