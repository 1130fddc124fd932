/**
 * @file abi.h
 * @brief The contract between libvmm and the guests it starts: hypercall numbers, the boot
 *        information block, the guest-physical layout of the system area, and reserved ports.
 *
 * Freestanding: this header needs only `<stdint.h>` and is included both by the library and by
 * guest programs. Everything here is part of the stable ABI.
 */
#ifndef LIBVMM_GUEST_ABI_H
#define LIBVMM_GUEST_ABI_H

#ifndef __ASSEMBLER__
#include <stdint.h>
#endif

/** @name Hypercall numbers (in `rax`; result in `rax`)
 *  @{ */
/** Does nothing and returns 0. Used to measure the round trip. */
#define VMM_HC_NOP 0
/** Ends the VM: `rdi` is the exit status. The run returns `VMM_EXIT_GUEST_EXIT`. */
#define VMM_HC_EXIT 1
/** Writes `rsi` bytes at guest-physical `rdi` to the VM console. Returns the count written,
 *  or a negative `VMM_E*` value when the range is not RAM. */
#define VMM_HC_CONSOLE_WRITE 2
/** Returns the backend id (`VMM_BACKEND_KVM`, `_BT`, `_PV`) the guest is running on. */
#define VMM_HC_BACKEND 3
/** Asks the host program for a snapshot of the VM here. Not handled by the library: the
 *  `vmm` command saves one with --save; elsewhere it is an ordinary hypercall exit. */
#define VMM_HC_SNAPSHOT 4
/** First number free for handlers registered by the host program. */
#define VMM_HC_USER_BASE 64
/** Number of entries in the hypercall page. */
#define VMM_HC_COUNT 128
/** Bytes per hypercall page entry: entry `n` is at `page + n * VMM_HC_ENTRY_SIZE`. */
#define VMM_HC_ENTRY_SIZE 32
/** @} */

/** @name Reserved I/O ports
 *  @{ */
/** The hypercall trap port of the `kvm` backend (`out %eax, $VMM_HC_PORT`). */
#define VMM_HC_PORT 0xf5
/** Written by the exception stubs that vmm_vcpu_setup_long_mode() installs. */
#define VMM_EXC_PORT 0xf6
/** The Bochs/QEMU debug console. */
#define VMM_DEBUGCON_PORT 0xe9
/** QEMU's isa-debug-exit: writing `v` ends the VM with status `(v << 1) | 1`. */
#define VMM_DEBUG_EXIT_PORT 0xf4
/** @} */

/** @name Guest-physical layout written by vmm_vcpu_setup_long_mode()
 *  Nothing here lies below 64 KiB so that the same layout works on the `pv` backend, where the
 *  lowest pages of the address space cannot be mapped.
 *  @{ */
#define VMM_SYSAREA_GPA 0x10000ull          /**< Start of the system area. */
#define VMM_BOOTINFO_GPA 0x10000ull         /**< struct vmm_boot_info. */
#define VMM_CMDLINE_GPA 0x10800ull          /**< NUL-terminated command line, up to 2 KiB. */
#define VMM_HYPERCALL_PAGE_GPA 0x11000ull   /**< The hypercall page. */
#define VMM_GDT_GPA 0x12000ull              /**< GDT. */
#define VMM_IDT_GPA 0x13000ull              /**< IDT: every vector points at a stub. */
#define VMM_EXC_STUBS_GPA 0x14000ull        /**< Exception stubs, 8 bytes per vector. */
#define VMM_TSS_GPA 0x15000ull              /**< 64-bit TSS, then an I/O bitmap allowing every port. */
#define VMM_EXC_STACK_TOP 0x18000ull        /**< Top of the stack exceptions run on. */
#define VMM_PML4_GPA 0x18000ull             /**< Page tables: PML4, PDPT, then PDs. */
#define VMM_SYSAREA_END 0x100000ull         /**< First byte after the system area. */
#define VMM_EXC_STUB_SIZE 8                 /**< Bytes per exception stub. */
/** @} */

/** @name GDT selectors installed by vmm_vcpu_setup_long_mode()
 *  @{ */
#define VMM_SEL_KERNEL_CS 0x08 /**< 64-bit kernel code. */
#define VMM_SEL_KERNEL_DS 0x10 /**< Kernel data. */
#define VMM_SEL_USER_DS 0x1b   /**< User data (RPL 3). */
#define VMM_SEL_USER_CS 0x23   /**< 64-bit user code (RPL 3). */
#define VMM_SEL_TSS 0x28       /**< 64-bit TSS. */
/** @} */

/** Magic of struct vmm_boot_info, also passed in `rsi` at entry ("VMMBOOT1"). */
#define VMM_BOOT_MAGIC 0x31544f4f424d4d56
/** Current version of struct vmm_boot_info. */
#define VMM_BOOT_VERSION 1

#ifndef __ASSEMBLER__
/**
 * @brief What the VMM tells the guest at entry. Its guest-physical address is in `rdi`.
 */
struct vmm_boot_info {
  uint64_t magic;          /**< VMM_BOOT_MAGIC. */
  uint32_t version;        /**< VMM_BOOT_VERSION. */
  uint32_t size;           /**< sizeof(struct vmm_boot_info) as written by the VMM. */
  uint64_t hypercall_page; /**< Guest address of the hypercall page. */
  uint64_t ram_size;       /**< Bytes of RAM starting at guest-physical 0. */
  uint64_t cmdline;        /**< Guest address of the command line (NUL-terminated). */
  uint32_t cpl;            /**< Privilege level the guest was started at (0 or 3). */
  uint32_t backend;        /**< Backend id at boot; it may change after a migration. */
  uint64_t image_start;    /**< Lowest guest address of the loaded image. */
  uint64_t image_end;      /**< First guest address after the loaded image. */
  uint64_t stack_top;      /**< Initial stack pointer. */
  uint64_t reserved[8];    /**< Zero. */
};
#endif /* __ASSEMBLER__ */

#endif /* LIBVMM_GUEST_ABI_H */
