/* Handler registries and the run loop's dispatch: what handlers consume never reaches the
 * caller, what they leave does, and completions carry the right data back to the backend. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "mock_backend.h"

struct fixture {
  vmm_vm_t *vm;
  vmm_vcpu_t *vcpu;
};

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof(*f));
  f->vm = mock_vm_create(1 << 20);
  assert_non_null(f->vm);
  assert_int_equal(vmm_vcpu_create(f->vm, 0, &f->vcpu), 0);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  vmm_vm_destroy(f->vm);
  free(f);
  return 0;
}

struct io_log {
  uint64_t offsets[16];
  uint64_t values[16];
  int writes[16];
  int n;
  uint64_t reply;
  int ret;
  int handle_first; /* > 0: the first handle_first calls return VMM_HANDLED, then `ret`. */
};

static int log_io(vmm_vcpu_t *vcpu, uint64_t offset, uint32_t size, int is_write, uint64_t *data,
                  void *ud) {
  (void)vcpu, (void)size;
  struct io_log *l = ud;
  if (l->n < 16) {
    l->offsets[l->n] = offset;
    l->values[l->n] = *data;
    l->writes[l->n] = is_write;
  }
  l->n++;
  if (!is_write) *data = l->reply;
  if (l->handle_first > 0) return l->n <= l->handle_first ? VMM_HANDLED : l->ret;
  return l->ret;
}

static void test_pio_overlap_returns_eexist(void **state) {
  struct fixture *f = *state;
  struct io_log l = {0};
  vmm_handler_t *h1, *h2 = (vmm_handler_t *)1;
  assert_int_equal(vmm_vm_add_pio_handler(f->vm, 0x3f8, 8, log_io, &l, &h1), 0);
  assert_int_equal(vmm_vm_add_pio_handler(f->vm, 0x3ff, 2, log_io, &l, &h2), VMM_EEXIST);
  assert_null(h2);
  assert_int_equal(vmm_vm_add_pio_handler(f->vm, 0x3f0, 9, log_io, &l, &h2), VMM_EEXIST);
  assert_int_equal(vmm_vm_add_pio_handler(f->vm, 0x3f0, 8, log_io, &l, &h2), 0);
  assert_int_equal(vmm_vm_add_pio_handler(f->vm, 0xffff, 2, log_io, &l, NULL), VMM_EINVAL);
  assert_int_equal(vmm_vm_add_pio_handler(f->vm, 0x10, 0, log_io, &l, NULL), VMM_EINVAL);
  assert_int_equal(vmm_vm_add_pio_handler(f->vm, 0x10, 1, NULL, &l, NULL), VMM_EINVAL);
  assert_int_equal(vmm_vm_remove_handler(f->vm, h1), 0);
  assert_int_equal(vmm_vm_remove_handler(f->vm, h2), 0);
  /* Removed handlers are gone: the range is free again. */
  assert_int_equal(vmm_vm_add_pio_handler(f->vm, 0x3f8, 8, log_io, &l, &h1), 0);
  assert_int_equal(vmm_vm_remove_handler(NULL, h1), VMM_EINVAL);
}

static void test_mmio_overlapping_ram_returns_eexist(void **state) {
  struct fixture *f = *state;
  struct io_log l = {0};
  assert_int_equal(vmm_vm_add_mmio_handler(f->vm, 0xff000, 0x2000, log_io, &l, NULL), VMM_EEXIST);
  assert_int_equal(vmm_vm_add_mmio_handler(f->vm, 0x100000, 0x1000, log_io, &l, NULL), 0);
  /* And RAM may not be mapped over a handler. */
  assert_int_equal(vmm_vm_map_ram(f->vm, 0x100000, 0x1000, 0, NULL), VMM_EEXIST);
  assert_int_equal(vmm_vm_add_mmio_handler(f->vm, ~0ull - 10, 100, log_io, &l, NULL), VMM_EINVAL);
}

static void test_handled_io_never_reaches_caller(void **state) {
  struct fixture *f = *state;
  struct io_log l = {.reply = 0x1234, .ret = VMM_HANDLED};
  assert_int_equal(vmm_vm_add_pio_handler(f->vm, 0x500, 4, log_io, &l, NULL), 0);
  vmm_exit_t e = mock_io_exit(0x502, 1, 1, 0xffffff77); /* Write: only the low byte is the value. */
  mock_push_exit(f->vcpu, &e);
  e = mock_io_exit(0x501, 2, 0, 0);
  mock_push_exit(f->vcpu, &e);
  vmm_exit_t out;
  memset(&out, 0, sizeof(out));
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_HLT); /* Both IO exits were consumed. */
  assert_int_equal(l.n, 2);
  assert_int_equal(l.offsets[0], 2);
  assert_int_equal(l.values[0], 0x77);
  assert_int_equal(l.writes[0], 1);
  assert_int_equal(l.offsets[1], 1);
  assert_int_equal(l.values[1], 0xffff); /* Reads start as all-ones. */
  /* The completion handed to the backend carries the handler's reply. */
  struct mock_vcpu *m = mock_vcpu_of(f->vcpu);
  assert_int_equal(m->ncompleted, 3);
  assert_int_equal(m->completed[2].reason, VMM_EXIT_IO);
  assert_int_equal(m->completed[2].io.data, 0x1234);
}

