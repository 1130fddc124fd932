/* Benchmark of the kvm backend against raw KVM ioctls, measured in the same run:
 *   - PIO exit round trip: a guest loop of `out` instructions, each consumed by the VMM;
 *   - VM creation to the first guest instruction (HLT);
 * and, when compute kernels are given (--kernels DIR), each kernel as a guest at CPL3 on kvm
 * against the same source as a native static executable.
 *
 * Prints medians over repetitions and the ratio API/raw (target: within 1.10).
 * usage: bench_kvm [--reps N] [--exits N] [--kernels DIR] */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libvmm/vmm.h>

#include "bench_util.h"

/* ---- raw KVM: a VM with 2 MiB of RAM, identity-mapped long mode at CPL0 ---- */

#define RAW_MEM (2u << 20)
#define RAW_PML4 0x1000
#define RAW_PDPT 0x2000
#define RAW_PD 0x3000
#define RAW_GDT 0x4000
#define RAW_CODE 0x8000

struct raw_vm {
  int kvm, vm, vcpu;
  struct kvm_run *run;
  size_t run_size;
  uint8_t *mem;
};

static int raw_create(struct raw_vm *r, int kvm, const uint8_t *code, size_t code_len, int long_mode) {
  memset(r, 0, sizeof(*r));
  r->kvm = kvm;
  r->vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (r->vm < 0) return -1;
  r->mem = mmap(NULL, RAW_MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (r->mem == MAP_FAILED) return -1;
  struct kvm_userspace_memory_region m = {.slot = 0, .guest_phys_addr = 0,
                                          .memory_size = RAW_MEM,
                                          .userspace_addr = (uint64_t)(uintptr_t)r->mem};
  if (ioctl(r->vm, KVM_SET_USER_MEMORY_REGION, &m) < 0) return -1;
  r->vcpu = ioctl(r->vm, KVM_CREATE_VCPU, 0);
  if (r->vcpu < 0) return -1;
  r->run_size = (size_t)ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  r->run = mmap(NULL, r->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, r->vcpu, 0);
  if (r->run == MAP_FAILED) return -1;
  memcpy(r->mem + RAW_CODE, code, code_len);
  struct kvm_sregs s;
  if (ioctl(r->vcpu, KVM_GET_SREGS, &s) < 0) return -1;
  struct kvm_regs regs = {.rip = RAW_CODE, .rflags = 2, .rsp = RAW_MEM - 16};
  if (long_mode) {
    uint64_t *pml4 = (uint64_t *)(r->mem + RAW_PML4), *pdpt = (uint64_t *)(r->mem + RAW_PDPT);
    uint64_t *pd = (uint64_t *)(r->mem + RAW_PD), *gdt = (uint64_t *)(r->mem + RAW_GDT);
    pml4[0] = RAW_PDPT | 3;
    pdpt[0] = RAW_PD | 3;
    pd[0] = 0x83;
    gdt[1] = 0x00af9b000000ffffull;
    gdt[2] = 0x00cf93000000ffffull;
    struct kvm_segment cs = {.base = 0, .limit = 0xffffffff, .selector = 8, .type = 11,
                             .present = 1, .s = 1, .l = 1, .g = 1};
    struct kvm_segment ds = {.base = 0, .limit = 0xffffffff, .selector = 16, .type = 3,
                             .present = 1, .s = 1, .db = 1, .g = 1};
    s.cs = cs;
    s.ds = s.es = s.fs = s.gs = s.ss = ds;
    s.gdt.base = RAW_GDT;
    s.gdt.limit = 23;
    s.cr3 = RAW_PML4;
    s.cr4 = 1u << 5;
    s.cr0 = 0x80050033;
    s.efer = 0x500;
  } else {
    s.cs.base = 0;
    s.cs.selector = 0;
  }
  if (ioctl(r->vcpu, KVM_SET_SREGS, &s) < 0) return -1;
  if (ioctl(r->vcpu, KVM_SET_REGS, &regs) < 0) return -1;
  return 0;
}

static void raw_destroy(struct raw_vm *r) {
  if (r->run && r->run != MAP_FAILED) munmap(r->run, r->run_size);
  if (r->mem && r->mem != MAP_FAILED) munmap(r->mem, RAW_MEM);
  if (r->vcpu > 0) close(r->vcpu);
  if (r->vm > 0) close(r->vm);
}

/* Guest: 1: out %al,$0x80; jmp 1b */
static const uint8_t pio_loop[] = {0xe6, 0x80, 0xeb, 0xfc};
static const uint8_t just_hlt[] = {0xf4};

static double raw_pio_us(int kvm, int exits) {
  struct raw_vm r;
  if (raw_create(&r, kvm, pio_loop, sizeof(pio_loop), 1) != 0) {
    raw_destroy(&r);
    return -1;
  }
  double t0 = now_us();
  for (int i = 0; i < exits; i++) {
    if (ioctl(r.vcpu, KVM_RUN, 0) < 0 || r.run->exit_reason != KVM_EXIT_IO) {
      raw_destroy(&r);
      return -1;
    }
  }
  double t = (now_us() - t0) / exits;
  raw_destroy(&r);
  return t;
}

static double raw_create_us(int kvm) {
  double t0 = now_us();
  struct raw_vm r;
  if (raw_create(&r, kvm, just_hlt, sizeof(just_hlt), 0) != 0 || ioctl(r.vcpu, KVM_RUN, 0) < 0 ||
      r.run->exit_reason != KVM_EXIT_HLT) {
    raw_destroy(&r);
    return -1;
  }
  double t = now_us() - t0;
  raw_destroy(&r);
  return t;
}

/* ---- the same through libvmm ---- */

struct counter {
  int left;
};

static int count_port(vmm_vcpu_t *vcpu, uint64_t off, uint32_t size, int is_write,
                      uint64_t *data, void *ud) {
  (void)off, (void)size, (void)is_write, (void)data;
  struct counter *c = ud;
  if (--c->left == 0) vmm_vcpu_request_exit(vcpu, 0);
  return VMM_HANDLED;
}

static double api_pio_us(int exits) {
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = VMM_BACKEND_KVM;
  cfg.ram_size = 2u << 20;
  vmm_vm_t *vm;
  if (vmm_vm_create(&cfg, &vm) != 0) return -1;
  vmm_vcpu_t *vcpu;
  struct counter c = {exits};
  vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
  lm.entry = 0x100000;
  vmm_exit_t e;
  double t = -1;
  if (vmm_vcpu_create(vm, 0, &vcpu) == 0 && vmm_load_flat(vm, 0x100000, pio_loop, sizeof(pio_loop), NULL) == 0 &&
      vmm_vm_add_pio_handler(vm, 0x80, 1, count_port, &c, NULL) == 0 &&
      vmm_vcpu_setup_long_mode(vcpu, &lm) == 0) {
    double t0 = now_us();
    if (vmm_vcpu_run(vcpu, &e) == 0 && e.reason == VMM_EXIT_GUEST_EXIT) t = (now_us() - t0) / exits;
  }
  vmm_vm_destroy(vm);
  return t;
}

static double api_create_us(void) {
  double t0 = now_us();
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = VMM_BACKEND_KVM;
  cfg.ram_size = 2u << 20;
  vmm_vm_t *vm;
  if (vmm_vm_create(&cfg, &vm) != 0) return -1;
  vmm_vcpu_t *vcpu;
  vmm_exit_t e;
  double t = -1;
  if (vmm_vcpu_create(vm, 0, &vcpu) == 0 && vmm_load_flat(vm, 0x8000, just_hlt, 1, NULL) == 0 &&
      vmm_vcpu_setup_real_mode(vcpu, 0, 0x8000, 0xfff0) == 0 && vmm_vcpu_run(vcpu, &e) == 0 &&
      e.reason == VMM_EXIT_HLT)
    t = now_us() - t0;
  vmm_vm_destroy(vm);
  return t;
}

int main(int argc, char **argv) {
  int reps = 21, exits = 20000;
  const char *kernels = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = atoi(argv[++i]);
    else if (strcmp(argv[i], "--exits") == 0 && i + 1 < argc) exits = atoi(argv[++i]);
    else if (strcmp(argv[i], "--kernels") == 0 && i + 1 < argc) kernels = argv[++i];
    else {
      fprintf(stderr, "usage: %s [--reps N] [--exits N] [--kernels DIR]\n", argv[0]);
      return 2;
    }
  }
  if (reps < 1 || reps > 1000 || exits < 1) return 2;
  int rc = vmm_backend_probe(VMM_BACKEND_KVM);
  if (rc != 0) {
    printf("kvm backend unavailable here (%s): nothing to measure\n", vmm_strerror(rc));
    return 0;
  }
  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) return 1;
  double *raw = calloc((size_t)reps, sizeof(double)), *api = calloc((size_t)reps, sizeof(double));
  /* Interleave raw and API runs so that machine noise hits both alike. */
  for (int i = 0; i < reps; i++) {
    raw[i] = raw_pio_us(kvm, exits);
    api[i] = api_pio_us(exits);
    if (raw[i] < 0 || api[i] < 0) {
      printf("PIO round trip: guest did not run as expected\n");
      return 1;
    }
  }
  double rp = median(raw, reps), ap = median(api, reps);
  for (int i = 0; i < reps; i++) {
    raw[i] = raw_create_us(kvm);
    api[i] = api_create_us();
    if (raw[i] < 0 || api[i] < 0) {
      printf("VM creation: guest did not run as expected\n");
      return 1;
    }
  }
  double rc_ = median(raw, reps), ac = median(api, reps);
  printf("%-42s %12s %12s %8s\n", "measure (median of runs)", "raw KVM", "libvmm", "ratio");
  printf("%-42s %10.2f us %10.2f us %8.3f\n", "PIO exit round trip (CPL0)", rp, ap, ap / rp);
  printf("%-42s %10.1f us %10.1f us %8.3f\n", "VM creation to first instruction", rc_, ac, ac / rc_);
  if (kernels) printf("compute kernels: run bench_bt (native, bt, kvm at CPL3, pv, qemu, Unicorn)\n");
  free(raw);
  free(api);
  close(kvm);
  return 0;
}
