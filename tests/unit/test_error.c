/* Status table, version and exit-reason names. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <libvmm/vmm.h>

static void test_strerror_covers_every_code(void **state) {
  (void)state;
#define CHECK(name, value, msg)                          \
  assert_int_equal(VMM_##name, value);                   \
  assert_string_equal(vmm_strerror(VMM_##name), msg);    \
  assert_string_equal(vmm_err_name(VMM_##name), #name);
  VMM_ERRNO_MAP(CHECK)
#undef CHECK
}

static void test_strerror_unknown_and_success(void **state) {
  (void)state;
  assert_string_equal(vmm_strerror(0), "success");
  assert_string_equal(vmm_err_name(0), "OK");
  assert_string_equal(vmm_strerror(-9999), "unknown error");
  assert_string_equal(vmm_err_name(12345), "UNKNOWN");
}

static void test_codes_are_distinct_and_negative(void **state) {
  (void)state;
  int codes[] = {
#define CODE(name, value, msg) VMM_##name,
      VMM_ERRNO_MAP(CODE)
#undef CODE
  };
  size_t n = sizeof(codes) / sizeof(codes[0]);
  for (size_t i = 0; i < n; i++) {
    assert_true(codes[i] < 0);
    for (size_t j = i + 1; j < n; j++) assert_int_not_equal(codes[i], codes[j]);
  }
}

static void test_version_matches_headers(void **state) {
  (void)state;
  assert_int_equal(vmm_version(), VMM_VERSION_HEX);
  char buf[32];
  snprintf(buf, sizeof(buf), "%d.%d.%d", VMM_VERSION_MAJOR, VMM_VERSION_MINOR, VMM_VERSION_PATCH);
  assert_string_equal(vmm_version_string(), buf);
}

static void test_exit_reason_names(void **state) {
  (void)state;
  assert_string_equal(vmm_exit_reason_name(VMM_EXIT_HLT), "HLT");
  assert_string_equal(vmm_exit_reason_name(VMM_EXIT_GUEST_EXIT), "GUEST_EXIT");
  assert_string_equal(vmm_exit_reason_name(1000), "UNKNOWN");
}

static void test_backend_names_round_trip(void **state) {
  (void)state;
  const vmm_backend_t all[] = {VMM_BACKEND_AUTO, VMM_BACKEND_KVM, VMM_BACKEND_BT, VMM_BACKEND_PV};
  for (size_t i = 0; i < 4; i++) {
    vmm_backend_t b;
    assert_int_equal(vmm_backend_parse(vmm_backend_name(all[i]), &b), 0);
    assert_int_equal(b, all[i]);
  }
  vmm_backend_t b;
  assert_int_equal(vmm_backend_parse("xen", &b), VMM_EINVAL);
  assert_int_equal(vmm_backend_parse(NULL, &b), VMM_EINVAL);
  assert_string_equal(vmm_backend_name((vmm_backend_t)42), "unknown");
  assert_int_equal(vmm_backend_probe((vmm_backend_t)42), VMM_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_strerror_covers_every_code),
      cmocka_unit_test(test_strerror_unknown_and_success),
      cmocka_unit_test(test_codes_are_distinct_and_negative),
      cmocka_unit_test(test_version_matches_headers),
      cmocka_unit_test(test_exit_reason_names),
      cmocka_unit_test(test_backend_names_round_trip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
