/**
 * @file linux.h
 * @brief Booting Linux: the x86 boot protocol (bzImage or ELF vmlinux), the zero page, the
 *        e820 map, the initrd, the MP table and the legacy PC bits Linux probes.
 *
 * A Linux VMM on the public API takes four steps (examples/boot-linux.c is a complete one):
 *
 *  1. vmm_vm_create() with VMM_VM_IRQCHIP (interrupt controllers and timer), RAM at
 *     guest-physical 0 (below 3 GiB; more RAM goes above 4 GiB);
 *  2. vmm_uart_create() on COM1 with IRQ 4 for the console and vmm_linux_pc_create() for the
 *     reset line and the clock;
 *  3. vmm_linux_load() puts the kernel, the initrd, the command line, the zero page and the MP
 *     table into guest RAM;
 *  4. vmm_vcpu_setup_linux() puts vCPU 0 at the kernel's 64-bit entry point; then run it.
 *
 * The loader never trusts the image: every header field, offset and length is checked, a
 * compressed payload is decompressed into a buffer bounded by the size it declares and by
 * vmm_linux_config_t::max_kernel_size, and every refusal is logged with its reason.
 *
 * Guest-physical memory used below 1 MiB (the kernel and the initrd go above 1 MiB):
 * | range | what |
 * | --- | --- |
 * | VMM_LINUX_GDT_GPA | boot GDT: `__BOOT_CS` 0x10, `__BOOT_DS` 0x18, a TSS at 0x20 |
 * | VMM_LINUX_BOOT_PARAMS_GPA | the zero page (struct boot_params) |
 * | VMM_LINUX_CMDLINE_GPA | the kernel command line |
 * | VMM_LINUX_PML4_GPA | identity page tables (2 MiB pages) |
 * | VMM_LINUX_MPTABLE_GPA | MP floating pointer and table, in a range e820 marks reserved |
 */
#ifndef LIBVMM_LINUX_H
#define LIBVMM_LINUX_H

#include "common.h"

VMM_EXTERN_C_BEGIN

/** @name Guest-physical layout used by vmm_linux_load() and vmm_vcpu_setup_linux()
 *  @{ */
#define VMM_LINUX_GDT_GPA 0x1000ull         /**< Boot GDT (one page). */
#define VMM_LINUX_STACK_TOP 0x7000ull       /**< Initial RSP (the kernel sets its own at once). */
#define VMM_LINUX_BOOT_PARAMS_GPA 0x7000ull /**< The zero page, 4 KiB. */
#define VMM_LINUX_CMDLINE_GPA 0x20000ull    /**< Command line, up to VMM_LINUX_CMDLINE_MAX bytes. */
#define VMM_LINUX_CMDLINE_MAX 0x10000u      /**< Room for the command line, NUL included. */
#define VMM_LINUX_PML4_GPA 0x30000ull       /**< PML4, then the PDPT, then one PD per GiB. */
#define VMM_LINUX_IDMAP_MAX (64ull << 30)   /**< Most RAM the boot page tables map. */
#define VMM_LINUX_MPTABLE_GPA 0x9fc00ull    /**< MP table (the last KiB of base memory). */
#define VMM_LINUX_LOW_RESERVED_END 0x100000ull /**< [MPTABLE, this) is e820-reserved. */
#define VMM_LINUX_BOOT_CS 0x10              /**< __BOOT_CS of the boot protocol. */
#define VMM_LINUX_BOOT_DS 0x18              /**< __BOOT_DS of the boot protocol. */
/** @} */

/** @brief Default and hard cap of vmm_linux_config_t::max_kernel_size: 1 GiB. */
#define VMM_LINUX_MAX_KERNEL_SIZE (1ull << 30)

/** @brief vmm_linux_config_t flags. */
enum {
  /** Do not decompress a bzImage's payload on the host: load the bzImage as it is and let its
   *  own decompressor run in the guest (slow where guest kernel code is emulated). It is also
   *  what happens when the payload's format has no host decompressor (bzip2, lzma, lzo). */
  VMM_LINUX_IN_KERNEL_DECOMPRESS = 1u << 0,
};

/**
 * @brief What to boot. Initialize with VMM_LINUX_CONFIG_INIT; fields are only ever appended.
 *
 * The kernel is given either as bytes (`kernel`, `kernel_size`) or as a file
 * (`kernel_path`), and likewise the initrd, which is optional.
 */
