/* bt backend: what changes privilege or control flow in system ways - exception and
 * interrupt delivery through the guest IDT (long-mode rules: IST and TSS.RSPn stack switches,
 * 16-byte aligned frames, IF cleared by interrupt gates), IRETQ, SYSCALL/SYSRET, INT n, far
 * transfers and segment register loads. */
#include <string.h>

#include "bt_priv.h"

bool vmm__bt_read_mem(struct bt_vcpu *v, uint64_t la, void *buf, size_t len, bool user,
                 struct bt_exc *e) {
  uint64_t fla = la;
  int rc = vmm__bt_lin_read(v, la, buf, len, user ? 2u : 0, &fla);
  if (rc == 0) return true;
  if (rc == BT_WALK_NONCANON) *e = (struct bt_exc){.vec = 13, .has_err = true};
  else if (rc > 0) *e = (struct bt_exc){.vec = 14, .has_err = true, .err = (uint32_t)rc & 0xffff, .cr2 = fla};
  else *e = (struct bt_exc){.vec = 255};
  return false;
}

bool vmm__bt_write_mem(struct bt_vcpu *v, uint64_t la, const void *buf, size_t len, bool user,
                  struct bt_exc *e) {
  uint64_t fla = la;
  int rc = vmm__bt_lin_write(v, la, buf, len, user ? 2u : 0, &fla);
  if (rc == 0) return true;
  if (rc == BT_WALK_NONCANON) *e = (struct bt_exc){.vec = 13, .has_err = true};
  else if (rc > 0) *e = (struct bt_exc){.vec = 14, .has_err = true, .err = (uint32_t)rc & 0xffff, .cr2 = fla};
  else *e = (struct bt_exc){.vec = 255};
  return false;
}

bool vmm__bt_load_seg(struct bt_vcpu *v, uint16_t sel, vmm_segment_t *seg, struct bt_exc *e) {
  if ((sel & ~3u) == 0) {
    *seg = (vmm_segment_t){.selector = sel, .unusable = 1, .type = 3, .s = 1, .db = 1, .g = 1,
                           .limit = 0xffffffff};
    return true;
  }
  const vmm_dtable_t *tab = &v->sys.gdt;
  vmm_dtable_t ldt;
  if (sel & 4) {
    if (v->sys.ldt.unusable || !v->sys.ldt.present) goto gp;
    ldt = (vmm_dtable_t){.base = v->sys.ldt.base, .limit = (uint16_t)v->sys.ldt.limit};
    tab = &ldt;
  }
  uint64_t off = sel & ~7u;
  if (off + 7 > tab->limit) goto gp;
  uint64_t d[2] = {0, 0};
  if (!vmm__bt_read_mem(v, tab->base + off, &d[0], 8, false, e)) return false;
  if (!((d[0] >> 44) & 1) && off + 15 <= tab->limit &&
      !vmm__bt_read_mem(v, tab->base + off + 8, &d[1], 8, false, e))
    return false;
  vmm__segment_from_desc(d[0], d[1], sel, seg);
  if (!seg->present) {
    *e = (struct bt_exc){.vec = 11, .has_err = true, .err = sel & ~3u};
    return false;
  }
  return true;
gp:
  *e = (struct bt_exc){.vec = 13, .has_err = true, .err = sel & ~3u};
  return false;
}

/* CS and SS with the CPL they imply; a CPL change may need the window flushed. */
void vmm__bt_set_cpl_segments(struct bt_vcpu *v, const vmm_segment_t *cs, const vmm_segment_t *ss) {
  unsigned old = bt_cpl(v);
  v->sys.cs = *cs;
  v->sys.ss = *ss;
  if (old != bt_cpl(v)) vmm__bt_mode_changed(v);
}

static vmm_segment_t bt_flat_code(uint16_t sel, unsigned dpl) {
  return (vmm_segment_t){.base = 0, .limit = 0xffffffff, .selector = sel, .type = 0xb,
                         .present = 1, .dpl = (uint8_t)dpl, .db = 0, .s = 1, .l = 1, .g = 1};
}

