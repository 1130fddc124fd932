/* Snapshot internals shared by the snapshot engine and the file format. Not installed. */
#ifndef LIBVMM_CORE_SNAPSHOT_H
#define LIBVMM_CORE_SNAPSHOT_H

#include "internal.h"

/* The pages of one RAM region that a snapshot stores itself. A full layer stores every page
 * that is not zero; a diff layer stores the pages that changed since the parent. */
struct vmm_snap_region {
  uint64_t gpa;
  uint64_t size;
  uint32_t flags;
  bool full;
  uint64_t npages;
  uint64_t *present;   /* Bitmap of pages stored here. */
  uint64_t own_pages;
  int fd;              /* Sparse memfd of `size` bytes holding the stored pages at their offsets. */
  uint8_t *map;        /* Shared mapping of fd. */
};

struct vmm_snap_device {
  char type[32];
  uint32_t version;
  cJSON *state;                       /* NULL for stateless devices. */
  void *config;                       /* For clones; NULL for snapshots loaded from files. */
  const struct vmm_device_ops *ops;   /* NULL for snapshots loaded from files. */
};

struct vmm_snap_handler {
  enum vmm_handler_kind kind;
  uint64_t base, len;
  vmm_io_fn io_fn;
  vmm_hypercall_fn hc_fn;
  void *user_data;
};

struct vmm_snapshot {
  atomic_int refs;
  uint64_t id;
  char name[64];
  struct vmm_snapshot *parent;
  struct vmm_snapshot **children;   /* Weak; guarded by the tree lock. */
  size_t nchildren, children_cap;
  uint32_t depth;

  vmm_backend_t backend;
  uint32_t nvcpus;
  vmm_cpu_state_t *cpus;
  size_t nregions;
  struct vmm_snap_region *regions;
  size_t ndevices;
  struct vmm_snap_device *devices;
  uint64_t hypercall_page_gpa;
  uint64_t exc_stubs_gpa;
  /* The in-kernel interrupt controllers, timer and clock of a VMM_VM_IRQCHIP VM (backend JSON,
   * see platform_save), or NULL for a VM without them. */
  cJSON *platform;

  /* What clones copy from the VM besides devices. */
  bool from_file;
  size_t nhandlers;
  struct vmm_snap_handler *handlers;
  vmm_console_fn console_fn;
  void *console_user_data;

  /* Set once saved or loaded: the file's content hash and where it is. */
  bool hashed;
  uint8_t hash[16];
  char *path;
};

/* The content of page `page` of region `ri` as of `s`: a pointer into a layer, or NULL for a
 * zero page. */
const uint8_t *vmm__snap_page(const struct vmm_snapshot *s, size_t ri, uint64_t page);

/* A new, empty snapshot object (one reference), and its region table. */
struct vmm_snapshot *vmm__snap_alloc(void);
int vmm__snap_region_init(struct vmm_snap_region *r, uint64_t gpa, uint64_t size, uint32_t flags,
                          bool full);
/* Stores one page into a region layer. */
static inline size_t vmm__snap_bitmap_bytes(uint64_t npages) {
  return (size_t)((npages + 63) / 64 * 8);
}
/* Helpers shared by capture (snapshot.c) and restore (snaprestore.c). */
static inline bool vmm__snap_vm_stopped(vmm_vm_t *vm) { return atomic_load(&vm->running) == 0; }
bool vmm__snap_page_is_zero(const uint8_t *p);
/* Reads and clears the dirty pages of region i (backend writes, host writes, and what the
 * program's own dirty-log calls took since); *out is malloc'ed. */
int vmm__snap_dirty(vmm_vm_t *vm, size_t i, uint64_t **out, bool keep);
bool vmm__snap_same_layout(vmm_vm_t *vm, const struct vmm_snapshot *s);
int vmm__snap_count_vcpus(vmm_vm_t *vm, uint32_t *count);

/* A snapshot is complete: its layers become read-only, diff layers drop their fd. */
void vmm__snap_finish(struct vmm_snapshot *s);
void vmm__snap_store_page(struct vmm_snap_region *r, uint64_t page, const void *data);
/* Links a child into its parent's list (the child holds a reference on the parent). */
void vmm__snap_link(struct vmm_snapshot *child, struct vmm_snapshot *parent);

/* Whether a layer stores page `page`. */
static inline bool vmm__snap_has(const struct vmm_snap_region *r, uint64_t page) {
  return (r->present[page / 64] >> (page % 64)) & 1;
}

/* Records pages [page, page+count) as stored in a layer. */
static inline void vmm__snap_mark(struct vmm_snap_region *r, uint64_t page, uint64_t count) {
  for (uint64_t p = page; p < page + count; p++) {
    if (vmm__snap_has(r, p)) continue;
    r->present[p / 64] |= 1ull << (p % 64);
    r->own_pages++;
  }
}

/* Shared by snapshot.c and snapclone.c. */
void vmm__snap_start_logging(vmm_vm_t *vm);
int vmm__snap_check_devices(vmm_vm_t *vm, const struct vmm_snapshot *s, vmm_device_t ***devs,
                            size_t *n);
int vmm__snap_apply(vmm_vm_t *vm, const struct vmm_snapshot *s, vmm_device_t **devs,
                    size_t ndevs);
int vmm__snap_clone_with_ops(vmm_snapshot_t *s, const struct vmm_backend_ops *ops, vmm_vm_t **out);

/* The lock guarding the tree links, names, hashes and paths of all snapshots. */
void vmm__snap_lock(void);
void vmm__snap_unlock(void);

/* CPU state and device state as JSON, for the file format. */
cJSON *vmm__cpu_state_to_json(const vmm_cpu_state_t *st);
int vmm__cpu_state_from_json(const cJSON *j, vmm_cpu_state_t *st);

#endif /* LIBVMM_CORE_SNAPSHOT_H */
