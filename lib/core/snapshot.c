/* Snapshots of running VMs: capture and the snapshot tree (roll back: snaprestore.c, clones:
 * snapclone.c, files: snapfile.c).
 *
 * Live guest RAM stays a shared memfd on every backend. A snapshot stores, per RAM region, a
 * layer of pages in a sparse memfd: the first snapshot of a VM stores every page that holds
 * data (a full layer); after it, dirty-page logging is on and each snapshot stores only the
 * pages written since the VM's previous snapshot or restore (a diff layer over its parent).
 * Rolling back copies the pages written since then plus the pages that differ between the two
 * snapshots along the tree, and nothing else. Clones map the nearest full layer copy-on-write
 * where the backend allows it, so that they use memory only for what they write. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "snapshot.h"

#define PAGE VMM_PAGE_SIZE

static pthread_mutex_t vmm_snap_tree_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_uint_fast64_t vmm_snap_next_id = 1;

static bool bit_get(const uint64_t *bm, uint64_t i) { return (bm[i / 64] >> (i % 64)) & 1; }

/* ---- objects and the tree ---- */

void vmm__snap_lock(void) { pthread_mutex_lock(&vmm_snap_tree_lock); }
void vmm__snap_unlock(void) { pthread_mutex_unlock(&vmm_snap_tree_lock); }

struct vmm_snapshot *vmm__snap_alloc(void) {
  struct vmm_snapshot *s = calloc(1, sizeof(*s));
  if (s == NULL) return NULL;
  atomic_init(&s->refs, 1);
  s->id = atomic_fetch_add(&vmm_snap_next_id, 1);
  return s;
}

int vmm__snap_region_init(struct vmm_snap_region *r, uint64_t gpa, uint64_t size, uint32_t flags,
                          bool full) {
  memset(r, 0, sizeof(*r));
  r->fd = -1;
  r->gpa = gpa;
  r->size = size;
  r->flags = flags;
  r->full = full;
  r->npages = size / PAGE;
  r->present = calloc(1, vmm__snap_bitmap_bytes(r->npages) ? vmm__snap_bitmap_bytes(r->npages) : 8);
  if (r->present == NULL) return VMM_ENOMEM;
  r->fd = memfd_create("libvmm-snapshot", MFD_CLOEXEC);
  if (r->fd < 0) return vmm__from_errno(errno);
  /* A sparse file: only stored pages take memory. */
  if (ftruncate(r->fd, (off_t)size) != 0) return vmm__from_errno(errno);
  r->map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, r->fd, 0);
  if (r->map == MAP_FAILED) {
    r->map = NULL;
    return vmm__from_errno(errno);
  }
  return 0;
}

void vmm__snap_finish(struct vmm_snapshot *s) {
  for (size_t i = 0; i < s->nregions; i++) {
    struct vmm_snap_region *r = &s->regions[i];
    /* Immutable from now on, in this process too. */
    if (r->map) mprotect(r->map, r->size, PROT_READ);
    /* Only a full layer's file is needed again (clones map it); a diff layer lives on in its
     * mapping, so a long chain of snapshots does not hold a descriptor per layer. */
    if (!r->full && r->fd >= 0) {
      close(r->fd);
      r->fd = -1;
    }
  }
}

void vmm__snap_store_page(struct vmm_snap_region *r, uint64_t page, const void *data) {
  memcpy(r->map + page * PAGE, data, PAGE);
  vmm__snap_mark(r, page, 1);
}

static void vmm_snap_region_fini(struct vmm_snap_region *r) {
  if (r->map) munmap(r->map, r->size);
  if (r->fd >= 0) close(r->fd);
  free(r->present);
}

