/* Segment descriptors in guest memory and their unpacked form. */
#include "internal.h"

void vmm__segment_from_desc(uint64_t lo, uint64_t hi, uint16_t selector, vmm_segment_t *seg) {
  seg->selector = selector;
  seg->limit = (uint32_t)((lo & 0xffff) | ((lo >> 32) & 0xf0000));
  seg->base = ((lo >> 16) & 0xffffff) | (((lo >> 56) & 0xff) << 24);
  seg->type = (lo >> 40) & 0xf;
  seg->s = (lo >> 44) & 1;
  seg->dpl = (lo >> 45) & 3;
  seg->present = (lo >> 47) & 1;
  seg->avl = (lo >> 52) & 1;
  seg->l = (lo >> 53) & 1;
  seg->db = (lo >> 54) & 1;
  seg->g = (lo >> 55) & 1;
  seg->unusable = !seg->present;
  seg->reserved = 0;
  if (seg->g) seg->limit = (seg->limit << 12) | 0xfff;
  /* System descriptors (TSS, LDT) are 16 bytes in long mode; the second half holds base[63:32]. */
  if (!seg->s) seg->base |= (hi & 0xffffffffull) << 32;
}

uint64_t vmm__segment_to_desc(const vmm_segment_t *seg) {
  uint32_t limit = seg->g ? seg->limit >> 12 : seg->limit;
  uint64_t d = 0;
  d |= limit & 0xffff;
  d |= (uint64_t)((limit >> 16) & 0xf) << 48;
  d |= (seg->base & 0xffffff) << 16;
  d |= ((seg->base >> 24) & 0xff) << 56;
  d |= (uint64_t)(seg->type & 0xf) << 40;
  d |= (uint64_t)(seg->s & 1) << 44;
  d |= (uint64_t)(seg->dpl & 3) << 45;
  d |= (uint64_t)(seg->present & 1) << 47;
  d |= (uint64_t)(seg->avl & 1) << 52;
  d |= (uint64_t)(seg->l & 1) << 53;
  d |= (uint64_t)(seg->db & 1) << 54;
  d |= (uint64_t)(seg->g & 1) << 55;
  return d;
}

int vmm__segment_load(vmm_vm_t *vm, const vmm_dtable_t *gdt, uint16_t selector,
                      vmm_segment_t *seg) {
  if ((selector & ~3u) == 0) {
    *seg = (vmm_segment_t){.selector = selector, .unusable = 1, .type = 3, .s = 1, .db = 1,
                           .g = 1, .limit = 0xffffffff};
    return 0;
  }
  if (selector & 4) return VMM_ENOSYS; /* LDT selectors: not used by the guests we start. */
  uint64_t off = selector & ~7u;
  if (off + 7 > gdt->limit) return VMM_ERANGE;
  uint64_t d[2] = {0, 0};
  int rc = vmm_vm_read(vm, gdt->base + off, &d[0], 8);
  if (rc) return rc;
  if (!((d[0] >> 44) & 1) && off + 15 <= gdt->limit) vmm_vm_read(vm, gdt->base + off + 8, &d[1], 8);
  vmm__segment_from_desc(d[0], d[1], selector, seg);
  return 0;
}