static void test_unhandled_read_takes_value_from_caller(void **state) {
  struct fixture *f = *state;
  vmm_exit_t e = mock_io_exit(0x5ff, 1, 0, 0xff);
  mock_push_exit(f->vcpu, &e);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_IO);
  assert_int_equal(out.io.port, 0x5ff);
  assert_int_equal(out.io.is_write, 0);
  out.io.data = 0x42;
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_HLT);
  struct mock_vcpu *m = mock_vcpu_of(f->vcpu);
  assert_int_equal(m->completed[1].io.data, 0x42);
}

static void test_handler_returning_unhandled_passes_exit(void **state) {
  struct fixture *f = *state;
  struct io_log l = {.ret = VMM_UNHANDLED};
  assert_int_equal(vmm_vm_add_pio_handler(f->vm, 0x60, 1, log_io, &l, NULL), 0);
  vmm_exit_t e = mock_io_exit(0x60, 1, 1, 5);
  mock_push_exit(f->vcpu, &e);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_IO);
  assert_int_equal(l.n, 1);
}

static void test_pio_access_past_window_is_not_the_handlers(void **state) {
  struct fixture *f = *state;
  struct io_log l = {.ret = VMM_HANDLED};
  assert_int_equal(vmm_vm_add_pio_handler(f->vm, 0x80, 2, log_io, &l, NULL), 0);
  vmm_exit_t e = mock_io_exit(0x81, 4, 1, 5); /* Ports 0x81..0x84: only 0x81 is the handler's. */
  mock_push_exit(f->vcpu, &e);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_IO);
  assert_int_equal(l.n, 0);
}

static void test_handler_error_ends_run_with_code(void **state) {
  struct fixture *f = *state;
  struct io_log l = {.ret = VMM_EIO};
  assert_int_equal(vmm_vm_add_pio_handler(f->vm, 0x60, 1, log_io, &l, NULL), 0);
  vmm_exit_t e = mock_io_exit(0x60, 1, 1, 5);
  mock_push_exit(f->vcpu, &e);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), VMM_EIO);
}

/* Queues a string I/O exit of `count` one-byte elements at `port` over `buf`. */
static void push_string_io(vmm_vcpu_t *vcpu, uint16_t port, int is_write, uint8_t *buf,
                           uint32_t count) {
  vmm_exit_t e = mock_io_exit(port, 1, is_write, 0);
  e.io.count = count;
  e.io.buf = buf;
  mock_push_exit(vcpu, &e);
}

static void test_string_io_dispatches_every_element(void **state) {
  struct fixture *f = *state;
  struct io_log l = {.reply = 0xab, .ret = VMM_HANDLED};
  assert_int_equal(vmm_vm_add_pio_handler(f->vm, 0x70, 1, log_io, &l, NULL), 0);
  uint8_t buf[3] = {1, 2, 3};
  push_string_io(f->vcpu, 0x70, 1, buf, 3);
  uint8_t in[4] = {0, 0, 0, 0};
  push_string_io(f->vcpu, 0x70, 0, in, 4);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_HLT);
  assert_int_equal(l.n, 7);
  assert_int_equal(l.values[2], 3);
  for (int i = 0; i < 4; i++) assert_int_equal(in[i], 0xab);
}

/* A handler that takes two elements of a string and declines the third: the string ends
 * there as at an absent device, and the caller never gets the elements the handler took. */
static void test_string_io_declined_part_way(void **state) {
  struct fixture *f = *state;
  struct io_log l = {.reply = 0xab, .ret = VMM_UNHANDLED, .handle_first = 2};
  assert_int_equal(vmm_vm_add_pio_handler(f->vm, 0x70, 1, log_io, &l, NULL), 0);
  uint8_t out_buf[4] = {1, 2, 3, 4};
  push_string_io(f->vcpu, 0x70, 1, out_buf, 4);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_HLT);
  assert_int_equal(l.n, 3);
  assert_int_equal(l.values[0], 1);
  assert_int_equal(l.values[1], 2);
  struct io_log r = {.reply = 0xab, .ret = VMM_UNHANDLED, .handle_first = 2};
  assert_int_equal(vmm_vm_add_pio_handler(f->vm, 0x71, 1, log_io, &r, NULL), 0);
  uint8_t in[4] = {0, 0, 0, 0};
  push_string_io(f->vcpu, 0x71, 0, in, 4);
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_HLT);
  assert_int_equal(in[0], 0xab);
  assert_int_equal(in[1], 0xab);
  assert_int_equal(in[2], 0xff);
  assert_int_equal(in[3], 0xff);
  /* Declining the first element still hands the whole string to the caller. */
  struct io_log d = {.ret = VMM_UNHANDLED};
  assert_int_equal(vmm_vm_add_pio_handler(f->vm, 0x72, 1, log_io, &d, NULL), 0);
  push_string_io(f->vcpu, 0x72, 1, out_buf, 4);
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_IO);
  assert_int_equal(out.io.count, 4);
  assert_int_equal(d.n, 1);
}

