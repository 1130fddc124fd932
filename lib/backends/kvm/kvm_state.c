/* kvm backend: the full CPU state through KVM's state ioctls. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "kvm.h"

static void vmm_seg_from_kvm(vmm_segment_t *d, const struct kvm_segment *s) {
  d->base = s->base;
  d->limit = s->limit;
  d->selector = s->selector;
  d->type = s->type;
  d->present = s->present;
  d->dpl = s->dpl;
  d->db = s->db;
  d->s = s->s;
  d->l = s->l;
  d->g = s->g;
  d->avl = s->avl;
  d->unusable = s->unusable;
  d->reserved = 0;
}

static void vmm_seg_to_kvm(struct kvm_segment *d, const vmm_segment_t *s) {
  memset(d, 0, sizeof(*d));
  d->base = s->base;
  d->limit = s->limit;
  d->selector = s->selector;
  d->type = s->type;
  d->present = s->present;
  d->dpl = s->dpl;
  d->db = s->db;
  d->s = s->s;
  d->l = s->l;
  d->g = s->g;
  d->avl = s->avl;
  d->unusable = s->unusable;
}

/* Pointers to the vmm_cpu_state_t fields that mirror msr_index[] of the VM, by MSR number. */
static uint64_t *vmm_kvm_msr_field(vmm_cpu_state_t *st, uint32_t index) {
  switch (index) {
    case 0xc0000081: return &st->star;
    case 0xc0000082: return &st->lstar;
    case 0xc0000083: return &st->cstar;
    case 0xc0000084: return &st->sfmask;
    case 0xc0000102: return &st->kernel_gs_base;
    case 0x00000174: return &st->sysenter_cs;
    case 0x00000175: return &st->sysenter_esp;
    case 0x00000176: return &st->sysenter_eip;
    case 0x00000277: return &st->pat;
    case 0x00000010: return &st->tsc;
    case 0xc0000103: return &st->tsc_aux;
    case 0x000001a0: return &st->misc_enable;
    default: return NULL;
  }
}

struct vmm_kvm_msrs {
  struct kvm_msrs hdr;
  struct kvm_msr_entry e[VMM_KVM_MAX_MSRS];
};

/* Legacy FXSAVE image <-> KVM's kvm_fpu, for hosts without KVM_CAP_XSAVE. */
static void vmm_fxsave_from_fpu(uint8_t *x, const struct kvm_fpu *f) {
  memset(x, 0, 512);
  memcpy(x + 0, &f->fcw, 2);
  memcpy(x + 2, &f->fsw, 2);
  x[4] = f->ftwx;
  memcpy(x + 6, &f->last_opcode, 2);
  memcpy(x + 8, &f->last_ip, 8);
  memcpy(x + 16, &f->last_dp, 8);
  memcpy(x + 24, &f->mxcsr, 4);
  for (int i = 0; i < 8; i++) memcpy(x + 32 + i * 16, f->fpr[i], 16);
  memcpy(x + 160, f->xmm, 256);
}

static void vmm_fpu_from_fxsave(struct kvm_fpu *f, const uint8_t *x) {
  memset(f, 0, sizeof(*f));
  memcpy(&f->fcw, x + 0, 2);
  memcpy(&f->fsw, x + 2, 2);
  f->ftwx = x[4];
  memcpy(&f->last_opcode, x + 6, 2);
  memcpy(&f->last_ip, x + 8, 8);
  memcpy(&f->last_dp, x + 16, 8);
  memcpy(&f->mxcsr, x + 24, 4);
  for (int i = 0; i < 8; i++) memcpy(f->fpr[i], x + 32 + i * 16, 16);
  memcpy(f->xmm, x + 160, 256);
}

