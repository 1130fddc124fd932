/**
 * @file cpu.h
 * @brief The backend-neutral x86-64 CPU state.
 *
 * One representation serves every backend, snapshots and migration: a state read on `kvm` can
 * be written on `bt` or `pv` and the guest continues there.
 */
#ifndef LIBVMM_CPU_H
#define LIBVMM_CPU_H

#include "common.h"

VMM_EXTERN_C_BEGIN

/** @brief General registers, instruction pointer and flags. The layout is frozen. */
typedef struct vmm_regs {
  /** General registers, in the order of KVM's struct kvm_regs. */
  /**@{*/
  uint64_t rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
  uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
  /**@}*/
  uint64_t rip;    /**< Instruction pointer. */
  uint64_t rflags; /**< Flags. */
} vmm_regs_t;

/** @brief A segment register with its hidden (descriptor-cache) part. The layout is frozen. */
typedef struct vmm_segment {
  uint64_t base;     /**< Base address. */
  uint32_t limit;    /**< Byte-granular limit (already scaled when `g` is set). */
  uint16_t selector; /**< Selector (index, table indicator, RPL). */
  uint8_t type;      /**< Descriptor type, 4 bits. */
  uint8_t present;   /**< Present bit. */
  uint8_t dpl;       /**< Descriptor privilege level. */
  uint8_t db;        /**< Default operation size (D/B). */
  uint8_t s;         /**< 1 for code/data, 0 for system descriptors. */
  uint8_t l;         /**< 64-bit code segment. */
  uint8_t g;         /**< Granularity. */
  uint8_t avl;       /**< Available-for-software bit. */
  uint8_t unusable;  /**< Null selector loaded (VMX "unusable"). */
  uint8_t reserved;  /**< Zero. */
} vmm_segment_t;

/** @brief A descriptor-table register (GDTR or IDTR). */
typedef struct vmm_dtable {
  uint64_t base;         /**< Linear base address. */
  uint16_t limit;        /**< Limit in bytes, minus one. */
  uint16_t reserved[3];  /**< Zero. */
} vmm_dtable_t;

/** @brief An exception being delivered or waiting to be delivered. */
typedef struct vmm_exception_event {
  uint8_t injected;        /**< Delivery was in progress when the vCPU stopped. */
  uint8_t pending;         /**< Raised but not yet delivered. */
  uint8_t vector;          /**< Exception vector, 0 to 31. */
  uint8_t has_error_code;  /**< Whether error_code is pushed. */
  uint32_t error_code;     /**< Error code. */
  uint64_t payload;        /**< CR2 for a page fault, DR6 bits for a debug exception; 0 otherwise. */
} vmm_exception_event_t;

/** @brief Interrupt and NMI state. */
typedef struct vmm_interrupt_event {
  uint8_t injected;        /**< An external interrupt delivery was in progress. */
  uint8_t vector;          /**< Interrupt vector. */
  uint8_t soft;            /**< Software interrupt (INT n). */
  uint8_t shadow;          /**< Interrupt shadow after STI or MOV SS (bit 0: STI, bit 1: MOV SS). */
  uint8_t nmi_injected;    /**< An NMI delivery was in progress. */
  uint8_t nmi_pending;     /**< An NMI waits to be delivered. */
  uint8_t nmi_masked;      /**< NMIs are blocked (inside an NMI handler). */
  uint8_t reserved;        /**< Zero. */
} vmm_interrupt_event_t;

/** @brief Size of the XSAVE area in vmm_cpu_state: the standard (non-compacted) format. */
#define VMM_XSAVE_SIZE 4096

/**
 * @brief Everything that defines where a vCPU is: what snapshots and migration carry.
 *
 * Set `struct_size` with VMM_CPU_STATE_INIT before the first use. New fields are appended only;
 * the library reads and writes `min(struct_size, sizeof(vmm_cpu_state_t))` bytes.
 */
