/* Start states: the long-mode system area (page tables, GDT, TSS, IDT with exception stubs,
 * hypercall page, boot info), real mode and flat 32-bit protected mode. Also turns the stubs'
 * port write back into a VMM_EXIT_EXCEPTION with the state at the faulting instruction. */
#include <cpuid.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define PTE_P 0x1ull
#define PTE_RW 0x2ull
#define PTE_US 0x4ull
#define PTE_PS 0x80ull

/* Identity-mapped guest-physical span: all RAM and at least the 32-bit MMIO hole. */
#define VMM_IDMAP_MIN (4ull << 30)
#define VMM_PD_GPA (VMM_PML4_GPA + 2 * VMM_PAGE_SIZE)
#define VMM_MAX_PDS ((VMM_SYSAREA_END - VMM_PD_GPA) / VMM_PAGE_SIZE)

static const vmm_segment_t vmm_seg_kernel_code = {
    .base = 0, .limit = 0xffffffff, .selector = VMM_SEL_KERNEL_CS, .type = 0xb, .present = 1,
    .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1};
static const vmm_segment_t vmm_seg_kernel_data = {
    .base = 0, .limit = 0xffffffff, .selector = VMM_SEL_KERNEL_DS, .type = 0x3, .present = 1,
    .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1};
static const vmm_segment_t vmm_seg_user_code = {
    .base = 0, .limit = 0xffffffff, .selector = VMM_SEL_USER_CS, .type = 0xb, .present = 1,
    .dpl = 3, .db = 0, .s = 1, .l = 1, .g = 1};
static const vmm_segment_t vmm_seg_user_data = {
    .base = 0, .limit = 0xffffffff, .selector = VMM_SEL_USER_DS, .type = 0x3, .present = 1,
    .dpl = 3, .db = 1, .s = 1, .l = 0, .g = 1};

static bool vmm_host_probe_avx(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  bool osxsave = c & (1u << 27), avx = c & (1u << 28);
  if (!osxsave || !avx) return false;
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (lo & 6) == 6;
}

/* CPUID can cost microseconds where the host is virtualized; the answer does not change. Two
 * threads racing here both compute the same value. */
static bool vmm_host_has_avx(void) {
  static int known = -1;
  int v = __atomic_load_n(&known, __ATOMIC_RELAXED);
  if (v < 0) {
    v = vmm_host_probe_avx();
    __atomic_store_n(&known, v, __ATOMIC_RELAXED);
  }
  return v != 0;
}

void vmm__hypercall_page_port(uint8_t *page) {
  for (uint32_t n = 0; n < VMM_HC_COUNT; n++) {
    uint8_t *e = page + n * VMM_HC_ENTRY_SIZE;
    e[0] = 0xb8;
    memcpy(e + 1, &n, 4);
    e[5] = 0xe7;
    e[6] = VMM_HC_PORT;
    e[7] = 0xc3;
  }
}

/* The page as it is now, read from the file it lives in where there is one: a clone's or a
 * restored VM's mapping may never have touched it, and on virtualized hosts a page fault costs
 * several times a pread. */
static void vmm_page_read(vmm_vm_t *vm, uint64_t gpa, const uint8_t *page, uint8_t *buf) {
  struct vmm_region *r = vmm__region_find(vm, gpa, VMM_PAGE_SIZE);
  if (r && !r->cow && r->memfd >= 0) {
    uint64_t off = gpa - r->gpa;
    int fd = vmm__region_page_owned(r, off / VMM_PAGE_SIZE) ? r->memfd : r->base_fd;
    if (pread(fd, buf, VMM_PAGE_SIZE, (off_t)off) == VMM_PAGE_SIZE) return;
  }
  memcpy(buf, page, VMM_PAGE_SIZE);
}

