/* Internal declarations shared by the core, the backends and the devices. Not installed. */
#ifndef LIBVMM_CORE_INTERNAL_H
#define LIBVMM_CORE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include <cjson/cJSON.h>
#include <libvmm/vmm.h>
#include <libvmm/snapshot.h>

#define VMM_PAGE_SIZE 4096ull
#define VMM_MAX_REGIONS 64
#define VMM_MAX_VCPUS 64
#define VMM_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* ---- logging ---- */
void vmm__log(vmm_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool vmm__log_enabled(vmm_log_level_t level);
#define VMM_LOG_E(...) vmm__log(VMM_LOG_ERROR, __VA_ARGS__)
#define VMM_LOG_W(...) vmm__log(VMM_LOG_WARN, __VA_ARGS__)
#define VMM_LOG_I(...) vmm__log(VMM_LOG_INFO, __VA_ARGS__)
#define VMM_LOG_D(...) vmm__log(VMM_LOG_DEBUG, __VA_ARGS__)

/* ---- memory ---- */
struct vmm_region {
  uint64_t gpa;
  uint64_t size;
  uint32_t flags;      /* VMM_MEM_* */
  int memfd;
  uint8_t *hva;        /* The VMM's shared mapping of the whole memfd. */
  uint32_t slot;       /* Stable id, unique while the region exists (a KVM slot number). */
  bool dirty_log;
  bool cow;            /* hva is a private copy-on-write mapping of memfd (a clone's RAM). */
  /* Layered (a clone's RAM on a backend that maps the memfd itself): a page lives either in
   * base_fd, the snapshot layer that sibling clones share and nobody writes, or in memfd, this
   * VM's own sparse file, once the page is owned (a bit in `owned`). hva and the backend map
   * each page from where it lives, base pages read-only; see vmm__region_own(). */
  bool layered;
  int base_fd;
  uint64_t *owned;
  uint64_t own_maps;   /* Separate runs of own pages (each splits hva in two places). */
  pthread_mutex_t own_lock;
  uint64_t *host_dirty; /* Pages written through vmm_vm_write() while logging. */
  uint64_t *snap_pending; /* Pages the public dirty-log call took that snapshots still need. */
  bool user_log;        /* The program reads this log: every read protects all pages again. */
  /* Pages of a plain region the program holds pointers to (vmm_vm_gpa_to_hva()), or all of it
   * (vmm_vm_map_ram() gave its address): they stay writable if the region becomes layered. */
  uint64_t *exposed;
  bool exposed_all;
  uint32_t keep_reads;  /* Reads that left pages writable since one protected them all. */
  uint64_t *kept;       /* The pages those reads left writable (reported by every read). */
  void *backend_data;
};

/* ---- handlers ---- */
enum vmm_handler_kind { VMM_HANDLER_PIO, VMM_HANDLER_MMIO, VMM_HANDLER_HYPERCALL };

struct vmm_handler {
  enum vmm_handler_kind kind;
  vmm_device_t *device; /* The device that registered it, or NULL for the host program. */
  uint64_t base;
  uint64_t len;
  vmm_io_fn io_fn;
  vmm_hypercall_fn hc_fn;
  void *user_data;
};

struct vmm_handler_vec {
  struct vmm_handler **items; /* Sorted by base. */
  size_t count;
  size_t cap;
};

/* ---- backends ---- */

/*
 * One table per backend. The core calls these with the VM's or vCPU's lock discipline already
 * applied: vcpu_* functions are called only from the thread that owns the vCPU at that moment,
 * except vcpu_kick, which may come from any thread or a signal handler.
 *
 * Completion contract: vcpu_run() receives the exit it returned last time, with the data of an
 * IO/MMIO read or the result of a hypercall filled in by the core. A backend that left such an
 * instruction incomplete finishes it from that exit before running guest code. flush_pending()
 * does the same without running guest code. set_regs() and set_state() first complete (or
 * drop) whatever is pending, so the state written is exactly what runs next.
 *
 * Fast dispatch: a backend may hand an exit to vmm__dispatch() itself, without returning from
 * vcpu_run() (bt does this for hypercalls from translated code). When vmm__dispatch() returns
 * 1 the exit was consumed and the guest continues, unless vcpu->exit_requested became true, in
 * which case vcpu_run() must return soon (with any exit). When it returns 0, vcpu_run() returns
 * that exit with vcpu->predispatched set, so that the core does not dispatch it twice.
 */
/* Backend capabilities (vmm_backend_ops.caps). */
#define VMM__CAP_IRQCHIP (1u << 0) /* Interrupt controllers and timer (VMM_VM_IRQCHIP). */
/* Clones' RAM: the backend works on r->hva and takes a private copy-on-write mapping (kvm),
 * or maps RAM itself and takes layered regions (bt, pv). */
#define VMM__CAP_RAM_COW (1u << 1)
#define VMM__CAP_RAM_LAYERED (1u << 2)

struct vmm_backend_ops {
  vmm_backend_t id;
  const char *name;
  uint32_t caps;
  int (*probe)(void);
  int (*vm_init)(vmm_vm_t *vm);
  void (*vm_fini)(vmm_vm_t *vm);
  int (*region_add)(vmm_vm_t *vm, struct vmm_region *r);
  void (*region_remove)(vmm_vm_t *vm, struct vmm_region *r);
  int (*dirty_log_enable)(vmm_vm_t *vm, struct vmm_region *r, bool enable);
  /* Gets and clears, and protects again what it returns; bitmap has room for r->size / 4096
   * bits. On entry its set bits are pages the caller wants protected again too (pages an
   * earlier dirty_log_get_keep left writable); the backend ORs in what it finds. */
  int (*dirty_log_get)(vmm_vm_t *vm, struct vmm_region *r, uint64_t *bitmap);
  /* The same for a roll back, which copies back every page the read returns, without
   * protecting them (bitmap zeroed by the caller): a guest that writes the same pages after
   * each roll back takes no faults and its roll backs re-protect nothing. The core remembers
   * those pages (r->kept) and reports them until a dirty_log_get protects them. May be NULL. */
  int (*dirty_log_get_keep)(vmm_vm_t *vm, struct vmm_region *r, uint64_t *bitmap);
  int (*vcpu_init)(vmm_vcpu_t *vcpu);
  void (*vcpu_fini)(vmm_vcpu_t *vcpu);
  int (*vcpu_run)(vmm_vcpu_t *vcpu, vmm_exit_t *exit);
  int (*flush_pending)(vmm_vcpu_t *vcpu, const vmm_exit_t *exit);
  void (*vcpu_kick)(vmm_vcpu_t *vcpu);
  int (*get_regs)(vmm_vcpu_t *vcpu, vmm_regs_t *regs);
  int (*set_regs)(vmm_vcpu_t *vcpu, const vmm_regs_t *regs);
  int (*get_state)(vmm_vcpu_t *vcpu, vmm_cpu_state_t *state);
  int (*set_state)(vmm_vcpu_t *vcpu, const vmm_cpu_state_t *state);
  int (*set_single_step)(vmm_vcpu_t *vcpu, bool enable);
  /* Fills the 4 KiB hypercall page that will live at guest address gpa. */
  int (*fill_hypercall_page)(vmm_vm_t *vm, uint64_t gpa, uint8_t *page);
  int (*set_irq)(vmm_vm_t *vm, uint32_t irq, int level);
  /* The VMM wrote [gpa, gpa+len) through vmm_vm_write() or a snapshot restore: translations
   * of it are stale. May be NULL. Called on the writing thread, possibly while vCPUs run. */
  void (*memory_written)(vmm_vm_t *vm, uint64_t gpa, uint64_t len);
  /* Layered regions only: makes pages [first, first+n) of r owned by calling
   * vmm__region_own_now() at a moment when no vCPU can read the pages through a stale
   * mapping, and drops the backend's mappings of their base pages. May be NULL when the backend
   * maps RAM only through r->hva. Called on any thread, possibly while vCPUs run. */
  int (*own_pages)(vmm_vm_t *vm, struct vmm_region *r, uint64_t first, uint64_t n);
  /* A plain region became layered in place (vmm__region_layer_in_place(), every vCPU
   * stopped): the backend drops every mapping of r->base_fd it made writable, before any vCPU
   * runs again. NULL where snapshots cannot layer RAM in place. */
  int (*region_layered)(vmm_vm_t *vm, struct vmm_region *r);
  /* VMs made with VMM_VM_IRQCHIP (kvm): the in-kernel devices' state for snapshots, as JSON;
   * a check of such JSON that changes nothing; its load (after the vCPUs' states). */
  cJSON *(*platform_save)(vmm_vm_t *vm, int *rc);
  int (*platform_check)(vmm_vm_t *vm, const cJSON *state);
  int (*platform_load)(vmm_vm_t *vm, const cJSON *state);
  /* The same without what would write guest RAM, for a restore's trial (NULL: platform_load
   * writes none). */
  int (*platform_try)(vmm_vm_t *vm, const cJSON *state);
  /* Appends backend counters; returns how many it has (may exceed cap). */
  size_t (*vcpu_stats)(vmm_vcpu_t *vcpu, vmm_stat_t *out, size_t cap);
  /* vmm_backend_prepare(): keep count (at most VMM__PREPARE_MAX) units of what a new vCPU
   * needs made ahead, making the missing ones before returning. NULL: nothing to prepare. */
  int (*prepare)(unsigned count);
};

#define VMM__PREPARE_MAX 64

extern const struct vmm_backend_ops vmm__kvm_ops;
extern const struct vmm_backend_ops vmm__bt_ops;
extern const struct vmm_backend_ops vmm__pv_ops;

const struct vmm_backend_ops *vmm__backend_ops(vmm_backend_t id);

/* ---- devices ---- */
struct vmm_device_ops {
  const char *type;
  uint32_t version;    /* Of the saved state; load accepts this version only. */
  void (*destroy)(vmm_device_t *dev);
  /* Snapshots: the guest-visible state as JSON, and back. NULL for stateless devices. */
  cJSON *(*save)(vmm_device_t *dev);
  int (*load)(vmm_device_t *dev, const cJSON *state);
  /* Whether load would take the state, changing nothing (a restore asks every device before
   * it touches RAM or vCPUs). NULL when load cannot refuse a state save produced. */
  int (*check)(const vmm_device_t *dev, const cJSON *state);
  /* Clones: a copy of the creation parameters, and a device made from them on another VM.
   * The copy is released with free(). */
  void *(*dup_config)(const vmm_device_t *dev);
  int (*create_from_config)(vmm_vm_t *vm, const void *config, vmm_device_t **out);
};

struct vmm_device {
  const struct vmm_device_ops *ops;
  vmm_vm_t *vm;
  struct vmm_device *next;
  uint64_t seq;        /* Creation order within the VM. */
};

void vmm__device_attach(vmm_vm_t *vm, vmm_device_t *dev);

/* ---- VM and vCPU ---- */
struct vmm_vm {
  const struct vmm_backend_ops *ops;
  vmm_backend_t backend;
  uint32_t max_vcpus;
  uint32_t flags;

  pthread_mutex_t lock; /* Regions, vCPU table, devices. */
  struct vmm_region *regions[VMM_MAX_REGIONS];
  size_t nregions;
  uint32_t next_slot;

  pthread_rwlock_t bus_lock;
  struct vmm_handler_vec pio;
  struct vmm_handler_vec mmio;
  struct vmm_handler *hypercalls[VMM_HC_COUNT];

  vmm_console_fn console_fn;
  void *console_user_data;

  vmm_vcpu_t *vcpus[VMM_MAX_VCPUS];
  atomic_int running;   /* vCPUs inside vmm_vcpu_run(). */
  vmm_device_t *devices;

  uint64_t next_device_seq;
  vmm_snapshot_t *snap_base;   /* Snapshot last taken or restored; pages dirty since then. */
  bool dirty_all;              /* Dirty logging is on for every region. */
  /* A snapshot restore is rewriting memory and vCPU states; every page it rewrites goes
   * through ops->memory_written, so backends may keep caches that do not depend on the state
   * (and must drop those that depend on page tables it rewrote). */
  bool restoring;

  uint64_t hypercall_page_gpa; /* 0 when none was installed. */
  uint64_t exc_stubs_gpa;      /* 0 when the exception stubs are not installed. */

  void *backend_data;
};

enum { VMM_STAT_EXIT_FIRST = 0, VMM_STAT_NREASONS = 11 };

struct vmm_vcpu {
  vmm_vm_t *vm;
  uint32_t index;
  atomic_int running;
  pthread_t run_thread;       /* Valid while running. */
  vmm_exit_t cur;             /* What the backend returned last, with completions filled. */
  uint32_t returned_reason;   /* Reason handed to the caller last time. */
  bool exit_requested;
  bool predispatched;         /* Set by a backend that already dispatched cur (see above). */
  int64_t exit_status;
  uint64_t exit_counts[VMM_STAT_NREASONS]; /* Exits the backend produced, by reason. */
  uint64_t exits_to_caller;
  uint64_t hypercalls;
  void *backend_data;
};

/* Maps a RAM region as a private copy-on-write mapping of base_fd (which is dup'ed). Backends
 * that cannot run on such a region return VMM_ENOSYS from region_add. */
int vmm__vm_map_ram_cow(vmm_vm_t *vm, uint64_t gpa, uint64_t size, uint32_t flags, int base_fd);
/* A layered region over base_fd (a clone's RAM where the backend maps memory itself and takes
 * layered regions); VMM_ENOSYS from backends that do not. */
int vmm__vm_map_ram_layered(vmm_vm_t *vm, uint64_t gpa, uint64_t size, uint32_t flags,
                            int base_fd);
/* Layered regions: makes the pages covering [off, off+len) of r the VM's own before the host
 * writes them (a no-op for other regions and owned pages). VMM_ENOMEM when a mapping fails. */
int vmm__region_own(vmm_vm_t *vm, struct vmm_region *r, uint64_t off, uint64_t len);
/* The step itself, for backends' own_pages: copies each unowned page of [*first, *first+*n)
 * into memfd and maps it there in hva. After VMM_OWN_MAX_MAPS runs (or a failed mapping) the
 * whole region becomes owned at once: then *first and *n say so, and the backend must drop
 * its base mappings of all of it. */
#define VMM_OWN_MAX_MAPS 1024
int vmm__region_own_now(struct vmm_region *r, uint64_t *first, uint64_t *n);
static inline bool vmm__region_page_owned(const struct vmm_region *r, uint64_t pg) {
  return !r->layered || ((__atomic_load_n(&r->owned[pg / 64], __ATOMIC_ACQUIRE) >> (pg % 64)) & 1);
}
/* Devices of a VM in creation order; returns the count (array malloc'ed, may be NULL). */
size_t vmm__vm_devices(vmm_vm_t *vm, vmm_device_t ***out);
/* Marks the handler as registered by a device (clones re-create devices, not their handlers). */
void vmm__handler_set_device(vmm_handler_t *h, vmm_device_t *dev);

/* The VMM wrote guest memory directly (not through vmm_vm_write): dirty logs and
 * translators must know. */
void vmm__host_wrote(vmm_vm_t *vm, uint64_t gpa, uint64_t len);
/* A first snapshot on a backend that maps RAM itself (bt, pv): the region becomes layered over
 * its own memfd, which the snapshot takes as its full layer and nobody writes again; a new
 * empty memfd takes the VM's writes. The pages the program holds pointers to are copied there
 * at once. VMM_ENOSYS when that is not worth it (the program holds pointers to most of the
 * region), and then nothing changed. The backend's region_layered() follows. */
int vmm__region_layer_in_place(vmm_vm_t *vm, struct vmm_region *r);

/* Reads and clears a region's dirty log (backend and host writes); bitmap sized for it. */
int vmm__dirty_get(vmm_vm_t *vm, struct vmm_region *r, uint64_t *bitmap, bool keep);

/* Reads a whole regular file of at most `max` bytes into a malloc'ed buffer (logged errors:
 * VMM_EIO, VMM_ELIMIT, VMM_ENOMEM). */
int vmm__read_file(const char *path, uint64_t max, uint8_t **out, size_t *out_size);

/* Writes all of p at off (retrying short writes); -1 with errno on failure. */
int vmm__pwrite_all(int fd, const uint8_t *p, uint64_t len, uint64_t off);

/* Guest memory helpers for the core and backends; the caller holds no lock. */
struct vmm_region *vmm__region_find(const vmm_vm_t *vm, uint64_t gpa, uint64_t len);
void *vmm__gpa_ptr(const vmm_vm_t *vm, uint64_t gpa, uint64_t len);
/* The same for writing: owns the pages of a layered region first (NULL if that fails). */
void *vmm__gpa_wptr(vmm_vm_t *vm, uint64_t gpa, uint64_t len);

/* Dispatch of one backend exit: returns 1 when consumed (run again), 0 when the exit goes to
 * the caller, or a negative VMM_E* code. */
int vmm__dispatch(vmm_vcpu_t *vcpu, vmm_exit_t *exit);
bool vmm__bus_has_mmio(vmm_vm_t *vm, uint64_t gpa, uint64_t len);

int vmm__vm_create_with_ops(const vmm_vm_config_t *config, const struct vmm_backend_ops *ops,
                            vmm_vm_t **out);
void vmm__vcpu_free(vmm_vcpu_t *vcpu);
void vmm__bus_free(vmm_vm_t *vm);
/* Turns the exception stubs' port write into VMM_EXIT_EXCEPTION: 1 if it did, 0 if the write
 * did not come from a stub, or a negative VMM_E* code. */
int vmm__exception_from_stub(vmm_vcpu_t *vcpu, vmm_exit_t *exit);

/* Fills a hypercall page with port-trap entries (entry n: mov $n,%eax; out %eax,$VMM_HC_PORT;
 * ret), the layout kvm and bt share. */
void vmm__hypercall_page_port(uint8_t *page);

/* The hypercall page: (re)written for the VM's backend. */
int vmm__install_hypercall_page(vmm_vm_t *vm, uint64_t gpa);

/* Segment descriptors <-> vmm_segment_t. */
void vmm__segment_from_desc(uint64_t lo, uint64_t hi, uint16_t selector, vmm_segment_t *seg);
uint64_t vmm__segment_to_desc(const vmm_segment_t *seg);
int vmm__segment_load(vmm_vm_t *vm, const vmm_dtable_t *gdt, uint16_t selector,
                      vmm_segment_t *seg);

/* Internal error exit with a formatted message. */
void vmm__exit_internal(vmm_exit_t *exit, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Error codes to and from host errno. */
int vmm__from_errno(int err);

#endif /* LIBVMM_CORE_INTERNAL_H */