static vmm_segment_t bt_flat_data(uint16_t sel, unsigned dpl) {
  return (vmm_segment_t){.base = 0, .limit = 0xffffffff, .selector = sel, .type = 0x3,
                         .present = 1, .dpl = (uint8_t)dpl, .db = 1, .s = 1, .l = 0, .g = 1};
}

static vmm_segment_t bt_null_ss(unsigned cpl) {
  return (vmm_segment_t){.selector = (uint16_t)cpl, .unusable = 1, .type = 3, .s = 1, .db = 1,
                         .g = 1, .limit = 0xffffffff, .dpl = (uint8_t)cpl, .present = 1};
}

/* Delivers vector vec through the IDT. Returns 0 when delivered; 1 with *e set when delivery
 * itself faulted. */
int vmm__bt_deliver(struct bt_vcpu *v, unsigned vec, bool has_err, uint32_t err, bool soft,
               uint64_t ret_rip, struct bt_exc *e) {
  struct bt_ctrl *c = v->ctrl;
  uint32_t ext = soft ? 0 : 1;
  uint32_t gate_err = vec * 8 + 2 + ext;
  if ((uint64_t)vec * 16 + 15 > v->sys.idt.limit) {
    *e = (struct bt_exc){.vec = 13, .has_err = true, .err = gate_err};
    return 1;
  }
  uint64_t g[2];
  if (!vmm__bt_read_mem(v, v->sys.idt.base + vec * 16, g, 16, false, e)) return 1;
  unsigned type = (g[0] >> 40) & 0xf, dpl = (g[0] >> 45) & 3, present = (g[0] >> 47) & 1;
  unsigned ist = (g[0] >> 32) & 7;
  uint16_t sel = (uint16_t)(g[0] >> 16);
  uint64_t off = (g[0] & 0xffff) | (((g[0] >> 48) & 0xffff) << 16) | ((g[1] & 0xffffffffull) << 32);
  unsigned cpl = bt_cpl(v);
  if (type != 0xe && type != 0xf) {
    *e = (struct bt_exc){.vec = 13, .has_err = true, .err = gate_err};
    return 1;
  }
  if (soft && cpl > dpl) {
    *e = (struct bt_exc){.vec = 13, .has_err = true, .err = gate_err};
    return 1;
  }
  if (!present) {
    *e = (struct bt_exc){.vec = 11, .has_err = true, .err = gate_err};
    return 1;
  }
  vmm_segment_t cs;
  if ((sel & ~3u) == 0) {
    *e = (struct bt_exc){.vec = 13, .has_err = true, .err = ext};
    return 1;
  }
  if (!vmm__bt_load_seg(v, sel, &cs, e)) return 1;
  if (!cs.s || !(cs.type & 8) || !cs.l || cs.db) {
    *e = (struct bt_exc){.vec = 13, .has_err = true, .err = (sel & ~3u) + ext};
    return 1;
  }
  unsigned new_cpl = (cs.type & 4) ? cpl : cs.dpl; /* conforming code keeps the CPL */
  if (new_cpl > cpl || cs.dpl > cpl) {
    *e = (struct bt_exc){.vec = 13, .has_err = true, .err = (sel & ~3u) + ext};
    return 1;
  }
  cs.dpl = (uint8_t)new_cpl; /* bt reads the CPL from the cached DPL */
  uint64_t rsp = c->gpr[4];
  uint64_t tss = v->sys.tr.base;
  if (ist) {
    if (!vmm__bt_read_mem(v, tss + 36 + 8 * (ist - 1), &rsp, 8, false, e)) return 1;
  } else if (new_cpl < cpl) {
    if (!vmm__bt_read_mem(v, tss + 4 + 8 * new_cpl, &rsp, 8, false, e)) return 1;
  }
  if (!vmm__canonical(rsp)) {
    *e = (struct bt_exc){.vec = 12, .has_err = true, .err = ext};
    return 1;
  }
  rsp &= ~15ull;
  uint64_t frame[6];
  unsigned n = 0;
  if (has_err) frame[n++] = err;
  frame[n++] = ret_rip;
  frame[n++] = v->sys.cs.selector;
  frame[n++] = bt_get_rflags(v);
  frame[n++] = c->gpr[4];
  frame[n++] = v->sys.ss.selector;
  rsp -= n * 8;
  if (!vmm__bt_write_mem(v, rsp, frame, n * 8, new_cpl == 3, e)) return 1;

  cs.selector = (uint16_t)((sel & ~3u) | new_cpl);
  vmm_segment_t ss = new_cpl < cpl ? bt_null_ss(new_cpl) : v->sys.ss;
  c->gpr[4] = rsp;
  c->rip = off;
  uint64_t f = bt_get_rflags(v) & ~(BT_RFLAGS_TF | BT_RFLAGS_NT | BT_RFLAGS_RF | (1ull << 17));
  if (type == 0xe) f &= ~BT_RFLAGS_IF;
  bt_set_rflags(v, f);
  vmm__bt_set_cpl_segments(v, &cs, &ss);
  return 0;
}

