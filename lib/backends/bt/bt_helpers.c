/* bt backend: C emulation of the instructions translated code may not run itself. Translated
 * code calls vmm__bt_helper_entry() through vmm__bt_asm_helper with the guest state saved in the control
 * area; the helper either lets the block continue with the next instruction or makes the
 * dispatcher take over (a jump, an exception, an exit for the caller). Port I/O, MMIO and
 * hypercalls are dispatched to devices and handlers from here, without leaving vcpu_run(). */
#include <stdio.h>
#include <string.h>
#include <x86intrin.h>

#include "bt_priv.h"

/* ---- glue for the shared emulator ---- */

void vmm__bt_emu_cpu_get(struct bt_vcpu *v, struct vmm_emu_cpu *c) {
  memcpy(c->gpr, v->ctrl->gpr, sizeof(c->gpr));
  c->rip = v->ctrl->rip;
  c->rflags = bt_get_rflags(v);
  c->fs_base = v->sys.fs.base;
  c->gs_base = v->sys.gs.base;
}

void vmm__bt_emu_cpu_put(struct bt_vcpu *v, const struct vmm_emu_cpu *c) {
  memcpy(v->ctrl->gpr, c->gpr, sizeof(c->gpr));
  v->ctrl->rip = c->rip;
}

static int bt_emu_read(void *ctx, uint64_t la, void *buf, size_t len) {
  struct bt_vcpu *v = ctx;
  return vmm__bt_lin_read(v, la, buf, len, bt_cpl(v) == 3 ? 2u : 0, NULL) == 0 ? 0 : VMM_EFAULT;
}

static int bt_emu_write(void *ctx, uint64_t la, const void *buf, size_t len) {
  struct bt_vcpu *v = ctx;
  return vmm__bt_lin_write(v, la, buf, len, bt_cpl(v) == 3 ? 2u : 0, NULL) == 0 ? 0 : VMM_EFAULT;
}

struct vmm_emu_mem vmm__bt_emu_mem(struct bt_vcpu *v) {
  return (struct vmm_emu_mem){.read = bt_emu_read, .write = bt_emu_write, .ctx = v};
}

void vmm__bt_fast_exit_count(struct bt_vcpu *v, uint32_t reason) {
  if (reason < VMM_STAT_NREASONS) {
    v->vcpu->exit_counts[reason]++;
    v->stats.fast_exits[reason]++;
  }
}

static void bt_out_internal(struct bt_vcpu *v, const char *what) {
  vmm__exit_internal(&v->out, VMM_ENOSYS, "bt: %s at rip %#llx", what,
                     (unsigned long long)v->ctrl->rip);
  v->have_out = true;
}

/* ---- exceptions ---- */

void vmm__bt_mode_changed(struct bt_vcpu *v) {
  /* Pages mapped with supervisor rights must not stay reachable from user mode. */
  if (bt_cpl(v) == 3 && v->has_super_pages) vmm__bt_window_flush(v);
}

int vmm__bt_raise(struct bt_vcpu *v, unsigned vector, bool has_err, uint32_t err, uint64_t cr2) {
  struct bt_exc e = {.vec = (uint8_t)vector, .has_err = has_err, .err = err, .cr2 = cr2};
  for (int depth = 0;; depth++) {
    if (e.vec == 255) {
      bt_out_internal(v, "exception delivery touched memory that is not RAM");
      return 1;
    }
    if (e.vec == 14) v->sys.cr2 = e.cr2;
    if (v->sys.idt.limit == 0) {
      memset(&v->out, 0, sizeof(v->out));
      v->out.reason = VMM_EXIT_EXCEPTION;
      v->out.exception.vector = e.vec;
      v->out.exception.has_error_code = e.has_err;
      v->out.exception.error_code = e.has_err ? e.err : 0;
      v->out.exception.rip = v->ctrl->rip;
      v->out.exception.cr2 = e.vec == 14 ? e.cr2 : 0;
      v->have_out = true;
      return 1;
    }
    struct bt_exc again;
    if (vmm__bt_deliver(v, e.vec, e.has_err, e.err, false, v->ctrl->rip, &again) == 0) return 0;
    if (depth >= 1 || e.vec == 8) {
      memset(&v->out, 0, sizeof(v->out));
      v->out.reason = VMM_EXIT_SHUTDOWN;
      v->have_out = true;
      return 1;
    }
    bool contributory = again.vec == 0 || (again.vec >= 10 && again.vec <= 13);
    bool first_contrib = e.vec == 0 || (e.vec >= 10 && e.vec <= 13);
    if ((first_contrib && contributory) || (e.vec == 14 && (contributory || again.vec == 14)))
      e = (struct bt_exc){.vec = 8, .has_err = true, .err = 0};
    else
      e = again;
  }
}

/* ---- CPUID ---- */

