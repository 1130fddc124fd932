/**
 * @file vm.h
 * @brief Virtual machines, backends and guest memory.
 */
#ifndef LIBVMM_VM_H
#define LIBVMM_VM_H

#include "common.h"

VMM_EXTERN_C_BEGIN

/** @brief Backends. Values are stable (they are stored in snapshots). */
typedef enum {
  VMM_BACKEND_AUTO = 0, /**< The first available of kvm, bt, pv. */
  VMM_BACKEND_KVM = 1,  /**< Hardware-assisted, through /dev/kvm. */
  VMM_BACKEND_BT = 2,   /**< Binary translation; needs nothing from the host. */
  VMM_BACKEND_PV = 3,   /**< Para-virtual guests by direct execution in a sandbox process. */
} vmm_backend_t;

/**
 * @brief Whether a backend can run on this host.
 * @param[in] backend A backend; VMM_BACKEND_AUTO asks whether any can.
 * @return 0 if it can; VMM_ENODEV if the host lacks what it needs (no /dev/kvm, ptrace
 *         denied, ...); VMM_ENOSYS if this build does not include it; VMM_EINVAL for values
 *         outside the enum. The reason is logged at VMM_LOG_INFO.
 */
VMM_API int vmm_backend_probe(vmm_backend_t backend);

/**
 * @brief Keeps what new vCPUs of a backend need made ahead of time, process-wide.
 *
 * A new vCPU (of a new VM or of a clone) takes one prepared unit if there is one: on `bt` its
 * address-space reservation, control block, page-state array, code cache and block hash, with
 * the pages every vCPU writes first already written; on `pv` a sandbox process already started
 * (its exec done). Up to the same count is kept from then on: on `bt` what a destroyed vCPU
 * leaves is emptied and kept, so a program that keeps N clones at once, destroys them and
 * clones again pays for the units once; on `pv` a sandbox that ran a guest is never reused:
 * destroying a vCPU starts up to two new processes (its replacement, and one more while fewer
 * than the count wait), on the destroying thread. A pv
 * unit belongs to the thread that creates the vCPU: a vCPU run from another thread starts a
 * sandbox of its own (see docs/pv.md, Threads). Without this call `bt` keeps up to 4 and `pv`
 * 2 (or $LIBVMM_PV_POOL). Units hold no guest data: nothing one VM did is visible to the vCPU
 * that takes its unit.
 *
 * @param[in] backend A backend; VMM_BACKEND_AUTO means the one vmm_vm_create() would pick.
 * @param[in] count   How many to keep, at most 64; 0 keeps none (and releases those kept).
 *                    The missing units are made before the call returns (vCPUs created
 *                    meanwhile on other threads may take some of them).
 * @return 0; VMM_EINVAL for count above 64 or values outside the enum; the codes of
 *         vmm_backend_probe() for a backend the host cannot run; VMM_ENOSYS for backends with
 *         nothing to prepare (`kvm`); VMM_ENOMEM, VMM_ELIMIT (out of file descriptors) or
 *         VMM_EBACKEND when a unit could not be made (those made before stay).
 */
VMM_API int vmm_backend_prepare(vmm_backend_t backend, unsigned count);

/**
 * @brief Name of a backend: "auto", "kvm", "bt" or "pv".
 * @return A static string; "unknown" for values outside the enum.
 */
VMM_API const char *vmm_backend_name(vmm_backend_t backend);

/**
 * @brief Parses a backend name as printed by vmm_backend_name().
 * @param[in]  name A NUL-terminated name.
 * @param[out] out  The backend.
 * @return 0, or VMM_EINVAL for NULL arguments or unknown names.
 */
VMM_API int vmm_backend_parse(const char *name, vmm_backend_t *out);

/** @brief VM creation flags. */
enum {
  /** Do not ask for transparent huge pages on guest RAM (they are used where allowed). */
  VMM_VM_NO_HUGEPAGES = 1u << 0,
  /** Create the backend's interrupt controllers and timer: on `kvm` the in-kernel PIC, I/O
   *  APIC and local APICs (KVM_CREATE_IRQCHIP) and the PIT (KVM_CREATE_PIT2), so that
   *  vmm_vm_set_irq() works and HLT waits inside the backend for an interrupt. What an OS such
   *  as Linux needs. Backends without them refuse it with VMM_ENOSYS. */
  VMM_VM_IRQCHIP = 1u << 1,
};

