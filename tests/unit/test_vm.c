/* VM creation, config versioning, the memory map, host access and dirty logs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "mock_backend.h"

static void test_create_with_ram_maps_region_at_zero(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(1 << 20);
  assert_non_null(vm);
  vmm_ram_region_t r[4];
  size_t n = 0;
  assert_int_equal(vmm_vm_ram_regions(vm, r, 4, &n), 0);
  assert_int_equal(n, 1);
  assert_int_equal(r[0].gpa, 0);
  assert_int_equal(r[0].size, 1 << 20);
  assert_int_equal(vmm_vm_backend(vm), VMM_BACKEND_BT);
  vmm_vm_destroy(vm);
}

static void test_config_struct_size_versioning(void **state) {
  (void)state;
  vmm_vm_t *vm = (vmm_vm_t *)0x1;
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.struct_size = 4; /* Older than the first published layout. */
  assert_int_equal(vmm_vm_create(&cfg, &vm), VMM_EINVAL);
  assert_null(vm);
  cfg = (vmm_vm_config_t)VMM_VM_CONFIG_INIT;
  cfg.backend = 99;
  assert_int_equal(vmm_vm_create(&cfg, &vm), VMM_EINVAL);
  assert_int_equal(vmm_vm_create(&cfg, NULL), VMM_EINVAL);
}

static void test_create_rejects_bad_flags_and_sizes(void **state) {
  (void)state;
  vmm_vm_t *vm = NULL;
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.flags = 0x80;
  assert_int_equal(vmm__vm_create_with_ops(&cfg, &mock_backend_ops, &vm), VMM_EINVAL);
  cfg.flags = 0;
  cfg.ram_size = 4097;
  assert_int_equal(vmm__vm_create_with_ops(&cfg, &mock_backend_ops, &vm), VMM_EINVAL);
  cfg.ram_size = 0;
  cfg.max_vcpus = 1000;
  assert_int_equal(vmm__vm_create_with_ops(&cfg, &mock_backend_ops, &vm), VMM_ERANGE);
  assert_null(vm);
}

static void test_map_ram_overlap_returns_eexist(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(0);
  assert_int_equal(vmm_vm_map_ram(vm, 0x100000, 0x100000, 0, NULL), 0);
  assert_int_equal(vmm_vm_map_ram(vm, 0x1ff000, 0x2000, 0, NULL), VMM_EEXIST);
  assert_int_equal(vmm_vm_map_ram(vm, 0x0ff000, 0x2000, 0, NULL), VMM_EEXIST);
  assert_int_equal(vmm_vm_map_ram(vm, 0x200000, 0x1000, 0, NULL), 0);
  assert_int_equal(vmm_vm_map_ram(vm, 0x0ff000, 0x1000, 0, NULL), 0);
  size_t n;
  vmm_ram_region_t r[8];
  assert_int_equal(vmm_vm_ram_regions(vm, r, 8, &n), 0);
  assert_int_equal(n, 3);
  assert_true(r[0].gpa < r[1].gpa && r[1].gpa < r[2].gpa);
  vmm_vm_destroy(vm);
}

static void test_map_ram_rejects_misalignment_and_flags(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(0);
  void *hva = (void *)1;
  assert_int_equal(vmm_vm_map_ram(vm, 0x1001, 0x1000, 0, &hva), VMM_EINVAL);
  assert_null(hva);
  assert_int_equal(vmm_vm_map_ram(vm, 0x1000, 0x1001, 0, NULL), VMM_EINVAL);
  assert_int_equal(vmm_vm_map_ram(vm, 0x1000, 0, 0, NULL), VMM_EINVAL);
  assert_int_equal(vmm_vm_map_ram(vm, 0x1000, 0x1000, 0x10, NULL), VMM_EINVAL);
  assert_int_equal(vmm_vm_map_ram(vm, ~0xfffull, 0x2000, 0, NULL), VMM_ERANGE);
  assert_int_equal(vmm_vm_map_ram(NULL, 0, 0x1000, 0, NULL), VMM_EINVAL);
  vmm_vm_destroy(vm);
}

static void test_backend_failure_leaves_no_region(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(0);
  mock_vm_of(vm)->fail_region_add = true;
  assert_int_equal(vmm_vm_map_ram(vm, 0, 0x1000, 0, NULL), VMM_ELIMIT);
  size_t n = 99;
  assert_int_equal(vmm_vm_ram_regions(vm, NULL, 0, &n), 0);
  assert_int_equal(n, 0);
  vmm_vm_destroy(vm);
}

static void test_read_write_across_regions_and_holes(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(0);
  void *a, *b;
  assert_int_equal(vmm_vm_map_ram(vm, 0x0, 0x1000, 0, &a), 0);
  assert_int_equal(vmm_vm_map_ram(vm, 0x1000, 0x1000, 0, &b), 0);
  uint8_t buf[64];
  memset(buf, 0xab, sizeof(buf));
  /* Straddles two adjacent regions. */
  assert_int_equal(vmm_vm_write(vm, 0xfe0, buf, sizeof(buf)), 0);
  assert_int_equal(((uint8_t *)a)[0xfff], 0xab);
  assert_int_equal(((uint8_t *)b)[0x1f], 0xab);
  uint8_t back[64];
  assert_int_equal(vmm_vm_read(vm, 0xfe0, back, sizeof(back)), 0);
  assert_memory_equal(buf, back, sizeof(buf));
  /* Past the end of RAM, and wrapping. */
  assert_int_equal(vmm_vm_read(vm, 0x1fd0, back, sizeof(back)), VMM_EFAULT);
  assert_int_equal(vmm_vm_write(vm, ~0ull - 4, buf, 16), VMM_EFAULT);
  assert_int_equal(vmm_vm_read(vm, 0, NULL, 4), VMM_EINVAL);
  void *hva;
  assert_int_equal(vmm_vm_gpa_to_hva(vm, 0x1010, 16, &hva), 0);
  assert_ptr_equal(hva, (uint8_t *)b + 0x10);
  assert_int_equal(vmm_vm_gpa_to_hva(vm, 0xff0, 32, &hva), VMM_EFAULT); /* Two regions. */
  vmm_vm_destroy(vm);
}