void vmm__snap_link(struct vmm_snapshot *child, struct vmm_snapshot *parent) {
  if (parent == NULL) return;
  child->parent = vmm_snapshot_retain(parent);
  child->depth = parent->depth + 1;
  pthread_mutex_lock(&vmm_snap_tree_lock);
  if (parent->nchildren == parent->children_cap) {
    size_t cap = parent->children_cap ? parent->children_cap * 2 : 4;
    struct vmm_snapshot **c = realloc(parent->children, cap * sizeof(*c));
    if (c) {
      parent->children = c;
      parent->children_cap = cap;
    }
  }
  if (parent->nchildren < parent->children_cap) parent->children[parent->nchildren++] = child;
  pthread_mutex_unlock(&vmm_snap_tree_lock);
}

vmm_snapshot_t *vmm_snapshot_retain(vmm_snapshot_t *s) {
  if (s) atomic_fetch_add(&s->refs, 1);
  return s;
}

void vmm_snapshot_release(vmm_snapshot_t *s) {
  while (s) {
    /* The last reference drops under the tree lock, so that vmm_snapshot_children() never
     * hands out a snapshot that is being freed. */
    pthread_mutex_lock(&vmm_snap_tree_lock);
    if (atomic_fetch_sub(&s->refs, 1) != 1) {
      pthread_mutex_unlock(&vmm_snap_tree_lock);
      return;
    }
    struct vmm_snapshot *parent = s->parent;
    if (parent) {
      for (size_t i = 0; i < parent->nchildren; i++) {
        if (parent->children[i] == s) {
          memmove(&parent->children[i], &parent->children[i + 1],
                  (parent->nchildren - i - 1) * sizeof(parent->children[0]));
          parent->nchildren--;
          break;
        }
      }
    }
    pthread_mutex_unlock(&vmm_snap_tree_lock);
    /* Children keep their parent alive, so a dying snapshot has none left. */
    for (size_t i = 0; i < s->nregions; i++) vmm_snap_region_fini(&s->regions[i]);
    for (size_t i = 0; i < s->ndevices; i++) {
      cJSON_Delete(s->devices[i].state);
      free(s->devices[i].config);
    }
    free(s->regions);
    free(s->devices);
    free(s->cpus);
    cJSON_Delete(s->platform);
    free(s->handlers);
    free(s->children);
    free(s->path);
    free(s);
    s = parent; /* Drop the reference this snapshot held, iteratively. */
  }
}

int vmm_snapshot_set_name(vmm_snapshot_t *s, const char *name) {
  if (s == NULL || name == NULL || strlen(name) >= sizeof(s->name)) return VMM_EINVAL;
  pthread_mutex_lock(&vmm_snap_tree_lock);
  snprintf(s->name, sizeof(s->name), "%s", name);
  pthread_mutex_unlock(&vmm_snap_tree_lock);
  return 0;
}

const char *vmm_snapshot_name(const vmm_snapshot_t *s) { return s ? s->name : NULL; }

vmm_snapshot_t *vmm_snapshot_parent(const vmm_snapshot_t *s) { return s ? s->parent : NULL; }

int vmm_snapshot_children(const vmm_snapshot_t *s, vmm_snapshot_t **out, size_t cap,
                          size_t *count) {
  if (s == NULL || count == NULL || (out == NULL && cap)) return VMM_EINVAL;
  pthread_mutex_lock(&vmm_snap_tree_lock);
  for (size_t i = 0; i < s->nchildren && i < cap; i++) out[i] = vmm_snapshot_retain(s->children[i]);
  *count = s->nchildren;
  pthread_mutex_unlock(&vmm_snap_tree_lock);
  return 0;
}

int vmm_snapshot_info(const vmm_snapshot_t *s, vmm_snapshot_info_t *info) {
  if (s == NULL || info == NULL || info->struct_size < offsetof(vmm_snapshot_info_t, flags))
    return VMM_EINVAL;
  if (info->struct_size >= offsetof(vmm_snapshot_info_t, flags) + sizeof(info->flags))
    info->flags = s->platform ? VMM_SNAPSHOT_INFO_IRQCHIP : 0;
  info->backend = s->backend;
  info->vcpus = s->nvcpus;
  info->depth = s->depth;
  info->ram_bytes = 0;
  info->own_pages = 0;
  for (size_t i = 0; i < s->nregions; i++) {
    info->ram_bytes += s->regions[i].size;
    info->own_pages += s->regions[i].own_pages;
  }
  info->id = s->id;
  memset(info->content_hash, 0, sizeof(info->content_hash));
  if (s->hashed) memcpy(info->content_hash, s->hash, sizeof(info->content_hash));
  return 0;
}

