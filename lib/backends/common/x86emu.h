/* Decoding and emulation of the single instructions that the software backends (bt, pv) must
 * emulate instead of running: port I/O, MMIO accesses, and the privileged or sensitive
 * instructions of a small kernel. One Zydis-based decoder serves both backends.
 *
 * Emulation is split in two so that it fits the core's exit/completion model: *_start decodes
 * and describes the access (the backend turns it into a vmm_exit_t), *_finish applies the
 * result once the core or the caller supplied it, and advances RIP. */
#ifndef LIBVMM_X86EMU_H
#define LIBVMM_X86EMU_H

#include <stdbool.h>
#include <stdint.h>

#include <Zydis/Zydis.h>

/* General registers in hardware encoding order. */
enum {
  VMM_RAX, VMM_RCX, VMM_RDX, VMM_RBX, VMM_RSP, VMM_RBP, VMM_RSI, VMM_RDI,
  VMM_R8, VMM_R9, VMM_R10, VMM_R11, VMM_R12, VMM_R13, VMM_R14, VMM_R15,
};

/* The register view the emulator works on. Backends convert from and to their own. */
struct vmm_emu_cpu {
  uint64_t gpr[16];
  uint64_t rip;
  uint64_t rflags;
  uint64_t fs_base;
  uint64_t gs_base;
};

/* Guest memory access by linear address for instruction fetch and non-MMIO memory operands
 * (string I/O buffers). Return 0, or a negative VMM_E* code when the address is not mapped. */
struct vmm_emu_mem {
  int (*read)(void *ctx, uint64_t la, void *buf, size_t len);
  int (*write)(void *ctx, uint64_t la, const void *buf, size_t len);
  void *ctx;
};

/* What an instruction at RIP is, for the backends' trap handlers. */
enum vmm_emu_kind {
  VMM_EMU_OTHER = 0,   /* Nothing the emulator knows how to do. */
  VMM_EMU_MEM,         /* An access through a memory operand (MMIO candidates). */
  VMM_EMU_IN, VMM_EMU_OUT, VMM_EMU_INS, VMM_EMU_OUTS,
  VMM_EMU_HLT, VMM_EMU_CLI, VMM_EMU_STI,
  VMM_EMU_RDMSR, VMM_EMU_WRMSR, VMM_EMU_RDTSC, VMM_EMU_RDTSCP, VMM_EMU_CPUID,
  VMM_EMU_SYSCALL, VMM_EMU_INT, VMM_EMU_INT3, VMM_EMU_UD,
};

struct vmm_emu_insn {
  ZydisDecodedInstruction z;
  ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
  uint8_t bytes[15];
  uint64_t rip;
  enum vmm_emu_kind kind;
};

/* A data access the instruction wants to make (one MMIO or one port access). */
struct vmm_emu_access {
  uint64_t addr;     /* Linear address for MMIO; port number for I/O. */
  uint8_t size;      /* 1, 2, 4 or 8. */
  bool is_write;
  uint64_t value;    /* Value to write (for writes). */
  /* Private to the emulator: how to finish. */
  uint8_t dst_reg;   /* Destination GPR of a read, or 0xff. */
  uint8_t dst_size;  /* Bytes written to the destination register. */
  bool sign_extend;
  bool has_rep;
};

/* Decodes the 64-bit instruction at cpu->rip (fetched through mem). Returns 0 with insn->kind
 * set; VMM_EFAULT when the bytes cannot be fetched; VMM_ENOEXEC when they do not decode. */
int vmm__emu_decode(const struct vmm_emu_cpu *cpu, const struct vmm_emu_mem *mem,
                    struct vmm_emu_insn *insn);

/* The length of the instruction, for advancing RIP past it. */
static inline uint8_t vmm__emu_len(const struct vmm_emu_insn *insn) { return insn->z.length; }

/* Linear address of the insn's explicit memory operand (segment base of FS/GS applied).
 * Returns 0, or VMM_ENOENT when it has none. */
int vmm__emu_mem_address(const struct vmm_emu_cpu *cpu, const struct vmm_emu_insn *insn,
                         uint64_t *la);

/* MMIO: describes the access of a VMM_EMU_MEM instruction whose memory operand hit device
 * space. Supports MOV (to/from registers and immediates), MOVZX, MOVSX, MOVSXD.
 * Returns 0; VMM_ENOSYS for other instructions (the backend reports an internal error). */
int vmm__emu_mmio_start(const struct vmm_emu_cpu *cpu, const struct vmm_emu_insn *insn,
                        struct vmm_emu_access *acc);

/* Port I/O: IN and OUT with immediate or DX ports. INS/OUTS with or without REP are done one
 * element per call (the backend re-executes the instruction until RCX reaches 0).
 * Returns 0; VMM_ENOSYS for other instructions. */
int vmm__emu_pio_start(const struct vmm_emu_cpu *cpu, const struct vmm_emu_mem *mem,
                       const struct vmm_emu_insn *insn, struct vmm_emu_access *acc);

/* Applies a finished access: stores the value of a read into its destination (register for
 * MMIO and IN, memory for INS), updates RSI/RDI/RCX of string I/O, and advances RIP past the
 * instruction unless a REP string instruction has elements left. Returns 0 or VMM_EFAULT. */
int vmm__emu_finish(struct vmm_emu_cpu *cpu, const struct vmm_emu_mem *mem,
                    const struct vmm_emu_insn *insn, const struct vmm_emu_access *acc,
                    uint64_t read_value);

/* Whether the I/O permission bitmap of the TSS described by `tr` allows `size` bytes at
 * `port` (the check made when CPL > IOPL). A bitmap beyond the TSS limit, or unreadable,
 * allows nothing. */
bool vmm__emu_io_bitmap_allows(const struct vmm_emu_mem *mem, uint64_t tss_base,
                               uint32_t tss_limit, uint16_t port, unsigned size);

/* A 64-bit address with bits 63..47 all equal (shifted as unsigned: no signed overflow). */
static inline bool vmm__canonical(uint64_t a) { return (uint64_t)((int64_t)(a << 16) >> 16) == a; }

/* Shared decoder instance (initialized once, thread-safe to use). */
const ZydisDecoder *vmm__emu_decoder(void);

#endif /* LIBVMM_X86EMU_H */
