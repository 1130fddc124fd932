/* Device models through the run loop: 16550A UART, debug console, debug-exit. */
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
  char out[8192];
  size_t out_len;
};

static void sink(const char *d, size_t n, void *ud) {
  struct fixture *f = ud;
  for (size_t i = 0; i < n && f->out_len < sizeof(f->out); i++) f->out[f->out_len++] = d[i];
}

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof(*f));
  f->vm = mock_vm_create(1 << 20);
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

/* Runs one port access through the core and returns what the guest would read. */
static uint64_t pio(struct fixture *f, uint16_t port, int is_write, uint64_t v) {
  vmm_exit_t e = mock_io_exit(port, 1, is_write, v);
  mock_push_exit(f->vcpu, &e);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_HLT);
  struct mock_vcpu *m = mock_vcpu_of(f->vcpu);
  return m->completed[m->ncompleted - 1].io.data;
}

static void test_uart_transmit_and_registers(void **state) {
  struct fixture *f = *state;
  vmm_uart_config_t cfg = VMM_UART_CONFIG_INIT;
  cfg.out_fn = sink;
  cfg.out_user_data = f;
  vmm_device_t *u;
  assert_int_equal(vmm_uart_create(f->vm, &cfg, &u), 0);
  assert_string_equal(vmm_device_type(u), "uart16550");
  pio(f, 0x3f8, 1, 'h');
  pio(f, 0x3f8, 1, 'i');
  assert_int_equal(f->out_len, 2);
  assert_memory_equal(f->out, "hi", 2);
  assert_int_equal(pio(f, 0x3fd, 0, 0) & 0x60, 0x60); /* THR empty, transmitter empty. */
  pio(f, 0x3ff, 1, 0x5a);
  assert_int_equal(pio(f, 0x3ff, 0, 0), 0x5a); /* Scratch. */
  /* DLAB: divisor latch instead of THR/IER; nothing is transmitted. */
  pio(f, 0x3fb, 1, 0x83);
  pio(f, 0x3f8, 1, 0x01);
  pio(f, 0x3f9, 1, 0x00);
  assert_int_equal(pio(f, 0x3f8, 0, 0), 0x01);
  pio(f, 0x3fb, 1, 0x03);
  assert_int_equal(f->out_len, 2);
  assert_int_equal(pio(f, 0x3fb, 0, 0), 0x03);
  assert_int_equal(pio(f, 0x3fe, 0, 0), 0xb0); /* MSR: carrier, DSR, CTS. */
}

static void test_uart_receive_is_bounded(void **state) {
  struct fixture *f = *state;
  vmm_uart_config_t cfg = VMM_UART_CONFIG_INIT;
  cfg.rx_capacity = 16;
  vmm_device_t *u;
  assert_int_equal(vmm_uart_create(f->vm, &cfg, &u), 0);
  assert_int_equal(pio(f, 0x3fd, 0, 0) & 1, 0);
  char flood[100];
  memset(flood, 'x', sizeof(flood));
  flood[0] = 'a';
  size_t acc = 0;
  assert_int_equal(vmm_uart_input(u, flood, sizeof(flood), &acc), 0);
  assert_int_equal(acc, 16); /* The rest is refused, not buffered. */
  assert_int_equal(pio(f, 0x3fd, 0, 0) & 1, 1);
  assert_int_equal(pio(f, 0x3f8, 0, 0), 'a');
  for (int i = 0; i < 15; i++) assert_int_equal(pio(f, 0x3f8, 0, 0), 'x');
  assert_int_equal(pio(f, 0x3fd, 0, 0) & 1, 0);
  /* Interrupt identification: RDA when enabled and data waits, THRE after enabling it. */
  vmm_uart_input(u, "z", 1, &acc);
  pio(f, 0x3f9, 1, 0x01);
  assert_int_equal(pio(f, 0x3fa, 0, 0) & 0x0f, 0x04);
  pio(f, 0x3f8, 0, 0);
  assert_int_equal(pio(f, 0x3fa, 0, 0) & 0x0f, 0x01);
  pio(f, 0x3f9, 1, 0x02);
  assert_int_equal(pio(f, 0x3fa, 0, 0) & 0x0f, 0x02);
  assert_int_equal(pio(f, 0x3fa, 0, 0) & 0x0f, 0x01); /* Reading IIR acknowledged it. */
  /* Non-UART devices are refused. */
  vmm_device_t *dc;
  assert_int_equal(vmm_debugcon_create(f->vm, 0, NULL, NULL, &dc), 0);
  assert_int_equal(vmm_uart_input(dc, "a", 1, &acc), VMM_EINVAL);
}

