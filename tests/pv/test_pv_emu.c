/* Trap-and-emulate tests of the pv backend through the public API: MSRs, RDTSC, CLI/STI,
 * RAM below mmap_min_addr, read-only RAM (also under INS and a hypercall result slot), string
 * port I/O, and FS/GS bases no process can have. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "pv_test_util.h"

/* Whether this host honours PR_SET_TSC (some virtualized hosts accept it and still let RDTSC
 * run): a child that asked for it executes RDTSC. Only a clean exit 0 means RDTSC ran: the
 * trap may end the child by SIGSEGV or, under a sanitizer that owns SIGSEGV, by its report and
 * a non-zero exit. */
static bool host_rdtsc_traps(void) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    signal(SIGSEGV, SIG_DFL);
    if (prctl(PR_SET_TSC, PR_TSC_SIGSEGV) != 0)
      _exit(0);
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    _exit(0);
  }
  int st;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  return !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* WRMSR/RDMSR on the shadow MSRs and FS base, RDTSC made to trap (where the host can), CLI/STI,
 * then #GP for an MSR that does not exist. */
static void test_msr_tsc_cli_emulated(void **state) {
  (void)state;
  struct pv_vm p;
  assert_int_equal(pv_vm_start(&p, "pvtest", 0, "msr"), 0);
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  run_expect(&p, &ex, VMM_EXIT_EXCEPTION);
  if (strcmp(p.console, "kgs=7eedface0000 fs=7e57ab1e tsc=up\n") != 0)
    fail_msg("console '%s', exception %u at %#llx", p.console, ex.exception.vector,
             (unsigned long long)ex.exception.rip);
  assert_int_equal(ex.exception.vector, 13);
  assert_int_equal(ex.exception.error_code, 0);
  vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
  assert_int_equal(vmm_vcpu_get_state(p.vcpu, &st), 0);
  assert_int_equal(ex.exception.rip, st.regs.rbx);
  assert_int_equal(st.kernel_gs_base, 0x7eedface0000ull);
  assert_true(st.fs.base >= 0x100000 && st.fs.base < 0x400000);
  assert_int_equal(st.regs.rflags & VMM_RFLAGS_IF, 0);
  /* 3 MSR accesses, CLI, STI, CLI, and the two RDTSCs where they trap. */
  uint64_t want = host_rdtsc_traps() ? 8 : 6;
  assert_int_equal(pv_stat(p.vcpu, "pv.emulated"), want);
  pv_vm_stop(&p);
}

/* RAM below mmap_min_addr cannot be mapped in the sandbox; MOVs there are emulated. */
static void test_low_memory_is_emulated(void **state) {
  (void)state;
  struct pv_vm p;
  assert_int_equal(pv_vm_start(&p, "pvtest", 0, "mem 100"), 0);
  uint64_t v = 0x1122;
  assert_int_equal(vmm_vm_write(p.vm, 0x100, &v, 8), 0);
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  run_expect(&p, &ex, VMM_EXIT_GUEST_EXIT);
  assert_string_equal(p.console, "mem 100=1122\n");
  assert_int_equal(vmm_vm_read(p.vm, 0x100, &v, 8), 0);
  assert_int_equal(v, 0x1123);
  pv_vm_stop(&p);
}

/* Read-only RAM reads natively; a write exits as an MMIO write and leaves memory alone. */
static void test_readonly_write_is_mmio_exit(void **state) {
  (void)state;
  struct pv_vm p;
  assert_int_equal(pv_vm_start(&p, "pvtest", 0, "mem 8000000"), 0);
  void *hva;
  assert_int_equal(vmm_vm_map_ram(p.vm, 0x8000000, 4096, VMM_MEM_READONLY, &hva), 0);
  uint64_t v = 0x55;
  memcpy(hva, &v, 8);
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  run_expect(&p, &ex, VMM_EXIT_MMIO);
  assert_int_equal(ex.mmio.gpa, 0x8000000);
  assert_int_equal(ex.mmio.is_write, 1);
  assert_int_equal(ex.mmio.size, 8);
  assert_int_equal(ex.mmio.data, 0x56);
  run_expect(&p, &ex, VMM_EXIT_GUEST_EXIT);
  assert_string_equal(p.console, "mem 8000000=55\n");
  memcpy(&v, hva, 8);
  assert_int_equal(v, 0x55);
  pv_vm_stop(&p);
}