#define KVM_DO(fd, req, arg)                              \
  do {                                                    \
    int rc_ = vmm__kvm_ioctl((fd), (req), (arg), #req);   \
    if (rc_ < 0) return rc_;                              \
  } while (0)

int vmm__kvm_get_state(vmm_vcpu_t *vcpu, vmm_cpu_state_t *st) {
  struct vmm_kvm_vm *k = vmm_kvm_vm(vcpu->vm);
  struct vmm_kvm_vcpu *kv = vmm_kvm_vcpu(vcpu);
  int rc = vmm__kvm_get_regs(vcpu, &st->regs);
  if (rc) return rc;

  struct kvm_sregs s;
  KVM_DO(kv->fd, KVM_GET_SREGS, &s);
  vmm_seg_from_kvm(&st->cs, &s.cs);
  vmm_seg_from_kvm(&st->ds, &s.ds);
  vmm_seg_from_kvm(&st->es, &s.es);
  vmm_seg_from_kvm(&st->fs, &s.fs);
  vmm_seg_from_kvm(&st->gs, &s.gs);
  vmm_seg_from_kvm(&st->ss, &s.ss);
  vmm_seg_from_kvm(&st->tr, &s.tr);
  vmm_seg_from_kvm(&st->ldt, &s.ldt);
  st->gdt = (vmm_dtable_t){.base = s.gdt.base, .limit = s.gdt.limit};
  st->idt = (vmm_dtable_t){.base = s.idt.base, .limit = s.idt.limit};
  st->cr0 = s.cr0;
  st->cr2 = s.cr2;
  st->cr3 = s.cr3;
  st->cr4 = s.cr4;
  st->cr8 = s.cr8;
  st->efer = s.efer;
  st->apic_base = s.apic_base;

  struct vmm_kvm_msrs m;
  memset(&m, 0, sizeof(m));
  m.hdr.nmsrs = (uint32_t)k->nmsrs;
  for (size_t i = 0; i < k->nmsrs; i++) m.e[i].index = k->msr_index[i];
  int got = vmm__kvm_ioctl(kv->fd, KVM_GET_MSRS, &m, "KVM_GET_MSRS");
  if (got < 0) return got;
  for (int i = 0; i < got; i++) {
    uint64_t *f = vmm_kvm_msr_field(st, m.e[i].index);
    if (f) *f = m.e[i].data;
  }

  memset(st->xsave, 0, sizeof(st->xsave));
  if (k->has_xsave) {
    struct kvm_xsave x;
    KVM_DO(kv->fd, KVM_GET_XSAVE, &x);
    memcpy(st->xsave, x.region, sizeof(st->xsave));
  } else {
    struct kvm_fpu f;
    KVM_DO(kv->fd, KVM_GET_FPU, &f);
    vmm_fxsave_from_fpu(st->xsave, &f);
    /* XSTATE_BV: x87 and SSE are in the image (an XRSTOR elsewhere must not reset them). */
    uint64_t bv = 3;
    memcpy(st->xsave + 512, &bv, 8);
  }
  st->xcr0 = 1;
  if (k->has_xcrs) {
    struct kvm_xcrs x;
    KVM_DO(kv->fd, KVM_GET_XCRS, &x);
    for (uint32_t i = 0; i < x.nr_xcrs && i < KVM_MAX_XCRS; i++)
      if (x.xcrs[i].xcr == 0) st->xcr0 = x.xcrs[i].value;
  }

  struct kvm_vcpu_events ev;
  KVM_DO(kv->fd, KVM_GET_VCPU_EVENTS, &ev);
  st->exception = (vmm_exception_event_t){
      .injected = ev.exception.injected, .pending = ev.exception.pending,
      .vector = ev.exception.nr, .has_error_code = ev.exception.has_error_code,
      .error_code = ev.exception.error_code};
  st->interrupt = (vmm_interrupt_event_t){
      .injected = ev.interrupt.injected, .vector = ev.interrupt.nr, .soft = ev.interrupt.soft,
      .shadow = ev.interrupt.shadow, .nmi_injected = ev.nmi.injected,
      .nmi_pending = ev.nmi.pending, .nmi_masked = ev.nmi.masked};

  if (k->has_debugregs) {
    struct kvm_debugregs d;
    KVM_DO(kv->fd, KVM_GET_DEBUGREGS, &d);
    st->dr0 = d.db[0];
    st->dr1 = d.db[1];
    st->dr2 = d.db[2];
    st->dr3 = d.db[3];
    st->dr6 = d.dr6;
    st->dr7 = d.dr7;
  }
  struct kvm_mp_state mp;
  KVM_DO(kv->fd, KVM_GET_MP_STATE, &mp);
  st->halted = mp.mp_state == KVM_MP_STATE_HALTED;
  return 0;
}

int vmm__kvm_set_state(vmm_vcpu_t *vcpu, const vmm_cpu_state_t *st) {
  struct vmm_kvm_vm *k = vmm_kvm_vm(vcpu->vm);
  struct vmm_kvm_vcpu *kv = vmm_kvm_vcpu(vcpu);
  int rc = vmm__kvm_flush_pending(vcpu, &vcpu->cur);
  if (rc) return rc;
  kv->run->kvm_dirty_regs &= ~(uint64_t)KVM_SYNC_X86_REGS;
  kv->regs_valid = false;

  /* A state from another backend may enable XSAVE components (AVX-512 on a pv host, say)
   * that this VM's CPUID does not offer; those are dropped, as the guest could not have
   * relied on them here anyway. */
  uint64_t xcr0 = (st->xcr0 ? st->xcr0 : 1) & (k->xcr0_supported | 1);
  if (xcr0 != (st->xcr0 ? st->xcr0 : 1))
    VMM_LOG_I("kvm: XCR0 %#llx reduced to %#llx (components this VM does not offer)",
              (unsigned long long)st->xcr0, (unsigned long long)xcr0);
  /* XCR0 first: the XSAVE image is checked against it. */
  if (k->has_xcrs) {
    struct kvm_xcrs x;
    memset(&x, 0, sizeof(x));
    x.nr_xcrs = 1;
    x.xcrs[0].xcr = 0;
    x.xcrs[0].value = xcr0;
    if (ioctl(kv->fd, KVM_SET_XCRS, &x) != 0) {
      VMM_LOG_E("kvm: XCR0 %#llx refused: %s", (unsigned long long)st->xcr0, strerror(errno));
      return VMM_EINVAL;
    }
  }

  struct kvm_sregs s;
  memset(&s, 0, sizeof(s));
  vmm_seg_to_kvm(&s.cs, &st->cs);
  vmm_seg_to_kvm(&s.ds, &st->ds);
  vmm_seg_to_kvm(&s.es, &st->es);
  vmm_seg_to_kvm(&s.fs, &st->fs);
  vmm_seg_to_kvm(&s.gs, &st->gs);
  vmm_seg_to_kvm(&s.ss, &st->ss);
  vmm_seg_to_kvm(&s.tr, &st->tr);
  vmm_seg_to_kvm(&s.ldt, &st->ldt);
  s.gdt.base = st->gdt.base;
  s.gdt.limit = st->gdt.limit;
  s.idt.base = st->idt.base;
  s.idt.limit = st->idt.limit;
  s.cr0 = st->cr0;
  s.cr2 = st->cr2;
  s.cr3 = st->cr3;
  s.cr4 = st->cr4;
  s.cr8 = st->cr8;
  s.efer = st->efer;
  s.apic_base = st->apic_base ? st->apic_base : 0xfee00900ull;
  if (ioctl(kv->fd, KVM_SET_SREGS, &s) != 0) {
    VMM_LOG_E("kvm: control/segment state refused: %s", strerror(errno));
    return VMM_EINVAL;
  }

  struct kvm_regs r;
  memcpy(&r, &st->regs, sizeof(r));
  KVM_DO(kv->fd, KVM_SET_REGS, &r);

  struct vmm_kvm_msrs m;
  memset(&m, 0, sizeof(m));
  vmm_cpu_state_t *mut = (vmm_cpu_state_t *)st;
  for (size_t i = 0; i < k->nmsrs; i++) {
    uint64_t *f = vmm_kvm_msr_field(mut, k->msr_index[i]);
    /* A zero PAT or MISC_ENABLE means "not captured": keep KVM's own value. */
    if (f == NULL || ((k->msr_index[i] == 0x277 || k->msr_index[i] == 0x1a0) && *f == 0)) continue;
    m.e[m.hdr.nmsrs].index = k->msr_index[i];
    m.e[m.hdr.nmsrs].data = *f;
    m.hdr.nmsrs++;
  }
  int set = vmm__kvm_ioctl(kv->fd, KVM_SET_MSRS, &m, "KVM_SET_MSRS");
  if (set < 0) return set;
  if ((uint32_t)set != m.hdr.nmsrs) {
    VMM_LOG_E("kvm: MSR %#x refused", m.e[set].index);
    return VMM_EINVAL;
  }

  if (k->has_xsave) {
    struct kvm_xsave x;
    memset(&x, 0, sizeof(x));
    memcpy(x.region, st->xsave, sizeof(st->xsave));
    /* XSTATE_BV (offset 512) may only name enabled components; the standard format has
     * XCOMP_BV (offset 520) zero. */
    uint64_t bv;
    memcpy(&bv, (uint8_t *)x.region + 512, 8);
    bv &= xcr0;
    memcpy((uint8_t *)x.region + 512, &bv, 8);
    memset((uint8_t *)x.region + 520, 0, 8);
    if (ioctl(kv->fd, KVM_SET_XSAVE, &x) != 0) {
      VMM_LOG_E("kvm: XSAVE image refused: %s", strerror(errno));
      return VMM_EINVAL;
    }
  } else {
    struct kvm_fpu f;
    vmm_fpu_from_fxsave(&f, st->xsave);
    KVM_DO(kv->fd, KVM_SET_FPU, &f);
  }

  struct kvm_vcpu_events ev;
  memset(&ev, 0, sizeof(ev));
  ev.exception.injected = st->exception.injected;
  ev.exception.nr = st->exception.vector;
  ev.exception.has_error_code = st->exception.has_error_code;
  ev.exception.pending = st->exception.pending;
  ev.exception.error_code = st->exception.error_code;
  ev.interrupt.injected = st->interrupt.injected;
  ev.interrupt.nr = st->interrupt.vector;
  ev.interrupt.soft = st->interrupt.soft;
  ev.interrupt.shadow = st->interrupt.shadow;
  ev.nmi.injected = st->interrupt.nmi_injected;
  ev.nmi.pending = st->interrupt.nmi_pending;
  ev.nmi.masked = st->interrupt.nmi_masked;
  ev.flags = KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SHADOW;
  KVM_DO(kv->fd, KVM_SET_VCPU_EVENTS, &ev);

  if (k->has_debugregs) {
    struct kvm_debugregs d;
    memset(&d, 0, sizeof(d));
    d.db[0] = st->dr0;
    d.db[1] = st->dr1;
    d.db[2] = st->dr2;
    d.db[3] = st->dr3;
    d.dr6 = st->dr6 ? st->dr6 : 0xffff0ff0;
    d.dr7 = st->dr7 ? st->dr7 : 0x400;
    KVM_DO(kv->fd, KVM_SET_DEBUGREGS, &d);
  }
  /* Without an in-kernel irqchip KVM keeps every vCPU runnable; nothing could wake it. */
  if (k->has_irqchip) {
    struct kvm_mp_state mp = {.mp_state = st->halted ? KVM_MP_STATE_HALTED
                                                     : KVM_MP_STATE_RUNNABLE};
    KVM_DO(kv->fd, KVM_SET_MP_STATE, &mp);
  }
  return 0;
}