/**
 * @brief VM configuration. Initialize with VMM_VM_CONFIG_INIT; fields are only ever appended.
 */
typedef struct vmm_vm_config {
  uint32_t struct_size;  /**< sizeof(vmm_vm_config_t) as the caller knows it. */
  uint32_t backend;      /**< A vmm_backend_t. */
  uint32_t max_vcpus;    /**< 0 means 1. */
  uint32_t flags;        /**< VMM_VM_* flags. */
  uint64_t ram_size;     /**< If not 0: RAM of this size is mapped at guest-physical 0. */
} vmm_vm_config_t;

/** @brief Initializer for vmm_vm_config_t: auto backend, one vCPU, no RAM yet. */
#define VMM_VM_CONFIG_INIT \
  { .struct_size = sizeof(vmm_vm_config_t), .backend = VMM_BACKEND_AUTO, .max_vcpus = 1 }

/**
 * @brief Creates a VM.
 * @param[in]  config The configuration; NULL means all defaults.
 * @param[out] out    The VM, or NULL on failure.
 * @return 0; VMM_EINVAL for a bad config (struct_size too small, unknown backend or flags,
 *         RAM size not a multiple of 4 KiB); VMM_ERANGE for more than 64 vCPUs; VMM_ENOSYS for VMM_VM_IRQCHIP on a backend
 *         without interrupt controllers (logged); VMM_ENODEV when the requested backend cannot run
 *         here (with VMM_BACKEND_AUTO: when none can); VMM_ENOSYS when it is not built in;
 *         VMM_ENOMEM; VMM_EBACKEND when the backend fails to set up (logged).
 */
VMM_API int vmm_vm_create(const vmm_vm_config_t *config, vmm_vm_t **out);

/**
 * @brief Destroys a VM with its vCPUs, devices, handlers and memory.
 * @param[in] vm The VM, or NULL.
 * @note No vCPU of this VM may be running.
 */
VMM_API void vmm_vm_destroy(vmm_vm_t *vm);

/** @brief The backend a VM runs on (never VMM_BACKEND_AUTO). */
VMM_API vmm_backend_t vmm_vm_backend(const vmm_vm_t *vm);

/** @brief Memory region flags. */
enum {
  VMM_MEM_READONLY = 1u << 0, /**< Guest writes exit as MMIO writes; host writes allowed. */
};

/**
 * @brief Maps a new RAM region, backed by an anonymous memfd, into the guest.
 * @param[in]  vm    The VM.
 * @param[in]  gpa   Guest-physical start, 4 KiB aligned.
 * @param[in]  size  Bytes, a non-zero multiple of 4 KiB.
 * @param[in]  flags VMM_MEM_* flags.
 * @param[out] hva   If not NULL: the host address of the region's first byte.
 * @return 0; VMM_EINVAL for misalignment or unknown flags; VMM_EEXIST when the range overlaps
 *         RAM or an MMIO handler; VMM_ERANGE when it lies beyond what the backend can map;
 *         VMM_ELIMIT when the backend's region limit is reached; VMM_ENOSYS for a read-only
 *         region on a backend that cannot make one; VMM_ENOMEM; VMM_EBUSY when a vCPU is
 *         running; VMM_EBACKEND.
 */
VMM_API int vmm_vm_map_ram(vmm_vm_t *vm, uint64_t gpa, uint64_t size, uint32_t flags,
                           void **hva);

/**
 * @brief Removes the RAM region that starts at @p gpa.
 * @return 0; VMM_ENOENT if no region starts there; VMM_EBUSY when a vCPU is running.
 */
VMM_API int vmm_vm_unmap_ram(vmm_vm_t *vm, uint64_t gpa);