void vmm__bt_cpuid(struct bt_vcpu *v, uint32_t leaf, uint32_t sub, uint32_t out[4]) {
  struct bt_vm *bvm = v->bvm;
  const struct bt_cpuid_entry *hit = NULL;
  for (size_t i = 0; i < bvm->ncpuid; i++) {
    const struct bt_cpuid_entry *c = &bvm->cpuid[i];
    if (c->leaf == leaf && (!c->has_subleaf || c->subleaf == sub)) {
      hit = c;
      break;
    }
  }
  if (hit) memcpy(out, hit->regs, 16);
  else memset(out, 0, 16);
  switch (leaf) {
    case 1:
      out[1] = (out[1] & 0x00ffffffu) | (v->vcpu->index << 24);
      if (v->sys.cr4 & VMM_CR4_OSXSAVE) out[2] |= 1u << 27;
      else out[2] &= ~(1u << 27);
      break;
    case 0xb:
    case 0x1f: out[3] = v->vcpu->index; break;
    case 0xd:
      if (sub == 0) out[1] = (v->sys.xcr0 & 4) ? 832 : 576;
      break;
    default: break;
  }
}

/* ---- MSRs ---- */

static uint64_t bt_tsc(struct bt_vcpu *v) { return __rdtsc() + (uint64_t)v->sys.tsc; }

static bool bt_rdmsr(struct bt_vcpu *v, uint32_t msr, uint64_t *val) {
  vmm_cpu_state_t *s = &v->sys;
  switch (msr) {
    case 0x10: *val = bt_tsc(v); return true;
    case 0x1b: *val = s->apic_base; return true;
    case 0x174: *val = s->sysenter_cs; return true;
    case 0x175: *val = s->sysenter_esp; return true;
    case 0x176: *val = s->sysenter_eip; return true;
    case 0x1a0: *val = s->misc_enable; return true;
    case 0x277: *val = s->pat; return true;
    case 0xc0000080: *val = s->efer; return true;
    case 0xc0000081: *val = s->star; return true;
    case 0xc0000082: *val = s->lstar; return true;
    case 0xc0000083: *val = s->cstar; return true;
    case 0xc0000084: *val = s->sfmask; return true;
    case 0xc0000100: *val = s->fs.base; return true;
    case 0xc0000101: *val = s->gs.base; return true;
    case 0xc0000102: *val = s->kernel_gs_base; return true;
    case 0xc0000103: *val = s->tsc_aux; return true;
    case 0xfe: case 0x2ff: case 0x8b: case 0x3a: *val = 0; return true; /* MTRRs, ucode, ... */
    default:
      if (msr >= 0x200 && msr < 0x280) {
        *val = 0;
        return true;
      }
      return false;
  }
}

/* Returns false for #GP. */
static bool bt_wrmsr(struct bt_vcpu *v, uint32_t msr, uint64_t val) {
  vmm_cpu_state_t *s = &v->sys;
  switch (msr) {
    case 0x10: s->tsc = val - __rdtsc(); return true;
    case 0x1b: s->apic_base = val; return true;
    case 0x174: s->sysenter_cs = val; return true;
    case 0x175: s->sysenter_esp = val; return true;
    case 0x176: s->sysenter_eip = val; return true;
    case 0x1a0: s->misc_enable = val; return true;
    case 0x277: s->pat = val; return true;
    case 0xc0000080: {
      uint64_t allowed = VMM_EFER_SCE | VMM_EFER_LME | VMM_EFER_LMA | VMM_EFER_NXE;
      if (val & ~allowed) return false;
      if (!(val & VMM_EFER_LME)) return false; /* leaving long mode is not supported */
      val = (val & ~VMM_EFER_LMA) | (s->efer & VMM_EFER_LMA);
      if ((val ^ s->efer) & VMM_EFER_NXE) {
        v->window_flush_needed = true;
        v->flush_needed = true;
      }
      s->efer = val;
      return true;
    }
    case 0xc0000081: s->star = val; return true;
    case 0xc0000082: if (!vmm__canonical(val)) return false; s->lstar = val; return true;
    case 0xc0000083: if (!vmm__canonical(val)) return false; s->cstar = val; return true;
    case 0xc0000084: s->sfmask = val & 0xffffffffull; return true;
    case 0xc0000100:
      if (!vmm__canonical(val)) return false;
      if (val != s->fs.base) vmm__bt_invalidate_flags(v, BT_BLK_USES_FS);
      s->fs.base = val;
      return true;
    case 0xc0000101:
      if (!vmm__canonical(val)) return false;
      if (val != s->gs.base) vmm__bt_invalidate_flags(v, BT_BLK_USES_GS);
      s->gs.base = val;
      return true;
    case 0xc0000102: if (!vmm__canonical(val)) return false; s->kernel_gs_base = val; return true;
    case 0xc0000103: s->tsc_aux = (uint32_t)val; return true;
    case 0xfe: case 0x8b: return true;
    default: return msr >= 0x200 && msr < 0x280;
  }
}

/* ---- control registers ---- */

