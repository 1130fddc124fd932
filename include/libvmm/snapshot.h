/**
 * @file snapshot.h
 * @brief VM state as a value: snapshots, roll back, clones, files, and the snapshot tree.
 *
 * A snapshot holds the CPU state of every vCPU, the state of every device and the guest
 * memory of a stopped VM. Snapshots form a tree: a snapshot taken on a VM records as its parent
 * the snapshot that VM was last taken at or restored to, and stores only the pages that changed
 * since then. A VM can be rolled back to any snapshot of its tree, and any number of new VMs can
 * be cloned from a snapshot; clones share unchanged memory with the snapshot where the backend
 * allows it. Snapshots can be saved to files and loaded back, on any backend.
 *
 * Snapshots are reference-counted and immutable, except for their name. A snapshot keeps its
 * parent alive; a VM keeps alive the snapshot it was last taken at or restored to.
 */
#ifndef LIBVMM_SNAPSHOT_H
#define LIBVMM_SNAPSHOT_H

#include "common.h"
#include "cpu.h"
#include "vm.h"

VMM_EXTERN_C_BEGIN

/** @brief A snapshot of a VM (opaque, reference-counted). */
typedef struct vmm_snapshot vmm_snapshot_t;

/**
 * @brief Takes a snapshot of a VM. No vCPU may be running; I/O instructions in progress are
 *        completed first, so every vCPU is captured at an instruction boundary.
 * @param[in]  vm  The VM.
 * @param[out] out The new snapshot, with one reference owned by the caller.
 * @return 0; VMM_EINVAL for NULL or vCPUs not numbered from 0 without gaps; VMM_EBUSY when a
 *         vCPU is running; VMM_ESTATE when a vCPU still waits for the value of an IO/MMIO read
 *         or hypercall exit given to the caller (run it first); VMM_EFAULT when a vCPU inside
 *         the hypercall page has a stack outside RAM; VMM_ELIMIT when the host is out of file
 *         descriptors; VMM_ENOMEM; VMM_EBACKEND. Devices without state are recorded as such.
 *         After a failure the next snapshot or roll back copies all of RAM.
 * @note The first snapshot of a VM turns on dirty-page logging for all its RAM, so that later
 *       snapshots and roll backs only touch the pages that changed.
 * @note The first snapshot copies no RAM: it takes the VM's memory as it is, and the VM's
 *       later writes go to pages of its own (copy-on-write). Pointers from
 *       vmm_vm_gpa_to_hva() stay valid and writable (the pages under them are copied at
 *       once); RAM whose address vmm_vm_map_ram() gave out is copied whole on bt and pv.
 *       The program must not write guest RAM while the snapshot is taken.
 */
VMM_API int vmm_vm_snapshot(vmm_vm_t *vm, vmm_snapshot_t **out);

/**
 * @brief Rolls a VM back (or forward) to a snapshot of the same memory layout and devices.
 *        Only the pages that may differ are copied: those written since the VM's last snapshot
 *        or restore, and those that differ between the two snapshots in the tree.
 * @return 0; VMM_EINVAL for NULL, vCPUs not numbered from 0, or a snapshot whose RAM layout
 *         (addresses, sizes, flags), vCPU count or devices do not match the VM, or whose CPU
 *         state the backend refuses; VMM_EVERSION when a device's saved state has another
 *         version; VMM_ECORRUPT when a device refuses its saved state; VMM_EFAULT when the
 *         hypercall page lies outside RAM; VMM_EBUSY when a vCPU is running; VMM_ENOMEM;
 *         VMM_EIO; VMM_EBACKEND. After a failure the VM's state is undefined (restore again).
 * @note The snapshot may come from another backend: the VM continues on its own backend.
 * @note On bt and pv the pages a roll back copies stay writable, so that a guest writing the
 *       same pages after each roll back takes no write faults; later roll backs copy them
 *       again until one in 64 (or one after a roll back of more than 32 MiB) protects them.
 *       Once the program reads a region's dirty log itself, roll backs keep nothing writable.
 */
VMM_API int vmm_vm_restore(vmm_vm_t *vm, vmm_snapshot_t *snap);

