/* pv backend: register and CPU state. The child holds RIP, the general registers, RFLAGS,
 * FS/GS base and the XSAVE state; everything else of vmm_cpu_state_t (control registers,
 * segments, descriptor tables, MSRs) is a shadow kept here, so that get_state returns what
 * set_state wrote, which is what cross-backend restore needs. */
#include <elf.h>
#include <errno.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <x86intrin.h>

#include "pv.h"

/* RFLAGS bits the child may carry: arithmetic flags, DF, AC, ID. TF belongs to single-step,
 * IF and IOPL are virtual. */
#define VMM_PV_RFLAGS_REAL 0x240cd5ull

uint64_t vmm__pv_rdtsc(void) { return __rdtsc(); }

int vmm__pv_ptrace_failed(struct vmm_pv_vcpu *pv, const char *what) {
  int e = errno;
  if (e == ESRCH) return VMM_ECHILD;
  VMM_LOG_E("pv: %s on sandbox %d: %s", what, (int)pv->pid, strerror(e));
  return VMM_EBACKEND;
}

/* The x86 reset state, so that a new vCPU reads like one on the other backends. */
void vmm__pv_state_reset(struct vmm_pv_vcpu *pv) {
  vmm_cpu_state_t *st = &pv->st;
  memset(st, 0, sizeof(*st));
  st->struct_size = sizeof(*st);
  st->regs.rip = 0xfff0;
  st->regs.rflags = VMM_RFLAGS_FIXED;
  st->regs.rdx = 0x600;
  st->cs = (vmm_segment_t){.base = 0xffff0000, .limit = 0xffff, .selector = 0xf000, .type = 0xb,
                           .present = 1, .s = 1};
  st->ds = (vmm_segment_t){.limit = 0xffff, .type = 0x3, .present = 1, .s = 1};
  st->es = st->fs = st->gs = st->ss = st->ds;
  st->tr = (vmm_segment_t){.limit = 0xffff, .type = 0xb, .present = 1};
  st->ldt = (vmm_segment_t){.limit = 0xffff, .type = 0x2, .present = 1};
  st->gdt.limit = st->idt.limit = 0xffff;
  st->cr0 = 0x60000010;
  st->xcr0 = 1;
  st->apic_base = 0xfee00900;
  st->pat = 0x0007040600070406ull;
  st->dr6 = 0xffff0ff0;
  st->dr7 = 0x400;
  /* FCW 0x37f, MXCSR 0x1f80: the FINIT / reset values. */
  uint16_t fcw = 0x37f;
  uint32_t mxcsr = 0x1f80;
  memcpy(st->xsave + 0, &fcw, 2);
  memcpy(st->xsave + 24, &mxcsr, 4);
  pv->regs_dirty = pv->xsave_dirty = true;
  pv->tsc_offset = -(int64_t)vmm__pv_rdtsc();
}

void vmm__pv_ur_to_regs(const struct user_regs_struct *u, uint64_t vflags, vmm_regs_t *r) {
  r->rax = u->rax;
  r->rbx = u->rbx;
  r->rcx = u->rcx;
  r->rdx = u->rdx;
  r->rsi = u->rsi;
  r->rdi = u->rdi;
  r->rsp = u->rsp;
  r->rbp = u->rbp;
  r->r8 = u->r8;
  r->r9 = u->r9;
  r->r10 = u->r10;
  r->r11 = u->r11;
  r->r12 = u->r12;
  r->r13 = u->r13;
  r->r14 = u->r14;
  r->r15 = u->r15;
  r->rip = u->rip;
  r->rflags = (u->eflags & (VMM_PV_RFLAGS_REAL | (1ull << 16))) | VMM_RFLAGS_FIXED |
              (vflags & VMM_PV_RFLAGS_VIRT);
}

void vmm__pv_regs_to_ur(const vmm_regs_t *r, struct user_regs_struct *u) {
  u->rax = r->rax;
  u->rbx = r->rbx;
  u->rcx = r->rcx;
  u->rdx = r->rdx;
  u->rsi = r->rsi;
  u->rdi = r->rdi;
  u->rsp = r->rsp;
  u->rbp = r->rbp;
  u->r8 = r->r8;
  u->r9 = r->r9;
  u->r10 = r->r10;
  u->r11 = r->r11;
  u->r12 = r->r12;
  u->r13 = r->r13;
  u->r14 = r->r14;
  u->r15 = r->r15;
  u->rip = r->rip;
  u->eflags = (r->rflags & VMM_PV_RFLAGS_REAL) | VMM_RFLAGS_FIXED | VMM_RFLAGS_IF;
  /* Not in a system call: no restart logic on the way back to the guest. */
  u->orig_rax = (unsigned long long)-1;
}