static void test_unmap_ram(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(0);
  assert_int_equal(vmm_vm_map_ram(vm, 0x4000, 0x1000, 0, NULL), 0);
  assert_int_equal(vmm_vm_unmap_ram(vm, 0x5000), VMM_ENOENT);
  assert_int_equal(vmm_vm_unmap_ram(vm, 0x4000), 0);
  assert_int_equal(mock_vm_of(vm)->regions_removed, 1);
  uint8_t x = 0;
  assert_int_equal(vmm_vm_read(vm, 0x4000, &x, 1), VMM_EFAULT);
  vmm_vm_destroy(vm);
}

static void test_dirty_log_merges_backend_and_host_writes(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(1 << 20); /* 256 pages: 4 words. */
  uint64_t bm[4];
  assert_int_equal(vmm_vm_dirty_log_get(vm, 0, bm, sizeof(bm)), VMM_ESTATE);
  assert_int_equal(vmm_vm_dirty_log_enable(vm, 0x1000, 1), VMM_ENOENT);
  assert_int_equal(vmm_vm_dirty_log_enable(vm, 0, 1), 0);
  uint8_t one = 1;
  assert_int_equal(vmm_vm_write(vm, 5 * 4096 + 7, &one, 1), 0);   /* Host write: page 5. */
  uint8_t two[2] = {1, 1};
  assert_int_equal(vmm_vm_write(vm, 70 * 4096 - 1, two, 2), 0);   /* Pages 69 and 70. */
  mock_vm_of(vm)->dirty[2] = 1ull << 3;                            /* Guest write: page 131. */
  assert_int_equal(vmm_vm_dirty_log_get(vm, 0, bm, 8), VMM_ERANGE);
  assert_int_equal(vmm_vm_dirty_log_get(vm, 0, bm, sizeof(bm)), 0);
  assert_int_equal(bm[0], 1ull << 5);
  assert_int_equal(bm[1], (1ull << 5) | (1ull << 6));
  assert_int_equal(bm[2], 1ull << 3);
  assert_int_equal(bm[3], 0);
  /* Get clears. */
  assert_int_equal(vmm_vm_dirty_log_get(vm, 0, bm, sizeof(bm)), 0);
  assert_int_equal(bm[0] | bm[1] | bm[2] | bm[3], 0);
  vmm_vm_destroy(vm);
}

static void test_vcpu_create_index_checks(void **state) {
  (void)state;
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.max_vcpus = 2;
  vmm_vm_t *vm;
  assert_int_equal(vmm__vm_create_with_ops(&cfg, &mock_backend_ops, &vm), 0);
  vmm_vcpu_t *a, *b, *c = (vmm_vcpu_t *)1;
  assert_int_equal(vmm_vcpu_create(vm, 0, &a), 0);
  assert_int_equal(vmm_vcpu_create(vm, 1, &b), 0);
  assert_int_equal(vmm_vcpu_create(vm, 1, &c), VMM_EEXIST);
  assert_null(c);
  assert_int_equal(vmm_vcpu_create(vm, 2, &c), VMM_ERANGE);
  assert_int_equal(vmm_vcpu_index(b), 1);
  assert_ptr_equal(vmm_vcpu_vm(a), vm);
  vmm_vm_destroy(vm);
}

static void test_cpu_state_struct_size(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(0);
  vmm_vcpu_t *v;
  assert_int_equal(vmm_vcpu_create(vm, 0, &v), 0);
  vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
  assert_int_equal(vmm_vcpu_get_state(v, &st), 0);
  assert_int_equal(st.struct_size, sizeof(st));
  assert_int_equal(st.regs.rip, 0xfff0);
  st.regs.rax = 0x1234;
  assert_int_equal(vmm_vcpu_set_state(v, &st), 0);
  vmm_regs_t r;
  assert_int_equal(vmm_vcpu_get_regs(v, &r), 0);
  assert_int_equal(r.rax, 0x1234);
  st.struct_size = 64;
  assert_int_equal(vmm_vcpu_get_state(v, &st), VMM_EINVAL);
  assert_int_equal(vmm_vcpu_set_state(v, &st), VMM_EINVAL);
  assert_int_equal(vmm_vcpu_get_state(v, NULL), VMM_EINVAL);
  assert_int_equal(vmm_vcpu_set_single_step(v, 1), VMM_ENOSYS);
  vmm_vm_destroy(vm);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_create_with_ram_maps_region_at_zero),
      cmocka_unit_test(test_config_struct_size_versioning),
      cmocka_unit_test(test_create_rejects_bad_flags_and_sizes),
      cmocka_unit_test(test_map_ram_overlap_returns_eexist),
      cmocka_unit_test(test_map_ram_rejects_misalignment_and_flags),
      cmocka_unit_test(test_backend_failure_leaves_no_region),
      cmocka_unit_test(test_read_write_across_regions_and_holes),
      cmocka_unit_test(test_unmap_ram),
      cmocka_unit_test(test_dirty_log_merges_backend_and_host_writes),
      cmocka_unit_test(test_vcpu_create_index_checks),
      cmocka_unit_test(test_cpu_state_struct_size),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