static enum bt_emu_result bt_emu_movcr(struct bt_vcpu *v, const ZydisDecodedOperand *ops,
                                       struct bt_exc *e) {
  if (bt_cpl(v) != 0) return BT_GP0(e);
  struct bt_ctrl *c = v->ctrl;
  vmm_cpu_state_t *s = &v->sys;
  bool to_cr = ZydisRegisterGetClass(ops[0].reg.value) == ZYDIS_REGCLASS_CONTROL;
  ZydisRegister cr = to_cr ? ops[0].reg.value : ops[1].reg.value;
  ZydisRegister gr = to_cr ? ops[1].reg.value : ops[0].reg.value;
  unsigned g = (unsigned)(ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, gr) -
                          ZYDIS_REGISTER_RAX);
  if (g > 15) return BT_EMU_ERROR;
  if (!to_cr) {
    uint64_t val;
    switch (cr) {
      case ZYDIS_REGISTER_CR0: val = s->cr0; break;
      case ZYDIS_REGISTER_CR2: val = s->cr2; break;
      case ZYDIS_REGISTER_CR3: val = s->cr3; break;
      case ZYDIS_REGISTER_CR4: val = s->cr4; break;
      case ZYDIS_REGISTER_CR8: val = s->cr8; break;
      default: return BT_UD(e);
    }
    c->gpr[g] = val;
    return BT_EMU_NEXT;
  }
  uint64_t val = c->gpr[g];
  switch (cr) {
    case ZYDIS_REGISTER_CR0: {
      if (val >> 32) return BT_GP0(e);
      if (!(val & VMM_CR0_PG) || !(val & VMM_CR0_PE)) return BT_GP0(e); /* stays in long mode */
      if ((val ^ s->cr0) & (VMM_CR0_WP | VMM_CR0_PG)) v->window_flush_needed = true;
      s->cr0 = val | VMM_CR0_ET;
      return BT_EMU_NEXT;
    }
    case ZYDIS_REGISTER_CR2: s->cr2 = val; return BT_EMU_NEXT;
    case ZYDIS_REGISTER_CR3:
      s->cr3 = val;
      /* A TLB flush: mappings go, and translations found by virtual address with them. */
      v->window_flush_needed = true;
      v->flush_needed = true;
      return BT_EMU_NEXT;
    case ZYDIS_REGISTER_CR4: {
      uint64_t allowed = 0x3ff | (1ull << 10) | VMM_CR4_FSGSBASE | VMM_CR4_OSXSAVE | (1ull << 7);
      if (val & ~allowed) return BT_GP0(e);
      if (!(val & VMM_CR4_PAE)) return BT_GP0(e);
      if ((val ^ s->cr4) & ~(uint64_t)(1ull << 7)) {
        v->window_flush_needed = true;
        v->flush_needed = true;
      }
      s->cr4 = val;
      return BT_EMU_NEXT;
    }
    case ZYDIS_REGISTER_CR8:
      if (val >> 4) return BT_GP0(e);
      s->cr8 = val;
      return BT_EMU_NEXT;
    default: return BT_UD(e);
  }
}

static enum bt_emu_result bt_emu_movdr(struct bt_vcpu *v, const ZydisDecodedOperand *ops,
                                       struct bt_exc *e) {
  if (bt_cpl(v) != 0) return BT_GP0(e);
  bool to_dr = ZydisRegisterGetClass(ops[0].reg.value) == ZYDIS_REGCLASS_DEBUG;
  ZydisRegister dr = to_dr ? ops[0].reg.value : ops[1].reg.value;
  ZydisRegister gr = to_dr ? ops[1].reg.value : ops[0].reg.value;
  unsigned g = (unsigned)(ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, gr) -
                          ZYDIS_REGISTER_RAX);
  uint64_t *slot;
  vmm_cpu_state_t *s = &v->sys;
  switch (dr) {
    case ZYDIS_REGISTER_DR0: slot = &s->dr0; break;
    case ZYDIS_REGISTER_DR1: slot = &s->dr1; break;
    case ZYDIS_REGISTER_DR2: slot = &s->dr2; break;
    case ZYDIS_REGISTER_DR3: slot = &s->dr3; break;
    case ZYDIS_REGISTER_DR6: slot = &s->dr6; break;
    case ZYDIS_REGISTER_DR7: slot = &s->dr7; break;
    default: return BT_UD(e);
  }
  if (g > 15) return BT_EMU_ERROR;
  if (to_dr) *slot = v->ctrl->gpr[g];
  else v->ctrl->gpr[g] = *slot;
  return BT_EMU_NEXT;
}

/* ---- descriptor tables ---- */