int vmm__pv_getregs(struct vmm_pv_vcpu *pv) {
  if (pv->have_ur) return 0;
  if (ptrace(PTRACE_GETREGS, pv->pid, 0, &pv->ur) != 0)
    return vmm__pv_ptrace_failed(pv, "PTRACE_GETREGS");
  pv->have_ur = true;
  return 0;
}


/* Whether an XSAVE image is the x87/SSE/AVX initial state, which a new process already has
 * (loading it costs tens of microseconds on some hosts). */
static bool vmm_pv_xsave_is_init(const uint8_t *x) {
  static const uint8_t init_legacy[32] = {0x7f, 0x03, [24] = 0x80, [25] = 0x1f};
  if (memcmp(x, init_legacy, 28) != 0) return false;
  for (size_t i = 32; i < 464; i++)
    if (x[i]) return false;
  for (size_t i = 576; i < VMM_XSAVE_SIZE; i++)
    if (x[i]) return false;
  return true;
}

/* Writes what changed in the cache into the child (which must be parked). */
int vmm__pv_push(struct vmm_pv_vcpu *pv) {
  if (pv->regs_dirty) {
    if (!pv->have_ur) {
      int rc = vmm__pv_getregs(pv);
      if (rc) return rc;
    }
    if (!vmm__pv_base_ok(pv->st.fs.base) || !vmm__pv_base_ok(pv->st.gs.base)) {
      /* Set natively with WRFSBASE/WRGSBASE: the kernel refuses to give it back. The host
       * can go on after vmm_vcpu_set_state() with bases in range. */
      VMM_LOG_E("pv: FS/GS base %#llx/%#llx is outside [0, %#llx), which the host kernel "
                "cannot restore to a process",
                (unsigned long long)pv->st.fs.base, (unsigned long long)pv->st.gs.base,
                (unsigned long long)VMM_PV_BASE_LIMIT);
      return VMM_EINVAL;
    }
    vmm__pv_regs_to_ur(&pv->st.regs, &pv->ur);
    pv->ur.fs_base = pv->st.fs.base;
    pv->ur.gs_base = pv->st.gs.base;
    if (ptrace(PTRACE_SETREGS, pv->pid, 0, &pv->ur) != 0)
      return vmm__pv_ptrace_failed(pv, "PTRACE_SETREGS");
    pv->regs_dirty = false;
    pv->ur_dirty = false;
  }
  pv->vflags = pv->st.regs.rflags & VMM_PV_RFLAGS_VIRT;
  if (pv->xsave_dirty && pv->fresh && vmm_pv_xsave_is_init(pv->st.xsave)) pv->xsave_dirty = false;
  pv->fresh = false;
  if (pv->xsave_dirty) {
    struct iovec iov = {pv->st.xsave, sizeof(pv->st.xsave)};
    if (ptrace(PTRACE_SETREGSET, pv->pid, (void *)NT_X86_XSTATE, &iov) != 0) {
      if (errno == ESRCH) return VMM_ECHILD;
      /* An image from a CPU with other features: keep x87 and SSE, which every host has. */
      uint8_t legacy[VMM_XSAVE_SIZE] __attribute__((aligned(64)));
      memset(legacy, 0, sizeof(legacy));
      memcpy(legacy, pv->st.xsave, 512);
      memset(legacy + 464, 0, 48);
      uint64_t bv = 3;
      memcpy(legacy + 512, &bv, 8);
      struct iovec iov2 = {legacy, sizeof(legacy)};
      if (ptrace(PTRACE_SETREGSET, pv->pid, (void *)NT_X86_XSTATE, &iov2) != 0) {
        if (errno == ESRCH) return VMM_ECHILD;
        VMM_LOG_E("pv: the XSAVE image was refused: %s", strerror(errno));
        return VMM_EINVAL;
      }
      VMM_LOG_W("pv: XSAVE image refused by this host; loaded its x87/SSE part only");
    }
    pv->xsave_dirty = false;
  }
  return 0;
}

/* Pulls the child's registers and XSAVE state into the cache; afterwards the cache is
 * authoritative and the next resume pushes it back if it changed. */
int vmm__pv_unlive(vmm_vcpu_t *vcpu) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  if (!pv->live) return 0;
  int rc = vmm__pv_getregs(pv);
  if (rc) return rc;
  vmm__pv_ur_to_regs(&pv->ur, pv->vflags, &pv->st.regs);
  pv->st.fs.base = pv->ur.fs_base;
  pv->st.gs.base = pv->ur.gs_base;
  struct iovec iov = {pv->st.xsave, sizeof(pv->st.xsave)};
  memset(pv->st.xsave, 0, sizeof(pv->st.xsave));
  if (ptrace(PTRACE_GETREGSET, pv->pid, (void *)NT_X86_XSTATE, &iov) != 0)
    return vmm__pv_ptrace_failed(pv, "PTRACE_GETREGSET(NT_X86_XSTATE)");
  /* Bytes 464..511 are the kernel's software area; the standard image has zeros there. */
  memset(pv->st.xsave + 464, 0, 48);
  pv->regs_dirty = pv->ur_dirty;
  pv->live = false;
  return 0;
}