typedef struct vmm_linux_config {
  uint32_t struct_size;     /**< sizeof(vmm_linux_config_t) as the caller knows it. */
  uint32_t flags;           /**< VMM_LINUX_* flags. */
  const void *kernel;       /**< A bzImage or an ELF64 vmlinux in memory, or NULL. */
  size_t kernel_size;       /**< Bytes at `kernel`. */
  const char *kernel_path;  /**< Read when `kernel` is NULL. */
  const void *initrd;       /**< An initramfs in memory, or NULL. */
  size_t initrd_size;       /**< Bytes at `initrd`. */
  const char *initrd_path;  /**< Read when `initrd` is NULL; NULL for no initrd. */
  const char *cmdline;      /**< Kernel command line; NULL means empty. */
  /** Largest kernel accepted, as a file and once decompressed; 0 means
   *  VMM_LINUX_MAX_KERNEL_SIZE, which is also the most that is ever accepted. */
  uint64_t max_kernel_size;
} vmm_linux_config_t;

/** @brief Initializer for vmm_linux_config_t: host decompression, no initrd, no command line. */
#define VMM_LINUX_CONFIG_INIT { .struct_size = sizeof(vmm_linux_config_t) }

/** @brief Kinds of kernel image. */
typedef enum {
  VMM_LINUX_IMAGE_BZIMAGE = 1, /**< A bzImage (boot protocol 2.12 or later, 64-bit entry). */
  VMM_LINUX_IMAGE_ELF = 2,     /**< An uncompressed ELF64 vmlinux. */
} vmm_linux_image_t;

/** @brief Compression of a bzImage's payload, from its magic bytes. */
typedef enum {
  VMM_LINUX_COMP_NONE = 0,  /**< Not compressed (or an ELF image). */
  VMM_LINUX_COMP_GZIP = 1,  /**< gzip (zlib). */
  VMM_LINUX_COMP_XZ = 2,    /**< xz (liblzma). */
  VMM_LINUX_COMP_ZSTD = 3,  /**< zstd (libzstd). */
  VMM_LINUX_COMP_LZ4 = 4,   /**< lz4 legacy frames (liblz4). */
  VMM_LINUX_COMP_BZIP2 = 5, /**< bzip2: in-kernel decompression only. */
  VMM_LINUX_COMP_LZMA = 6,  /**< lzma: in-kernel decompression only. */
  VMM_LINUX_COMP_LZO = 7,   /**< lzo: in-kernel decompression only. */
} vmm_linux_comp_t;

/**
 * @brief What vmm_linux_load() did. Set `struct_size` (VMM_LINUX_INFO_INIT) before the call;
 *        vmm_vcpu_setup_linux() takes it back.
 */
typedef struct vmm_linux_info {
  uint32_t struct_size;     /**< sizeof(vmm_linux_info_t) as the caller knows it. */
  uint32_t image;           /**< A vmm_linux_image_t. */
  uint32_t compression;     /**< A vmm_linux_comp_t of the payload. */
  uint32_t host_decompressed; /**< 1 if the payload was decompressed on the host. */
  uint32_t protocol;        /**< Boot protocol version of a bzImage (0x20f is 2.15); 0 for ELF. */
  uint32_t e820_entries;    /**< Entries written to the zero page's e820 table. */
  uint64_t entry;           /**< Guest-physical 64-bit entry point. */
  uint64_t boot_params;     /**< Guest-physical address of the zero page (rsi at entry). */
  uint64_t cmdline;         /**< Guest-physical address of the command line. */
  uint64_t kernel_start;    /**< First byte of RAM reserved for the kernel. */
  uint64_t kernel_end;      /**< First byte past it (the image plus what it needs to run). */
  uint64_t initrd_start;    /**< Guest-physical address of the initrd; 0 without one. */
  uint64_t initrd_size;     /**< Bytes of initrd. */
  uint64_t decompressed_size; /**< Bytes the payload decompressed to on the host, else 0. */
} vmm_linux_info_t;

/** @brief Initializer for vmm_linux_info_t. */
#define VMM_LINUX_INFO_INIT { .struct_size = sizeof(vmm_linux_info_t) }