static enum bt_emu_result bt_emu_desc(struct bt_vcpu *v, const struct bt_desc *d,
                                      const ZydisDecodedInstruction *z,
                                      const ZydisDecodedOperand *ops, struct bt_exc *e) {
  vmm_cpu_state_t *s = &v->sys;
  unsigned cpl = bt_cpl(v);
  bool user = cpl == 3;
  const ZydisDecodedOperand *o = &ops[0];
  bool mem = o->type == ZYDIS_OPERAND_TYPE_MEMORY;
  uint64_t la = mem ? vmm__bt_operand_la(v, d, z, o) : 0;
  switch (z->mnemonic) {
    case ZYDIS_MNEMONIC_LGDT:
    case ZYDIS_MNEMONIC_LIDT: {
      if (cpl) return BT_GP0(e);
      uint8_t buf[10];
      if (!vmm__bt_read_mem(v, la, buf, 10, false, e)) return BT_EMU_EXC;
      vmm_dtable_t t = {0};
      memcpy(&t.limit, buf, 2);
      memcpy(&t.base, buf + 2, 8);
      if (!vmm__canonical(t.base)) return BT_GP0(e);
      if (z->mnemonic == ZYDIS_MNEMONIC_LGDT) s->gdt = t;
      else s->idt = t;
      return BT_EMU_NEXT;
    }
    case ZYDIS_MNEMONIC_SGDT:
    case ZYDIS_MNEMONIC_SIDT: {
      const vmm_dtable_t *t = z->mnemonic == ZYDIS_MNEMONIC_SGDT ? &s->gdt : &s->idt;
      uint8_t buf[10];
      memcpy(buf, &t->limit, 2);
      memcpy(buf + 2, &t->base, 8);
      if (!vmm__bt_write_mem(v, la, buf, 10, user, e)) return BT_EMU_EXC;
      return BT_EMU_NEXT;
    }
    case ZYDIS_MNEMONIC_SLDT:
    case ZYDIS_MNEMONIC_STR:
    case ZYDIS_MNEMONIC_SMSW: {
      uint64_t val = z->mnemonic == ZYDIS_MNEMONIC_SLDT ? s->ldt.selector
                     : z->mnemonic == ZYDIS_MNEMONIC_STR ? s->tr.selector
                                                         : s->cr0;
      if (mem) {
        uint16_t v16 = (uint16_t)val;
        if (!vmm__bt_write_mem(v, la, &v16, 2, user, e)) return BT_EMU_EXC;
      } else {
        unsigned g = (unsigned)(ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64,
                                                                 o->reg.value) - ZYDIS_REGISTER_RAX);
        if (g > 15) return BT_EMU_ERROR;
        if (o->size == 16) v->ctrl->gpr[g] = (v->ctrl->gpr[g] & ~0xffffull) | (val & 0xffff);
        else v->ctrl->gpr[g] = o->size == 32 ? (uint32_t)val : val;
      }
      return BT_EMU_NEXT;
    }
    case ZYDIS_MNEMONIC_LLDT:
    case ZYDIS_MNEMONIC_LTR:
    case ZYDIS_MNEMONIC_LMSW: {
      if (cpl) return BT_GP0(e);
      uint16_t val;
      if (mem) {
        if (!vmm__bt_read_mem(v, la, &val, 2, false, e)) return BT_EMU_EXC;
      } else {
        val = (uint16_t)v->ctrl->gpr[ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64,
                                                                      o->reg.value) -
                                     ZYDIS_REGISTER_RAX];
      }
      if (z->mnemonic == ZYDIS_MNEMONIC_LMSW) {
        s->cr0 = (s->cr0 & ~0xeull) | (val & 0xf) | VMM_CR0_PE;
        return BT_EMU_NEXT;
      }
      if (val & 4) {
        *e = (struct bt_exc){.vec = 13, .has_err = true, .err = val & ~3u};
        return BT_EMU_EXC;
      }
      vmm_segment_t seg;
      if (z->mnemonic == ZYDIS_MNEMONIC_LLDT && (val & ~3u) == 0) {
        s->ldt = (vmm_segment_t){.selector = val, .unusable = 1, .type = 2};
        return BT_EMU_NEXT;
      }
      if ((val & ~3u) == 0) return BT_GP0(e);
      if (!vmm__bt_load_seg(v, val, &seg, e)) return BT_EMU_EXC;
      bool ok = !seg.s && (z->mnemonic == ZYDIS_MNEMONIC_LLDT ? seg.type == 2 : seg.type == 9);
      if (!ok) {
        *e = (struct bt_exc){.vec = 13, .has_err = true, .err = val & ~3u};
        return BT_EMU_EXC;
      }
      if (z->mnemonic == ZYDIS_MNEMONIC_LLDT) {
        s->ldt = seg;
      } else {
        /* Mark the TSS descriptor busy, as the CPU does. */
        uint64_t lo;
        uint64_t at = s->gdt.base + (val & ~7u);
        if (!vmm__bt_read_mem(v, at, &lo, 8, false, e)) return BT_EMU_EXC;
        lo |= 2ull << 40;
        if (!vmm__bt_write_mem(v, at, &lo, 8, false, e)) return BT_EMU_EXC;
        seg.type = 0xb;
        s->tr = seg;
      }
      return BT_EMU_NEXT;
    }
    case ZYDIS_MNEMONIC_CLTS:
      if (cpl) return BT_GP0(e);
      s->cr0 &= ~(1ull << 3);
      return BT_EMU_NEXT;
    default: return BT_EMU_ERROR;
  }
}

/* ---- XSAVE family, on the saved vector state ---- */

static void bt_fx_default(uint8_t *fx) {
  memset(fx, 0, 512);
  uint16_t fcw = 0x37f;
  uint32_t mxcsr = 0x1f80, mask = 0xffff;
  memcpy(fx, &fcw, 2);
  memcpy(fx + 24, &mxcsr, 4);
  memcpy(fx + 28, &mask, 4);
}

