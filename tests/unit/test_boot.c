/* Long-mode start state, the system area, and exception stubs turned into exits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "mock_backend.h"

static uint64_t rd64(vmm_vm_t *vm, uint64_t gpa) {
  uint64_t v = 0;
  assert_int_equal(vmm_vm_read(vm, gpa, &v, 8), 0);
  return v;
}

static void setup_vm(vmm_vm_t **vm, vmm_vcpu_t **vcpu, unsigned cpl) {
  *vm = mock_vm_create(16 << 20);
  assert_non_null(*vm);
  assert_int_equal(vmm_vcpu_create(*vm, 0, vcpu), 0);
  vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
  lm.cpl = cpl;
  lm.entry = 0x100000;
  lm.cmdline = "console=hvc0 quiet";
  assert_int_equal(vmm_vcpu_setup_long_mode(*vcpu, &lm), 0);
}

static void test_long_mode_cpl0_state(void **state) {
  (void)state;
  vmm_vm_t *vm;
  vmm_vcpu_t *vcpu;
  setup_vm(&vm, &vcpu, 0);
  vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
  assert_int_equal(vmm_vcpu_get_state(vcpu, &st), 0);
  assert_int_equal(st.regs.rip, 0x100000);
  assert_int_equal(st.regs.rsp, 16 << 20);
  assert_int_equal(st.regs.rsp % 16, 0);
  assert_int_equal(st.regs.rdi, VMM_BOOTINFO_GPA);
  assert_int_equal(st.regs.rsi, VMM_BOOT_MAGIC);
  assert_int_equal(st.regs.rflags, 2);
  assert_true(st.cr0 & VMM_CR0_PG && st.cr0 & VMM_CR0_PE);
  assert_true(st.cr4 & VMM_CR4_PAE);
  assert_true(st.efer & VMM_EFER_LMA && st.efer & VMM_EFER_LME);
  assert_int_equal(st.cr3, VMM_PML4_GPA);
  assert_int_equal(st.cs.selector, VMM_SEL_KERNEL_CS);
  assert_int_equal(st.cs.l, 1);
  assert_int_equal(st.cs.dpl, 0);
  assert_int_equal(st.ss.selector, VMM_SEL_KERNEL_DS);
  assert_int_equal(st.tr.selector, VMM_SEL_TSS);
  assert_int_equal(st.tr.type, 0xb);
  assert_int_equal(st.idt.base, VMM_IDT_GPA);
  assert_int_equal(st.idt.limit, 0xfff);

  /* Identity map: PML4[0] -> PDPT, PDPT[i] -> PD i, 2 MiB pages. */
  assert_int_equal(rd64(vm, VMM_PML4_GPA) & ~0xfffull, VMM_PML4_GPA + 0x1000);
  uint64_t pdpt1 = rd64(vm, VMM_PML4_GPA + 0x1000 + 8);
  uint64_t pd1 = pdpt1 & ~0xfffull;
  assert_int_equal(rd64(vm, pd1 + 3 * 8), (1ull << 30) + (3ull << 21) + 0x83);
  assert_int_equal(rd64(vm, VMM_PML4_GPA + 0x1000 + 4 * 8), 0); /* Nothing past 4 GiB. */

  /* GDT entries decode back to the segments loaded. */
  vmm_segment_t seg;
  vmm__segment_from_desc(rd64(vm, VMM_GDT_GPA + (VMM_SEL_USER_CS & ~7)), 0, VMM_SEL_USER_CS, &seg);
  assert_int_equal(seg.dpl, 3);
  assert_int_equal(seg.l, 1);
  assert_int_equal(seg.limit, 0xffffffff);

  /* Gate for #PF points at its stub, IST 1; the stub writes the exception port. */
  uint64_t gate = rd64(vm, VMM_IDT_GPA + 14 * 16);
  uint64_t off = (gate & 0xffff) | ((gate >> 32) & 0xffff0000ull);
  assert_int_equal(off, VMM_EXC_STUBS_GPA + 14 * VMM_EXC_STUB_SIZE);
  assert_int_equal((gate >> 32) & 7, 1);
  uint8_t stub[2];
  vmm_vm_read(vm, off, stub, 2);
  assert_int_equal(stub[0], 0xe6);
  assert_int_equal(stub[1], VMM_EXC_PORT);

  /* Boot info and command line. */
  struct vmm_boot_info bi;
  vmm_vm_read(vm, VMM_BOOTINFO_GPA, &bi, sizeof(bi));
  assert_int_equal(bi.magic, VMM_BOOT_MAGIC);
  assert_int_equal(bi.hypercall_page, VMM_HYPERCALL_PAGE_GPA);
  assert_int_equal(bi.ram_size, 16 << 20);
  char cmd[32];
  vmm_vm_read(vm, bi.cmdline, cmd, sizeof(cmd));
  assert_string_equal(cmd, "console=hvc0 quiet");
  /* The hypercall page came from the backend (mock: nop; mov $n,%al; int3). */
  uint8_t e[4];
  vmm_vm_read(vm, VMM_HYPERCALL_PAGE_GPA + 5 * VMM_HC_ENTRY_SIZE, e, 4);
  assert_int_equal(e[2], 5);
  vmm_vm_destroy(vm);
}

