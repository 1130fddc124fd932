/* Snapshots on the mock backend: capture, roll back, the tree, clones, devices. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/snapshot.h"
#include "core/internal.h"
#include "mock_backend.h"

#define RAM (4u << 20)

struct fixture {
  vmm_vm_t *vm;
  vmm_vcpu_t *vcpu;
  vmm_device_t *uart;
};

static int setup(void **state) {
  struct fixture *f = calloc(1, sizeof(*f));
  f->vm = mock_vm_create(RAM);
  assert_non_null(f->vm);
  assert_int_equal(vmm_vcpu_create(f->vm, 0, &f->vcpu), 0);
  vmm_uart_config_t u = VMM_UART_CONFIG_INIT;
  assert_int_equal(vmm_uart_create(f->vm, &u, &f->uart), 0);
  assert_int_equal(vmm_debug_exit_create(f->vm, 0, NULL), 0);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  struct fixture *f = *state;
  vmm_vm_destroy(f->vm);
  free(f);
  return 0;
}

/* A guest write: the page changes and the backend's dirty log says so. */
static void guest_write(vmm_vm_t *vm, uint64_t gpa, uint8_t v) {
  void *hva;
  assert_int_equal(vmm_vm_gpa_to_hva(vm, gpa, 1, &hva), 0);
  *(uint8_t *)hva = v;
  uint64_t pg = gpa / 4096;
  mock_vm_of(vm)->dirty[pg / 64] |= 1ull << (pg % 64);
}

static uint8_t peek(vmm_vm_t *vm, uint64_t gpa) {
  uint8_t v;
  assert_int_equal(vmm_vm_read(vm, gpa, &v, 1), 0);
  return v;
}

static void test_snapshot_and_roll_back(void **state) {
  struct fixture *f = *state;
  guest_write(f->vm, 0x1000, 1);
  guest_write(f->vm, 0x3ff000, 2);
  mock_vcpu_of(f->vcpu)->state.regs.rax = 111;
  vmm_snapshot_t *a;
  assert_int_equal(vmm_vm_snapshot(f->vm, &a), 0);
  vmm_snapshot_info_t info = VMM_SNAPSHOT_INFO_INIT;
  assert_int_equal(vmm_snapshot_info(a, &info), 0);
  assert_int_equal(info.own_pages, 2); /* Only pages holding data are stored. */
  assert_int_equal(info.ram_bytes, RAM);
  assert_int_equal(info.depth, 0);

  for (int round = 0; round < 5; round++) {
    guest_write(f->vm, 0x1000, (uint8_t)(50 + round));
    guest_write(f->vm, 0x2000, 9);
    uint8_t host = 7;
    vmm_vm_write(f->vm, 0x3ff000, &host, 1);
    mock_vcpu_of(f->vcpu)->state.regs.rax = 999;
    assert_int_equal(vmm_vm_restore(f->vm, a), 0);
    assert_int_equal(peek(f->vm, 0x1000), 1);
    assert_int_equal(peek(f->vm, 0x2000), 0);
    assert_int_equal(peek(f->vm, 0x3ff000), 2);
    assert_int_equal(mock_vcpu_of(f->vcpu)->state.regs.rax, 111);
  }
  vmm_snapshot_release(a);
}

