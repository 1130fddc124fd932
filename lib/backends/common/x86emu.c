/* Single-instruction decoding and emulation shared by the bt and pv backends. */
#include "x86emu.h"

#include <pthread.h>
#include <string.h>

#include "../../core/internal.h"

#define RFLAGS_DF (1ull << 10)

static ZydisDecoder vmm_emu_dec;
static pthread_once_t vmm_emu_once = PTHREAD_ONCE_INIT;

static void vmm_emu_init(void) {
  ZydisDecoderInit(&vmm_emu_dec, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
}

const ZydisDecoder *vmm__emu_decoder(void) {
  pthread_once(&vmm_emu_once, vmm_emu_init);
  return &vmm_emu_dec;
}

/* Maps a Zydis general register to (index, size in bytes, bit shift for AH..BH). */
static bool vmm_emu_gpr(ZydisRegister r, uint8_t *idx, uint8_t *size, uint8_t *shift) {
  *shift = 0;
  if (r >= ZYDIS_REGISTER_RAX && r <= ZYDIS_REGISTER_R15) {
    *idx = (uint8_t)(r - ZYDIS_REGISTER_RAX);
    *size = 8;
  } else if (r >= ZYDIS_REGISTER_EAX && r <= ZYDIS_REGISTER_R15D) {
    *idx = (uint8_t)(r - ZYDIS_REGISTER_EAX);
    *size = 4;
  } else if (r >= ZYDIS_REGISTER_AX && r <= ZYDIS_REGISTER_R15W) {
    *idx = (uint8_t)(r - ZYDIS_REGISTER_AX);
    *size = 2;
  } else if (r >= ZYDIS_REGISTER_AL && r <= ZYDIS_REGISTER_BL) {
    *idx = (uint8_t)(r - ZYDIS_REGISTER_AL);
    *size = 1;
  } else if (r >= ZYDIS_REGISTER_AH && r <= ZYDIS_REGISTER_BH) {
    *idx = (uint8_t)(r - ZYDIS_REGISTER_AH);
    *size = 1;
    *shift = 8;
  } else if (r >= ZYDIS_REGISTER_SPL && r <= ZYDIS_REGISTER_R15B) {
    *idx = (uint8_t)(r - ZYDIS_REGISTER_SPL + 4);
    *size = 1;
  } else {
    return false;
  }
  return true;
}

static uint64_t vmm_emu_mask(unsigned size) { return size >= 8 ? ~0ull : (1ull << (size * 8)) - 1; }

static uint64_t vmm_emu_read_reg(const struct vmm_emu_cpu *cpu, ZydisRegister r, bool *ok) {
  uint8_t idx, size, shift;
  *ok = true;
  if (r == ZYDIS_REGISTER_RIP) return cpu->rip;
  if (!vmm_emu_gpr(r, &idx, &size, &shift)) {
    *ok = false;
    return 0;
  }
  return (cpu->gpr[idx] >> shift) & vmm_emu_mask(size);
}

/* x86 register write rules: 32-bit writes clear the upper half, 8/16-bit writes merge. */
static void vmm_emu_write_gpr(struct vmm_emu_cpu *cpu, uint8_t idx, uint8_t size, uint8_t shift,
                              uint64_t v) {
  if (size == 8) {
    cpu->gpr[idx] = v;
  } else if (size == 4) {
    cpu->gpr[idx] = (uint32_t)v;
  } else {
    uint64_t m = vmm_emu_mask(size) << shift;
    cpu->gpr[idx] = (cpu->gpr[idx] & ~m) | ((v << shift) & m);
  }
}

int vmm__emu_decode(const struct vmm_emu_cpu *cpu, const struct vmm_emu_mem *mem,
                    struct vmm_emu_insn *insn) {
  memset(insn, 0, sizeof(*insn));
  insn->rip = cpu->rip;
  /* Fetch as much as is readable: an instruction at the end of RAM is shorter than 15. */
  size_t n = sizeof(insn->bytes);
  while (n > 0 && mem->read(mem->ctx, cpu->rip, insn->bytes, n) != 0) n--;
  if (n == 0) return VMM_EFAULT;
  if (ZYAN_FAILED(ZydisDecoderDecodeFull(vmm__emu_decoder(), insn->bytes, n, &insn->z,
                                         insn->ops)))
    return VMM_ENOEXEC;
  switch (insn->z.mnemonic) {
    case ZYDIS_MNEMONIC_IN: insn->kind = VMM_EMU_IN; break;
    case ZYDIS_MNEMONIC_OUT: insn->kind = VMM_EMU_OUT; break;
    case ZYDIS_MNEMONIC_INSB:
    case ZYDIS_MNEMONIC_INSW:
    case ZYDIS_MNEMONIC_INSD: insn->kind = VMM_EMU_INS; break;
    case ZYDIS_MNEMONIC_OUTSB:
    case ZYDIS_MNEMONIC_OUTSW:
    case ZYDIS_MNEMONIC_OUTSD: insn->kind = VMM_EMU_OUTS; break;
    case ZYDIS_MNEMONIC_HLT: insn->kind = VMM_EMU_HLT; break;
    case ZYDIS_MNEMONIC_CLI: insn->kind = VMM_EMU_CLI; break;
    case ZYDIS_MNEMONIC_STI: insn->kind = VMM_EMU_STI; break;
    case ZYDIS_MNEMONIC_RDMSR: insn->kind = VMM_EMU_RDMSR; break;
    case ZYDIS_MNEMONIC_WRMSR: insn->kind = VMM_EMU_WRMSR; break;
    case ZYDIS_MNEMONIC_RDTSC: insn->kind = VMM_EMU_RDTSC; break;
    case ZYDIS_MNEMONIC_RDTSCP: insn->kind = VMM_EMU_RDTSCP; break;
    case ZYDIS_MNEMONIC_CPUID: insn->kind = VMM_EMU_CPUID; break;
    case ZYDIS_MNEMONIC_SYSCALL: insn->kind = VMM_EMU_SYSCALL; break;
    case ZYDIS_MNEMONIC_INT: insn->kind = VMM_EMU_INT; break;
    case ZYDIS_MNEMONIC_INT3: insn->kind = VMM_EMU_INT3; break;
    case ZYDIS_MNEMONIC_UD0:
    case ZYDIS_MNEMONIC_UD1:
    case ZYDIS_MNEMONIC_UD2: insn->kind = VMM_EMU_UD; break;
    default:
      insn->kind = VMM_EMU_OTHER;
      for (unsigned i = 0; i < insn->z.operand_count; i++) {
        if (insn->ops[i].type == ZYDIS_OPERAND_TYPE_MEMORY &&
            insn->ops[i].mem.type == ZYDIS_MEMOP_TYPE_MEM) {
          insn->kind = VMM_EMU_MEM;
          break;
        }
      }
      break;
  }
  return 0;
}

static int vmm_emu_operand_address(const struct vmm_emu_cpu *cpu, const struct vmm_emu_insn *insn,
                                   const ZydisDecodedOperand *op, uint64_t *la) {
  uint64_t a = 0;
  bool ok = true;
  if (op->mem.base == ZYDIS_REGISTER_RIP || op->mem.base == ZYDIS_REGISTER_EIP) {
    a = insn->rip + insn->z.length;
  } else if (op->mem.base != ZYDIS_REGISTER_NONE) {
    a = vmm_emu_read_reg(cpu, op->mem.base, &ok);
    if (!ok) return VMM_ENOSYS;
  }
  if (op->mem.index != ZYDIS_REGISTER_NONE) {
    a += vmm_emu_read_reg(cpu, op->mem.index, &ok) * op->mem.scale;
    if (!ok) return VMM_ENOSYS;
  }
  if (op->mem.disp.has_displacement) a += (uint64_t)op->mem.disp.value;
  if (insn->z.address_width == 32) a &= 0xffffffffull;
  if (op->mem.segment == ZYDIS_REGISTER_FS) a += cpu->fs_base;
  if (op->mem.segment == ZYDIS_REGISTER_GS) a += cpu->gs_base;
  *la = a;
  return 0;
}

int vmm__emu_mem_address(const struct vmm_emu_cpu *cpu, const struct vmm_emu_insn *insn,
                         uint64_t *la) {
  for (unsigned i = 0; i < insn->z.operand_count; i++) {
    const ZydisDecodedOperand *op = &insn->ops[i];
    if (op->type == ZYDIS_OPERAND_TYPE_MEMORY && op->mem.type == ZYDIS_MEMOP_TYPE_MEM)
      return vmm_emu_operand_address(cpu, insn, op, la);
  }
  return VMM_ENOENT;
}

static void vmm_emu_acc_init(struct vmm_emu_access *acc) {
  memset(acc, 0, sizeof(*acc));
  acc->dst_reg = 0xff;
}

int vmm__emu_mmio_start(const struct vmm_emu_cpu *cpu, const struct vmm_emu_insn *insn,
                        struct vmm_emu_access *acc) {
  vmm_emu_acc_init(acc);
  if (insn->kind != VMM_EMU_MEM || insn->z.operand_count_visible < 2) return VMM_ENOSYS;
  const ZydisDecodedOperand *dst = &insn->ops[0], *src = &insn->ops[1];
  int rc;
  uint8_t idx, size, shift;
  switch (insn->z.mnemonic) {
    case ZYDIS_MNEMONIC_MOV:
      if (dst->type == ZYDIS_OPERAND_TYPE_MEMORY) {
        rc = vmm_emu_operand_address(cpu, insn, dst, &acc->addr);
        if (rc) return rc;
        acc->is_write = true;
        acc->size = (uint8_t)(dst->size / 8);
        if (src->type == ZYDIS_OPERAND_TYPE_REGISTER) {
          bool ok;
          acc->value = vmm_emu_read_reg(cpu, src->reg.value, &ok);
          if (!ok) return VMM_ENOSYS;
        } else if (src->type == ZYDIS_OPERAND_TYPE_IMMEDIATE) {
          acc->value = (uint64_t)src->imm.value.s & vmm_emu_mask(acc->size);
        } else {
          return VMM_ENOSYS;
        }
        return 0;
      }
      if (dst->type != ZYDIS_OPERAND_TYPE_REGISTER || src->type != ZYDIS_OPERAND_TYPE_MEMORY)
        return VMM_ENOSYS;
      break;
    case ZYDIS_MNEMONIC_MOVZX:
    case ZYDIS_MNEMONIC_MOVSX:
    case ZYDIS_MNEMONIC_MOVSXD:
      if (dst->type != ZYDIS_OPERAND_TYPE_REGISTER || src->type != ZYDIS_OPERAND_TYPE_MEMORY)
        return VMM_ENOSYS;
      acc->sign_extend = insn->z.mnemonic != ZYDIS_MNEMONIC_MOVZX;
      break;
    default: return VMM_ENOSYS;
  }
  /* A read into a general register. */
  if (!vmm_emu_gpr(dst->reg.value, &idx, &size, &shift)) return VMM_ENOSYS;
  rc = vmm_emu_operand_address(cpu, insn, src, &acc->addr);
  if (rc) return rc;
  acc->size = (uint8_t)(src->size / 8);
  acc->dst_reg = idx;
  acc->dst_size = size;
  /* AH..BH as destinations are encoded in dst_size's high bit. */
  if (shift) acc->dst_size |= 0x80;
  return 0;
}

static uint64_t vmm_emu_addr_mask(const struct vmm_emu_insn *insn) {
  return insn->z.address_width == 32 ? 0xffffffffull : ~0ull;
}

static unsigned vmm_emu_string_size(ZydisMnemonic m) {
  switch (m) {
    case ZYDIS_MNEMONIC_INSB:
    case ZYDIS_MNEMONIC_OUTSB: return 1;
    case ZYDIS_MNEMONIC_INSW:
    case ZYDIS_MNEMONIC_OUTSW: return 2;
    default: return 4;
  }
}

int vmm__emu_pio_start(const struct vmm_emu_cpu *cpu, const struct vmm_emu_mem *mem,
                       const struct vmm_emu_insn *insn, struct vmm_emu_access *acc) {
  vmm_emu_acc_init(acc);
  const ZydisDecodedOperand *ops = insn->ops;
  switch (insn->kind) {
    case VMM_EMU_IN:
      acc->size = (uint8_t)(ops[0].size / 8);
      acc->addr = ops[1].type == ZYDIS_OPERAND_TYPE_IMMEDIATE ? ops[1].imm.value.u & 0xff
                                                              : cpu->gpr[VMM_RDX] & 0xffff;
      acc->dst_reg = VMM_RAX;
      acc->dst_size = acc->size;
      return 0;
    case VMM_EMU_OUT:
      acc->size = (uint8_t)(ops[1].size / 8);
      acc->addr = ops[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE ? ops[0].imm.value.u & 0xff
                                                              : cpu->gpr[VMM_RDX] & 0xffff;
      acc->is_write = true;
      acc->value = cpu->gpr[VMM_RAX] & vmm_emu_mask(acc->size);
      return 0;
    case VMM_EMU_INS:
    case VMM_EMU_OUTS: {
      acc->has_rep = (insn->z.attributes & ZYDIS_ATTRIB_HAS_REP) != 0;
      acc->size = (uint8_t)vmm_emu_string_size(insn->z.mnemonic);
      acc->addr = cpu->gpr[VMM_RDX] & 0xffff;
      if (acc->has_rep && (cpu->gpr[VMM_RCX] & vmm_emu_addr_mask(insn)) == 0) {
        acc->size = 0; /* Nothing to transfer: finishing skips the instruction. */
        return 0;
      }
      if (insn->kind == VMM_EMU_INS) return 0;
      acc->is_write = true;
      /* OUTS reads DS:RSI; a segment override may select FS or GS. */
      uint64_t la = cpu->gpr[VMM_RSI] & vmm_emu_addr_mask(insn);
      if (insn->z.attributes & ZYDIS_ATTRIB_HAS_SEGMENT_FS) la += cpu->fs_base;
      if (insn->z.attributes & ZYDIS_ATTRIB_HAS_SEGMENT_GS) la += cpu->gs_base;
      uint64_t v = 0;
      int rc = mem->read(mem->ctx, la, &v, acc->size);
      if (rc) return rc;
      acc->value = v;
      return 0;
    }
    default: return VMM_ENOSYS;
  }
}

static void vmm_emu_step_index(struct vmm_emu_cpu *cpu, const struct vmm_emu_insn *insn,
                               unsigned reg, unsigned size) {
  uint64_t m = vmm_emu_addr_mask(insn);
  uint64_t v = cpu->gpr[reg] & m;
  v = (cpu->rflags & RFLAGS_DF) ? v - size : v + size;
  cpu->gpr[reg] = m == ~0ull ? v : (uint32_t)v;
}

int vmm__emu_finish(struct vmm_emu_cpu *cpu, const struct vmm_emu_mem *mem,
                    const struct vmm_emu_insn *insn, const struct vmm_emu_access *acc,
                    uint64_t read_value) {
  bool advance = true;
  if (insn->kind == VMM_EMU_INS || insn->kind == VMM_EMU_OUTS) {
    if (acc->size) {
      if (insn->kind == VMM_EMU_INS) {
        uint64_t la = cpu->gpr[VMM_RDI] & vmm_emu_addr_mask(insn);
        int rc = mem->write(mem->ctx, la, &read_value, acc->size);
        if (rc) return rc;
        vmm_emu_step_index(cpu, insn, VMM_RDI, acc->size);
      } else {
        vmm_emu_step_index(cpu, insn, VMM_RSI, acc->size);
      }
      if (acc->has_rep) {
        uint64_t m = vmm_emu_addr_mask(insn);
        uint64_t c = ((cpu->gpr[VMM_RCX] & m) - 1) & m;
        cpu->gpr[VMM_RCX] = m == ~0ull ? c : (uint32_t)c;
        advance = c == 0;
      }
    }
  } else if (!acc->is_write && acc->dst_reg != 0xff) {
    uint64_t v = read_value & vmm_emu_mask(acc->size);
    if (acc->sign_extend && acc->size < 8) {
      unsigned bits = acc->size * 8u;
      v = (uint64_t)(((int64_t)(v << (64 - bits))) >> (64 - bits));
    }
    uint8_t dsize = acc->dst_size & 0x7f;
    uint8_t shift = (acc->dst_size & 0x80) ? 8 : 0;
    vmm_emu_write_gpr(cpu, acc->dst_reg, dsize, shift, v);
  }
  if (advance) cpu->rip += insn->z.length;
  return 0;
}

bool vmm__emu_io_bitmap_allows(const struct vmm_emu_mem *mem, uint64_t tss_base,
                               uint32_t tss_limit, uint16_t port, unsigned size) {
  if (tss_limit < 0x67 || size == 0 || size > 4) return false;
  uint16_t map;
  if (mem->read(mem->ctx, tss_base + 102, &map, 2) != 0) return false;
  /* Two bytes are read whatever the size: an access may straddle a byte of the map. */
  uint64_t at = (uint64_t)map + port / 8;
  if (at + 1 > tss_limit) return false;
  uint16_t bits;
  if (mem->read(mem->ctx, tss_base + at, &bits, 2) != 0) return false;
  return ((bits >> (port & 7)) & ((1u << size) - 1)) == 0;
}