int vmm__install_hypercall_page(vmm_vm_t *vm, uint64_t gpa) {
  uint8_t *page = vmm__gpa_ptr(vm, gpa, VMM_PAGE_SIZE);
  if (page == NULL) return VMM_EFAULT;
  /* Unused space traps: int3 never reaches a handler the guest did not install. */
  uint8_t fresh[VMM_PAGE_SIZE];
  memset(fresh, 0xcc, VMM_PAGE_SIZE);
  int rc = vm->ops->fill_hypercall_page(vm, gpa, fresh);
  if (rc) return rc;
  vm->hypercall_page_gpa = gpa;
  /* A restore usually finds the page as it was: then nothing cached from it goes stale. */
  uint8_t now[VMM_PAGE_SIZE];
  vmm_page_read(vm, gpa, page, now);
  if (memcmp(now, fresh, VMM_PAGE_SIZE) != 0) {
    if (vmm__gpa_wptr(vm, gpa, VMM_PAGE_SIZE) == NULL) return VMM_ENOMEM;
    memcpy(page, fresh, VMM_PAGE_SIZE);
    vmm__host_wrote(vm, gpa, VMM_PAGE_SIZE);
  }
  return 0;
}

static int vmm_write_page_tables(vmm_vm_t *vm, uint64_t span, bool user) {
  uint64_t npd = (span + (1ull << 30) - 1) >> 30;
  if (npd > VMM_MAX_PDS) npd = VMM_MAX_PDS;
  uint64_t *pml4 = vmm__gpa_wptr(vm, VMM_PML4_GPA, VMM_PAGE_SIZE);
  uint64_t *pdpt = vmm__gpa_wptr(vm, VMM_PML4_GPA + VMM_PAGE_SIZE, VMM_PAGE_SIZE);
  uint64_t *pds = vmm__gpa_wptr(vm, VMM_PD_GPA, npd * VMM_PAGE_SIZE);
  if (!pml4 || !pdpt || !pds) return VMM_EFAULT;
  uint64_t flags = PTE_P | PTE_RW | (user ? PTE_US : 0);
  memset(pml4, 0, VMM_PAGE_SIZE);
  memset(pdpt, 0, VMM_PAGE_SIZE);
  pml4[0] = (VMM_PML4_GPA + VMM_PAGE_SIZE) | flags;
  for (uint64_t i = 0; i < npd; i++) {
    pdpt[i] = (VMM_PD_GPA + i * VMM_PAGE_SIZE) | flags;
    for (uint64_t j = 0; j < 512; j++) pds[i * 512 + j] = ((i << 30) | (j << 21)) | flags | PTE_PS;
  }
  vmm__host_wrote(vm, VMM_PML4_GPA, 2 * VMM_PAGE_SIZE);
  vmm__host_wrote(vm, VMM_PD_GPA, npd * VMM_PAGE_SIZE);
  return 0;
}

/* The TSS: 104 bytes, then an I/O permission bitmap of all ports (8 KiB of zeros: every port
 * allowed) and its terminating 0xff byte. CPL3 guests also start with IOPL 3, which makes the
 * bitmap moot on most hosts; but some KVM implementations (kvm_pvm) emulate a user-mode IN/OUT
 * by the bitmap alone and drop IOPL from the RFLAGS they report, so a state moved between
 * backends keeps its port access only through the bitmap. */
#define VMM_TSS_IOMAP 0x68u
#define VMM_TSS_LIMIT (VMM_TSS_IOMAP + 8192u)
_Static_assert(VMM_TSS_GPA + VMM_TSS_LIMIT + 1 <= VMM_EXC_STACK_TOP - 512,
               "the TSS and its I/O bitmap leave room for the exception stack");

