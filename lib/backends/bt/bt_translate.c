/* bt backend: the block translator.
 *
 * A block is a run of guest instructions up to a control transfer. Each instruction is
 *  - copied byte for byte when it touches no memory and is not sensitive;
 *  - copied with a GS segment override and a 32-bit address-size prefix when it has one
 *    explicit memory operand (RIP-relative operands become absolute, FS/GS-relative ones get
 *    the guest segment base folded into the displacement), so that the access lands in the
 *    window by construction;
 *  - rewritten when it uses the stack, string operations or branches;
 *  - replaced by a call to C (bt_helpers.c) when it is privileged or sensitive.
 * Guest instructions keep their own encoding: only prefixes are added and the ModRM/SIB/
 * displacement bytes are edited where needed, which keeps every operand-size, vector-length
 * and immediate detail exactly as the guest wrote it. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bt_xlate.h"


const ZydisDecoder *vmm__bt_decoder(void) { return vmm__emu_decoder(); }

/* ---- classification ---- */

static bool has_reg_class(const ZydisDecodedInstruction *z, const ZydisDecodedOperand *ops,
                          ZydisRegisterClass c) {
  for (unsigned i = 0; i < z->operand_count; i++)
    if (ops[i].type == ZYDIS_OPERAND_TYPE_REGISTER &&
        ZydisRegisterGetClass(ops[i].reg.value) == c)
      return true;
  return false;
}

static bool uses_vector_regs(const ZydisDecodedInstruction *z, const ZydisDecodedOperand *ops) {
  return has_reg_class(z, ops, ZYDIS_REGCLASS_XMM) || has_reg_class(z, ops, ZYDIS_REGCLASS_YMM);
}

/* Registers no copied instruction may name. */
static bool has_forbidden_reg(const ZydisDecodedInstruction *z, const ZydisDecodedOperand *ops) {
  for (unsigned i = 0; i < z->operand_count; i++) {
    if (ops[i].type != ZYDIS_OPERAND_TYPE_REGISTER) continue;
    ZydisRegister r = ops[i].reg.value;
    switch (ZydisRegisterGetClass(r)) {
      case ZYDIS_REGCLASS_SEGMENT: case ZYDIS_REGCLASS_TABLE: case ZYDIS_REGCLASS_TEST:
      case ZYDIS_REGCLASS_CONTROL: case ZYDIS_REGCLASS_DEBUG: case ZYDIS_REGCLASS_MASK:
      case ZYDIS_REGCLASS_BOUND: case ZYDIS_REGCLASS_TMM: case ZYDIS_REGCLASS_ZMM:
        return true;
      default: break;
    }
    switch (r) {
      case ZYDIS_REGISTER_XCR0: case ZYDIS_REGISTER_PKRU: case ZYDIS_REGISTER_UIF:
        return true;
      default: break;
    }
  }
  return false;
}

static bool category_rejected(ZydisInstructionCategory c) {
  switch (c) {
    case ZYDIS_CATEGORY_AMX_TILE: case ZYDIS_CATEGORY_SGX: case ZYDIS_CATEGORY_VTX:
    case ZYDIS_CATEGORY_PT: case ZYDIS_CATEGORY_PCONFIG: case ZYDIS_CATEGORY_KEYLOCKER:
    case ZYDIS_CATEGORY_KEYLOCKER_WIDE: case ZYDIS_CATEGORY_MPX: case ZYDIS_CATEGORY_UINTR:
    case ZYDIS_CATEGORY_WAITPKG: case ZYDIS_CATEGORY_RDPRU: case ZYDIS_CATEGORY_ENQCMD:
    case ZYDIS_CATEGORY_HRESET: case ZYDIS_CATEGORY_CLZERO: case ZYDIS_CATEGORY_TSX_LDTRK:
    case ZYDIS_CATEGORY_KNC: case ZYDIS_CATEGORY_KNCMASK: case ZYDIS_CATEGORY_KNCSCALAR:
    case ZYDIS_CATEGORY_PADLOCK: case ZYDIS_CATEGORY_AMD3DNOW: case ZYDIS_CATEGORY_CET:
    case ZYDIS_CATEGORY_PKU: case ZYDIS_CATEGORY_SMAP: case ZYDIS_CATEGORY_RDWRFSGS:
    case ZYDIS_CATEGORY_FMA4: case ZYDIS_CATEGORY_XOP: case ZYDIS_CATEGORY_TBM:
    case ZYDIS_CATEGORY_GATHER: case ZYDIS_CATEGORY_SCATTER: /* AVX-512 forms */
      return true;
    default: return false;
  }
}