static vmm_exit_t hc_exit(uint64_t nr, uint64_t a0, uint64_t a1) {
  vmm_exit_t e;
  memset(&e, 0, sizeof(e));
  e.reason = VMM_EXIT_HYPERCALL;
  e.hypercall.nr = nr;
  e.hypercall.args[0] = a0;
  e.hypercall.args[1] = a1;
  e.hypercall.result = (uint64_t)(int64_t)VMM_ENOSYS;
  return e;
}

static char console[256];
static size_t console_len;
static void console_sink(const char *d, size_t n, void *ud) {
  (void)ud;
  memcpy(console + console_len, d, n);
  console_len += n;
}

static void test_builtin_hypercalls(void **state) {
  struct fixture *f = *state;
  console_len = 0;
  assert_int_equal(vmm_vm_set_console(f->vm, console_sink, NULL), 0);
  assert_int_equal(vmm_vm_write(f->vm, 0x2000, "hi there", 8), 0);
  vmm_exit_t e = hc_exit(VMM_HC_CONSOLE_WRITE, 0x2000, 8);
  mock_push_exit(f->vcpu, &e);
  e = hc_exit(VMM_HC_CONSOLE_WRITE, (1 << 20) - 4, 100); /* Runs off the end of RAM. */
  mock_push_exit(f->vcpu, &e);
  e = hc_exit(VMM_HC_CONSOLE_WRITE, 0x40000000, 4); /* Not RAM at all. */
  mock_push_exit(f->vcpu, &e);
  e = hc_exit(VMM_HC_NOP, 0, 0);
  mock_push_exit(f->vcpu, &e);
  e = hc_exit(VMM_HC_BACKEND, 0, 0);
  mock_push_exit(f->vcpu, &e);
  e = hc_exit(VMM_HC_EXIT, 42, 0);
  mock_push_exit(f->vcpu, &e);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_GUEST_EXIT);
  assert_int_equal(out.guest_exit.status, 42);
  assert_int_equal(console_len, 12);
  assert_memory_equal(console, "hi there", 8);
  struct mock_vcpu *m = mock_vcpu_of(f->vcpu);
  assert_int_equal(m->completed[1].hypercall.result, 8);
  assert_int_equal(m->completed[2].hypercall.result, 4);
  assert_int_equal((int64_t)m->completed[3].hypercall.result, VMM_EFAULT);
  assert_int_equal(m->completed[4].hypercall.result, 0);
  assert_int_equal(m->completed[5].hypercall.result, VMM_BACKEND_BT);
}

static int hc_double(vmm_vcpu_t *vcpu, uint64_t nr, const uint64_t args[6], uint64_t *result,
                     void *ud) {
  (void)vcpu, (void)nr;
  (*(int *)ud)++;
  *result = args[0] * 2;
  return VMM_HANDLED;
}

static void test_user_hypercall_handler_and_unknown_numbers(void **state) {
  struct fixture *f = *state;
  int calls = 0;
  vmm_handler_t *h;
  assert_int_equal(vmm_vm_add_hypercall_handler(f->vm, 70, hc_double, &calls, &h), 0);
  assert_int_equal(vmm_vm_add_hypercall_handler(f->vm, 70, hc_double, &calls, NULL), VMM_EEXIST);
  assert_int_equal(vmm_vm_add_hypercall_handler(f->vm, VMM_HC_COUNT, hc_double, &calls, NULL),
                   VMM_EINVAL);
  vmm_exit_t e = hc_exit(70, 21, 0);
  mock_push_exit(f->vcpu, &e);
  e = hc_exit(71, 0, 0);
  mock_push_exit(f->vcpu, &e);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_HYPERCALL);
  assert_int_equal(out.hypercall.nr, 71);
  assert_int_equal(calls, 1);
  assert_int_equal(mock_vcpu_of(f->vcpu)->completed[1].hypercall.result, 42);
  out.hypercall.result = 7;
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(mock_vcpu_of(f->vcpu)->completed[2].hypercall.result, 7);
  assert_int_equal(vmm_vm_remove_handler(f->vm, h), 0);
  assert_int_equal(vmm_vm_remove_handler(f->vm, h), VMM_ENOENT);
}