static enum bt_emu_result bt_emu_xsave(struct bt_vcpu *v, const struct bt_desc *d,
                                       const ZydisDecodedInstruction *z,
                                       const ZydisDecodedOperand *ops, struct bt_exc *e) {
  struct bt_ctrl *c = v->ctrl;
  if (!(v->sys.cr4 & VMM_CR4_OSXSAVE)) return BT_UD(e);
  bool user = bt_cpl(v) == 3;
  uint64_t la = vmm__bt_operand_la(v, d, z, &ops[0]);
  if (la & 63) return BT_GP0(e);
  uint64_t rfbm = (((c->gpr[2] & 0xffffffffull) << 32) | (c->gpr[0] & 0xffffffffull)) & v->sys.xcr0;
  bool save = z->mnemonic != ZYDIS_MNEMONIC_XRSTOR && z->mnemonic != ZYDIS_MNEMONIC_XRSTOR64;
  uint8_t area[832];
  if (save) {
    if (!vmm__bt_read_mem(v, la, area, 576 + ((rfbm & 4) ? 256 : 0), user, e)) return BT_EMU_EXC;
    if (rfbm & 1) memcpy(area, c->fxsave, 24), memcpy(area + 32, c->fxsave + 32, 128);
    if (rfbm & 3) memcpy(area + 24, &c->mxcsr, 4);
    if (rfbm & 2)
      for (int i = 0; i < 16; i++) memcpy(area + 160 + 16 * i, c->vec[i], 16);
    if (rfbm & 4)
      for (int i = 0; i < 16; i++) memcpy(area + 576 + 16 * i, c->vec[i] + 16, 16);
    uint64_t bv;
    memcpy(&bv, area + 512, 8);
    bv = (bv & ~rfbm) | rfbm;
    memcpy(area + 512, &bv, 8);
    if (!vmm__bt_write_mem(v, la, area, 576 + ((rfbm & 4) ? 256 : 0), user, e)) return BT_EMU_EXC;
    return BT_EMU_NEXT;
  }
  if (!vmm__bt_read_mem(v, la, area, 576, user, e)) return BT_EMU_EXC;
  uint64_t bv, comp;
  memcpy(&bv, area + 512, 8);
  memcpy(&comp, area + 520, 8);
  if (comp != 0 || (bv & ~v->sys.xcr0)) return BT_GP0(e);
  for (int i = 528; i < 576; i++)
    if (area[i]) return BT_GP0(e);
  if ((rfbm & 4) && (bv & 4) && !vmm__bt_read_mem(v, la + 576, area + 576, 256, user, e))
    return BT_EMU_EXC;
  uint32_t mxcsr;
  memcpy(&mxcsr, area + 24, 4);
  if ((rfbm & 6) && (mxcsr & ~0xffffu)) return BT_GP0(e);
  if (rfbm & 1) {
    if (bv & 1) memcpy(c->fxsave, area, 24), memcpy(c->fxsave + 32, area + 32, 128);
    else bt_fx_default(c->fxsave);
    c->x87_live = 1;
  }
  if (rfbm & 6) c->mxcsr = mxcsr;
  for (int i = 0; i < 16; i++) {
    if (rfbm & 2) {
      if (bv & 2) memcpy(c->vec[i], area + 160 + 16 * i, 16);
      else memset(c->vec[i], 0, 16);
    }
    if (rfbm & 4) {
      if (bv & 4) memcpy(c->vec[i] + 16, area + 576 + 16 * i, 16);
      else memset(c->vec[i] + 16, 0, 16);
    }
  }
  return BT_EMU_NEXT;
}

/* ---- flags and the stack ---- */

static enum bt_emu_result bt_emu_pushf(struct bt_vcpu *v, const ZydisDecodedInstruction *z,
                                       struct bt_exc *e) {
  struct bt_ctrl *c = v->ctrl;
  unsigned sz = z->operand_width / 8;
  uint64_t f = bt_get_rflags(v) & ~(BT_RFLAGS_RF | (1ull << 17));
  if (!vmm__bt_write_mem(v, c->gpr[4] - sz, &f, sz, bt_cpl(v) == 3, e)) return BT_EMU_EXC;
  c->gpr[4] -= sz;
  return BT_EMU_NEXT;
}

static enum bt_emu_result bt_emu_popf(struct bt_vcpu *v, const ZydisDecodedInstruction *z,
                                      struct bt_exc *e) {
  struct bt_ctrl *c = v->ctrl;
  unsigned sz = z->operand_width / 8, cpl = bt_cpl(v);
  uint64_t nf = 0, old = bt_get_rflags(v);
  if (!vmm__bt_read_mem(v, c->gpr[4], &nf, sz, cpl == 3, e)) return BT_EMU_EXC;
  uint64_t writable = 0x3f7fd5ull & ~((1ull << 17) | (1ull << 19) | (1ull << 20)); /* not VM VIF VIP */
  if (cpl > 0) writable &= ~BT_RFLAGS_IOPL;
  if (cpl > ((old >> 12) & 3)) writable &= ~BT_RFLAGS_IF;
  if (sz == 2) writable &= 0xffff;
  nf = (old & ~writable) | (nf & writable);
  nf &= ~BT_RFLAGS_RF;
  bt_set_rflags(v, nf);
  c->gpr[4] += sz;
  return BT_EMU_NEXT;
}