static void test_snapshot_tree_and_branches(void **state) {
  struct fixture *f = *state;
  guest_write(f->vm, 0x5000, 10);
  vmm_snapshot_t *root, *b, *c;
  assert_int_equal(vmm_vm_snapshot(f->vm, &root), 0);
  guest_write(f->vm, 0x6000, 20);
  assert_int_equal(vmm_vm_snapshot(f->vm, &b), 0); /* Child of root: holds page 6 only. */
  vmm_snapshot_info_t info = VMM_SNAPSHOT_INFO_INIT;
  vmm_snapshot_info(b, &info);
  assert_int_equal(info.own_pages, 1);
  assert_int_equal(info.depth, 1);
  assert_ptr_equal(vmm_snapshot_parent(b), root);

  assert_int_equal(vmm_vm_restore(f->vm, root), 0);
  assert_int_equal(peek(f->vm, 0x6000), 0);
  guest_write(f->vm, 0x7000, 30);
  assert_int_equal(vmm_vm_snapshot(f->vm, &c), 0); /* Second branch from root. */
  assert_ptr_equal(vmm_snapshot_parent(c), root);
  vmm_snapshot_t *kids[4];
  size_t n;
  assert_int_equal(vmm_snapshot_children(root, kids, 4, &n), 0);
  assert_int_equal(n, 2);
  assert_ptr_equal(kids[0], b);
  assert_ptr_equal(kids[1], c);
  vmm_snapshot_release(kids[0]); /* The list hands out references. */
  vmm_snapshot_release(kids[1]);

  /* Jump across branches: the pages of both branches are fixed up. */
  assert_int_equal(vmm_vm_restore(f->vm, b), 0);
  assert_int_equal(peek(f->vm, 0x5000), 10);
  assert_int_equal(peek(f->vm, 0x6000), 20);
  assert_int_equal(peek(f->vm, 0x7000), 0);
  assert_int_equal(vmm_vm_restore(f->vm, c), 0);
  assert_int_equal(peek(f->vm, 0x6000), 0);
  assert_int_equal(peek(f->vm, 0x7000), 30);
  uint8_t buf[2];
  assert_int_equal(vmm_snapshot_read(b, 0x6000, buf, 1), 0);
  assert_int_equal(buf[0], 20);
  assert_int_equal(vmm_snapshot_read(b, RAM - 1, buf, 2), VMM_EFAULT);

  assert_int_equal(vmm_snapshot_set_name(b, "branch-b"), 0);
  assert_string_equal(vmm_snapshot_name(b), "branch-b");
  char longname[100];
  memset(longname, 'x', sizeof(longname) - 1);
  longname[99] = 0;
  assert_int_equal(vmm_snapshot_set_name(b, longname), VMM_EINVAL);

  /* Releasing a child unlinks it; the tree survives through references. */
  vmm_snapshot_release(b);
  assert_int_equal(vmm_snapshot_children(root, kids, 4, &n), 0);
  assert_int_equal(n, 1);
  vmm_snapshot_release(kids[0]);
  vmm_snapshot_release(root); /* c keeps root alive. */
  assert_non_null(vmm_snapshot_parent(c));
  vmm_snapshot_release(c);
}

static void test_snapshot_device_state(void **state) {
  struct fixture *f = *state;
  size_t acc;
  vmm_uart_input(f->uart, "abc", 3, &acc);
  vmm_snapshot_t *s;
  assert_int_equal(vmm_vm_snapshot(f->vm, &s), 0);
  vmm_uart_input(f->uart, "zzzzz", 5, &acc);
  assert_int_equal(vmm_vm_restore(f->vm, s), 0);
  /* The receive buffer is back to "abc": read through a scripted IO exit. */
  vmm_exit_t e = mock_io_exit(0x3f8, 1, 0, 0);
  for (int i = 0; i < 4; i++) mock_push_exit(f->vcpu, &e);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  struct mock_vcpu *m = mock_vcpu_of(f->vcpu);
  size_t k = m->ncompleted;
  assert_int_equal(m->completed[k - 4].io.data, 'a');
  assert_int_equal(m->completed[k - 3].io.data, 'b');
  assert_int_equal(m->completed[k - 2].io.data, 'c');
  assert_int_equal(m->completed[k - 1].io.data, 0); /* Empty again. */
  vmm_snapshot_release(s);
}