int vmm__pv_get_regs(vmm_vcpu_t *vcpu, vmm_regs_t *regs) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  if (pv->live) {
    /* From a handler inside the run: straight from the child. */
    int rc = vmm__pv_getregs(pv);
    if (rc) return rc;
    vmm__pv_ur_to_regs(&pv->ur, pv->vflags, regs);
    return 0;
  }
  *regs = pv->st.regs;
  return 0;
}

int vmm__pv_set_regs(vmm_vcpu_t *vcpu, const vmm_regs_t *regs) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  int rc = vmm__pv_flush_pending(vcpu, &vcpu->cur);
  if (rc) return rc;
  rc = vmm__pv_unlive(vcpu);
  if (rc) return rc;
  pv->st.regs = *regs;
  pv->st.regs.rflags |= VMM_RFLAGS_FIXED;
  pv->regs_dirty = true;
  return 0;
}

int vmm__pv_get_state(vmm_vcpu_t *vcpu, vmm_cpu_state_t *state) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  int rc = vmm__pv_unlive(vcpu);
  if (rc) return rc;
  memcpy(state, &pv->st, sizeof(*state));
  state->struct_size = sizeof(*state);
  state->tsc = vmm__pv_rdtsc() + (uint64_t)pv->tsc_offset;
  return 0;
}

/* The cache of a freshly started child is pushed whole. */
int vmm__pv_set_state(vmm_vcpu_t *vcpu, const vmm_cpu_state_t *in) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  bool lma = (in->efer & VMM_EFER_LMA) != 0;
  if (!in->cs.l || !lma || !(in->cr0 & VMM_CR0_PG) || !(in->cr0 & VMM_CR0_PE)) {
    VMM_LOG_E("pv: refusing a CPU state that is not 64-bit long mode (CS.L=%u EFER=%#llx "
              "CR0=%#llx): pv guests run 64-bit code only",
              in->cs.l, (unsigned long long)in->efer, (unsigned long long)in->cr0);
    return VMM_ENOSYS;
  }
  if (!vmm__canonical(in->regs.rip) || !vmm__pv_base_ok(in->fs.base) ||
      !vmm__pv_base_ok(in->gs.base)) {
    VMM_LOG_E("pv: refusing a CPU state with a non-canonical RIP or an FS/GS base outside "
              "[0, %#llx) (rip %#llx, fs %#llx, gs %#llx)",
              (unsigned long long)VMM_PV_BASE_LIMIT, (unsigned long long)in->regs.rip,
              (unsigned long long)in->fs.base, (unsigned long long)in->gs.base);
    return VMM_EINVAL;
  }
  int rc = vmm__pv_flush_pending(vcpu, &vcpu->cur);
  if (rc) return rc;
  rc = vmm__pv_unlive(vcpu);
  if (rc) return rc;
  if (in->exception.pending || in->exception.injected || in->interrupt.injected ||
      in->interrupt.nmi_pending || in->interrupt.nmi_injected)
    VMM_LOG_W("pv: the state has a pending event (exception %u, interrupt %u); pv cannot "
              "deliver it and drops it", in->exception.vector, in->interrupt.vector);
  memcpy(&pv->st, in, sizeof(pv->st));
  pv->st.struct_size = sizeof(pv->st);
  pv->st.regs.rflags |= VMM_RFLAGS_FIXED;
  pv->tsc_offset = (int64_t)(in->tsc - vmm__pv_rdtsc());
  /* A state that never captured an FPU image (all zero) gets the reset values. */
  uint16_t fcw;
  uint32_t mxcsr;
  uint64_t bv;
  memcpy(&fcw, pv->st.xsave, 2);
  memcpy(&mxcsr, pv->st.xsave + 24, 4);
  memcpy(&bv, pv->st.xsave + 512, 8);
  if (fcw == 0 && mxcsr == 0 && bv == 0) {
    fcw = 0x37f;
    mxcsr = 0x1f80;
    memcpy(pv->st.xsave, &fcw, 2);
    memcpy(pv->st.xsave + 24, &mxcsr, 4);
  }
  pv->regs_dirty = pv->xsave_dirty = true;
  pv->pend = VMM_PV_PEND_NONE;
  /* A whole new state is what a vCPU whose sandbox died needs to go on. */
  pv->dead = false;
  return 0;
}