static enum bt_emu_result bt_emu_enter(struct bt_vcpu *v, const ZydisDecodedInstruction *z,
                                       const ZydisDecodedOperand *ops, struct bt_exc *e) {
  struct bt_ctrl *c = v->ctrl;
  if (z->operand_width != 64) return BT_EMU_ERROR;
  bool user = bt_cpl(v) == 3;
  uint64_t size = ops[0].imm.value.u & 0xffff;
  unsigned level = (unsigned)(ops[1].imm.value.u & 31);
  uint64_t rsp = c->gpr[4] - 8, rbp = c->gpr[5];
  if (!vmm__bt_write_mem(v, rsp, &rbp, 8, user, e)) return BT_EMU_EXC;
  uint64_t frame = rsp;
  for (unsigned i = 1; i < level; i++) {
    uint64_t x;
    rbp -= 8;
    if (!vmm__bt_read_mem(v, rbp, &x, 8, user, e)) return BT_EMU_EXC;
    rsp -= 8;
    if (!vmm__bt_write_mem(v, rsp, &x, 8, user, e)) return BT_EMU_EXC;
  }
  if (level > 0) {
    rsp -= 8;
    if (!vmm__bt_write_mem(v, rsp, &frame, 8, user, e)) return BT_EMU_EXC;
  }
  c->gpr[5] = frame;
  c->gpr[4] = rsp - size;
  return BT_EMU_NEXT;
}

/* BT/BTS/BTR/BTC reg, mem: the bit offset can reach far beyond the operand, so the address is
 * computed here and the instruction runs natively on a host pointer to the one unit it
 * touches, with the guest's flags in and out. */
static enum bt_emu_result bt_emu_btmem(struct bt_vcpu *v, const struct bt_desc *d,
                                       const ZydisDecodedInstruction *z,
                                       const ZydisDecodedOperand *ops, struct bt_exc *e) {
  struct bt_ctrl *c = v->ctrl;
  unsigned bits = ops[0].size;
  uint64_t off;
  ZydisRegister big = ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, ops[1].reg.value);
  uint64_t raw = c->gpr[big - ZYDIS_REGISTER_RAX];
  int64_t soff = bits == 64 ? (int64_t)raw : bits == 32 ? (int64_t)(int32_t)raw : (int64_t)(int16_t)raw;
  int64_t unit = soff >= 0 ? soff / (int64_t)bits : -((-soff + (int64_t)bits - 1) / (int64_t)bits);
  off = (uint64_t)(soff - unit * (int64_t)bits);
  uint64_t la = vmm__bt_operand_la(v, d, z, &ops[0]) + (uint64_t)(unit * (int64_t)(bits / 8));
  bool write = z->mnemonic != ZYDIS_MNEMONIC_BT;
  struct vmm__bt_walk w;
  int rc = vmm__bt_walk(v, la, (write ? 1u : 0) | (bt_cpl(v) == 3 ? 2u : 0), true, &w);
  if (rc == BT_WALK_NONCANON) return BT_GP0(e);
  if (rc) {
    *e = (struct bt_exc){.vec = 14, .has_err = true, .err = (uint32_t)rc & 0xffff, .cr2 = la};
    return BT_EMU_EXC;
  }
  if (((la + bits / 8 - 1) ^ la) & ~(VMM_PAGE_SIZE - 1)) return BT_EMU_ERROR;
  struct vmm_region *r = vmm__bt_region_of(v, w.pa);
  if (r == NULL) return BT_EMU_ERROR;
  if (r->flags & VMM_MEM_READONLY && write) return BT_EMU_ERROR;
  if (write && vmm__bt_note_guest_write(v, w.pa, bits / 8) != 0) return BT_EMU_ERROR;
  void *p = r->hva + (w.pa - r->gpa);
  uint64_t f = c->rflags & BT_RFLAGS_HOST;
  bool lock = (z->attributes & ZYDIS_ATTRIB_HAS_LOCK) != 0;
#define BT_BITOP(insn, type)                                                           \
  __asm__ volatile("push %[f]\n\tpopfq\n\t" insn " %[o], %[m]\n\tpushfq\n\tpop %[f]"    \
                   : [f] "+r"(f), [m] "+m"(*(type *)p)                                  \
                   : [o] "r"((type)off)                                                 \
                   : "cc", "memory")
  switch (z->mnemonic) {
    case ZYDIS_MNEMONIC_BT:
      if (bits == 64) BT_BITOP("btq", uint64_t); else if (bits == 32) BT_BITOP("btl", uint32_t); else BT_BITOP("btw", uint16_t);
      break;
    case ZYDIS_MNEMONIC_BTS:
      if (lock) { if (bits == 64) BT_BITOP("lock btsq", uint64_t); else if (bits == 32) BT_BITOP("lock btsl", uint32_t); else BT_BITOP("lock btsw", uint16_t); }
      else { if (bits == 64) BT_BITOP("btsq", uint64_t); else if (bits == 32) BT_BITOP("btsl", uint32_t); else BT_BITOP("btsw", uint16_t); }
      break;
    case ZYDIS_MNEMONIC_BTR:
      if (lock) { if (bits == 64) BT_BITOP("lock btrq", uint64_t); else if (bits == 32) BT_BITOP("lock btrl", uint32_t); else BT_BITOP("lock btrw", uint16_t); }
      else { if (bits == 64) BT_BITOP("btrq", uint64_t); else if (bits == 32) BT_BITOP("btrl", uint32_t); else BT_BITOP("btrw", uint16_t); }
      break;
    default:
      if (lock) { if (bits == 64) BT_BITOP("lock btcq", uint64_t); else if (bits == 32) BT_BITOP("lock btcl", uint32_t); else BT_BITOP("lock btcw", uint16_t); }
      else { if (bits == 64) BT_BITOP("btcq", uint64_t); else if (bits == 32) BT_BITOP("btcl", uint32_t); else BT_BITOP("btcw", uint16_t); }
      break;
  }