/* The privilege rules of a return (IRET, far RET) to code segment cs selected with RPL rpl:
 * a non-conforming segment needs DPL == RPL, a conforming one DPL <= RPL (the new CPL is the
 * RPL either way, which is what the cached DPL then says: bt reads the CPL from it). */
static bool bt_return_cs_ok(vmm_segment_t *cs, unsigned rpl) {
  bool conforming = (cs->type & 4) != 0;
  if (conforming ? cs->dpl > rpl : cs->dpl != rpl) return false;
  cs->dpl = (uint8_t)rpl;
  return true;
}

/* ... and for a return to an outer level, the stack segment: RPL and DPL equal the new CPL, a
 * writable data segment. */
static bool bt_return_ss_ok(const vmm_segment_t *ss, uint16_t sel, unsigned cpl) {
  return (sel & 3u) == cpl && ss->dpl == cpl && ss->s && !(ss->type & 8) && (ss->type & 2);
}

enum bt_emu_result vmm__bt_emu_iret(struct bt_vcpu *v, const ZydisDecodedInstruction *z,
                               struct bt_exc *e) {
  struct bt_ctrl *c = v->ctrl;
  if (z->operand_width != 64) return BT_EMU_ERROR;
  unsigned cpl = bt_cpl(v);
  uint64_t f[5];
  if (!vmm__bt_read_mem(v, c->gpr[4], f, sizeof(f), cpl == 3, e)) return BT_EMU_EXC;
  uint16_t csel = (uint16_t)f[1], ssel = (uint16_t)f[4];
  unsigned rpl = csel & 3;
  if (rpl < cpl || (csel & ~3u) == 0) {
    *e = (struct bt_exc){.vec = 13, .has_err = true, .err = csel & ~3u};
    return BT_EMU_EXC;
  }
  vmm_segment_t cs, ss;
  if (!vmm__bt_load_seg(v, csel, &cs, e)) return BT_EMU_EXC;
  if (!cs.s || !(cs.type & 8) || !cs.l || !bt_return_cs_ok(&cs, rpl)) {
    *e = (struct bt_exc){.vec = 13, .has_err = true, .err = csel & ~3u};
    return BT_EMU_EXC;
  }
  if ((ssel & ~3u) == 0) {
    if (rpl == 3) {
      *e = (struct bt_exc){.vec = 13, .has_err = true, .err = 0};
      return BT_EMU_EXC;
    }
    ss = bt_null_ss(rpl);
    ss.selector = ssel;
  } else if (!vmm__bt_load_seg(v, ssel, &ss, e)) {
    return BT_EMU_EXC;
  } else if (!bt_return_ss_ok(&ss, ssel, rpl)) {
    *e = (struct bt_exc){.vec = 13, .has_err = true, .err = ssel & ~3u};
    return BT_EMU_EXC;
  }
  if (!vmm__canonical(f[0])) return BT_GP0(e);
  uint64_t old = bt_get_rflags(v), nf = f[2];
  uint64_t keep = 0;
  unsigned iopl = (unsigned)((old >> 12) & 3);
  if (cpl > 0) keep |= BT_RFLAGS_IOPL;
  if (cpl > iopl) keep |= BT_RFLAGS_IF;
  nf = (nf & ~keep) | (old & keep);
  nf &= ~(1ull << 17); /* VM */
  cs.selector = csel;
  c->rip = f[0];
  c->gpr[4] = f[3];
  bt_set_rflags(v, nf);
  vmm__bt_set_cpl_segments(v, &cs, &ss);
  return BT_EMU_JUMP;
}