/**
 * @brief Loads a Linux kernel, an optional initrd and the command line into guest RAM and
 *        writes the zero page and the MP table.
 *
 * A bzImage's setup header is validated (boot flag, "HdrS", protocol 2.12 or later, LOADED_HIGH,
 * XLF_KERNEL_64, alignment, setup and payload inside the file, init_size) and copied into the
 * zero page. By default its payload is decompressed on the host (gzip, xz, zstd, lz4) and the
 * resulting ELF vmlinux is loaded at its physical addresses; with
 * VMM_LINUX_IN_KERNEL_DECOMPRESS, or for formats without a host decompressor, the
 * protected-mode part is loaded at the kernel's preferred address and its own decompressor runs.
 * An ELF vmlinux is loaded by its program headers and gets a synthesized setup header.
 *
 * The e820 map lists every RAM region as usable, except
 * `[VMM_LINUX_MPTABLE_GPA, VMM_LINUX_LOW_RESERVED_END)` and read-only regions, which are
 * reserved. The initrd goes as high as possible below the kernel's `initrd_addr_max`, above the
 * kernel. The MP table describes `max_vcpus` processors, an I/O APIC at 0xfec00000 with ISA
 * IRQs 0-15 wired to its pins 0-15, as KVM's default routing has them.
 *
 * @param[in]     vm     The VM; RAM must start at guest-physical 0 and cover the kernel.
 * @param[in]     config What to load.
 * @param[in,out] info   What was loaded; `struct_size` must be set. May not be NULL.
 * @return 0;
 *         VMM_EINVAL for NULL arguments, a bad struct_size, unknown flags, or no kernel;
 *         VMM_EIO when a file cannot be read;
 *         VMM_ENOEXEC for a malformed or unsupported kernel (truncated, bad magic, fields
 *         pointing outside the file, an old protocol, no 64-bit entry);
 *         VMM_ECORRUPT for a compressed payload that does not decompress to what it declares;
 *         VMM_ELIMIT for a kernel or initrd larger than the limits, or a command line longer
 *         than the kernel accepts;
 *         VMM_EFAULT when guest RAM does not cover the low boot area, the kernel or the initrd;
 *         VMM_EBUSY while a vCPU runs; VMM_ENOMEM. Every refusal is logged at VMM_LOG_ERROR
 *         with its reason, and guest RAM is written only once every check has passed.
 * @note No vCPU may be running. The image bytes are only read during the call.
 */
VMM_API int vmm_linux_load(vmm_vm_t *vm, const vmm_linux_config_t *config,
                           vmm_linux_info_t *info);

/**
 * @brief Puts a vCPU at the kernel's 64-bit entry point with the state the boot protocol asks
 *        for: long mode, identity paging over RAM (at least 4 GiB, at most
 *        VMM_LINUX_IDMAP_MAX), the boot GDT with CS = 0x10 and DS = ES = SS = 0x18, `rsi` the
 *        zero page, interrupts off, the other general registers 0.
 * @param[in] vcpu The boot vCPU (the others are started by the kernel through their local
 *                 APICs, which needs VMM_VM_IRQCHIP).
 * @param[in] info What vmm_linux_load() returned.
 * @return 0; VMM_EINVAL for NULL or a bad struct_size; VMM_EFAULT when RAM does not cover the
 *         page tables, the zero page or the entry point; VMM_EBUSY while the vCPU runs;
 *         VMM_EBACKEND.
 */
VMM_API int vmm_vcpu_setup_linux(vmm_vcpu_t *vcpu, const vmm_linux_info_t *info);

/** @brief The guest_exit status of a run that ends because the guest pulled the reset line
 *         (a keyboard-controller reset, which is how Linux reboots, and how it ends after a
 *         poweroff without ACPI when booted with `panic=-1`). */
#define VMM_LINUX_RESET_STATUS INT64_C(0x7465736572) /* "reset" */

/**
 * @brief Creates the legacy PC devices Linux probes on its way to a console: an i8042 stub on
 *        ports 0x60 and 0x64 (no keyboard; the reset command 0xfe ends the run with
 *        VMM_EXIT_GUEST_EXIT and status VMM_LINUX_RESET_STATUS), an MC146818 clock on ports
 *        0x70-0x71 that reads the host's UTC time, and a sink for the POST/delay port 0x80.
 * @param[in]  vm  The VM; it owns the device.
 * @param[out] out The device; may be NULL.
 * @return 0; VMM_EINVAL for NULL @p vm; VMM_EEXIST when one of the ports is taken;
 *         VMM_ENOMEM.
 */
VMM_API int vmm_linux_pc_create(vmm_vm_t *vm, vmm_device_t **out);

VMM_EXTERN_C_END

#endif /* LIBVMM_LINUX_H */