static void test_handler_overrides_builtin(void **state) {
  struct fixture *f = *state;
  int calls = 0;
  assert_int_equal(vmm_vm_add_hypercall_handler(f->vm, VMM_HC_EXIT, hc_double, &calls, NULL), 0);
  vmm_exit_t e = hc_exit(VMM_HC_EXIT, 5, 0);
  mock_push_exit(f->vcpu, &e);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_HLT); /* The built-in exit did not run. */
  assert_int_equal(calls, 1);
}

static void test_mmio_dispatch_with_offset(void **state) {
  struct fixture *f = *state;
  struct io_log l = {.reply = 0x1122334455667788ull, .ret = VMM_HANDLED};
  assert_int_equal(vmm_vm_add_mmio_handler(f->vm, 0xd0000000, 0x1000, log_io, &l, NULL), 0);
  vmm_exit_t e;
  memset(&e, 0, sizeof(e));
  e.reason = VMM_EXIT_MMIO;
  e.mmio.gpa = 0xd0000010;
  e.mmio.size = 4;
  mock_push_exit(f->vcpu, &e);
  e.mmio.gpa = 0xd0000ffc; /* 8 bytes would cross the end of the window: not this handler's. */
  e.mmio.size = 8;
  mock_push_exit(f->vcpu, &e);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_MMIO);
  assert_int_equal(out.mmio.gpa, 0xd0000ffc);
  assert_int_equal(l.n, 1);
  assert_int_equal(l.offsets[0], 0x10);
  assert_int_equal(mock_vcpu_of(f->vcpu)->completed[1].mmio.data, 0x55667788); /* Truncated. */
}

static int stop_io(vmm_vcpu_t *vcpu, uint64_t offset, uint32_t size, int is_write, uint64_t *data,
                   void *ud) {
  (void)offset, (void)size, (void)is_write, (void)ud;
  vmm_vcpu_request_exit(vcpu, (int64_t)*data);
  return VMM_HANDLED;
}

static void test_request_exit_from_handler(void **state) {
  struct fixture *f = *state;
  assert_int_equal(vmm_vm_add_pio_handler(f->vm, 0xf4, 1, stop_io, NULL, NULL), 0);
  vmm_exit_t e = mock_io_exit(0xf4, 1, 1, 9);
  mock_push_exit(f->vcpu, &e);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_GUEST_EXIT);
  assert_int_equal(out.guest_exit.status, 9);
  /* The next run resumes normally. */
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_HLT);
}

static void test_kick_and_stats(void **state) {
  struct fixture *f = *state;
  assert_int_equal(vmm_vcpu_kick(f->vcpu), 0);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_KICKED);
  assert_int_equal(vmm_vcpu_kick(NULL), VMM_EINVAL);
  vmm_stat_t st[32];
  size_t n;
  assert_int_equal(vmm_vcpu_stats(f->vcpu, st, 32, &n), 0);
  int found = 0;
  for (size_t i = 0; i < n && i < 32; i++) {
    if (strcmp(st[i].name, "exits.KICKED") == 0) {
      assert_int_equal(st[i].value, 1);
      found |= 1;
    }
    if (strcmp(st[i].name, "mock.runs") == 0) found |= 2;
  }
  assert_int_equal(found, 3);
  size_t n2;
  assert_int_equal(vmm_vcpu_stats(f->vcpu, NULL, 0, &n2), 0);
  assert_int_equal(n2, n);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_pio_overlap_returns_eexist, setup, teardown),
      cmocka_unit_test_setup_teardown(test_mmio_overlapping_ram_returns_eexist, setup, teardown),
      cmocka_unit_test_setup_teardown(test_handled_io_never_reaches_caller, setup, teardown),
      cmocka_unit_test_setup_teardown(test_unhandled_read_takes_value_from_caller, setup, teardown),
      cmocka_unit_test_setup_teardown(test_handler_returning_unhandled_passes_exit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_handler_error_ends_run_with_code, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pio_access_past_window_is_not_the_handlers, setup, teardown),
      cmocka_unit_test_setup_teardown(test_string_io_dispatches_every_element, setup, teardown),
      cmocka_unit_test_setup_teardown(test_string_io_declined_part_way, setup, teardown),
      cmocka_unit_test_setup_teardown(test_builtin_hypercalls, setup, teardown),
      cmocka_unit_test_setup_teardown(test_user_hypercall_handler_and_unknown_numbers, setup, teardown),
      cmocka_unit_test_setup_teardown(test_handler_overrides_builtin, setup, teardown),
      cmocka_unit_test_setup_teardown(test_mmio_dispatch_with_offset, setup, teardown),
      cmocka_unit_test_setup_teardown(test_request_exit_from_handler, setup, teardown),
      cmocka_unit_test_setup_teardown(test_kick_and_stats, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