/** @brief One RAM region as reported by vmm_vm_ram_regions(). */
typedef struct vmm_ram_region {
  uint64_t gpa;       /**< Guest-physical start. */
  uint64_t size;      /**< Bytes. */
  uint32_t flags;     /**< VMM_MEM_* flags. */
  uint32_t reserved;  /**< Zero. */
} vmm_ram_region_t;

/**
 * @brief Lists RAM regions in address order.
 * @param[in]  vm    The VM.
 * @param[out] out   Array of @p cap entries; may be NULL when @p cap is 0.
 * @param[in]  cap   Capacity of @p out.
 * @param[out] count Number of regions (which may exceed @p cap).
 * @return 0; VMM_EINVAL for NULL @p vm or @p count.
 */
VMM_API int vmm_vm_ram_regions(const vmm_vm_t *vm, vmm_ram_region_t *out, size_t cap,
                               size_t *count);

/**
 * @brief Copies guest-physical memory out. Bounds-checked: the whole range must be RAM.
 * @return 0; VMM_EFAULT when any byte of the range is not RAM; VMM_EINVAL for NULL pointers.
 */
VMM_API int vmm_vm_read(const vmm_vm_t *vm, uint64_t gpa, void *buf, size_t len);

/**
 * @brief Copies into guest-physical memory (read-only regions included).
 * @return 0; VMM_EFAULT when any byte of the range is not RAM; VMM_EINVAL for NULL pointers.
 * @note Marks the pages dirty for snapshots and migration.
 */
VMM_API int vmm_vm_write(vmm_vm_t *vm, uint64_t gpa, const void *buf, size_t len);

/**
 * @brief The host address of a guest-physical range that lies within one RAM region.
 * @return 0; VMM_EFAULT when the range is not inside one RAM region.
 * @note Host writes through the pointer are not seen by dirty tracking.
 */
VMM_API int vmm_vm_gpa_to_hva(vmm_vm_t *vm, uint64_t gpa, size_t len, void **hva);

/**
 * @brief Starts or stops dirty-page logging of the RAM region that starts at @p gpa.
 * @return 0; VMM_ENOENT if no region starts there; VMM_ENOSYS if the backend cannot track.
 */
VMM_API int vmm_vm_dirty_log_enable(vmm_vm_t *vm, uint64_t gpa, int enable);

/**
 * @brief Gets and clears the dirty bitmap of a region: one bit per 4 KiB page, bit `i % 64`
 *        of word `i / 64` for page `i` of the region.
 * @param[in]  vm           The VM.
 * @param[in]  gpa          Start of the region.
 * @param[out] bitmap       At least `bitmap_bytes` bytes.
 * @param[in]  bitmap_bytes Capacity; must cover the region (size / 4096 bits rounded up to
 *                          whole 64-bit words).
 * @return 0; VMM_ENOENT if no region starts there; VMM_ESTATE if logging is off; VMM_ERANGE
 *         if the bitmap is too small.
 * @note The first call may also name pages that roll backs left writable (see
 *       vmm_vm_restore()); from then on the region's log is exact.
 */
VMM_API int vmm_vm_dirty_log_get(vmm_vm_t *vm, uint64_t gpa, uint64_t *bitmap,
                                 size_t bitmap_bytes);

/**
 * @brief A console sink: receives guest console output (hypercall, debug console, UART).
 * @note Runs on the vCPU thread inside vmm_vcpu_run().
 */
typedef void (*vmm_console_fn)(const char *data, size_t len, void *user_data);

/**
 * @brief Sets where the console-write hypercall sends its bytes. Without a sink they are
 *        dropped (the hypercall still succeeds).
 * @return 0; VMM_EINVAL for NULL @p vm.
 */
VMM_API int vmm_vm_set_console(vmm_vm_t *vm, vmm_console_fn fn, void *user_data);

/**
 * @brief Raises or lowers a guest interrupt line (on backends with an interrupt controller).
 * @return 0; VMM_ENOSYS when the backend has no interrupt controller for this VM.
 */
VMM_API int vmm_vm_set_irq(vmm_vm_t *vm, uint32_t irq, int level);

VMM_EXTERN_C_END

#endif /* LIBVMM_VM_H */