enum bt_emu_result vmm__bt_emu_int(struct bt_vcpu *v, const struct bt_desc *d,
                              const ZydisDecodedInstruction *z, const ZydisDecodedOperand *ops,
                              struct bt_exc *e) {
  unsigned vec;
  switch (z->mnemonic) {
    case ZYDIS_MNEMONIC_INT3: vec = 3; break;
    case ZYDIS_MNEMONIC_INT1: vec = 1; break;
    case ZYDIS_MNEMONIC_INTO: return BT_UD(e); /* invalid in 64-bit mode */
    default: vec = (unsigned)(ops[0].imm.value.u & 0xff); break;
  }
  uint64_t next = d->rip + d->len;
  if (v->sys.idt.limit == 0) {
    /* No IDT: report it like an exception, with RIP after the instruction as for traps. */
    v->ctrl->rip = next;
    memset(&v->out, 0, sizeof(v->out));
    v->out.reason = VMM_EXIT_EXCEPTION;
    v->out.exception.vector = (uint8_t)vec;
    v->out.exception.rip = next;
    v->have_out = true;
    return BT_EMU_OUT;
  }
  int r = vmm__bt_deliver(v, vec, false, 0, z->mnemonic == ZYDIS_MNEMONIC_INT, next, e);
  return r ? BT_EMU_EXC : BT_EMU_JUMP;
}

enum bt_emu_result vmm__bt_emu_syscall(struct bt_vcpu *v, const struct bt_desc *d, struct bt_exc *e) {
  struct bt_ctrl *c = v->ctrl;
  if (!(v->sys.efer & VMM_EFER_SCE)) return BT_UD(e);
  uint64_t f = bt_get_rflags(v);
  c->gpr[1] = d->rip + d->len;
  c->gpr[11] = f & ~BT_RFLAGS_RF;
  bt_set_rflags(v, (f & ~(v->sys.sfmask | BT_RFLAGS_RF)) | 2);
  uint16_t sel = (uint16_t)((v->sys.star >> 32) & 0xfffc);
  vmm_segment_t cs = bt_flat_code(sel, 0), ss = bt_flat_data((uint16_t)(sel + 8), 0);
  c->rip = v->sys.lstar;
  vmm__bt_set_cpl_segments(v, &cs, &ss);
  return BT_EMU_JUMP;
}

enum bt_emu_result vmm__bt_emu_sysret(struct bt_vcpu *v, const ZydisDecodedInstruction *z,
                                 struct bt_exc *e) {
  struct bt_ctrl *c = v->ctrl;
  if (!(v->sys.efer & VMM_EFER_SCE)) return BT_UD(e);
  if (bt_cpl(v) != 0) return BT_GP0(e);
  if (z->operand_width != 64) return BT_EMU_ERROR; /* to compatibility mode */
  if (!vmm__canonical(c->gpr[1])) return BT_GP0(e);
  uint16_t base = (uint16_t)(v->sys.star >> 48);
  vmm_segment_t cs = bt_flat_code((uint16_t)((base + 16) | 3), 3);
  vmm_segment_t ss = bt_flat_data((uint16_t)((base + 8) | 3), 3);
  c->rip = c->gpr[1];
  bt_set_rflags(v, (c->gpr[11] & 0x3c7fd7ull) | 2);
  vmm__bt_set_cpl_segments(v, &cs, &ss);
  return BT_EMU_JUMP;
}

/* Linear address of a memory operand (segment base of FS/GS applied). */
uint64_t vmm__bt_operand_la(struct bt_vcpu *v, const struct bt_desc *d,
                       const ZydisDecodedInstruction *z, const ZydisDecodedOperand *op) {
  struct vmm_emu_cpu cpu;
  vmm__bt_emu_cpu_get(v, &cpu);
  cpu.rip = d->rip;
  struct vmm_emu_insn insn;
  memset(&insn, 0, sizeof(insn));
  insn.z = *z;
  insn.rip = d->rip;
  insn.ops[0] = *op;
  insn.z.operand_count = 1;
  uint64_t la = 0;
  vmm__emu_mem_address(&cpu, &insn, &la);
  return la;
}