int vmm_snapshot_cpu_state(const vmm_snapshot_t *s, uint32_t index, vmm_cpu_state_t *state) {
  if (s == NULL || state == NULL || state->struct_size < offsetof(vmm_cpu_state_t, xsave) + VMM_XSAVE_SIZE)
    return VMM_EINVAL;
  if (index >= s->nvcpus) return VMM_ERANGE;
  uint32_t size = state->struct_size;
  memcpy(state, &s->cpus[index], size < sizeof(*state) ? size : sizeof(*state));
  state->struct_size = size;
  return 0;
}

int vmm_snapshot_ram_regions(const vmm_snapshot_t *s, vmm_ram_region_t *out, size_t cap,
                             size_t *count) {
  if (s == NULL || count == NULL || (out == NULL && cap)) return VMM_EINVAL;
  for (size_t i = 0; i < s->nregions && i < cap; i++)
    out[i] = (vmm_ram_region_t){s->regions[i].gpa, s->regions[i].size, s->regions[i].flags, 0};
  *count = s->nregions;
  return 0;
}

/* ---- page lookup ---- */

const uint8_t *vmm__snap_page(const struct vmm_snapshot *s, size_t ri, uint64_t page) {
  for (; s; s = s->parent) {
    const struct vmm_snap_region *r = &s->regions[ri];
    if (vmm__snap_has(r, page)) return r->map + page * PAGE;
    if (r->full) return NULL;
  }
  return NULL;
}

static size_t vmm_snap_find_region(const struct vmm_snapshot *s, uint64_t gpa) {
  for (size_t i = 0; i < s->nregions; i++)
    if (gpa >= s->regions[i].gpa && gpa - s->regions[i].gpa < s->regions[i].size) return i;
  return SIZE_MAX;
}

int vmm_snapshot_read(const vmm_snapshot_t *s, uint64_t gpa, void *buf, size_t len) {
  if (s == NULL || (buf == NULL && len)) return VMM_EINVAL;
  if (gpa + len < gpa) return VMM_EFAULT;
  uint8_t *out = buf;
  while (len) {
    size_t ri = vmm_snap_find_region(s, gpa);
    if (ri == SIZE_MAX) return VMM_EFAULT;
    const struct vmm_snap_region *r = &s->regions[ri];
    uint64_t off = gpa - r->gpa;
    size_t n = (size_t)(PAGE - off % PAGE);
    if (n > len) n = len;
    const uint8_t *p = vmm__snap_page(s, ri, off / PAGE);
    if (p) memcpy(out, p + off % PAGE, n);
    else memset(out, 0, n);
    out += n;
    gpa += n;
    len -= n;
  }
  return 0;
}

/* ---- capture ---- */

bool vmm__snap_page_is_zero(const uint8_t *p) {
  static const uint8_t zero[PAGE];
  return memcmp(p, zero, PAGE) == 0;
}

/* A vCPU stopped inside a hypercall-page entry is moved out of it, so that the state does not
 * depend on the backend's entry code (the page is rewritten when the VM moves to another
 * backend). Entries are restartable up to their trap, which is followed by `ret`: at the `ret`
 * the return is done here, anywhere else the entry starts over. */