#undef BT_BITOP
  c->rflags = (c->rflags & ~BT_RFLAGS_HOST) | (f & BT_RFLAGS_HOST);
  return BT_EMU_NEXT;
}

/* ---- the entry from translated code ---- */

static enum bt_emu_result bt_emulate(struct bt_vcpu *v, const struct bt_desc *d, struct bt_exc *e) {
  struct bt_ctrl *c = v->ctrl;
  unsigned cpl = bt_cpl(v);
  switch (d->kind) {
    case BT_H_HYPERCALL: return vmm__bt_emu_hypercall(v, d);
    case BT_H_UD: return BT_UD(e);
    case BT_H_GP0: return BT_GP0(e);
    case BT_H_UNSUPPORTED: return BT_EMU_ERROR;
    case BT_H_IO: return vmm__bt_emu_io(v, e);
    case BT_H_CPUID: {
      uint32_t r[4];
      vmm__bt_cpuid(v, (uint32_t)c->gpr[0], (uint32_t)c->gpr[1], r);
      c->gpr[0] = r[0];
      c->gpr[3] = r[1];
      c->gpr[1] = r[2];
      c->gpr[2] = r[3];
      return BT_EMU_NEXT;
    }
    case BT_H_RDTSC:
    case BT_H_RDTSCP: {
      if ((v->sys.cr4 & (1ull << 2)) && cpl > 0) return BT_GP0(e);
      uint64_t t = bt_tsc(v);
      c->gpr[0] = (uint32_t)t;
      c->gpr[2] = t >> 32;
      if (d->kind == BT_H_RDTSCP) c->gpr[1] = (uint32_t)v->sys.tsc_aux;
      return BT_EMU_NEXT;
    }
    case BT_H_HLT:
      if (cpl) return BT_GP0(e);
      c->rip = d->rip + d->len;
      memset(&v->out, 0, sizeof(v->out));
      v->out.reason = VMM_EXIT_HLT;
      v->have_out = true;
      return BT_EMU_OUT;
    case BT_H_CLI:
    case BT_H_STI: {
      uint64_t f = bt_get_rflags(v);
      if (cpl > ((f >> 12) & 3)) return BT_GP0(e);
      bt_set_rflags(v, d->kind == BT_H_CLI ? f & ~BT_RFLAGS_IF : f | BT_RFLAGS_IF);
      return BT_EMU_NEXT;
    }
    case BT_H_CACHE_NOP: return cpl ? BT_GP0(e) : BT_EMU_NEXT;
    case BT_H_MONITOR: return BT_EMU_NEXT;
    case BT_H_SWAPGS: {
      if (cpl) return BT_GP0(e);
      uint64_t t = v->sys.gs.base;
      v->sys.gs.base = v->sys.kernel_gs_base;
      v->sys.kernel_gs_base = t;
      if (t != v->sys.gs.base) vmm__bt_invalidate_flags(v, BT_BLK_USES_GS);
      return BT_EMU_NEXT;
    }
    case BT_H_RDMSR:
    case BT_H_WRMSR: {
      if (cpl) return BT_GP0(e);
      uint32_t msr = (uint32_t)c->gpr[1];
      if (d->kind == BT_H_RDMSR) {
        uint64_t val;
        if (!bt_rdmsr(v, msr, &val)) return BT_GP0(e);
        c->gpr[0] = (uint32_t)val;
        c->gpr[2] = val >> 32;
      } else if (!bt_wrmsr(v, msr, (c->gpr[0] & 0xffffffffull) | (c->gpr[2] << 32))) {
        return BT_GP0(e);
      }
      return BT_EMU_NEXT;
    }
    default: break;
  }
  ZydisDecodedInstruction z;
  ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
  if (ZYAN_FAILED(ZydisDecoderDecodeFull(vmm__bt_decoder(), d->bytes, d->len, &z, ops)))
    return BT_EMU_ERROR;
  switch (d->kind) {
    case BT_H_PUSHF: return bt_emu_pushf(v, &z, e);
    case BT_H_POPF: return bt_emu_popf(v, &z, e);
    case BT_H_MOVCR: return bt_emu_movcr(v, ops, e);
    case BT_H_MOVDR: return bt_emu_movdr(v, ops, e);
    case BT_H_DESC_TABLE: return bt_emu_desc(v, d, &z, ops, e);
    case BT_H_INVLPG: {
      if (cpl) return BT_GP0(e);
      uint64_t la = vmm__bt_operand_la(v, d, &z, &ops[0]);
      /* Drop the page, or the whole large page it was mapped with. */
      if (la < BT_WINDOW_SIZE) vmm__bt_window_flush(v);
      vmm__bt_invalidate_la_page(v, la);
      return BT_EMU_NEXT;
    }
    case BT_H_XCR: {
      if (!(v->sys.cr4 & VMM_CR4_OSXSAVE)) return BT_UD(e);
      if (z.mnemonic == ZYDIS_MNEMONIC_XGETBV) {
        if ((uint32_t)c->gpr[1] != 0) return BT_GP0(e);
        c->gpr[0] = (uint32_t)v->sys.xcr0;
        c->gpr[2] = v->sys.xcr0 >> 32;
        return BT_EMU_NEXT;
      }
      if (cpl || (uint32_t)c->gpr[1] != 0) return BT_GP0(e);
      uint64_t x = (c->gpr[0] & 0xffffffffull) | (c->gpr[2] << 32);
      uint64_t supported = 3 | (v->bvm->host_avx ? 4 : 0);
      if (!(x & 1) || (x & ~supported) || ((x & 4) && !(x & 2))) return BT_GP0(e);
      if (x != v->sys.xcr0) v->flush_needed = true;
      v->sys.xcr0 = x;
      c->vec_avx = (x & 4) ? 1 : 0;
      return BT_EMU_NEXT;
    }
    case BT_H_XSAVE: return bt_emu_xsave(v, d, &z, ops, e);
    case BT_H_SEG: return vmm__bt_emu_seg(v, d, &z, ops, e);
    case BT_H_FSGSBASE: {
      if (!(v->sys.cr4 & VMM_CR4_FSGSBASE)) return BT_UD(e);
      unsigned g = (unsigned)(ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64,
                                                               ops[0].reg.value) - ZYDIS_REGISTER_RAX);
      bool is64 = ops[0].size == 64;
      switch (z.mnemonic) {
        case ZYDIS_MNEMONIC_RDFSBASE: c->gpr[g] = is64 ? v->sys.fs.base : (uint32_t)v->sys.fs.base; break;
        case ZYDIS_MNEMONIC_RDGSBASE: c->gpr[g] = is64 ? v->sys.gs.base : (uint32_t)v->sys.gs.base; break;
        default: {
          uint64_t val = is64 ? c->gpr[g] : (uint32_t)c->gpr[g];
          if (!vmm__canonical(val)) return BT_GP0(e);
          bool fs = z.mnemonic == ZYDIS_MNEMONIC_WRFSBASE;
          if (!bt_wrmsr(v, fs ? 0xc0000100 : 0xc0000101, val)) return BT_GP0(e);
        }
      }
      return BT_EMU_NEXT;
    }
    case BT_H_IRET: return vmm__bt_emu_iret(v, &z, e);
    case BT_H_INT: return vmm__bt_emu_int(v, d, &z, ops, e);
    case BT_H_SYSCALL: return vmm__bt_emu_syscall(v, d, e);
    case BT_H_SYSRET: return vmm__bt_emu_sysret(v, &z, e);
    case BT_H_FAR: return vmm__bt_emu_far(v, d, &z, ops, e);
    case BT_H_ENTER: return bt_emu_enter(v, &z, ops, e);
    case BT_H_BTMEM: return bt_emu_btmem(v, d, &z, ops, e);
    case BT_H_RDPID: {
      unsigned g = (unsigned)(ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64,
                                                               ops[0].reg.value) - ZYDIS_REGISTER_RAX);
      c->gpr[g] = (uint32_t)v->sys.tsc_aux;
      return BT_EMU_NEXT;
    }
    case BT_H_RDPMC:
      if (cpl && !(v->sys.cr4 & (1ull << 8))) return BT_GP0(e);
      return BT_GP0(e); /* no performance counters */
    default: return BT_EMU_ERROR;
  }
}