/* Far JMP/CALL through memory and far RET, to 64-bit code at the same privilege (or RET to an
 * outer one). */
enum bt_emu_result vmm__bt_emu_far(struct bt_vcpu *v, const struct bt_desc *d,
                              const ZydisDecodedInstruction *z, const ZydisDecodedOperand *ops,
                              struct bt_exc *e) {
  struct bt_ctrl *c = v->ctrl;
  unsigned cpl = bt_cpl(v);
  bool user = cpl == 3;
  unsigned osz = z->operand_width / 8;
  if (z->mnemonic == ZYDIS_MNEMONIC_RET) {
    if (osz != 8) return BT_EMU_ERROR;
    uint64_t f[2];
    if (!vmm__bt_read_mem(v, c->gpr[4], f, 16, user, e)) return BT_EMU_EXC;
    uint16_t sel = (uint16_t)f[1];
    unsigned rpl = sel & 3;
    if (rpl < cpl) {
      *e = (struct bt_exc){.vec = 13, .has_err = true, .err = sel & ~3u};
      return BT_EMU_EXC;
    }
    vmm_segment_t cs;
    if (!vmm__bt_load_seg(v, sel, &cs, e)) return BT_EMU_EXC;
    if (!cs.s || !(cs.type & 8) || !cs.l) return BT_EMU_ERROR;
    if (!bt_return_cs_ok(&cs, rpl)) {
      *e = (struct bt_exc){.vec = 13, .has_err = true, .err = sel & ~3u};
      return BT_EMU_EXC;
    }
    uint64_t pop = 16 + (z->operand_count_visible ? (ops[0].imm.value.u & 0xffff) : 0);
    cs.selector = sel;
    vmm_segment_t ss = v->sys.ss;
    uint64_t rsp = c->gpr[4] + pop;
    if (rpl > cpl) {
      uint64_t s[2];
      if (!vmm__bt_read_mem(v, rsp, s, 16, user, e)) return BT_EMU_EXC;
      if (!vmm__bt_load_seg(v, (uint16_t)s[1], &ss, e)) return BT_EMU_EXC;
      if (!bt_return_ss_ok(&ss, (uint16_t)s[1], rpl)) {
        *e = (struct bt_exc){.vec = 13, .has_err = true, .err = (uint16_t)s[1] & ~3u};
        return BT_EMU_EXC;
      }
      rsp = s[0];
    }
    c->rip = f[0];
    c->gpr[4] = rsp;
    vmm__bt_set_cpl_segments(v, &cs, &ss);
    return BT_EMU_JUMP;
  }
  uint64_t target;
  uint16_t sel;
  if (ops[0].type == ZYDIS_OPERAND_TYPE_MEMORY) {
    uint64_t la = vmm__bt_operand_la(v, d, z, &ops[0]);
    uint8_t buf[10] = {0};
    if (!vmm__bt_read_mem(v, la, buf, osz + 2, user, e)) return BT_EMU_EXC;
    target = 0;
    memcpy(&target, buf, osz);
    memcpy(&sel, buf + osz, 2);
  } else {
    return BT_UD(e); /* ptr16:32 forms do not exist in 64-bit mode */
  }
  vmm_segment_t cs;
  if ((sel & ~3u) == 0) return BT_GP0(e);
  if (!vmm__bt_load_seg(v, sel, &cs, e)) return BT_EMU_EXC;
  if (!cs.s || !(cs.type & 8)) {
    *e = (struct bt_exc){.vec = 13, .has_err = true, .err = sel & ~3u};
    return BT_EMU_EXC;
  }
  if (!cs.l) return BT_EMU_ERROR; /* compatibility mode */
  if (!(cs.type & 4) && (cs.dpl != cpl || (sel & 3) > cpl)) {
    *e = (struct bt_exc){.vec = 13, .has_err = true, .err = sel & ~3u};
    return BT_EMU_EXC;
  }
  if (z->mnemonic == ZYDIS_MNEMONIC_CALL) {
    uint64_t f[2] = {d->rip + d->len, v->sys.cs.selector};
    if (osz != 8) return BT_EMU_ERROR;
    if (!vmm__bt_write_mem(v, c->gpr[4] - 16, f, 16, user, e)) return BT_EMU_EXC;
    c->gpr[4] -= 16;
  }
  cs.selector = (uint16_t)((sel & ~3u) | cpl);
  c->rip = target;
  v->sys.cs = cs;
  return BT_EMU_JUMP;
}