static int vmm_snap_leave_hypercall_page(vmm_vm_t *vm, vmm_cpu_state_t *st) {
  uint64_t page = vm->hypercall_page_gpa;
  uint64_t rip = st->regs.rip;
  if (page == 0 || rip < page || rip >= page + PAGE) return 0;
  uint8_t op = 0;
  if (vmm_vm_read(vm, rip, &op, 1) != 0) return VMM_EFAULT;
  if (op == 0xc3) {
    uint64_t ret;
    if (vmm_vm_read(vm, st->regs.rsp, &ret, 8) != 0) return VMM_EFAULT;
    st->regs.rip = ret;
    st->regs.rsp += 8;
  } else {
    st->regs.rip = rip & ~(uint64_t)(VMM_HC_ENTRY_SIZE - 1);
  }
  return 0;
}

/* A read or hypercall handed to the caller is finished by the caller's next run; a snapshot
 * now would capture the library's placeholder value instead. */
static bool vmm_snap_caller_owes(const vmm_vcpu_t *v) {
  const vmm_exit_t *e = &v->cur;
  if (v->returned_reason != e->reason) return false;
  return (e->reason == VMM_EXIT_IO && !e->io.is_write) ||
         (e->reason == VMM_EXIT_MMIO && !e->mmio.is_write) || e->reason == VMM_EXIT_HYPERCALL;
}

/* vCPUs must be numbered 0..n-1 (snapshots store them by position). */
int vmm__snap_count_vcpus(vmm_vm_t *vm, uint32_t *count) {
  uint32_t n = 0;
  while (n < VMM_MAX_VCPUS && vm->vcpus[n]) n++;
  for (uint32_t i = n; i < VMM_MAX_VCPUS; i++) {
    if (vm->vcpus[i]) {
      VMM_LOG_E("snapshot: vCPU %u exists but vCPU %u does not; number vCPUs from 0", i, n);
      return VMM_EINVAL;
    }
  }
  *count = n;
  return 0;
}

static int vmm_snap_capture_cpus(vmm_vm_t *vm, struct vmm_snapshot *s) {
  uint32_t n;
  int rc0 = vmm__snap_count_vcpus(vm, &n);
  if (rc0) return rc0;
  for (uint32_t i = 0; i < n; i++) {
    if (vmm_snap_caller_owes(vm->vcpus[i])) {
      VMM_LOG_E("snapshot: vCPU %u waits for the value of its %s exit; run it first", i,
                vmm_exit_reason_name(vm->vcpus[i]->cur.reason));
      return VMM_ESTATE;
    }
  }
  s->cpus = calloc(n ? n : 1, sizeof(*s->cpus));
  if (s->cpus == NULL) return VMM_ENOMEM;
  s->nvcpus = n;
  for (uint32_t i = 0; i < n; i++) {
    vmm_vcpu_t *v = vm->vcpus[i];
    int rc = vm->ops->flush_pending(v, &v->cur);
    if (rc) return rc;
    v->cur.reason = VMM_EXIT_NONE;
    s->cpus[i].struct_size = sizeof(s->cpus[i]);
    rc = vm->ops->get_state(v, &s->cpus[i]);
    if (rc) return rc;
    vmm_regs_t before = s->cpus[i].regs;
    rc = vmm_snap_leave_hypercall_page(vm, &s->cpus[i]);
    if (rc) return rc;
    /* The running VM continues from the same normalized state. */
    if (memcmp(&before, &s->cpus[i].regs, sizeof(before)) != 0) {
      rc = vm->ops->set_state(v, &s->cpus[i]);
      if (rc) return rc;
    }
  }
  return 0;
}

static int vmm_snap_capture_devices(vmm_vm_t *vm, struct vmm_snapshot *s) {
  vmm_device_t **devs = NULL;
  size_t n = vmm__vm_devices(vm, &devs);
  s->devices = calloc(n ? n : 1, sizeof(*s->devices));
  if (s->devices == NULL) {
    free(devs);
    return VMM_ENOMEM;
  }
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    struct vmm_snap_device *d = &s->devices[i];
    const struct vmm_device_ops *ops = devs[i]->ops;
    snprintf(d->type, sizeof(d->type), "%s", ops->type);
    d->version = ops->version;
    d->ops = ops;
    s->ndevices++;
    if (ops->save) {
      d->state = ops->save(devs[i]);
      if (d->state == NULL) rc = VMM_ENOMEM;
    }
    if (rc == 0 && ops->dup_config) {
      d->config = ops->dup_config(devs[i]);
      if (d->config == NULL) rc = VMM_ENOMEM;
    }
  }
  free(devs);
  return rc;
}