#define BT_SYS_FLAGS                                                                      \
  (ZYDIS_CPUFLAG_TF | ZYDIS_CPUFLAG_IF | ZYDIS_CPUFLAG_IOPL | ZYDIS_CPUFLAG_NT |          \
   ZYDIS_CPUFLAG_RF | ZYDIS_CPUFLAG_VM | ZYDIS_CPUFLAG_AC | ZYDIS_CPUFLAG_VIF |           \
   ZYDIS_CPUFLAG_VIP | ZYDIS_CPUFLAG_ID)

static bool touches_sys_flags(const ZydisDecodedInstruction *z) {
  if (z->cpu_flags == NULL) return false;
  const ZydisAccessedFlags *f = z->cpu_flags;
  return ((f->tested | f->modified | f->set_0 | f->set_1) & BT_SYS_FLAGS) != 0;
}

/* Instructions that read or write the x87/MMX state: before the first one the guest and the
 * host share that state untouched, so each must turn on its switching (FXSAVE and FXRSTOR
 * included: they would otherwise show the guest the host's registers, or load the guest's
 * control word into the host). */
static bool is_x87_or_mmx(const ZydisDecodedInstruction *z, const ZydisDecodedOperand *ops) {
  if (z->meta.category == ZYDIS_CATEGORY_X87_ALU || z->meta.category == ZYDIS_CATEGORY_FCMOV ||
      z->meta.category == ZYDIS_CATEGORY_MMX || z->meta.isa_set == ZYDIS_ISA_SET_X87 ||
      z->meta.isa_set == ZYDIS_ISA_SET_FXSAVE || z->meta.isa_set == ZYDIS_ISA_SET_FXSAVE64)
    return true;
  return has_reg_class(z, ops, ZYDIS_REGCLASS_X87) || has_reg_class(z, ops, ZYDIS_REGCLASS_MMX);
}

/* Whether a pending RSP offset may stay pending across this instruction: 64-bit pushes and
 * pops of registers other than RSP (which use it), and plain computation that names no stack
 * pointer, no register but general ones and flags, and no privilege; near RET and direct
 * CALL apply it in their own RSP update. Everything else (RSP read or written, other
 * branches, helpers, string and system instructions) gets RSP applied first. */