static void test_long_mode_cpl3_state(void **state) {
  (void)state;
  vmm_vm_t *vm;
  vmm_vcpu_t *vcpu;
  setup_vm(&vm, &vcpu, 3);
  vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
  assert_int_equal(vmm_vcpu_get_state(vcpu, &st), 0);
  assert_int_equal(st.cs.selector, VMM_SEL_USER_CS);
  assert_int_equal(st.cs.dpl, 3);
  assert_int_equal(st.ss.selector, VMM_SEL_USER_DS);
  assert_int_equal(st.regs.rflags & VMM_RFLAGS_IOPL3, VMM_RFLAGS_IOPL3);
  assert_int_equal(rd64(vm, VMM_PML4_GPA) & 4, 4); /* User-accessible pages. */
  vmm_vm_destroy(vm);
}

static void test_long_mode_needs_low_ram(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(512 << 10);
  vmm_vcpu_t *vcpu;
  assert_int_equal(vmm_vcpu_create(vm, 0, &vcpu), 0);
  vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
  assert_int_equal(vmm_vcpu_setup_long_mode(vcpu, &lm), VMM_EFAULT);
  lm.cpl = 1;
  assert_int_equal(vmm_vcpu_setup_long_mode(vcpu, &lm), VMM_EINVAL);
  vmm_vm_destroy(vm);
  vm = mock_vm_create(4 << 20);
  assert_int_equal(vmm_vcpu_create(vm, 0, &vcpu), 0);
  lm.cpl = 0;
  lm.image_low = 0x20000; /* An image over the system area would be overwritten. */
  lm.image_high = 0x30000;
  assert_int_equal(vmm_vcpu_setup_long_mode(vcpu, &lm), VMM_EEXIST);
  lm.image_low = 0x100000;
  lm.image_high = 0x110000;
  assert_int_equal(vmm_vcpu_setup_long_mode(vcpu, &lm), 0);
  lm.struct_size = 8;
  assert_int_equal(vmm_vcpu_setup_long_mode(vcpu, &lm), VMM_EINVAL);
  vmm_vm_destroy(vm);
}

/* The guest faulted at CPL3 with #PF; the stub for vector 14 wrote port 0xf6 with the
 * interrupt frame on the exception stack. */