static int vmm_snap_capture_handlers(vmm_vm_t *vm, struct vmm_snapshot *s) {
  pthread_rwlock_rdlock(&vm->bus_lock);
  size_t n = vm->pio.count + vm->mmio.count + VMM_HC_COUNT;
  s->handlers = calloc(n, sizeof(*s->handlers));
  if (s->handlers == NULL) {
    pthread_rwlock_unlock(&vm->bus_lock);
    return VMM_ENOMEM;
  }
  const struct vmm_handler_vec *vecs[2] = {&vm->pio, &vm->mmio};
  for (int v = 0; v < 2; v++) {
    for (size_t i = 0; i < vecs[v]->count; i++) {
      const struct vmm_handler *h = vecs[v]->items[i];
      if (h->device) continue; /* Devices register their own on the clone. */
      s->handlers[s->nhandlers++] = (struct vmm_snap_handler){
          h->kind, h->base, h->len, h->io_fn, NULL, h->user_data};
    }
  }
  for (size_t i = 0; i < VMM_HC_COUNT; i++) {
    const struct vmm_handler *h = vm->hypercalls[i];
    if (h && !h->device)
      s->handlers[s->nhandlers++] =
          (struct vmm_snap_handler){h->kind, h->base, 1, NULL, h->hc_fn, h->user_data};
  }
  s->console_fn = vm->console_fn;
  s->console_user_data = vm->console_user_data;
  pthread_rwlock_unlock(&vm->bus_lock);
  return 0;
}

/* Every page of the region that holds data (holes in the memfd are skipped without reading). */
static int vmm_snap_capture_full(struct vmm_region *live, struct vmm_snap_region *r) {
  off_t pos = 0, end = (off_t)live->size;
  while (pos < end) {
    bool scan_all = live->cow || live->layered; /* memfd alone does not say where data is */
    off_t data = scan_all ? pos : lseek(live->memfd, pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break; /* No data after pos. */
      return vmm__from_errno(errno);
    }
    off_t hole = scan_all ? end : lseek(live->memfd, data, SEEK_HOLE);
    if (hole < 0 || hole > end) hole = end;
    /* Runs of non-zero pages go into the layer's file with one pwrite each: writing through
     * the layer's mapping instead would take a page fault per page, which dominates a large
     * first snapshot where faults are slow (a nested host). */
    uint64_t last = ((uint64_t)hole + PAGE - 1) / PAGE;
    for (uint64_t pg = (uint64_t)data / PAGE; pg < last;) {
      if (vmm__snap_page_is_zero(live->hva + pg * PAGE)) {
        pg++;
        continue;
      }
      uint64_t n = 1;
      while (pg + n < last && n < 256 && !vmm__snap_page_is_zero(live->hva + (pg + n) * PAGE)) n++;
      if (vmm__pwrite_all(r->fd, live->hva + pg * PAGE, n * PAGE, pg * PAGE) != 0)
        return vmm__from_errno(errno);
      vmm__snap_mark(r, pg, n);
      pg += n;
    }
    pos = hole;
  }
  return 0;
}

/* A backend that works on the VMM's mapping (kvm): the VM's memfd becomes the full layer as it
 * is, without a copy, and the VM goes on in a private copy-on-write mapping of it at the same
 * address (pointers the program holds stay valid and writable; KVM follows the mapping). */
/* The first snapshot takes the VM's memfd as its full layer instead of copying it: on kvm the
 * VM goes on in a private copy-on-write mapping of it (KVM reads guest memory through hva); on
 * bt and pv the region becomes layered over it (vmm__region_layer_in_place()). */