static bool tx_keeps_rsp_delta(const ZydisDecodedInstruction *z, const ZydisDecodedOperand *ops) {
  if (z->attributes & (ZYDIS_ATTRIB_IS_PRIVILEGED | ZYDIS_ATTRIB_HAS_VEX | ZYDIS_ATTRIB_HAS_EVEX |
                       ZYDIS_ATTRIB_HAS_MVEX | ZYDIS_ATTRIB_HAS_XOP))
    return false;
  if (z->meta.branch_type == ZYDIS_BRANCH_TYPE_FAR) return false;
  if (z->mnemonic == ZYDIS_MNEMONIC_RET) return z->operand_width == 64;
  if (z->mnemonic == ZYDIS_MNEMONIC_CALL)
    return ops[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE && ops[0].imm.is_relative;
  if (z->mnemonic == ZYDIS_MNEMONIC_PUSH || z->mnemonic == ZYDIS_MNEMONIC_POP) {
    int r = ops[0].type == ZYDIS_OPERAND_TYPE_REGISTER ? vmm__tx_gpr_num(ops[0].reg.value) : -1;
    return z->operand_width == 64 && r >= 0 && r != BT_RSP;
  }
  switch (z->meta.category) {
    case ZYDIS_CATEGORY_BINARY: case ZYDIS_CATEGORY_LOGICAL: case ZYDIS_CATEGORY_SHIFT:
    case ZYDIS_CATEGORY_ROTATE: case ZYDIS_CATEGORY_CMOV: case ZYDIS_CATEGORY_SETCC:
    case ZYDIS_CATEGORY_DATAXFER: case ZYDIS_CATEGORY_CONVERT:
      break;
    default:
      return false;
  }
  for (unsigned i = 0; i < z->operand_count; i++) {
    const ZydisDecodedOperand *o = &ops[i];
    if (o->type == ZYDIS_OPERAND_TYPE_REGISTER) {
      ZydisRegister r = o->reg.value;
      if (r == ZYDIS_REGISTER_FLAGS || r == ZYDIS_REGISTER_EFLAGS || r == ZYDIS_REGISTER_RFLAGS)
        continue;
      int n = vmm__tx_gpr_num(r);
      if (n < 0 || n == BT_RSP) return false;
    } else if (o->type == ZYDIS_OPERAND_TYPE_MEMORY) {
      if (vmm__tx_gpr_num(o->mem.base) == BT_RSP || vmm__tx_gpr_num(o->mem.index) == BT_RSP ||
          o->mem.base == ZYDIS_REGISTER_RIP || o->mem.segment == ZYDIS_REGISTER_FS ||
          o->mem.segment == ZYDIS_REGISTER_GS)
        return false;
    }
  }
  return true;
}

/* Translates one decoded instruction. Returns false when the translator cannot express it
 * (the caller emits an UNSUPPORTED helper instead). */
static bool tx_insn(struct bt_tx *t) {
  const ZydisDecodedInstruction *z = t->z;
  const ZydisDecodedOperand *ops = t->ops;
  struct bt_vcpu *v = t->v;
  ZydisMnemonic m = z->mnemonic;

  if (z->attributes & (ZYDIS_ATTRIB_HAS_EVEX | ZYDIS_ATTRIB_HAS_MVEX)) {
    vmm__tx_helper_end(t, BT_H_UD); /* AVX-512 is not offered to guests. */
    return true;
  }
  if ((z->attributes & ZYDIS_ATTRIB_HAS_VEX) && uses_vector_regs(z, ops) &&
      (!(v->sys.cr4 & VMM_CR4_OSXSAVE) || (v->sys.xcr0 & 6) != 6)) {
    vmm__tx_helper_end(t, BT_H_UD);
    return true;
  }
  if (is_x87_or_mmx(z, ops)) v->ctrl->x87_live = 1;

  if (z->meta.branch_type == ZYDIS_BRANCH_TYPE_FAR &&
      (m == ZYDIS_MNEMONIC_JMP || m == ZYDIS_MNEMONIC_CALL || m == ZYDIS_MNEMONIC_RET)) {
    vmm__tx_helper_end(t, BT_H_FAR);
    return true;
  }
  switch (m) {
    case ZYDIS_MNEMONIC_JMP: case ZYDIS_MNEMONIC_CALL: case ZYDIS_MNEMONIC_RET:
    case ZYDIS_MNEMONIC_JRCXZ: case ZYDIS_MNEMONIC_JECXZ: case ZYDIS_MNEMONIC_LOOP:
    case ZYDIS_MNEMONIC_LOOPE: case ZYDIS_MNEMONIC_LOOPNE:
    case ZYDIS_MNEMONIC_JB: case ZYDIS_MNEMONIC_JBE: case ZYDIS_MNEMONIC_JL:
    case ZYDIS_MNEMONIC_JLE: case ZYDIS_MNEMONIC_JNB: case ZYDIS_MNEMONIC_JNBE:
    case ZYDIS_MNEMONIC_JNL: case ZYDIS_MNEMONIC_JNLE: case ZYDIS_MNEMONIC_JNO:
    case ZYDIS_MNEMONIC_JNP: case ZYDIS_MNEMONIC_JNS: case ZYDIS_MNEMONIC_JNZ:
    case ZYDIS_MNEMONIC_JO: case ZYDIS_MNEMONIC_JP: case ZYDIS_MNEMONIC_JS:
    case ZYDIS_MNEMONIC_JZ:
      return vmm__tx_branch(t);
    case ZYDIS_MNEMONIC_IRET: case ZYDIS_MNEMONIC_IRETD: case ZYDIS_MNEMONIC_IRETQ:
      vmm__tx_helper_end(t, BT_H_IRET);
      return true;
    case ZYDIS_MNEMONIC_INT: case ZYDIS_MNEMONIC_INT3: case ZYDIS_MNEMONIC_INT1:
    case ZYDIS_MNEMONIC_INTO:
      vmm__tx_helper_end(t, BT_H_INT);
      return true;
    case ZYDIS_MNEMONIC_SYSCALL: vmm__tx_helper_end(t, BT_H_SYSCALL); return true;
    case ZYDIS_MNEMONIC_SYSRET: vmm__tx_helper_end(t, BT_H_SYSRET); return true;
    case ZYDIS_MNEMONIC_UD0: case ZYDIS_MNEMONIC_UD1: case ZYDIS_MNEMONIC_UD2:
    case ZYDIS_MNEMONIC_SYSENTER: case ZYDIS_MNEMONIC_SYSEXIT: case ZYDIS_MNEMONIC_RSM:
    case ZYDIS_MNEMONIC_CLAC: case ZYDIS_MNEMONIC_STAC: case ZYDIS_MNEMONIC_RDPKRU:
    case ZYDIS_MNEMONIC_WRPKRU: case ZYDIS_MNEMONIC_XSAVEC: case ZYDIS_MNEMONIC_XSAVEC64:
    case ZYDIS_MNEMONIC_XSAVES: case ZYDIS_MNEMONIC_XSAVES64: case ZYDIS_MNEMONIC_XRSTORS:
    case ZYDIS_MNEMONIC_XRSTORS64: case ZYDIS_MNEMONIC_MOVDIR64B: case ZYDIS_MNEMONIC_INVPCID:
    case ZYDIS_MNEMONIC_MONITORX: case ZYDIS_MNEMONIC_MWAITX: case ZYDIS_MNEMONIC_VMCALL:
    case ZYDIS_MNEMONIC_VMMCALL: case ZYDIS_MNEMONIC_XBEGIN: case ZYDIS_MNEMONIC_XEND:
    case ZYDIS_MNEMONIC_XABORT: case ZYDIS_MNEMONIC_XTEST:
      vmm__tx_helper_end(t, BT_H_UD);
      return true;
    case ZYDIS_MNEMONIC_HLT: vmm__tx_helper_end(t, BT_H_HLT); return true;
    case ZYDIS_MNEMONIC_PUSH: return vmm__tx_push(t);
    case ZYDIS_MNEMONIC_POP: return vmm__tx_pop(t);
    case ZYDIS_MNEMONIC_LEAVE: {
      if (z->operand_width != 64) return false;
      /* rsp = rbp; rbp = [rsp]; rsp += 8. The load goes first, through a scratch, so a
       * fault leaves the state untouched. */
      bt_e_store(&t->b, BT_RAX, bt_ea_ctrl(spill(BT_RAX)));
      vmm__tx_map(t, 1u << BT_RAX);
      bt_e_load(&t->b, BT_RAX,
                (struct bt_ea){.base = BT_RBP, .index = -1, .scale = 1, .gs = tx_gs(t), .a32 = true});
      bt_e_lea(&t->b, BT_RSP, (struct bt_ea){.base = BT_RBP, .index = -1, .scale = 1, .disp = 8});
      bt_e_mov_rr(&t->b, BT_RBP, BT_RAX);
      bt_e_load(&t->b, BT_RAX, bt_ea_ctrl(spill(BT_RAX)));
      return true;
    }
    case ZYDIS_MNEMONIC_ENTER: vmm__tx_helper(t, BT_H_ENTER); return true;
    case ZYDIS_MNEMONIC_PUSHF: case ZYDIS_MNEMONIC_PUSHFD: case ZYDIS_MNEMONIC_PUSHFQ:
      vmm__tx_helper(t, BT_H_PUSHF);
      return true;
    case ZYDIS_MNEMONIC_POPF: case ZYDIS_MNEMONIC_POPFD: case ZYDIS_MNEMONIC_POPFQ:
      /* POPF may set TF or IF: the block ends so the dispatcher sees the new state. */
      vmm__tx_helper_end(t, BT_H_POPF);
      return true;
    case ZYDIS_MNEMONIC_CPUID: vmm__tx_helper(t, BT_H_CPUID); return true;
    case ZYDIS_MNEMONIC_RDTSC: vmm__tx_helper(t, BT_H_RDTSC); return true;
    case ZYDIS_MNEMONIC_RDTSCP: vmm__tx_helper(t, BT_H_RDTSCP); return true;
    case ZYDIS_MNEMONIC_RDPID: vmm__tx_helper(t, BT_H_RDPID); return true;
    case ZYDIS_MNEMONIC_RDPMC: vmm__tx_helper(t, BT_H_RDPMC); return true;
    case ZYDIS_MNEMONIC_IN: case ZYDIS_MNEMONIC_OUT: case ZYDIS_MNEMONIC_INSB:
    case ZYDIS_MNEMONIC_INSW: case ZYDIS_MNEMONIC_INSD: case ZYDIS_MNEMONIC_OUTSB:
    case ZYDIS_MNEMONIC_OUTSW: case ZYDIS_MNEMONIC_OUTSD: {
      /* The hypercall page's marker: out %eax, $VMM_HC_PORT. */
      uint64_t hc = v->vcpu->vm->hypercall_page_gpa;
      if (m == ZYDIS_MNEMONIC_OUT && hc && t->cur_pa == hc && z->length == 2 &&
          t->bytes[0] == 0xe7 && t->bytes[1] == VMM_HC_PORT) {
        vmm__tx_helper(t, BT_H_HYPERCALL);
        return true;
      }
      /* String I/O re-executes per element: end the block so RIP can stay on it. */
      if (m == ZYDIS_MNEMONIC_IN || m == ZYDIS_MNEMONIC_OUT) vmm__tx_helper(t, BT_H_IO);
      else vmm__tx_helper_end(t, BT_H_IO);
      return true;
    }
    case ZYDIS_MNEMONIC_CLI: vmm__tx_helper(t, BT_H_CLI); return true;
    case ZYDIS_MNEMONIC_STI: vmm__tx_helper_end(t, BT_H_STI); return true;
    case ZYDIS_MNEMONIC_RDMSR: vmm__tx_helper(t, BT_H_RDMSR); return true;
    case ZYDIS_MNEMONIC_WRMSR: vmm__tx_helper_end(t, BT_H_WRMSR); return true;
    case ZYDIS_MNEMONIC_LGDT: case ZYDIS_MNEMONIC_LIDT: case ZYDIS_MNEMONIC_SGDT:
    case ZYDIS_MNEMONIC_SIDT: case ZYDIS_MNEMONIC_LLDT: case ZYDIS_MNEMONIC_LTR:
    case ZYDIS_MNEMONIC_SLDT: case ZYDIS_MNEMONIC_STR: case ZYDIS_MNEMONIC_SMSW:
    case ZYDIS_MNEMONIC_LMSW: case ZYDIS_MNEMONIC_CLTS:
      vmm__tx_helper_end(t, BT_H_DESC_TABLE);
      return true;
    case ZYDIS_MNEMONIC_INVLPG: vmm__tx_helper_end(t, BT_H_INVLPG); return true;
    case ZYDIS_MNEMONIC_WBINVD: case ZYDIS_MNEMONIC_INVD:
      vmm__tx_helper(t, BT_H_CACHE_NOP);
      return true;
    case ZYDIS_MNEMONIC_SWAPGS: vmm__tx_helper_end(t, BT_H_SWAPGS); return true;
    case ZYDIS_MNEMONIC_XGETBV: case ZYDIS_MNEMONIC_XSETBV: vmm__tx_helper_end(t, BT_H_XCR); return true;
    case ZYDIS_MNEMONIC_XSAVE: case ZYDIS_MNEMONIC_XSAVE64: case ZYDIS_MNEMONIC_XSAVEOPT:
    case ZYDIS_MNEMONIC_XSAVEOPT64: case ZYDIS_MNEMONIC_XRSTOR: case ZYDIS_MNEMONIC_XRSTOR64:
      v->ctrl->x87_live = 1;
      vmm__tx_helper_end(t, BT_H_XSAVE);
      return true;
    case ZYDIS_MNEMONIC_LSS: case ZYDIS_MNEMONIC_LFS: case ZYDIS_MNEMONIC_LGS:
      vmm__tx_helper_end(t, BT_H_SEG);
      return true;
    case ZYDIS_MNEMONIC_RDFSBASE: case ZYDIS_MNEMONIC_RDGSBASE: case ZYDIS_MNEMONIC_WRFSBASE:
    case ZYDIS_MNEMONIC_WRGSBASE:
      vmm__tx_helper_end(t, BT_H_FSGSBASE);
      return true;
    case ZYDIS_MNEMONIC_MONITOR: case ZYDIS_MNEMONIC_MWAIT: vmm__tx_helper(t, BT_H_MONITOR); return true;
    case ZYDIS_MNEMONIC_LAR: case ZYDIS_MNEMONIC_LSL: case ZYDIS_MNEMONIC_VERR:
    case ZYDIS_MNEMONIC_VERW:
      return false;
    case ZYDIS_MNEMONIC_NOP: case ZYDIS_MNEMONIC_ENDBR32: case ZYDIS_MNEMONIC_ENDBR64:
    case ZYDIS_MNEMONIC_RDSSPD: case ZYDIS_MNEMONIC_RDSSPQ:
      return true; /* Nothing to run. */
    case ZYDIS_MNEMONIC_XLAT:
    case ZYDIS_MNEMONIC_MASKMOVQ: case ZYDIS_MNEMONIC_MASKMOVDQU:
    case ZYDIS_MNEMONIC_VMASKMOVDQU: {
      /* DS:rBX / DS:rDI implicit operands: 32-bit addressing (and the GS override in the GS
       * window) suffice. */
      if (z->attributes & ZYDIS_ATTRIB_HAS_SEGMENT) return false;
      uint8_t out[17] = {0x65, 0x67};
      unsigned n = 2;
      if (!tx_gs(t)) out[0] = 0x67, n = 1;
      /* The guest's own segment (2e 36 3e 26, which Zydis does not flag in 64-bit mode) and
       * address-size prefixes go: which of several segment prefixes wins is not defined. */
      for (unsigned i = 0; i < z->length; i++)
        if (!(i < z->raw.prefix_count && vmm__tx_is_seg_or_asz(t->bytes[i]))) out[n++] = t->bytes[i];
      if (n > 15) return false;
      bt_ebytes(&t->b, out, n);
      return true;
    }
    case ZYDIS_MNEMONIC_BT: case ZYDIS_MNEMONIC_BTS: case ZYDIS_MNEMONIC_BTR:
    case ZYDIS_MNEMONIC_BTC:
      if (ops[0].type == ZYDIS_OPERAND_TYPE_MEMORY && ops[1].type == ZYDIS_OPERAND_TYPE_REGISTER) {
        vmm__tx_helper(t, BT_H_BTMEM);
        return true;
      }
      break;
    case ZYDIS_MNEMONIC_MOV:
      if (has_reg_class(z, ops, ZYDIS_REGCLASS_CONTROL)) {
        vmm__tx_helper_end(t, BT_H_MOVCR);
        return true;
      }
      if (has_reg_class(z, ops, ZYDIS_REGCLASS_DEBUG)) {
        vmm__tx_helper(t, BT_H_MOVDR);
        return true;
      }
      if (has_reg_class(z, ops, ZYDIS_REGCLASS_SEGMENT)) {
        vmm__tx_helper_end(t, BT_H_SEG);
        return true;
      }
      break;
    case ZYDIS_MNEMONIC_LEA: {
      const ZydisDecodedOperand *mo = &ops[1];
      if (mo->mem.base == ZYDIS_REGISTER_RIP || mo->mem.base == ZYDIS_REGISTER_EIP) {
        int r = vmm__tx_gpr_num(ops[0].reg.value);
        if (r < 0) return false;
        uint64_t a = t->rip + z->length + (uint64_t)mo->mem.disp.value;
        if (z->address_width == 32) a = (uint32_t)a;
        if (ops[0].size == 64) bt_e_mov_imm64(&t->b, (unsigned)r, a);
        else if (ops[0].size == 32) bt_e_mov_imm64(&t->b, (unsigned)r, (uint32_t)a);
        else return false;
        return true;
      }
      bt_ebytes(&t->b, t->bytes, z->length);
      return true;
    }
    default: break;
  }

  if (z->meta.category == ZYDIS_CATEGORY_STRINGOP) return vmm__tx_string(t);
  if (category_rejected(z->meta.category) || (z->attributes & ZYDIS_ATTRIB_IS_PRIVILEGED)) {
    vmm__tx_helper_end(t, BT_H_UD);
    return true;
  }
  if (has_forbidden_reg(z, ops) || touches_sys_flags(z)) return false;

  /* Memory operands. */
  const ZydisDecodedOperand *mo = NULL;
  for (unsigned i = 0; i < z->operand_count; i++) {
    if (ops[i].type != ZYDIS_OPERAND_TYPE_MEMORY) continue;
    if (ops[i].mem.type == ZYDIS_MEMOP_TYPE_AGEN) continue;
    if (ops[i].mem.type != ZYDIS_MEMOP_TYPE_MEM && ops[i].mem.type != ZYDIS_MEMOP_TYPE_VSIB)
      return false;
    if (ops[i].visibility != ZYDIS_OPERAND_VISIBILITY_EXPLICIT || mo != NULL) return false;
    mo = &ops[i];
  }
  if (mo == NULL) {
    bt_ebytes(&t->b, t->bytes, z->length);
    return true;
  }
  if (m == ZYDIS_MNEMONIC_MOV && !(z->attributes & ZYDIS_ATTRIB_HAS_MODRM)) {
    /* mov between rAX and a 64-bit absolute address (moffs): same access, window form. */
    struct bt_ea ea;
    if (!vmm__tx_guest_ea(t, mo, 0, &ea)) return false;
    bool store = mo == &ops[0];
    bt_e_mov_sized(&t->b, BT_RAX, ea, mo->size / 8, store);
    return true;
  }
  if (vmm__tx_copy_mem(t, mo)) return true;
  return vmm__tx_copy_mem_scratch(t, mo);
}

/* ---- fetching ---- */

/* Reads up to 15 bytes of code at la. Returns how many could be read, 0 with *pf set when
 * not even the first byte can be fetched. */
static unsigned tx_fetch(struct bt_tx *t, uint64_t la, uint8_t *buf, uint32_t *pf,
                         uint64_t *fault_la) {
  unsigned got = 0;
  while (got < 15) {
    uint64_t a = la + got;
    struct vmm__bt_walk w;
    int rc = vmm__bt_walk(t->v, a, 4u | (t->cpl == 3 ? 2u : 0), true, &w);
    if (rc != 0) {
      if (got == 0) {
        *pf = rc == BT_WALK_NONCANON ? 0xffffffffu : (uint32_t)rc & 0xffff;
        *fault_la = a;
      }
      break;
    }
    uint64_t page = w.pa & ~(VMM_PAGE_SIZE - 1);
    if (got == 0) t->cur_pa = page;
    /* A block spans at most two pages. */
    bool known = false;
    for (unsigned i = 0; i < t->npages; i++) known |= t->pa[i] == page;
    if (!known) {
      if (t->npages == 2) break;
      t->pa[t->npages++] = page;
    }
    unsigned n = (unsigned)(VMM_PAGE_SIZE - (w.pa & (VMM_PAGE_SIZE - 1)));
    if (n > 15 - got) n = 15 - got;
    const uint8_t *p = vmm__bt_phys_ptr(t->v, w.pa, n);
    if (p == NULL) {
      if (got == 0) {
        *pf = 0xfffffffeu; /* not RAM */
        *fault_la = a;
      }
      break;
    }
    memcpy(buf + got, p, n);
    got += n;
  }
  return got;
}

/* ---- blocks ---- */

static void tx_emit_stubs(struct bt_tx *t, struct bt_block *blk) {
  blk->nexits = (uint8_t)t->nexits;
  for (unsigned i = 0; i < t->nexits; i++) {
    uint32_t stub = bt_pos(&t->b);
    uint64_t target = t->exits[i].target;
    bt_e_store_imm(&t->b, bt_ea_ctrl(BT_C_RIP), (uint32_t)target, 4);
    bt_e_store_imm(&t->b, bt_ea_ctrl(BT_C_RIP + 4), (uint32_t)(target >> 32), 4);
    bt_e_store_imm(&t->b, bt_ea_ctrl(BT_C_EXIT_SITE), t->b.off0 + t->exits[i].at, 8);
    bt_e_jmp_mem(&t->b, bt_ea_ctrl(BT_C_FN_EXIT_CHAIN));
    bt_fix_rel32(&t->b, t->exits[i].at, stub);
    blk->exits[i] = (struct bt_exit_site){.patch_off = t->b.off0 + t->exits[i].at,
                                          .stub_off = stub, .target = target, .linked = -1};
  }
}

static int32_t bt_new_block(struct bt_vcpu *v) {
  if (v->nblocks == v->blocks_cap) {
    uint32_t cap = v->blocks_cap ? v->blocks_cap * 2 : 1024;
    struct bt_block *n = realloc(v->blocks, cap * sizeof(*n));
    if (n == NULL) return -1;
    v->blocks = n;
    v->blocks_cap = cap;
  }
  memset(&v->blocks[v->nblocks], 0, sizeof(v->blocks[0]));
  return (int32_t)v->nblocks++;
}

static uint64_t bt_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int32_t vmm__bt_translate(struct bt_vcpu *v, uint64_t rip, uint64_t *fault_la, uint32_t *pf_err) {
  uint64_t t0 = bt_now_ns();
  bool single = v->single_step || v->smc_single;
  /* Blocks end early when the cache runs short; the next one starts on an empty cache. */
  if (v->cache_size - v->cache_used < 8192) vmm__bt_cache_flush(v);
  struct bt_tx t = {.v = v, .start = rip, .rip = rip, .mode = bt_mode(v), .cpl = bt_cpl(v)};
  if (single) t.mode |= 4;
  /* Blocks that the lookup table can name start with their indirect entry (BT_IND_ENTRY bytes
   * before the block, ending at its first byte): `mov spill(rcx),%rcx`, since a lookup hit
   * jumps there with the host address in rcx. */
  uint32_t pro = single ? 0 : BT_IND_ENTRY;
  if (pro) {
    struct bt_buf e = {.p = v->cache_rw + v->cache_used, .off0 = (uint32_t)v->cache_used,
                       .cap = pro};
    while (e.len < pro - BT_IND_LOAD) bt_e8(&e, 0xcc);
    bt_e_load(&e, BT_RCX, bt_ea_ctrl(spill(BT_RCX)));
    if (e.len != pro || e.overflow) return -2;
  }
  t.b = (struct bt_buf){.p = v->cache_rw + v->cache_used + pro,
                        .off0 = (uint32_t)v->cache_used + pro,
                        .cap = (uint32_t)(v->cache_size - v->cache_used - pro - 1024)};
  if (t.b.cap > BT_MAX_INSNS * BT_INSN_ROOM) t.b.cap = BT_MAX_INSNS * BT_INSN_ROOM;
  t.map_first = v->nmaps;
  uint32_t ndesc0 = v->ndescs;
  unsigned max_insns = single ? 1 : BT_MAX_INSNS;
  const ZydisDecoder *dec = vmm__bt_decoder();

  while (!t.ended && t.ninsn < max_insns && !t.failed) {
    if (t.b.len + BT_INSN_ROOM > t.b.cap) break;
    uint8_t bytes[16];
    uint32_t pf = 0;
    uint64_t fla = 0;
    unsigned npages0 = t.npages;
    unsigned got = tx_fetch(&t, t.rip, bytes, &pf, &fla);
    if (got == 0) {
      if (t.ninsn == 0) {
        v->nmaps = t.map_first;
        v->ndescs = ndesc0;
        *fault_la = fla;
        *pf_err = pf;
        return -1;
      }
      break;
    }
    ZydisDecodedInstruction z;
    ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
    ZyanStatus st = ZydisDecoderDecodeFull(dec, bytes, got, &z, ops);
    if (st == ZYDIS_STATUS_NO_MORE_DATA && got < 15) {
      /* The instruction runs into a page we cannot fetch. */
      if (t.ninsn > 0) {
        t.npages = npages0;
        break;
      }
      uint32_t pf2 = 0;
      uint64_t fla2 = 0;
      struct bt_tx probe = t;
      probe.npages = 0;
      tx_fetch(&probe, t.rip + got, bytes + got, &pf2, &fla2);
      v->nmaps = t.map_first;
      v->ndescs = ndesc0;
      *fault_la = fla2 ? fla2 : t.rip + got;
      *pf_err = pf2;
      return -1;
    }
    t.z = ZYAN_SUCCESS(st) ? &z : NULL;
    t.ops = ops;
    t.bytes = bytes;
    if (t.z == NULL || !tx_keeps_rsp_delta(&z, ops)) vmm__tx_sync_rsp(&t);
    vmm__tx_map(&t, 0);
    if (!ZYAN_SUCCESS(st)) {
      vmm__tx_helper_end(&t, BT_H_UD);
    } else {
      uint32_t len0 = t.b.len, nmaps0 = v->nmaps, nexits0 = t.nexits;
      int32_t delta0 = t.rsp_delta;
      bool ended0 = t.ended;
      if (!tx_insn(&t)) {
        t.b.len = len0;
        v->nmaps = nmaps0;
        t.nexits = nexits0;
        t.ended = ended0;
        t.rsp_delta = delta0;
        vmm__tx_helper_end(&t, BT_H_UNSUPPORTED);
      }
    }
    t.ninsn++;
    if (t.z) t.rip += z.length;
    else t.rip += 1;
  }
  if (!t.ended && !t.failed) vmm__tx_jmp_to(&t, t.rip);
  if (t.failed || t.b.overflow) {
    v->nmaps = t.map_first;
    v->ndescs = ndesc0;
    *pf_err = 0xfffffffdu;
    return -2;
  }
  int32_t idx = bt_new_block(v);
  if (idx < 0) return -2;
  struct bt_block *blk = &v->blocks[idx];
  tx_emit_stubs(&t, blk);
  if (t.b.overflow) {
    v->nblocks--;
    v->nmaps = t.map_first;
    v->ndescs = ndesc0;
    return -2;
  }
  blk->rip = rip;
  blk->rip_end = t.rip;
  blk->pa[0] = t.pa[0];
  blk->pa[1] = t.npages > 1 ? t.pa[1] : t.pa[0];
  blk->host_off = t.b.off0;
  blk->host_len = t.b.len;
  blk->map_first = t.map_first;
  blk->map_count = v->nmaps - t.map_first;
  blk->ninsn = t.ninsn;
  blk->mode = t.mode;
  blk->flags = (uint8_t)(BT_BLK_VALID | t.flags | (single ? BT_BLK_SINGLE : 0));
  v->cache_used += pro + ((t.b.len + 15) & ~15u);
  if (v->smc_single) {
    /* The instruction that wrote its own page runs once from here, with the page left
     * writable; it is never found again, and later translations protect the page anew. */
    blk->flags &= (uint8_t)~BT_BLK_VALID;
  } else {
    vmm__bt_block_insert(v, idx);
    vmm__bt_mark_code_page(v, rip, blk->pa[0]);
    if (blk->pa[1] != blk->pa[0]) vmm__bt_mark_code_page(v, (t.rip - 1), blk->pa[1]);
  }
  v->stats.blocks++;
  v->stats.insns += t.ninsn;
  v->stats.translate_ns += bt_now_ns() - t0;
  return idx;
}
