/**
 * @file loader.h
 * @brief Putting guest images into RAM and vCPUs into a startable state.
 */
#ifndef LIBVMM_LOADER_H
#define LIBVMM_LOADER_H

#include "common.h"

VMM_EXTERN_C_BEGIN

/** @brief What a loader placed in guest memory. */
typedef struct vmm_image_info {
  uint64_t entry;     /**< Entry point (guest address). */
  uint64_t low;       /**< Lowest guest-physical byte written. */
  uint64_t high;      /**< First guest-physical byte past the image (including BSS). */
} vmm_image_info_t;

/**
 * @brief Copies a raw binary to guest-physical @p gpa; the entry is @p gpa.
 * @return 0; VMM_EINVAL for NULL; VMM_EFAULT when the range is not RAM.
 */
VMM_API int vmm_load_flat(vmm_vm_t *vm, uint64_t gpa, const void *data, size_t size,
                          vmm_image_info_t *info);

/**
 * @brief Loads an ELF64 x86-64 executable (ET_EXEC, or ET_DYN loaded at its link addresses)
 *        by its program headers: PT_LOAD segments go to their physical addresses, BSS is
 *        zeroed. The file is not trusted: every offset, size and address is checked.
 * @return 0; VMM_ENOEXEC for anything malformed or unsupported, including programs that ask
 *         for an interpreter (the reason is logged);
 *         VMM_EFAULT when a segment does not fit in guest RAM; VMM_EINVAL for NULL.
 */
VMM_API int vmm_load_elf(vmm_vm_t *vm, const void *data, size_t size, vmm_image_info_t *info);

/**
 * @brief Reads a file and loads it with vmm_load_elf(), or vmm_load_flat() at @p flat_gpa
 *        when @p flat is non-zero.
 * @return As the loader used, plus VMM_EIO when the file cannot be read and VMM_ELIMIT when
 *         it is larger than guest RAM.
 */
VMM_API int vmm_load_file(vmm_vm_t *vm, const char *path, int flat, uint64_t flat_gpa,
                          vmm_image_info_t *info);

/**
 * @brief Long-mode start configuration. Initialize with VMM_LONG_MODE_CONFIG_INIT.
 */
typedef struct vmm_long_mode_config {
  uint32_t struct_size;    /**< sizeof(vmm_long_mode_config_t) as the caller knows it. */
  uint32_t cpl;            /**< 0 (kernel) or 3 (user segments, user pages, IOPL 3). */
  uint64_t entry;          /**< Initial RIP. */
  uint64_t stack_top;      /**< Initial RSP; 0 means 16-byte aligned near the top of RAM. */
  const char *cmdline;     /**< Copied to the boot info (up to 2 KiB); may be NULL. */
  uint64_t image_low;      /**< Reported in the boot info; 0 if unknown. */
  uint64_t image_high;     /**< Reported in the boot info; 0 if unknown. */
} vmm_long_mode_config_t;

/** @brief Initializer for vmm_long_mode_config_t. */
#define VMM_LONG_MODE_CONFIG_INIT { .struct_size = sizeof(vmm_long_mode_config_t) }

/**
 * @brief Puts a vCPU in 64-bit long mode ready to run at `entry`.
 *
 * Writes the system area (include/libvmm/guest/abi.h) into guest RAM: identity page tables
 * with 2 MiB pages over the RAM at guest-physical 0 (up to 224 GiB), a GDT with flat kernel
 * and user segments, a TSS, an IDT whose every vector reports the exception as a
 * VMM_EXIT_EXCEPTION, the hypercall page for the VM's backend and the boot information
 * block. At entry `rdi` holds the boot info address and `rsi` VMM_BOOT_MAGIC; the other
 * general registers are 0. SSE and (where the host has it) AVX are enabled.
 * @return 0; VMM_EINVAL for NULL, a bad struct_size or cpl; VMM_EFAULT when RAM at
 *         guest-physical 0 does not cover the system area (1 MiB); VMM_EEXIST when the image
 *         range given in the config overlaps the system area; VMM_EBUSY while the vCPU runs;
 *         VMM_EBACKEND.
 */
VMM_API int vmm_vcpu_setup_long_mode(vmm_vcpu_t *vcpu, const vmm_long_mode_config_t *config);

/**
 * @brief Puts a vCPU in real mode at `cs:ip` with the other segments equal to @p cs and the
 *        stack at `cs:sp`.
 * @return 0; VMM_EINVAL for NULL; VMM_ENOSYS on backends that cannot run real mode; VMM_EBUSY.
 */
VMM_API int vmm_vcpu_setup_real_mode(vmm_vcpu_t *vcpu, uint16_t cs, uint16_t ip, uint16_t sp);

/**
 * @brief Puts a vCPU in 32-bit protected mode without paging, with flat 4 GiB code and data
 *        segments, at @p eip with the stack at @p esp.
 * @return 0; VMM_EINVAL for NULL; VMM_ENOSYS on backends that cannot run 32-bit code; VMM_EBUSY.
 */
VMM_API int vmm_vcpu_setup_protected_mode(vmm_vcpu_t *vcpu, uint32_t eip, uint32_t esp);

VMM_EXTERN_C_END

#endif /* LIBVMM_LOADER_H */