static int vmm_snap_adopt(vmm_vm_t *vm, struct vmm_region *live, struct vmm_snap_region *r) {
  bool cow = vm->ops->caps & VMM__CAP_RAM_COW;
  int fd = fcntl(live->memfd, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return vmm__from_errno(errno);
  uint8_t *map = mmap(NULL, live->size, PROT_READ, MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (map == MAP_FAILED) {
    close(fd);
    return vmm__from_errno(errno);
  }
  if (cow && mmap(live->hva, live->size, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE, live->memfd, 0) == MAP_FAILED) {
    VMM_LOG_E("snapshot: cannot remap guest RAM copy-on-write: %s", strerror(errno));
    munmap(map, live->size);
    close(fd);
    return VMM_ENOMEM;
  }
  if (!cow) {
    int rc = vmm__region_layer_in_place(vm, live);
    if (rc) {
      munmap(map, live->size);
      close(fd);
      return rc;
    }
  } else {
    if (!(vm->flags & VMM_VM_NO_HUGEPAGES)) madvise(live->hva, live->size, MADV_HUGEPAGE);
    live->cow = true;
  }
  munmap(r->map, r->size);
  close(r->fd);
  r->fd = fd;
  r->map = map;
  /* Stored: whatever holds data in the file (holes are zero pages). */
  for (off_t pos = 0; pos < (off_t)r->size;) {
    off_t data = lseek(fd, pos, SEEK_DATA);
    if (data < 0) break; /* ENXIO: no data after pos */
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0 || hole > (off_t)r->size) hole = (off_t)r->size;
    uint64_t f = (uint64_t)data / PAGE, l = ((uint64_t)hole + PAGE - 1) / PAGE;
    vmm__snap_mark(r, f, l - f);
    pos = hole;
  }
  return 0;
}

bool vmm__snap_same_layout(vmm_vm_t *vm, const struct vmm_snapshot *s) {
  if (s == NULL || s->nregions != vm->nregions) return false;
  for (size_t i = 0; i < vm->nregions; i++)
    if (s->regions[i].gpa != vm->regions[i]->gpa || s->regions[i].size != vm->regions[i]->size)
      return false;
  return true;
}

/* Reads and clears the dirty pages of region i (backend writes, host writes, and what the
 * program's own dirty-log calls took since). */
int vmm__snap_dirty(vmm_vm_t *vm, size_t i, uint64_t **out, bool keep) {
  struct vmm_region *live = vm->regions[i];
  size_t bytes = vmm__snap_bitmap_bytes(live->size / PAGE);
  uint64_t *bm = calloc(1, bytes ? bytes : 8);
  if (bm == NULL) return VMM_ENOMEM;
  pthread_mutex_lock(&vm->lock);
  int rc = vmm__dirty_get(vm, live, bm, keep);
  if (rc == 0 && live->snap_pending) {
    for (size_t w = 0; w < bytes / 8; w++) bm[w] |= live->snap_pending[w];
    memset(live->snap_pending, 0, bytes);
  }
  pthread_mutex_unlock(&vm->lock);
  if (rc) {
    free(bm);
    return rc;
  }
  *out = bm;
  return 0;
}

/* Turns dirty logging on for every region and empties the logs, so that they record what
 * changes from now on; vm->dirty_all says whether that worked (the backend may lack it). */
void vmm__snap_start_logging(vmm_vm_t *vm) {
  vm->dirty_all = true;
  for (size_t i = 0; i < vm->nregions && vm->dirty_all; i++) {
    int rc = vmm_vm_dirty_log_enable(vm, vm->regions[i]->gpa, 1);
    if (rc != 0) {
      VMM_LOG_I("snapshots: dirty logging unavailable on %s (%s): every snapshot and roll back "
                "copies all of RAM", vm->ops->name, vmm_strerror(rc));
      vm->dirty_all = false;
    }
  }
  for (size_t i = 0; vm->dirty_all && i < vm->nregions; i++) {
    uint64_t *bm;
    if (vmm__snap_dirty(vm, i, &bm, false) == 0) free(bm);
  }
}

int vmm_vm_snapshot(vmm_vm_t *vm, vmm_snapshot_t **out) {
  if (out) *out = NULL;
  if (vm == NULL || out == NULL) return VMM_EINVAL;
  if (!vmm__snap_vm_stopped(vm)) return VMM_EBUSY;
  if ((vm->flags & VMM_VM_IRQCHIP) && vm->ops->platform_save == NULL) {
    VMM_LOG_E("snapshot: backend %s cannot capture its interrupt controllers and timer",
              vm->ops->name);
    return VMM_ENOSYS;
  }
  struct vmm_snapshot *s = vmm__snap_alloc();
  if (s == NULL) return VMM_ENOMEM;
  s->backend = vm->backend;
  s->hypercall_page_gpa = vm->hypercall_page_gpa;
  s->exc_stubs_gpa = vm->exc_stubs_gpa;
  int rc = vmm_snap_capture_cpus(vm, s);
  if (rc == 0) rc = vmm_snap_capture_devices(vm, s);
  if (rc == 0) rc = vmm_snap_capture_handlers(vm, s);
  if (rc == 0 && (vm->flags & VMM_VM_IRQCHIP)) s->platform = vm->ops->platform_save(vm, &rc);
  if (rc) goto fail;

  struct vmm_snapshot *base = vm->snap_base;
  bool incremental = base && vm->dirty_all && vmm__snap_same_layout(vm, base);
  s->regions = calloc(vm->nregions ? vm->nregions : 1, sizeof(*s->regions));
  if (s->regions == NULL) {
    rc = VMM_ENOMEM;
    goto fail;
  }
  for (size_t i = 0; i < vm->nregions; i++) {
    struct vmm_region *live = vm->regions[i];
    rc = vmm__snap_region_init(&s->regions[i], live->gpa, live->size, live->flags, !incremental);
    s->nregions++;
    if (rc) goto fail;
    if (incremental) {
      uint64_t *bm;
      rc = vmm__snap_dirty(vm, i, &bm, false);
      if (rc) goto fail;
      /* The log may name pages that hold what the base holds (a roll back left them writable,
       * or the guest wrote the same bytes): the layer stores only pages that differ. */
      for (uint64_t pg = 0; pg < s->regions[i].npages; pg++) {
        if (!bit_get(bm, pg)) continue;
        const uint8_t *cur = live->hva + pg * PAGE, *old = vmm__snap_page(base, i, pg);
        if (old ? memcmp(cur, old, PAGE) == 0 : vmm__snap_page_is_zero(cur)) continue;
        vmm__snap_store_page(&s->regions[i], pg, cur);
      }
      free(bm);
    } else if (!live->cow && !live->layered &&
               ((vm->ops->caps & VMM__CAP_RAM_COW) || vm->ops->region_layered)) {
      rc = vmm_snap_adopt(vm, live, &s->regions[i]);
      /* Not layered (the program holds pointers to most of it, or no memory): a copy. */
      if (rc && !(vm->ops->caps & VMM__CAP_RAM_COW)) rc = vmm_snap_capture_full(live, &s->regions[i]);
      if (rc) goto fail;
    } else {
      rc = vmm_snap_capture_full(live, &s->regions[i]);
      if (rc) goto fail;
    }
  }
  /* Start the log clean: this snapshot holds everything up to now. */
  if (!incremental) vmm__snap_start_logging(vm);
  vmm__snap_finish(s);
  vmm__snap_link(s, base);
  vm->snap_base = vmm_snapshot_retain(s);
  vmm_snapshot_release(base);
  *out = s;
  return 0;

fail:
  /* The logs may have been read already: the next snapshot or roll back copies everything. */
  vm->dirty_all = false;
  vmm_snapshot_release(s);
  return rc;
}