static vmm_segment_t *bt_sreg(struct bt_vcpu *v, ZydisRegister r) {
  switch (r) {
    case ZYDIS_REGISTER_ES: return &v->sys.es;
    case ZYDIS_REGISTER_CS: return &v->sys.cs;
    case ZYDIS_REGISTER_SS: return &v->sys.ss;
    case ZYDIS_REGISTER_DS: return &v->sys.ds;
    case ZYDIS_REGISTER_FS: return &v->sys.fs;
    case ZYDIS_REGISTER_GS: return &v->sys.gs;
    default: return NULL;
  }
}

static bool bt_gpr_write(struct bt_vcpu *v, ZydisRegister r, uint64_t val) {
  ZydisRegister big = ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, r);
  if (big < ZYDIS_REGISTER_RAX || big > ZYDIS_REGISTER_R15) return false;
  unsigned i = (unsigned)(big - ZYDIS_REGISTER_RAX);
  unsigned w = ZydisRegisterGetWidth(ZYDIS_MACHINE_MODE_LONG_64, r);
  uint64_t *g = &v->ctrl->gpr[i];
  if (w == 64) *g = val;
  else if (w == 32) *g = (uint32_t)val;
  else if (w == 16) *g = (*g & ~0xffffull) | (val & 0xffff);
  else return false;
  return true;
}

static bool bt_gpr_read(struct bt_vcpu *v, ZydisRegister r, uint64_t *val) {
  ZydisRegister big = ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, r);
  if (big < ZYDIS_REGISTER_RAX || big > ZYDIS_REGISTER_R15) return false;
  unsigned w = ZydisRegisterGetWidth(ZYDIS_MACHINE_MODE_LONG_64, r);
  uint64_t x = v->ctrl->gpr[big - ZYDIS_REGISTER_RAX];
  *val = w == 64 ? x : w == 32 ? (uint32_t)x : (uint16_t)x;
  return true;
}

/* Loads selector sel into segment register *dst (not CS). */
static enum bt_emu_result bt_load_sreg(struct bt_vcpu *v, ZydisRegister r, uint16_t sel,
                                       struct bt_exc *e) {
  vmm_segment_t s, *dst = bt_sreg(v, r);
  if (dst == NULL || r == ZYDIS_REGISTER_CS) return BT_UD(e);
  unsigned cpl = bt_cpl(v);
  if (r == ZYDIS_REGISTER_SS) {
    if ((sel & ~3u) == 0 && (cpl == 3 || (sel & 3) != cpl)) return BT_GP0(e);
    if ((sel & ~3u) == 0) {
      v->sys.ss = bt_null_ss(cpl);
      v->sys.ss.selector = sel;
      return BT_EMU_NEXT;
    }
  }
  if (!vmm__bt_load_seg(v, sel, &s, e)) {
    if (r == ZYDIS_REGISTER_SS && e->vec == 11) e->vec = 12;
    return BT_EMU_EXC;
  }
  if ((sel & ~3u) != 0) {
    bool ok = s.s && (r == ZYDIS_REGISTER_SS ? ((s.type & 0xa) == 2 && s.dpl == cpl)
                                             : (!(s.type & 8) || (s.type & 2)));
    if (!ok) {
      *e = (struct bt_exc){.vec = 13, .has_err = true, .err = sel & ~3u};
      return BT_EMU_EXC;
    }
  }
  uint64_t old_base = dst->base;
  *dst = s;
  if (r == ZYDIS_REGISTER_FS && old_base != s.base) vmm__bt_invalidate_flags(v, BT_BLK_USES_FS);
  if (r == ZYDIS_REGISTER_GS && old_base != s.base) vmm__bt_invalidate_flags(v, BT_BLK_USES_GS);
  return BT_EMU_NEXT;
}

