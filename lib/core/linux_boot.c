/* The 64-bit entry state of the Linux boot protocol: long mode with identity paging, the boot
 * GDT (__BOOT_CS 0x10, __BOOT_DS 0x18), rsi = the zero page, interrupts off. */
#include <string.h>

#include "linux_internal.h"

#define PTE_P 0x1ull
#define PTE_RW 0x2ull
#define PTE_PS 0x80ull
#define VMM_LINUX_TSS_SEL 0x20

static const vmm_segment_t vmm_linux_cs = {
    .base = 0, .limit = 0xffffffff, .selector = VMM_LINUX_BOOT_CS, .type = 0xb, .present = 1,
    .dpl = 0, .db = 0, .s = 1, .l = 1, .g = 1};
static const vmm_segment_t vmm_linux_ds = {
    .base = 0, .limit = 0xffffffff, .selector = VMM_LINUX_BOOT_DS, .type = 0x3, .present = 1,
    .dpl = 0, .db = 1, .s = 1, .l = 0, .g = 1};
/* A TSS the kernel never uses, only so that TR is valid for the CPU's entry checks. */
static const vmm_segment_t vmm_linux_tr = {
    .base = 0, .limit = 0x67, .selector = VMM_LINUX_TSS_SEL, .type = 0xb, .present = 1, .s = 0};

static uint64_t vmm_linux_ram_end(const vmm_vm_t *vm) {
  return vm->nregions ? vm->regions[vm->nregions - 1]->gpa + vm->regions[vm->nregions - 1]->size
                      : 0;
}

/* Identity map of [0, span) with 2 MiB pages: PML4 -> one PDPT -> one PD per GiB. */
static int vmm_linux_page_tables(vmm_vm_t *vm, uint64_t span) {
  uint64_t npd = (span + (1ull << 30) - 1) >> 30;
  uint64_t pdpt_gpa = VMM_LINUX_PML4_GPA + VMM_PAGE_SIZE, pd_gpa = pdpt_gpa + VMM_PAGE_SIZE;
  uint64_t *pml4 = vmm__gpa_wptr(vm, VMM_LINUX_PML4_GPA, VMM_PAGE_SIZE);
  uint64_t *pdpt = vmm__gpa_wptr(vm, pdpt_gpa, VMM_PAGE_SIZE);
  uint64_t *pds = vmm__gpa_wptr(vm, pd_gpa, npd * VMM_PAGE_SIZE);
  if (!pml4 || !pdpt || !pds) return VMM_EFAULT;
  memset(pml4, 0, VMM_PAGE_SIZE);
  memset(pdpt, 0, VMM_PAGE_SIZE);
  pml4[0] = pdpt_gpa | PTE_P | PTE_RW;
  for (uint64_t i = 0; i < npd; i++) {
    pdpt[i] = (pd_gpa + i * VMM_PAGE_SIZE) | PTE_P | PTE_RW;
    for (uint64_t j = 0; j < 512; j++) pds[i * 512 + j] = (i << 30) | (j << 21) | PTE_P | PTE_RW | PTE_PS;
  }
  return 0;
}

#define VMM_LINUX_INFO_MIN_SIZE (offsetof(vmm_linux_info_t, decompressed_size) + sizeof(uint64_t))

int vmm_vcpu_setup_linux(vmm_vcpu_t *vcpu, const vmm_linux_info_t *info) {
  if (vcpu == NULL || info == NULL || info->struct_size < VMM_LINUX_INFO_MIN_SIZE)
    return VMM_EINVAL;
  if (atomic_load(&vcpu->running)) return VMM_EBUSY;
  vmm_vm_t *vm = vcpu->vm;
  if (vmm__region_find(vm, 0, VMM_LINUX_LOW_RESERVED_END) == NULL ||
      vmm__region_find(vm, info->boot_params, BP_SIZE) == NULL ||
      vmm__region_find(vm, info->entry, 1) == NULL) {
    VMM_LOG_E("linux: RAM does not cover the boot area, the zero page at %#llx or the entry "
              "point at %#llx", (unsigned long long)info->boot_params,
              (unsigned long long)info->entry);
    return VMM_EFAULT;
  }
  uint64_t span = vmm_linux_ram_end(vm);
  if (span < (4ull << 30)) span = 4ull << 30;
  if (span > VMM_LINUX_IDMAP_MAX) span = VMM_LINUX_IDMAP_MAX;
  if (info->entry >= span || info->boot_params >= span) {
    VMM_LOG_E("linux: the entry point or the zero page lies above the identity map");
    return VMM_EFAULT;
  }
  int rc = vmm_linux_page_tables(vm, span);
  if (rc) return rc;
  uint64_t gdt[5] = {0, 0, vmm__segment_to_desc(&vmm_linux_cs),
                     vmm__segment_to_desc(&vmm_linux_ds), vmm__segment_to_desc(&vmm_linux_tr)};
  rc = vmm_vm_write(vm, VMM_LINUX_GDT_GPA, gdt, sizeof(gdt));
  if (rc) return rc;

  vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
  rc = vmm_vcpu_get_state(vcpu, &st);
  if (rc) return rc;
  memset(&st.regs, 0, sizeof(st.regs));
  st.regs.rip = info->entry;
  st.regs.rsi = info->boot_params;
  st.regs.rsp = VMM_LINUX_STACK_TOP;
  st.regs.rflags = VMM_RFLAGS_FIXED;
  st.cs = vmm_linux_cs;
  st.ds = st.es = st.ss = st.fs = st.gs = vmm_linux_ds;
  st.tr = vmm_linux_tr;
  st.ldt = (vmm_segment_t){.type = 0x2, .unusable = 1};
  st.gdt = (vmm_dtable_t){.base = VMM_LINUX_GDT_GPA, .limit = sizeof(gdt) - 1};
  st.idt = (vmm_dtable_t){.base = 0, .limit = 0};
  st.cr0 = VMM_CR0_PE | VMM_CR0_ET | VMM_CR0_NE | VMM_CR0_PG;
  st.cr2 = 0;
  st.cr3 = VMM_LINUX_PML4_GPA;
  st.cr4 = VMM_CR4_PAE;
  st.efer = VMM_EFER_LME | VMM_EFER_LMA;
  st.xcr0 = 1;
  memset(&st.exception, 0, sizeof(st.exception));
  memset(&st.interrupt, 0, sizeof(st.interrupt));
  st.halted = 0;
  return vmm_vcpu_set_state(vcpu, &st);
}