static int vmm_write_descriptor_tables(vmm_vm_t *vm) {
  uint64_t *gdt = vmm__gpa_wptr(vm, VMM_GDT_GPA, VMM_PAGE_SIZE);
  uint64_t *idt = vmm__gpa_wptr(vm, VMM_IDT_GPA, VMM_PAGE_SIZE);
  uint8_t *stubs = vmm__gpa_wptr(vm, VMM_EXC_STUBS_GPA, VMM_PAGE_SIZE);
  uint8_t *tss = vmm__gpa_wptr(vm, VMM_TSS_GPA, VMM_EXC_STACK_TOP - VMM_TSS_GPA);
  if (!gdt || !idt || !stubs || !tss) return VMM_EFAULT;

  memset(gdt, 0, VMM_PAGE_SIZE);
  gdt[VMM_SEL_KERNEL_CS >> 3] = vmm__segment_to_desc(&vmm_seg_kernel_code);
  gdt[VMM_SEL_KERNEL_DS >> 3] = vmm__segment_to_desc(&vmm_seg_kernel_data);
  gdt[VMM_SEL_USER_DS >> 3] = vmm__segment_to_desc(&vmm_seg_user_data);
  gdt[VMM_SEL_USER_CS >> 3] = vmm__segment_to_desc(&vmm_seg_user_code);
  vmm_segment_t tr = {.base = VMM_TSS_GPA, .limit = VMM_TSS_LIMIT, .selector = VMM_SEL_TSS, .type = 0x9,
                      .present = 1, .s = 0};
  gdt[VMM_SEL_TSS >> 3] = vmm__segment_to_desc(&tr);
  gdt[(VMM_SEL_TSS >> 3) + 1] = VMM_TSS_GPA >> 32;

  /* 64-bit TSS: rsp0 at offset 4, ist1 at offset 36, I/O map base at 102. The exception
   * stack below VMM_EXC_STACK_TOP shares the TSS's last page. */
  memset(tss, 0, VMM_EXC_STACK_TOP - VMM_TSS_GPA);
  uint64_t top = VMM_EXC_STACK_TOP;
  memcpy(tss + 4, &top, 8);
  memcpy(tss + 36, &top, 8);
  uint16_t iomap = VMM_TSS_IOMAP;
  memcpy(tss + 102, &iomap, 2);
  tss[VMM_TSS_LIMIT] = 0xff;

  /* Each stub: out %al,$VMM_EXC_PORT; then hlt in a loop should anything resume it. */
  memset(stubs, 0xcc, VMM_PAGE_SIZE);
  for (int v = 0; v < 256; v++) {
    uint8_t *s = stubs + v * VMM_EXC_STUB_SIZE;
    static const uint8_t code[VMM_EXC_STUB_SIZE] = {0xe6, VMM_EXC_PORT, 0xf4, 0xeb, 0xfd,
                                                    0x90, 0x90, 0x90};
    memcpy(s, code, sizeof(code));
    uint64_t off = VMM_EXC_STUBS_GPA + (uint64_t)v * VMM_EXC_STUB_SIZE;
    /* Interrupt gate, IST 1; #BP and #OF may be raised from user mode by INT3/INTO. */
    uint64_t dpl = (v == 3 || v == 4) ? 3 : 0;
    uint64_t lo = (off & 0xffff) | ((uint64_t)VMM_SEL_KERNEL_CS << 16) | (1ull << 32) |
                  (0xeull << 40) | (dpl << 45) | (1ull << 47) | (((off >> 16) & 0xffff) << 48);
    idt[v * 2] = lo;
    idt[v * 2 + 1] = off >> 32;
  }
  vmm__host_wrote(vm, VMM_GDT_GPA, VMM_EXC_STACK_TOP - VMM_GDT_GPA); /* GDT .. TSS, stack */
  return 0;
}

static uint64_t vmm_ram_top_from_zero(vmm_vm_t *vm) {
  uint64_t top = 0;
  for (size_t i = 0; i < vm->nregions; i++) {
    if (vm->regions[i]->gpa != top) break;
    top += vm->regions[i]->size;
  }
  return top;
}

static uint64_t vmm_ram_end(vmm_vm_t *vm) {
  return vm->nregions ? vm->regions[vm->nregions - 1]->gpa + vm->regions[vm->nregions - 1]->size
                      : 0;
}