static void test_restore_refuses_mismatches(void **state) {
  struct fixture *f = *state;
  vmm_snapshot_t *s;
  assert_int_equal(vmm_vm_snapshot(f->vm, &s), 0);
  vmm_vm_t *other = mock_vm_create(2u << 20);
  vmm_vcpu_t *v;
  assert_int_equal(vmm_vcpu_create(other, 0, &v), 0);
  assert_int_equal(vmm_vm_restore(other, s), VMM_EINVAL); /* RAM size differs. */
  vmm_vm_destroy(other);
  other = mock_vm_create(RAM);
  assert_int_equal(vmm_vcpu_create(other, 0, &v), 0);
  assert_int_equal(vmm_vm_restore(other, s), VMM_EINVAL); /* No devices. */
  vmm_uart_config_t u = VMM_UART_CONFIG_INIT;
  assert_int_equal(vmm_uart_create(other, &u, NULL), 0);
  assert_int_equal(vmm_debug_exit_create(other, 0, NULL), 0);
  assert_int_equal(vmm_vm_restore(other, s), 0);
  vmm_vm_destroy(other);
  assert_int_equal(vmm_vm_restore(NULL, s), VMM_EINVAL);
  assert_int_equal(vmm_vm_snapshot(f->vm, NULL), VMM_EINVAL);
  vmm_snapshot_release(s);
}

static int counter_hc(vmm_vcpu_t *vcpu, uint64_t nr, const uint64_t args[6], uint64_t *result,
                      void *ud) {
  (void)vcpu, (void)nr, (void)args;
  (*(int *)ud)++;
  *result = 5;
  return VMM_HANDLED;
}


static void test_clone_shares_and_diverges(void **state) {
  struct fixture *f = *state;
  int calls = 0;
  assert_int_equal(vmm_vm_add_hypercall_handler(f->vm, 80, counter_hc, &calls, NULL), 0);
  guest_write(f->vm, 0x9000, 42);
  vmm_snapshot_t *s;
  assert_int_equal(vmm_vm_snapshot(f->vm, &s), 0);
  guest_write(f->vm, 0xa000, 43);
  vmm_snapshot_t *s2;
  assert_int_equal(vmm_vm_snapshot(f->vm, &s2), 0); /* A diff layer over s. */
  guest_write(f->vm, 0x9000, 77);                    /* The original moves on. */

  vmm_vm_t *c1, *c2;
  assert_int_equal(vmm__snap_clone_with_ops(s2, &mock_backend_ops, &c1), 0);
  assert_int_equal(vmm__snap_clone_with_ops(s2, &mock_backend_ops, &c2), 0);
  assert_int_equal(peek(c1, 0x9000), 42);
  assert_int_equal(peek(c1, 0xa000), 43);
  /* Layered RAM: only the page the diff layer holds (0xa000) is the clone's own so far; a
   * write makes exactly that page its own too, and shared pages stay read-only in hva. */
  struct vmm_region *cr = c1->regions[0];
  assert_true(cr->layered);
  assert_true(vmm__region_page_owned(cr, 0xa));
  assert_false(vmm__region_page_owned(cr, 0x9));
  guest_write(c1, 0x9000, 1);
  assert_true(vmm__region_page_owned(cr, 0x9));
  assert_false(vmm__region_page_owned(cr, 0x8));
  assert_int_equal(peek(c2, 0x9000), 42); /* Clones do not see each other's writes. */
  assert_false(vmm__region_page_owned(c2->regions[0], 0x9));
  assert_int_equal(peek(f->vm, 0x9000), 77);
  vmm_ram_region_t r;
  size_t n;
  vmm_vm_ram_regions(c1, &r, 1, &n);
  assert_int_equal(r.size, RAM);

  /* Handlers and devices came along: the hypercall reaches the same handler. */
  vmm_vcpu_t *cv = c1->vcpus[0];
  vmm_exit_t e;
  memset(&e, 0, sizeof(e));
  e.reason = VMM_EXIT_HYPERCALL;
  e.hypercall.nr = 80;
  mock_push_exit(cv, &e);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(cv, &out), 0);
  assert_int_equal(calls, 1);
  vmm_device_t **devs;
  size_t nd = vmm__vm_devices(c1, &devs);
  assert_int_equal(nd, 2);
  assert_string_equal(vmm_device_type(devs[0]), "uart16550");
  free(devs);
  /* The public way to the clone's devices, in creation order. */
  assert_string_equal(vmm_device_type(vmm_vm_device(c1, 0)), "uart16550");
  assert_ptr_not_equal(vmm_vm_device(c1, 1), NULL);
  assert_null(vmm_vm_device(c1, 2));
  assert_null(vmm_vm_device(NULL, 0));

  /* A clone rolls back to its snapshot like any VM. */
  assert_int_equal(vmm_vm_restore(c1, s2), 0);
  assert_int_equal(peek(c1, 0x9000), 42);
  vmm_vm_destroy(c1);
  vmm_vm_destroy(c2);
  assert_int_equal(vmm_snapshot_clone(NULL, NULL, &c1), VMM_EINVAL);
  vmm_snapshot_release(s2);
  vmm_snapshot_release(s);
}