enum bt_emu_result vmm__bt_emu_seg(struct bt_vcpu *v, const struct bt_desc *d,
                              const ZydisDecodedInstruction *z, const ZydisDecodedOperand *ops,
                              struct bt_exc *e) {
  struct bt_ctrl *c = v->ctrl;
  bool user = bt_cpl(v) == 3;
  switch (z->mnemonic) {
    case ZYDIS_MNEMONIC_MOV:
      if (ops[0].type == ZYDIS_OPERAND_TYPE_REGISTER &&
          ZydisRegisterGetClass(ops[0].reg.value) == ZYDIS_REGCLASS_SEGMENT) {
        uint64_t sel = 0;
        if (ops[1].type == ZYDIS_OPERAND_TYPE_REGISTER) {
          if (!bt_gpr_read(v, ops[1].reg.value, &sel)) return BT_EMU_ERROR;
        } else {
          uint16_t s16;
          if (!vmm__bt_read_mem(v, vmm__bt_operand_la(v, d, z, &ops[1]), &s16, 2, user, e)) return BT_EMU_EXC;
          sel = s16;
        }
        return bt_load_sreg(v, ops[0].reg.value, (uint16_t)sel, e);
      } else {
        vmm_segment_t *s = bt_sreg(v, ops[1].reg.value);
        if (s == NULL) return BT_EMU_ERROR;
        if (ops[0].type == ZYDIS_OPERAND_TYPE_REGISTER) {
          if (!bt_gpr_write(v, ops[0].reg.value, s->selector)) return BT_EMU_ERROR;
        } else {
          uint16_t s16 = s->selector;
          if (!vmm__bt_write_mem(v, vmm__bt_operand_la(v, d, z, &ops[0]), &s16, 2, user, e)) return BT_EMU_EXC;
        }
        return BT_EMU_NEXT;
      }
    case ZYDIS_MNEMONIC_PUSH: {
      vmm_segment_t *s = bt_sreg(v, ops[0].reg.value);
      if (s == NULL) return BT_EMU_ERROR;
      unsigned sz = z->operand_width / 8;
      uint64_t val = s->selector;
      if (!vmm__bt_write_mem(v, c->gpr[4] - sz, &val, sz, user, e)) return BT_EMU_EXC;
      c->gpr[4] -= sz;
      return BT_EMU_NEXT;
    }
    case ZYDIS_MNEMONIC_POP: {
      unsigned sz = z->operand_width / 8;
      uint64_t val = 0;
      if (!vmm__bt_read_mem(v, c->gpr[4], &val, sz, user, e)) return BT_EMU_EXC;
      enum bt_emu_result r = bt_load_sreg(v, ops[0].reg.value, (uint16_t)val, e);
      if (r == BT_EMU_NEXT) c->gpr[4] += sz;
      return r;
    }
    case ZYDIS_MNEMONIC_LSS: case ZYDIS_MNEMONIC_LFS: case ZYDIS_MNEMONIC_LGS: {
      unsigned osz = z->operand_width / 8;
      uint8_t buf[10] = {0};
      if (!vmm__bt_read_mem(v, vmm__bt_operand_la(v, d, z, &ops[1]), buf, osz + 2, user, e)) return BT_EMU_EXC;
      uint64_t off = 0;
      uint16_t sel;
      memcpy(&off, buf, osz);
      memcpy(&sel, buf + osz, 2);
      ZydisRegister r = z->mnemonic == ZYDIS_MNEMONIC_LSS   ? ZYDIS_REGISTER_SS
                        : z->mnemonic == ZYDIS_MNEMONIC_LFS ? ZYDIS_REGISTER_FS
                                                            : ZYDIS_REGISTER_GS;
      enum bt_emu_result res = bt_load_sreg(v, r, sel, e);
      if (res != BT_EMU_NEXT) return res;
      if (!bt_gpr_write(v, ops[0].reg.value, off)) return BT_EMU_ERROR;
      return BT_EMU_NEXT;
    }
    default: return BT_EMU_ERROR;
  }
}