int vmm_vcpu_setup_long_mode(vmm_vcpu_t *vcpu, const vmm_long_mode_config_t *config) {
  if (vcpu == NULL || config == NULL) return VMM_EINVAL;
  if (config->struct_size < offsetof(vmm_long_mode_config_t, image_high) + sizeof(uint64_t))
    return VMM_EINVAL;
  vmm_long_mode_config_t cfg = VMM_LONG_MODE_CONFIG_INIT;
  memcpy(&cfg, config, config->struct_size < sizeof(cfg) ? config->struct_size : sizeof(cfg));
  if (cfg.cpl != 0 && cfg.cpl != 3) return VMM_EINVAL;
  vmm_vm_t *vm = vcpu->vm;
  if (atomic_load(&vcpu->running)) return VMM_EBUSY;

  uint64_t ram_top = vmm_ram_top_from_zero(vm);
  if (ram_top < VMM_SYSAREA_END) return VMM_EFAULT;
  if (cfg.image_high > cfg.image_low && cfg.image_low < VMM_SYSAREA_END &&
      cfg.image_high > VMM_SYSAREA_GPA) {
    VMM_LOG_E("image [%#llx, %#llx) overlaps the system area [%#llx, %#llx)",
              (unsigned long long)cfg.image_low, (unsigned long long)cfg.image_high,
              VMM_SYSAREA_GPA, VMM_SYSAREA_END);
    return VMM_EEXIST;
  }
  bool user = cfg.cpl == 3;
  uint64_t span = vmm_ram_end(vm);
  if (span < VMM_IDMAP_MIN) span = VMM_IDMAP_MIN;

  int rc = vmm_write_page_tables(vm, span, user);
  if (rc == 0) rc = vmm_write_descriptor_tables(vm);
  if (rc == 0) rc = vmm__install_hypercall_page(vm, VMM_HYPERCALL_PAGE_GPA);
  if (rc != 0) return rc;
  vm->exc_stubs_gpa = VMM_EXC_STUBS_GPA;

  uint64_t rsp = cfg.stack_top ? cfg.stack_top : (ram_top & ~15ull);

  struct vmm_boot_info bi;
  memset(&bi, 0, sizeof(bi));
  bi.magic = VMM_BOOT_MAGIC;
  bi.version = VMM_BOOT_VERSION;
  bi.size = sizeof(bi);
  bi.hypercall_page = VMM_HYPERCALL_PAGE_GPA;
  bi.ram_size = ram_top;
  bi.cmdline = VMM_CMDLINE_GPA;
  bi.cpl = cfg.cpl;
  bi.backend = vm->backend;
  bi.image_start = cfg.image_low;
  bi.image_end = cfg.image_high;
  bi.stack_top = rsp;
  char cmdline[VMM_HYPERCALL_PAGE_GPA - VMM_CMDLINE_GPA];
  memset(cmdline, 0, sizeof(cmdline));
  if (cfg.cmdline) strncpy(cmdline, cfg.cmdline, sizeof(cmdline) - 1);
  rc = vmm_vm_write(vm, VMM_BOOTINFO_GPA, &bi, sizeof(bi));
  if (rc == 0) rc = vmm_vm_write(vm, VMM_CMDLINE_GPA, cmdline, sizeof(cmdline));
  if (rc != 0) return rc;

  vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
  rc = vmm_vcpu_get_state(vcpu, &st);
  if (rc != 0) return rc;
  memset(&st.regs, 0, sizeof(st.regs));
  st.regs.rip = cfg.entry;
  st.regs.rsp = rsp;
  st.regs.rdi = VMM_BOOTINFO_GPA;
  st.regs.rsi = VMM_BOOT_MAGIC;
  st.regs.rflags = VMM_RFLAGS_FIXED | (user ? VMM_RFLAGS_IOPL3 : 0);
  const vmm_segment_t *code = user ? &vmm_seg_user_code : &vmm_seg_kernel_code;
  const vmm_segment_t *data = user ? &vmm_seg_user_data : &vmm_seg_kernel_data;
  st.cs = *code;
  st.ds = st.es = st.fs = st.gs = st.ss = *data;
  st.tr = (vmm_segment_t){.base = VMM_TSS_GPA, .limit = VMM_TSS_LIMIT, .selector = VMM_SEL_TSS,
                          .type = 0xb, .present = 1, .s = 0};
  st.ldt = (vmm_segment_t){.type = 0x2, .present = 0, .unusable = 1};
  st.gdt = (vmm_dtable_t){.base = VMM_GDT_GPA, .limit = 0x37};
  st.idt = (vmm_dtable_t){.base = VMM_IDT_GPA, .limit = 0xfff};
  st.cr0 = VMM_CR0_PE | VMM_CR0_MP | VMM_CR0_ET | VMM_CR0_NE | VMM_CR0_WP | VMM_CR0_PG;
  st.cr2 = 0;
  st.cr3 = VMM_PML4_GPA;
  st.cr4 = VMM_CR4_PAE | VMM_CR4_OSFXSR | VMM_CR4_OSXMMEXCPT;
  st.efer = VMM_EFER_LME | VMM_EFER_LMA;
  st.xcr0 = 1;
  if (vmm_host_has_avx()) {
    st.cr4 |= VMM_CR4_OSXSAVE;
    st.xcr0 = 7;
  }
  memset(&st.exception, 0, sizeof(st.exception));
  memset(&st.interrupt, 0, sizeof(st.interrupt));
  st.halted = 0;
  return vmm_vcpu_set_state(vcpu, &st);
}