int vmm__bt_helper_entry(struct bt_ctrl *ctrl) {
  struct bt_vcpu *v = ctrl->owner;
  v->stats.helpers++;
  const struct bt_desc *d = &v->descs[ctrl->helper_arg];
  ctrl->rip = d->rip;
  struct bt_exc e = {0};
  enum bt_emu_result r = bt_emulate(v, d, &e);
  switch (r) {
    case BT_EMU_NEXT:
      if (d->kind != BT_H_HYPERCALL) ctrl->rip = d->rip + d->len;
      /* The block may go on only if nothing asks the dispatcher to look. */
      if (ctrl->kick || v->state_changed || v->flush_needed || v->window_flush_needed ||
          v->vcpu->exit_requested || v->have_out || v->run_error)
        break;
      return 0;
    case BT_EMU_JUMP: break;
    case BT_EMU_EXC:
      if (e.vec == 255) bt_out_internal(v, "emulated access to memory that is not RAM");
      else vmm__bt_raise(v, e.vec, e.has_err, e.err, e.cr2);
      break;
    case BT_EMU_OUT: break;
    case BT_EMU_ERROR:
      if (!v->have_out && !v->run_error) {
        char what[96];
        int n = 0;
        for (unsigned i = 0; i < d->len && n < 80; i++) n += snprintf(what + n, sizeof(what) - n, "%02x ", d->bytes[i]);
        VMM_LOG_W("bt: cannot run instruction [%s] at %#llx", what, (unsigned long long)d->rip);
        bt_out_internal(v, "instruction bt cannot run");
        v->out.internal.data[0] = d->rip;
      }
      break;
  }
  ctrl->exit_kind = BT_EXIT_HELPER;
  return BT_EXIT_HELPER;
}