/* Port 0x520 collects what the guest writes; port 0x521 reads 'a', 'b', ... */
struct strio {
  char out[64];
  size_t nout;
  char next;
};

static int strio_port(vmm_vcpu_t *vcpu, uint64_t off, uint32_t size, int is_write,
                      uint64_t *data, void *ud) {
  (void)vcpu, (void)size;
  struct strio *s = ud;
  if (is_write && off == 0 && s->nout < sizeof(s->out) - 1) s->out[s->nout++] = (char)*data;
  if (!is_write && off == 1) *data = (uint64_t)(unsigned char)s->next++;
  return VMM_HANDLED;
}

/* Emulated writes never change read-only RAM: REP INSB into it, and a hypercall whose result
 * slot (the stack) is in it. */
static void test_readonly_ram_stays_under_emulation(void **state) {
  (void)state;
  for (int slot = 0; slot < 2; slot++) {
    struct pv_vm p;
    char cmd[64];
    snprintf(cmd, sizeof(cmd), "%s 8000000", slot ? "romslot" : "romins");
    assert_int_equal(pv_vm_start(&p, "pvtest", 0, cmd), 0);
    void *hva;
    assert_int_equal(vmm_vm_map_ram(p.vm, 0x8000000, 4096, VMM_MEM_READONLY, &hva), 0);
    memset(hva, 0xaa, 4096);
    struct strio s = {{0}, 0, 'a'};
    assert_int_equal(vmm_vm_add_pio_handler(p.vm, 0x520, 2, strio_port, &s, NULL), 0);
    vmm_exit_t ex;
    memset(&ex, 0, sizeof(ex));
    run_expect(&p, &ex, slot ? VMM_EXIT_EXCEPTION : VMM_EXIT_GUEST_EXIT);
    if (!slot) assert_string_equal(p.console, "rom=aaaaaaaaaaaaaaaa\n");
    for (size_t i = 0; i < 4096; i++)
      if (((uint8_t *)hva)[i] != 0xaa) fail_msg("%s: read-only byte %zu changed", cmd, i);
    pv_vm_stop(&p);
  }
}

/* An FS base no process can have is #GP at the WRMSR, and set_state refuses one; the vCPU
 * runs on afterwards. */
static void test_upper_half_fs_base_refused(void **state) {
  (void)state;
  struct pv_vm p;
  assert_int_equal(pv_vm_start(&p, "pvtest", 0, "fsbase"), 0);
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  run_expect(&p, &ex, VMM_EXIT_EXCEPTION);
  assert_int_equal(ex.exception.vector, 13);
  vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
  assert_int_equal(vmm_vcpu_get_state(p.vcpu, &st), 0);
  assert_int_equal(ex.exception.rip, st.regs.rbx);
  assert_true(st.fs.base < 0x7ffffffff000ull);
  vmm_cpu_state_t bad = st;
  bad.fs.base = 0xffff800000000000ull;
  assert_int_equal(vmm_vcpu_set_state(p.vcpu, &bad), VMM_EINVAL);
  assert_int_equal(vmm_vcpu_set_state(p.vcpu, &st), 0);
  pv_vm_stop(&p);
}

/* REP OUTSB / REP INSB, element by element through a port handler. */
static void test_string_io(void **state) {
  (void)state;
  struct pv_vm p;
  assert_int_equal(pv_vm_start(&p, "pvtest", 0, "strio"), 0);
  struct strio s = {{0}, 0, 'a'};
  assert_int_equal(vmm_vm_add_pio_handler(p.vm, 0x520, 2, strio_port, &s, NULL), 0);
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  run_expect(&p, &ex, VMM_EXIT_GUEST_EXIT);
  assert_string_equal(s.out, "string I/O");
  assert_string_equal(p.console, "in=abcdefgh\n");
  pv_vm_stop(&p);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_msr_tsc_cli_emulated),
      cmocka_unit_test(test_low_memory_is_emulated),
      cmocka_unit_test(test_readonly_write_is_mmio_exit),
      cmocka_unit_test(test_string_io),
      cmocka_unit_test(test_readonly_ram_stays_under_emulation),
      cmocka_unit_test(test_upper_half_fs_base_refused),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