/* Regressions: the program's own dirty-log calls, a failed roll back, a caller that still owes
 * a read value, vCPU numbering, and restores that must not allocate the whole guest. */
static void test_program_dirty_log_calls_do_not_hide_pages(void **state) {
  struct fixture *f = *state;
  vmm_snapshot_t *s;
  assert_int_equal(vmm_vm_snapshot(f->vm, &s), 0);
  guest_write(f->vm, 0x8000, 7);
  uint64_t bm[RAM / 4096 / 64];
  assert_int_equal(vmm_vm_dirty_log_get(f->vm, 0, bm, sizeof(bm)), 0);
  assert_true(bm[8 / 64] & (1ull << 8));
  assert_int_equal(vmm_vm_restore(f->vm, s), 0);
  assert_int_equal(peek(f->vm, 0x8000), 0);
  /* Turning the log off makes the next operations whole, not wrong. */
  guest_write(f->vm, 0x8000, 9);
  assert_int_equal(vmm_vm_dirty_log_enable(f->vm, 0, 0), 0);
  assert_int_equal(vmm_vm_restore(f->vm, s), 0);
  assert_int_equal(peek(f->vm, 0x8000), 0);
  vmm_snapshot_release(s);
}

static void test_failed_restore_then_restore_is_exact(void **state) {
  struct fixture *f = *state;
  vmm_snapshot_t *s0, *s1;
  assert_int_equal(vmm_vm_snapshot(f->vm, &s0), 0);
  guest_write(f->vm, 0x8000, 1);
  assert_int_equal(vmm_vm_snapshot(f->vm, &s1), 0);
  guest_write(f->vm, 0x8000, 2);
  mock_vcpu_of(f->vcpu)->fail_set_state = true;
  assert_int_equal(vmm_vm_restore(f->vm, s0), VMM_EINVAL);
  mock_vcpu_of(f->vcpu)->fail_set_state = false;
  assert_int_equal(vmm_vm_restore(f->vm, s1), 0);
  assert_int_equal(peek(f->vm, 0x8000), 1);
  vmm_snapshot_release(s1);
  vmm_snapshot_release(s0);
}

static void test_snapshot_refused_while_caller_owes_a_value(void **state) {
  struct fixture *f = *state;
  vmm_exit_t e = mock_io_exit(0x700, 1, 0, 0);
  mock_push_exit(f->vcpu, &e);
  vmm_exit_t out;
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_IO);
  vmm_snapshot_t *s = NULL;
  assert_int_equal(vmm_vm_snapshot(f->vm, &s), VMM_ESTATE);
  assert_null(s);
  out.io.data = 1;
  assert_int_equal(vmm_vcpu_run(f->vcpu, &out), 0); /* Now delivered. */
  assert_int_equal(vmm_vm_snapshot(f->vm, &s), 0);
  vmm_snapshot_release(s);
}