/** @brief Clone configuration. Initialize with VMM_CLONE_CONFIG_INIT. */
typedef struct vmm_clone_config {
  uint32_t struct_size; /**< sizeof(vmm_clone_config_t) as the caller knows it. */
  uint32_t backend;     /**< A vmm_backend_t; VMM_BACKEND_AUTO means the best available. */
  uint32_t flags;       /**< Zero. */
  uint32_t reserved;    /**< Zero. */
} vmm_clone_config_t;

/** @brief Initializer for vmm_clone_config_t. */
#define VMM_CLONE_CONFIG_INIT { .struct_size = sizeof(vmm_clone_config_t) }

/**
 * @brief Creates a new VM from a snapshot: same RAM layout and contents, same vCPUs (created
 *        and in the snapshot's state), the same devices (created with the configuration of the
 *        snapshot VM's devices and loaded with the saved state), the same handlers and console.
 * @param[in]  snap   The snapshot.
 * @param[in]  config The configuration; NULL means the snapshot's own backend if available.
 * @param[out] out    The new VM.
 * @return 0; VMM_EINVAL; VMM_ENODEV when the backend cannot run here; VMM_ENOSYS when the
 *         backend is not built in or a device cannot be cloned; VMM_ESTATE when the
 *         snapshot was loaded from a file and its devices were never attached to a VM (create
 *         the VM yourself and use vmm_vm_restore()); VMM_ENOMEM; VMM_EBACKEND.
 * @note Memory is shared copy-on-write with the snapshot where the backend allows it: the
 *       clone then uses memory only for the pages it writes.
 */
VMM_API int vmm_snapshot_clone(vmm_snapshot_t *snap, const vmm_clone_config_t *config,
                               vmm_vm_t **out);

/** @brief Adds a reference. @return @p snap. */
VMM_API vmm_snapshot_t *vmm_snapshot_retain(vmm_snapshot_t *snap);

/** @brief Drops a reference; the snapshot is freed with its last reference. NULL is ignored. */
VMM_API void vmm_snapshot_release(vmm_snapshot_t *snap);

/**
 * @brief Names a snapshot (at most 63 bytes; longer names are refused).
 * @return 0; VMM_EINVAL for NULL or a name that is too long.
 */
VMM_API int vmm_snapshot_set_name(vmm_snapshot_t *snap, const char *name);

/** @brief The snapshot's name; "" when it has none. Valid until the name changes. */
VMM_API const char *vmm_snapshot_name(const vmm_snapshot_t *snap);

/** @brief The parent snapshot, or NULL for a root. No reference is added. */
VMM_API vmm_snapshot_t *vmm_snapshot_parent(const vmm_snapshot_t *snap);

/**
 * @brief Lists the children of a snapshot that are still alive, oldest first.
 * @param[in]  snap  The snapshot.
 * @param[out] out   Array of @p cap entries, each with a reference the caller releases; may be
 *                   NULL if cap is 0.
 * @param[in]  cap   Capacity of @p out.
 * @param[out] count Number of children (which may exceed @p cap).
 * @return 0; VMM_EINVAL for NULL @p snap or @p count.
 */
VMM_API int vmm_snapshot_children(const vmm_snapshot_t *snap, vmm_snapshot_t **out, size_t cap,
                                  size_t *count);

/** @brief What a snapshot holds. Initialize with VMM_SNAPSHOT_INFO_INIT. */
typedef struct vmm_snapshot_info {
  uint32_t struct_size;   /**< sizeof(vmm_snapshot_info_t) as the caller knows it. */
  uint32_t backend;       /**< Backend of the VM it was taken on. */
  uint32_t vcpus;         /**< Number of vCPUs. */
  uint32_t depth;         /**< Number of ancestors. */
  uint64_t ram_bytes;     /**< Guest RAM size. */
  uint64_t own_pages;     /**< Pages stored in this snapshot itself (not in its ancestors). */
  uint64_t id;            /**< Unique in the process. */
  uint8_t content_hash[16]; /**< Hash of the saved file; zero until saved or loaded. */
  uint32_t flags;         /**< VMM_SNAPSHOT_INFO_* (filled when struct_size covers it). */
} vmm_snapshot_info_t;

/** @brief vmm_snapshot_info_t.flags: taken on a VM made with VMM_VM_IRQCHIP (it holds the
 *         in-kernel interrupt controllers' state and restores only into such a VM). */