static void test_exception_stub_becomes_exit(void **state) {
  (void)state;
  vmm_vm_t *vm;
  vmm_vcpu_t *vcpu;
  setup_vm(&vm, &vcpu, 3);
  struct mock_vcpu *m = mock_vcpu_of(vcpu);
  uint64_t frame[6] = {0x6 /* error code */, 0x123456, VMM_SEL_USER_CS, 0x3246, 0x7ff0,
                       VMM_SEL_USER_DS};
  uint64_t sp = VMM_EXC_STACK_TOP - sizeof(frame);
  assert_int_equal(vmm_vm_write(vm, sp, frame, sizeof(frame)), 0);
  m->state.regs.rsp = sp;
  m->state.regs.rip = VMM_EXC_STUBS_GPA + 14 * VMM_EXC_STUB_SIZE; /* At the OUT. */
  m->state.cs.selector = VMM_SEL_KERNEL_CS;
  m->state.cs.dpl = 0;
  m->state.cr2 = 0xdead000;
  m->state.regs.rbx = 77;
  vmm_exit_t e = mock_io_exit(VMM_EXC_PORT, 1, 1, 0);
  mock_push_exit(vcpu, &e);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_EXCEPTION);
  assert_int_equal(out.exception.vector, 14);
  assert_int_equal(out.exception.has_error_code, 1);
  assert_int_equal(out.exception.error_code, 6);
  assert_int_equal(out.exception.rip, 0x123456);
  assert_int_equal(out.exception.cr2, 0xdead000);
  assert_int_equal(m->flushes, 1);
  /* The vCPU is back where the fault happened. */
  vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
  assert_int_equal(vmm_vcpu_get_state(vcpu, &st), 0);
  assert_int_equal(st.regs.rip, 0x123456);
  assert_int_equal(st.regs.rsp, 0x7ff0);
  assert_int_equal(st.regs.rflags, 0x3246);
  assert_int_equal(st.regs.rbx, 77);
  assert_int_equal(st.cs.selector, VMM_SEL_USER_CS);
  assert_int_equal(st.cs.dpl, 3);
  assert_int_equal(st.ss.selector, VMM_SEL_USER_DS);
  vmm_vm_destroy(vm);
}

static void test_exception_port_write_elsewhere_is_plain_io(void **state) {
  (void)state;
  vmm_vm_t *vm;
  vmm_vcpu_t *vcpu;
  setup_vm(&vm, &vcpu, 0);
  mock_vcpu_of(vcpu)->state.regs.rip = 0x100020;
  vmm_exit_t e = mock_io_exit(VMM_EXC_PORT, 1, 1, 0);
  mock_push_exit(vcpu, &e);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_IO);
  assert_int_equal(out.io.port, VMM_EXC_PORT);
  vmm_vm_destroy(vm);
}

static void test_exception_with_bad_frame_is_internal_error(void **state) {
  (void)state;
  vmm_vm_t *vm;
  vmm_vcpu_t *vcpu;
  setup_vm(&vm, &vcpu, 0);
  struct mock_vcpu *m = mock_vcpu_of(vcpu);
  m->state.regs.rip = VMM_EXC_STUBS_GPA + 6 * VMM_EXC_STUB_SIZE + 2; /* Past the OUT. */
  m->state.regs.rsp = 0x7ffffff0; /* Not RAM. */
  vmm_exit_t e = mock_io_exit(VMM_EXC_PORT, 1, 1, 0);
  mock_push_exit(vcpu, &e);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_INTERNAL_ERROR);
  assert_non_null(strstr(out.internal.message, "exception 6"));
  vmm_vm_destroy(vm);
}

static void test_segment_descriptor_round_trip(void **state) {
  (void)state;
  vmm_segment_t s = {.base = 0x12345678, .limit = 0xfffff, .selector = 0x10, .type = 3,
                     .present = 1, .dpl = 2, .db = 1, .s = 1, .g = 0, .avl = 1};
  vmm_segment_t t;
  vmm__segment_from_desc(vmm__segment_to_desc(&s), 0, 0x10, &t);
  assert_int_equal(t.base, s.base);
  assert_int_equal(t.limit, s.limit);
  assert_int_equal(t.type, 3);
  assert_int_equal(t.dpl, 2);
  assert_int_equal(t.avl, 1);
  s.g = 1;
  s.limit = 0xffffffff;
  vmm__segment_from_desc(vmm__segment_to_desc(&s), 0, 0x10, &t);
  assert_int_equal(t.limit, 0xffffffff);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_long_mode_cpl0_state),
      cmocka_unit_test(test_long_mode_cpl3_state),
      cmocka_unit_test(test_long_mode_needs_low_ram),
      cmocka_unit_test(test_exception_stub_becomes_exit),
      cmocka_unit_test(test_exception_port_write_elsewhere_is_plain_io),
      cmocka_unit_test(test_exception_with_bad_frame_is_internal_error),
      cmocka_unit_test(test_segment_descriptor_round_trip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