static void test_vcpu_gap_is_refused(void **state) {
  (void)state;
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.max_vcpus = 2;
  vmm_vm_t *vm;
  assert_int_equal(vmm__vm_create_with_ops(&cfg, &mock_backend_ops, &vm), 0);
  vmm_vcpu_t *v;
  assert_int_equal(vmm_vcpu_create(vm, 1, &v), 0);
  vmm_snapshot_t *s = NULL;
  assert_int_equal(vmm_vm_snapshot(vm, &s), VMM_EINVAL);
  vmm_vm_destroy(vm);
}

static void test_full_restore_does_not_allocate_holes(void **state) {
  (void)state;
  vmm_vm_t *a = mock_vm_create(64u << 20), *b = mock_vm_create(64u << 20);
  vmm_vcpu_t *v;
  assert_int_equal(vmm_vcpu_create(a, 0, &v), 0);
  assert_int_equal(vmm_vcpu_create(b, 0, &v), 0);
  guest_write(a, 0x1000, 5);
  vmm_snapshot_t *s;
  assert_int_equal(vmm_vm_snapshot(a, &s), 0);
  guest_write(b, 0x800000, 9); /* A page that must become zero. */
  assert_int_equal(vmm_vm_restore(b, s), 0);
  assert_int_equal(peek(b, 0x1000), 5);
  assert_int_equal(peek(b, 0x800000), 0);
  struct stat st;
  assert_int_equal(fstat(vmm__region_find(b, 0, 1)->memfd, &st), 0);
  assert_true(st.st_blocks * 512 < (1 << 20)); /* Not 64 MiB. */
  vmm_snapshot_release(s);
  vmm_vm_destroy(a);
  vmm_vm_destroy(b);
}

/* A long chain of diff snapshots holds no file descriptor per layer: 600 of them under a limit
 * of 128 descriptors, then a roll back to an early one. Layers are read-only once taken. */
static void test_long_chain_within_fd_limit(void **state) {
  struct fixture *f = *state;
  struct rlimit old, low;
  assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
  low = old;
  low.rlim_cur = 128;
  assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
  enum { N = 600 };
  vmm_snapshot_t **snaps = calloc(N, sizeof(*snaps));
  int rc = 0, taken = 0;
  for (int i = 0; i < N && rc == 0; i++) {
    guest_write(f->vm, 0x9000, (uint8_t)i);
    rc = vmm_vm_snapshot(f->vm, &snaps[i]);
    taken += rc == 0;
  }
  setrlimit(RLIMIT_NOFILE, &old);
  assert_int_equal(rc, 0);
  assert_int_equal(taken, N);
  struct vmm_snapshot *early = snaps[10];
  assert_int_equal(early->regions[0].fd, -1); /* a diff layer */
  assert_int_equal(vmm_vm_restore(f->vm, early), 0);
  assert_int_equal(peek(f->vm, 0x9000), 10);
  for (int i = 0; i < N; i++) vmm_snapshot_release(snaps[i]);
  free(snaps);
}

/* A VM with in-kernel interrupt controllers on a backend that cannot capture their state (the
 * mock; kvm can, tests/linux/test_linux_snapshot.c) is refused rather than snapshotted into
 * something that would not resume. */
static void test_irqchip_vm_is_refused(void **state) {
  struct fixture *f = *state;
  f->vm->flags |= VMM_VM_IRQCHIP; /* as kvm's Linux VMs have it */
  vmm_snapshot_t *s = (vmm_snapshot_t *)1;
  assert_int_equal(vmm_vm_snapshot(f->vm, &s), VMM_ENOSYS);
  assert_null(s);
  f->vm->flags &= ~(uint32_t)VMM_VM_IRQCHIP;
  assert_int_equal(vmm_vm_snapshot(f->vm, &s), 0);
  vmm_snapshot_release(s);
}

