/* Fuzz target for the snapshot file loader: the input is a snapshot file. It is written to a
 * private directory and loaded; a file that loads is read back through the API. Parent
 * references resolve in that directory (where only the input itself lives) or to absolute
 * paths, which the loader must refuse unless they are real snapshot files.
 *
 * Built with libFuzzer (`make fuzz`) and as a plain program that replays files (ctest), or
 * with --make-corpus DIR writes the seed corpus from mock VMs. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/internal.h"
#include "mock_backend.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int last_rc;
static char dir[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (dir[0] == 0) {
    snprintf(dir, sizeof(dir), "/tmp/vmm-fuzz-snapshot-XXXXXX");
    if (mkdtemp(dir) == NULL) abort();
  }
  char path[128];
  snprintf(path, sizeof(path), "%s/input.snap", dir);
  FILE *f = fopen(path, "wb");
  if (f == NULL) abort();
  if (size && fwrite(data, 1, size, f) != size) abort();
  fclose(f);
  vmm_snapshot_t *s = NULL;
  last_rc = vmm_snapshot_load(path, &s);
  if (last_rc == 0) {
    vmm_snapshot_info_t info = VMM_SNAPSHOT_INFO_INIT;
    if (vmm_snapshot_info(s, &info) != 0) abort();
    vmm_ram_region_t r[64];
    size_t n = 0;
    vmm_snapshot_ram_regions(s, r, 64, &n);
    uint8_t page[4096];
    for (size_t i = 0; i < n && i < 64; i++) {
      if (vmm_snapshot_read(s, r[i].gpa, page, sizeof(page)) != 0) abort();
      if (vmm_snapshot_read(s, r[i].gpa + r[i].size - sizeof(page), page, sizeof(page)) != 0) abort();
    }
    for (uint32_t i = 0; i < info.vcpus; i++) {
      vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
      if (vmm_snapshot_cpu_state(s, i, &st) != 0) abort();
    }
  } else if (s != NULL) {
    abort(); /* A refused file must leave nothing behind. */
  }
  vmm_snapshot_release(s);
  unlink(path);
  return 0;
}

#ifndef VMM_LIBFUZZER
/* Seeds: a full snapshot with a UART holding input, a diff over it, and a snapshot whose
 * pages include runs long enough to span several chunks. */
static int make_corpus(const char *out) {
  vmm_vm_t *vm = mock_vm_create(512u << 10);
  vmm_vcpu_t *v;
  vmm_uart_config_t u = VMM_UART_CONFIG_INIT;
  vmm_device_t *uart;
  if (!vm || vmm_vcpu_create(vm, 0, &v) || vmm_uart_create(vm, &u, &uart)) return 1;
  size_t acc;
  vmm_uart_input(uart, "seed", 4, &acc);
  uint8_t data[3 * 4096];
  for (size_t i = 0; i < sizeof(data); i++) data[i] = (uint8_t)(i * 13 + 1);
  vmm_vm_write(vm, 0x10000, data, sizeof(data));
  mock_vcpu_of(v)->state.regs.rip = 0x100000;
  vmm_snapshot_t *a, *b;
  char pa[512], pb[512];
  snprintf(pa, sizeof(pa), "%s/full.snap", out);
  snprintf(pb, sizeof(pb), "%s/diff.snap", out);
  if (vmm_vm_snapshot(vm, &a) || vmm_snapshot_set_name(a, "seed") || vmm_snapshot_save(a, pa, 0)) return 1;
  uint8_t zero[4096] = {0};
  vmm_vm_write(vm, 0x11000, zero, sizeof(zero));
  vmm_vm_write(vm, 0x40000, data, 8);
  if (vmm_vm_snapshot(vm, &b) || vmm_snapshot_save(b, pb, 0)) return 1;
  /* The diff's parent is named full.snap; the fuzzer sees it alone, so also keep a full save. */
  snprintf(pb, sizeof(pb), "%s/diff-flat.snap", out);
  if (vmm_snapshot_save(b, pb, VMM_SNAPSHOT_SAVE_FULL)) return 1;
  vmm_snapshot_release(b);
  vmm_snapshot_release(a);
  vmm_vm_destroy(vm);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--make-corpus") == 0) return make_corpus(argv[2]);
  int n = 0;
  static uint8_t buf[16u << 20];
  for (int i = 1; i < argc; i++) {
    FILE *f = fopen(argv[i], "rb");
    if (f == NULL) {
      perror(argv[i]);
      return 1;
    }
    size_t len = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    LLVMFuzzerTestOneInput(buf, len);
    printf("%-60s %s\n", argv[i], vmm_err_name(last_rc));
    n++;
  }
  if (dir[0]) rmdir(dir);
  printf("fuzz_snapshot: %d inputs replayed\n", n);
  return 0;
}
#endif