static void vmm_real_seg(vmm_segment_t *s, uint16_t sel, uint8_t type) {
  *s = (vmm_segment_t){.base = (uint64_t)sel << 4, .limit = 0xffff, .selector = sel,
                       .type = type, .present = 1, .s = 1};
}

int vmm_vcpu_setup_real_mode(vmm_vcpu_t *vcpu, uint16_t cs, uint16_t ip, uint16_t sp) {
  if (vcpu == NULL) return VMM_EINVAL;
  vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
  int rc = vmm_vcpu_get_state(vcpu, &st);
  if (rc) return rc;
  memset(&st.regs, 0, sizeof(st.regs));
  st.regs.rip = ip;
  st.regs.rsp = sp;
  st.regs.rflags = VMM_RFLAGS_FIXED;
  vmm_real_seg(&st.cs, cs, 0xb);
  vmm_real_seg(&st.ds, cs, 0x3);
  st.es = st.fs = st.gs = st.ss = st.ds;
  st.tr = (vmm_segment_t){.limit = 0xffff, .type = 0xb, .present = 1};
  st.ldt = (vmm_segment_t){.limit = 0xffff, .type = 0x2, .present = 1};
  st.gdt = (vmm_dtable_t){.base = 0, .limit = 0xffff};
  st.idt = (vmm_dtable_t){.base = 0, .limit = 0x3ff};
  st.cr0 = VMM_CR0_ET | VMM_CR0_NE;
  st.cr3 = st.cr4 = st.efer = 0;
  st.xcr0 = 1;
  return vmm_vcpu_set_state(vcpu, &st);
}