/* A restore whose vCPU state the backend refuses, from a file (states this backend did not
 * produce here): nothing changes, neither RAM nor registers; once accepted, it restores. */
static void test_refused_file_restore_changes_nothing(void **state) {
  struct fixture *f = *state;
  guest_write(f->vm, 0x8000, 1);
  vmm_regs_t r;
  assert_int_equal(vmm_vcpu_get_regs(f->vcpu, &r), 0);
  r.rbx = 1;
  assert_int_equal(vmm_vcpu_set_regs(f->vcpu, &r), 0);
  vmm_snapshot_t *s, *ls = NULL;
  assert_int_equal(vmm_vm_snapshot(f->vm, &s), 0);
  char path[] = "/tmp/libvmm-test-refusedXXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  assert_int_equal(vmm_snapshot_save(s, path, VMM_SNAPSHOT_SAVE_FULL), 0);
  assert_int_equal(vmm_snapshot_load(path, &ls), 0);
  unlink(path);
  guest_write(f->vm, 0x8000, 2);
  r.rbx = 2;
  assert_int_equal(vmm_vcpu_set_regs(f->vcpu, &r), 0);
  mock_vcpu_of(f->vcpu)->fail_set_state = true;
  assert_int_equal(vmm_vm_restore(f->vm, ls), VMM_EINVAL);
  mock_vcpu_of(f->vcpu)->fail_set_state = false;
  assert_int_equal(peek(f->vm, 0x8000), 2);
  assert_int_equal(vmm_vcpu_get_regs(f->vcpu, &r), 0);
  assert_int_equal(r.rbx, 2);
  assert_int_equal(vmm_vm_restore(f->vm, ls), 0);
  assert_int_equal(peek(f->vm, 0x8000), 1);
  assert_int_equal(vmm_vcpu_get_regs(f->vcpu, &r), 0);
  assert_int_equal(r.rbx, 1);
  vmm_snapshot_release(ls);
  vmm_snapshot_release(s);
}

/* Platform state (kvm's interrupt controllers, on the mock a number) that the backend refuses:
 * the VM keeps its RAM, registers and its own platform state. */
static void test_refused_platform_restore_changes_nothing(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create_irqchip(RAM);
  assert_non_null(vm);
  vmm_vcpu_t *v;
  assert_int_equal(vmm_vcpu_create(vm, 0, &v), 0);
  struct mock_vm *m = mock_vm_of(vm);
  m->platform = 5;
  guest_write(vm, 0x8000, 1);
  vmm_snapshot_t *s;
  assert_int_equal(vmm_vm_snapshot(vm, &s), 0);
  guest_write(vm, 0x8000, 2);
  vmm_regs_t r;
  assert_int_equal(vmm_vcpu_get_regs(v, &r), 0);
  r.rbx = 2;
  assert_int_equal(vmm_vcpu_set_regs(v, &r), 0);
  m->platform = 7;
  m->refuse_platform = 5;
  assert_int_equal(vmm_vm_restore(vm, s), VMM_EBACKEND);
  assert_int_equal(peek(vm, 0x8000), 2);
  assert_int_equal(m->platform, 7);
  assert_int_equal(vmm_vcpu_get_regs(v, &r), 0);
  assert_int_equal(r.rbx, 2);
  m->refuse_platform = 0;
  assert_int_equal(vmm_vm_restore(vm, s), 0);
  assert_int_equal(peek(vm, 0x8000), 1);
  assert_int_equal(m->platform, 5);
  vmm_snapshot_release(s);
  vmm_vm_destroy(vm);
}

/* linux-pc: its CMOS index and RAM come back; an index beyond the 7-bit register (which would
 * address past the 128-byte RAM) is refused before anything changes. */