#define VMM_SNAPSHOT_INFO_IRQCHIP (1u << 0)

/** @brief Initializer for vmm_snapshot_info_t. */
#define VMM_SNAPSHOT_INFO_INIT { .struct_size = sizeof(vmm_snapshot_info_t) }

/**
 * @brief Describes a snapshot.
 * @return 0; VMM_EINVAL for NULL or a struct_size smaller than the first version (which ends
 *         before `flags`).
 */
VMM_API int vmm_snapshot_info(const vmm_snapshot_t *snap, vmm_snapshot_info_t *info);

/**
 * @brief The saved CPU state of one vCPU of a snapshot.
 * @return 0; VMM_EINVAL for NULL or a bad struct_size; VMM_ERANGE for an index past the count.
 */
VMM_API int vmm_snapshot_cpu_state(const vmm_snapshot_t *snap, uint32_t index,
                                   vmm_cpu_state_t *state);

/**
 * @brief Lists the RAM regions of a snapshot (what a VM must have for vmm_vm_restore()).
 * @param[in]  snap  The snapshot.
 * @param[out] out   Array of @p cap entries; may be NULL when @p cap is 0.
 * @param[in]  cap   Capacity of @p out.
 * @param[out] count Number of regions (which may exceed @p cap).
 * @return 0; VMM_EINVAL for NULL @p snap or @p count.
 */
VMM_API int vmm_snapshot_ram_regions(const vmm_snapshot_t *snap, vmm_ram_region_t *out,
                                     size_t cap, size_t *count);

/**
 * @brief Reads guest-physical memory as it was in a snapshot.
 * @return 0; VMM_EINVAL for NULL; VMM_EFAULT when the range is not RAM.
 */
VMM_API int vmm_snapshot_read(const vmm_snapshot_t *snap, uint64_t gpa, void *buf, size_t len);

/** @brief Flags of vmm_snapshot_save(). */
enum {
  /** Write every page, even when the parent was saved (no parent reference in the file). */
  VMM_SNAPSHOT_SAVE_FULL = 1u << 0,
};

/**
 * @brief Saves a snapshot to one file, atomically: written to a temporary name in the same
 *        directory, flushed to disk and renamed, so that a crash leaves either the old file or
 *        the new one. When the parent was saved or loaded, the file holds only the pages that
 *        differ from it and names the parent's file and content hash.
 * @param[in] snap  The snapshot.
 * @param[in] path  Destination.
 * @param[in] flags VMM_SNAPSHOT_SAVE_* flags.
 * @return 0; VMM_EINVAL; VMM_EIO for file system errors (logged with the reason); VMM_ELIMIT
 *         when the description would exceed what a file may hold; VMM_ENOMEM.
 * @note A diff is written only when the parent's file is in the same directory, is not the
 *       destination itself, and the chain stays within the loader's depth limit; otherwise
 *       the file is whole. Files are created with mode 0600: they hold guest memory.
 */
VMM_API int vmm_snapshot_save(vmm_snapshot_t *snap, const char *path, uint32_t flags);

/**
 * @brief Loads a snapshot file (and, for a diff file, its parent chain, found by the file name
 *        recorded in it, relative to the file's directory, and checked by content hash).
 *        A parent reference is a plain file name: parents must lie next to their children.
 *        Nothing in the file is trusted: every length, offset, count, index, version and
 *        checksum is checked before use, and a bad file is refused with a log message naming
 *        what is wrong.
 * @param[in]  path The file.
 * @param[out] out  The snapshot, with one reference owned by the caller.
 * @return 0; VMM_EINVAL for NULL; VMM_EIO when a file cannot be read; VMM_ECORRUPT for a
 *         malformed file or a checksum mismatch; VMM_EVERSION for an unknown format version;
 *         VMM_ENOENT when the parent file is missing or is not the one recorded; VMM_ELIMIT for
 *         sizes or chains beyond the library's limits; VMM_ENOMEM.
 */
VMM_API int vmm_snapshot_load(const char *path, vmm_snapshot_t **out);

VMM_EXTERN_C_END

#endif /* LIBVMM_SNAPSHOT_H */