typedef struct vmm_cpu_state {
  uint32_t struct_size;    /**< sizeof(vmm_cpu_state_t) as the caller knows it. */
  uint32_t flags;          /**< Reserved, 0. */
  vmm_regs_t regs;         /**< General registers, RIP, RFLAGS. */
  /** Segment registers, task register and LDT with their hidden parts. */
  /**@{*/
  vmm_segment_t cs, ds, es, fs, gs, ss, tr, ldt;
  /**@}*/
  /** Descriptor-table registers. */
  /**@{*/
  vmm_dtable_t gdt, idt;
  /**@}*/
  /** Control registers. */
  /**@{*/
  uint64_t cr0, cr2, cr3, cr4, cr8;
  /**@}*/
  uint64_t efer;           /**< Extended feature enable register. */
  uint64_t xcr0;           /**< XSAVE feature mask (XCR0). */
  uint64_t apic_base;      /**< IA32_APIC_BASE. */
  /** The MSRs a 64-bit OS uses. FS and GS bases are in fs.base and gs.base. */
  /**@{*/
  uint64_t star, lstar, cstar, sfmask, kernel_gs_base;
  uint64_t sysenter_cs, sysenter_esp, sysenter_eip;
  uint64_t pat, tsc, tsc_aux, misc_enable;
  /**@}*/
  /** Debug registers. */
  /**@{*/
  uint64_t dr0, dr1, dr2, dr3, dr6, dr7;
  /**@}*/
  vmm_exception_event_t exception; /**< Exception being delivered or pending. */
  vmm_interrupt_event_t interrupt; /**< Interrupt and NMI state. */
  uint8_t halted;          /**< The vCPU is in HLT, waiting for an interrupt. */
  uint8_t reserved0[7];    /**< Zero. */
  uint64_t reserved1[8];   /**< Zero. */
  /** x87, SSE, AVX and AVX-512 state in the standard XSAVE layout, 64-byte aligned. */
  uint8_t xsave[VMM_XSAVE_SIZE] __attribute__((aligned(64)));
} vmm_cpu_state_t;

/** @brief Initializer for vmm_cpu_state_t. */
#define VMM_CPU_STATE_INIT { .struct_size = sizeof(vmm_cpu_state_t) }

/** @name Architectural bits
 *  RFLAGS, CR0, CR4 and EFER bits that the start-state helpers use.
 *  @{ */
#define VMM_RFLAGS_FIXED 0x2ull /**< RFLAGS FIXED bit. */
#define VMM_RFLAGS_IF (1ull << 9) /**< RFLAGS IF bit. */
#define VMM_RFLAGS_IOPL3 (3ull << 12) /**< RFLAGS IOPL3 bit. */
#define VMM_CR0_PE (1ull << 0) /**< CR0 PE bit. */
#define VMM_CR0_MP (1ull << 1) /**< CR0 MP bit. */
#define VMM_CR0_EM (1ull << 2) /**< CR0 EM bit. */
#define VMM_CR0_ET (1ull << 4) /**< CR0 ET bit. */
#define VMM_CR0_NE (1ull << 5) /**< CR0 NE bit. */
#define VMM_CR0_WP (1ull << 16) /**< CR0 WP bit. */
#define VMM_CR0_PG (1ull << 31) /**< CR0 PG bit. */
#define VMM_CR4_PAE (1ull << 5) /**< CR4 PAE bit. */
#define VMM_CR4_OSFXSR (1ull << 9) /**< CR4 OSFXSR bit. */
#define VMM_CR4_OSXMMEXCPT (1ull << 10) /**< CR4 OSXMMEXCPT bit. */
#define VMM_CR4_FSGSBASE (1ull << 16) /**< CR4 FSGSBASE bit. */
#define VMM_CR4_OSXSAVE (1ull << 18) /**< CR4 OSXSAVE bit. */
#define VMM_EFER_SCE (1ull << 0) /**< EFER SCE bit. */
#define VMM_EFER_LME (1ull << 8) /**< EFER LME bit. */
#define VMM_EFER_LMA (1ull << 10) /**< EFER LMA bit. */
#define VMM_EFER_NXE (1ull << 11) /**< EFER NXE bit. */
/** @} */

VMM_EXTERN_C_END

#endif /* LIBVMM_CPU_H */