static void test_linux_pc_state(void **state) {
  struct fixture *f = *state;
  vmm_device_t *pc;
  assert_int_equal(vmm_linux_pc_create(f->vm, &pc), 0);
  vmm_snapshot_t *s;
  assert_int_equal(vmm_vm_snapshot(f->vm, &s), 0);
  struct vmm_snapshot *si = (struct vmm_snapshot *)s;
  cJSON *st = si->devices[2].state;
  assert_string_equal(si->devices[2].type, "linux-pc");
  assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(st, "nvram")), 128);
  assert_int_equal(vmm_vm_restore(f->vm, s), 0);
  cJSON_ReplaceItemInObjectCaseSensitive(st, "cmos_index", cJSON_CreateNumber(200));
  assert_int_equal(vmm_vm_restore(f->vm, s), VMM_ECORRUPT);
  vmm_snapshot_release(s);
}

/* On a backend that works on the VMM's mapping (kvm), the first snapshot takes the VM's memfd
 * as its full layer without copying; the VM goes on in a private copy-on-write mapping at the
 * same address, so a pointer taken before stays valid and writable, writes after the snapshot
 * do not reach it, and rolling back brings the snapshot's bytes back. */
static void test_first_snapshot_adopts_memory(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create_cow(RAM);
  assert_non_null(vm);
  vmm_vcpu_t *v;
  assert_int_equal(vmm_vcpu_create(vm, 0, &v), 0);
  void *hva;
  assert_int_equal(vmm_vm_gpa_to_hva(vm, 0x9000, 1, &hva), 0);
  *(uint8_t *)hva = 42;
  vmm_snapshot_t *s;
  assert_int_equal(vmm_vm_snapshot(vm, &s), 0);
  struct vmm_region *live = vm->regions[0];
  assert_true(live->cow);
  struct stat a, b;
  assert_int_equal(fstat(live->memfd, &a), 0);
  assert_int_equal(fstat(((struct vmm_snapshot *)s)->regions[0].fd, &b), 0);
  assert_true(a.st_ino == b.st_ino); /* the same file: nothing was copied */
  *(uint8_t *)hva = 7;               /* through the old pointer (a guest write, as logged:) */
  mock_vm_of(vm)->dirty[0] |= 1ull << 9;
  uint8_t got = 0;
  assert_int_equal(vmm_snapshot_read(s, 0x9000, &got, 1), 0);
  assert_int_equal(got, 42);
  guest_write(vm, 0xa000, 9);
  assert_int_equal(vmm_vm_restore(vm, s), 0);
  assert_int_equal(peek(vm, 0x9000), 42);
  assert_int_equal(peek(vm, 0xa000), 0);
  vmm_snapshot_release(s);
  vmm_vm_destroy(vm);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_snapshot_and_roll_back, setup, teardown),
      cmocka_unit_test_setup_teardown(test_snapshot_tree_and_branches, setup, teardown),
      cmocka_unit_test_setup_teardown(test_snapshot_device_state, setup, teardown),
      cmocka_unit_test_setup_teardown(test_restore_refuses_mismatches, setup, teardown),
      cmocka_unit_test_setup_teardown(test_clone_shares_and_diverges, setup, teardown),
      cmocka_unit_test_setup_teardown(test_program_dirty_log_calls_do_not_hide_pages, setup, teardown),
      cmocka_unit_test_setup_teardown(test_failed_restore_then_restore_is_exact, setup, teardown),
      cmocka_unit_test_setup_teardown(test_snapshot_refused_while_caller_owes_a_value, setup, teardown),
      cmocka_unit_test(test_vcpu_gap_is_refused),
      cmocka_unit_test(test_full_restore_does_not_allocate_holes),
      cmocka_unit_test_setup_teardown(test_long_chain_within_fd_limit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_irqchip_vm_is_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_linux_pc_state, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refused_file_restore_changes_nothing, setup, teardown),
      cmocka_unit_test(test_refused_platform_restore_changes_nothing),
      cmocka_unit_test(test_first_snapshot_adopts_memory),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