static void test_uart_loopback(void **state) {
  struct fixture *f = *state;
  vmm_uart_config_t cfg = VMM_UART_CONFIG_INIT;
  cfg.out_fn = sink;
  cfg.out_user_data = f;
  assert_int_equal(vmm_uart_create(f->vm, &cfg, NULL), 0);
  pio(f, 0x3fc, 1, 0x10 | 0x03); /* Loopback with DTR and RTS. */
  pio(f, 0x3f8, 1, 'Q');
  assert_int_equal(f->out_len, 0);
  assert_int_equal(pio(f, 0x3f8, 0, 0), 'Q');
  assert_int_equal(pio(f, 0x3fe, 0, 0) & 0x30, 0x30);
}

static void test_uart_ports_conflict(void **state) {
  struct fixture *f = *state;
  vmm_uart_config_t cfg = VMM_UART_CONFIG_INIT;
  assert_int_equal(vmm_uart_create(f->vm, &cfg, NULL), 0);
  cfg.port = 0x3fc;
  assert_int_equal(vmm_uart_create(f->vm, &cfg, NULL), VMM_EEXIST);
  cfg.port = 0xfffa;
  assert_int_equal(vmm_uart_create(f->vm, &cfg, NULL), VMM_EINVAL);
  cfg.port = 0x2f8;
  cfg.struct_size = 4;
  assert_int_equal(vmm_uart_create(f->vm, &cfg, NULL), VMM_EINVAL);
}

static void test_debugcon_and_destroy(void **state) {
  struct fixture *f = *state;
  vmm_device_t *d;
  assert_int_equal(vmm_debugcon_create(f->vm, 0, sink, f, &d), 0);
  pio(f, 0xe9, 1, 'A');
  assert_int_equal(pio(f, 0xe9, 0, 0), 0xe9);
  assert_int_equal(f->out_len, 1);
  vmm_device_destroy(d);
  /* After destroy the port is free and unclaimed writes reach the caller. */
  vmm_exit_t e = mock_io_exit(0xe9, 1, 1, 0);
  mock_push_exit(f->vcpu, &e);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_IO);
  assert_int_equal(vmm_debugcon_create(f->vm, 0x10000, sink, f, NULL), VMM_EINVAL);
}

static void test_debug_exit_status(void **state) {
  struct fixture *f = *state;
  assert_int_equal(vmm_debug_exit_create(f->vm, 0, NULL), 0);
  vmm_exit_t e = mock_io_exit(VMM_DEBUG_EXIT_PORT, 1, 1, 0x21);
  mock_push_exit(f->vcpu, &e);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_GUEST_EXIT);
  assert_int_equal(out.guest_exit.status, (0x21 << 1) | 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_uart_transmit_and_registers, setup, teardown),
      cmocka_unit_test_setup_teardown(test_uart_receive_is_bounded, setup, teardown),
      cmocka_unit_test_setup_teardown(test_uart_loopback, setup, teardown),
      cmocka_unit_test_setup_teardown(test_uart_ports_conflict, setup, teardown),
      cmocka_unit_test_setup_teardown(test_debugcon_and_destroy, setup, teardown),
      cmocka_unit_test_setup_teardown(test_debug_exit_status, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