int vmm_vcpu_setup_protected_mode(vmm_vcpu_t *vcpu, uint32_t eip, uint32_t esp) {
  if (vcpu == NULL) return VMM_EINVAL;
  vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
  int rc = vmm_vcpu_get_state(vcpu, &st);
  if (rc) return rc;
  memset(&st.regs, 0, sizeof(st.regs));
  st.regs.rip = eip;
  st.regs.rsp = esp;
  st.regs.rflags = VMM_RFLAGS_FIXED;
  st.cs = (vmm_segment_t){.limit = 0xffffffff, .selector = 0x08, .type = 0xb, .present = 1,
                          .db = 1, .s = 1, .g = 1};
  st.ds = (vmm_segment_t){.limit = 0xffffffff, .selector = 0x10, .type = 0x3, .present = 1,
                          .db = 1, .s = 1, .g = 1};
  st.es = st.fs = st.gs = st.ss = st.ds;
  st.tr = (vmm_segment_t){.limit = 0xffff, .type = 0xb, .present = 1};
  st.ldt = (vmm_segment_t){.type = 0x2, .unusable = 1};
  st.cr0 = VMM_CR0_PE | VMM_CR0_ET | VMM_CR0_NE;
  st.cr3 = st.cr4 = st.efer = 0;
  st.xcr0 = 1;
  return vmm_vcpu_set_state(vcpu, &st);
}

/* Vectors whose frame carries an error code. */
static bool vmm_vector_has_error_code(unsigned v) {
  return v == 8 || (v >= 10 && v <= 14) || v == 17 || v == 21 || v == 29 || v == 30;
}

/* Returns 1 when the exit was a stub's report and is now an EXCEPTION exit (or an internal
 * error when the frame is unreadable), 0 when it was an ordinary write to the port. */
int vmm__exception_from_stub(vmm_vcpu_t *vcpu, vmm_exit_t *exit) {
  vmm_vm_t *vm = vcpu->vm;
  const struct vmm_backend_ops *ops = vm->ops;
  uint64_t stubs = vm->exc_stubs_gpa;
  vmm_regs_t regs;
  int rc = ops->get_regs(vcpu, &regs);
  if (rc) return rc;
  /* Depending on the backend RIP is at the OUT or just past it; both lie in the stub. */
  if (regs.rip < stubs || regs.rip >= stubs + 256 * VMM_EXC_STUB_SIZE) return 0;
  unsigned vector = (unsigned)((regs.rip - stubs) / VMM_EXC_STUB_SIZE);

  rc = ops->flush_pending(vcpu, exit);
  if (rc) return rc;
  vmm_cpu_state_t st;
  memset(&st, 0, sizeof(st));
  st.struct_size = sizeof(st);
  rc = ops->get_state(vcpu, &st);
  if (rc) return rc;

  bool has_err = vmm_vector_has_error_code(vector);
  uint64_t frame[6];
  size_t n = has_err ? 6 : 5;
  if (vmm_vm_read(vm, st.regs.rsp, frame, n * sizeof(uint64_t)) != 0) {
    vmm__exit_internal(exit, VMM_EFAULT, "exception %u: frame at %#llx is not in RAM", vector,
                       (unsigned long long)st.regs.rsp);
    return 1;
  }
  const uint64_t *f = has_err ? frame + 1 : frame;
  vmm_segment_t cs, ss;
  if (vmm__segment_load(vm, &st.gdt, (uint16_t)f[1], &cs) != 0 ||
      vmm__segment_load(vm, &st.gdt, (uint16_t)f[4], &ss) != 0) {
    vmm__exit_internal(exit, VMM_ECORRUPT, "exception %u: bad selectors in frame (%#llx, %#llx)",
                       vector, (unsigned long long)f[1], (unsigned long long)f[4]);
    return 1;
  }
  st.regs.rip = f[0];
  st.regs.rflags = f[2];
  st.regs.rsp = f[3];
  st.cs = cs;
  st.ss = ss;
  rc = ops->set_state(vcpu, &st);
  if (rc) return rc;

  memset(exit, 0, sizeof(*exit));
  exit->reason = VMM_EXIT_EXCEPTION;
  exit->exception.vector = (uint8_t)vector;
  exit->exception.has_error_code = has_err;
  exit->exception.error_code = has_err ? (uint32_t)frame[0] : 0;
  exit->exception.rip = f[0];
  exit->exception.cr2 = vector == 14 ? st.cr2 : 0;
  return 1;
}
