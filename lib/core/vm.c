/* VM objects: creation, the guest memory map, host access to guest memory, dirty logs. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"


static int vmm_vm_pick_backend(vmm_backend_t want, const struct vmm_backend_ops **ops_out) {
  static const vmm_backend_t order[] = {VMM_BACKEND_KVM, VMM_BACKEND_BT, VMM_BACKEND_PV};
  if (want != VMM_BACKEND_AUTO) {
    int rc = vmm_backend_probe(want);
    if (rc != 0) {
      VMM_LOG_I("backend %s unavailable: %s", vmm_backend_name(want), vmm_strerror(rc));
      return rc;
    }
    *ops_out = vmm__backend_ops(want);
    return 0;
  }
  for (size_t i = 0; i < VMM_ARRAY_SIZE(order); i++) {
    const struct vmm_backend_ops *ops = vmm__backend_ops(order[i]);
    if (ops != NULL && ops->probe() == 0) {
      *ops_out = ops;
      return 0;
    }
  }
  VMM_LOG_E("no backend can run on this host");
  return VMM_ENODEV;
}

int vmm_vm_create(const vmm_vm_config_t *config, vmm_vm_t **out) {
  if (out == NULL) return VMM_EINVAL;
  *out = NULL;
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  if (config != NULL) {
    if (config->struct_size < offsetof(vmm_vm_config_t, ram_size) + sizeof(uint64_t))
      return VMM_EINVAL;
    memcpy(&cfg, config,
           config->struct_size < sizeof(cfg) ? config->struct_size : sizeof(cfg));
  }
  if (cfg.backend > VMM_BACKEND_PV) return VMM_EINVAL;
  const struct vmm_backend_ops *ops = NULL;
  int rc = vmm_vm_pick_backend((vmm_backend_t)cfg.backend, &ops);
  if (rc != 0) return rc;
  return vmm__vm_create_with_ops(&cfg, ops, out);
}

int vmm__vm_create_with_ops(const vmm_vm_config_t *cfg, const struct vmm_backend_ops *ops,
                            vmm_vm_t **out) {
  *out = NULL;
  if (cfg->flags & ~(uint32_t)(VMM_VM_NO_HUGEPAGES | VMM_VM_IRQCHIP)) return VMM_EINVAL;
  if ((cfg->flags & VMM_VM_IRQCHIP) && !(ops->caps & VMM__CAP_IRQCHIP)) {
    VMM_LOG_E("backend %s has no interrupt controllers or timer (VMM_VM_IRQCHIP)", ops->name);
    return VMM_ENOSYS;
  }
  if (cfg->max_vcpus > VMM_MAX_VCPUS) return VMM_ERANGE;
  if (cfg->ram_size % VMM_PAGE_SIZE) return VMM_EINVAL;

  vmm_vm_t *vm = calloc(1, sizeof(*vm));
  if (vm == NULL) return VMM_ENOMEM;
  vm->ops = ops;
  vm->backend = ops->id;
  vm->max_vcpus = cfg->max_vcpus ? cfg->max_vcpus : 1;
  vm->flags = cfg->flags;
  pthread_mutex_init(&vm->lock, NULL);
  pthread_rwlock_init(&vm->bus_lock, NULL);

  int rc = ops->vm_init(vm);
  if (rc != 0) goto err_init;
  if (cfg->ram_size) {
    rc = vmm_vm_map_ram(vm, 0, cfg->ram_size, 0, NULL);
    if (rc != 0) goto err_ram;
  }
  *out = vm;
  return 0;

err_ram:
  vmm_vm_destroy(vm);
  return rc;
err_init:
  pthread_rwlock_destroy(&vm->bus_lock);
  pthread_mutex_destroy(&vm->lock);
  free(vm);
  return rc;
}


static void vmm_region_free(struct vmm_region *r) {
  if (r->hva) munmap(r->hva, r->size);
  if (r->memfd >= 0) close(r->memfd);
  if (r->layered) {
    if (r->base_fd >= 0) close(r->base_fd);
    free(r->owned);
    pthread_mutex_destroy(&r->own_lock);
  }
  free(r->host_dirty);
  free(r->snap_pending);
  free(r->exposed);
  free(r->kept);
  free(r);
}

void vmm_vm_destroy(vmm_vm_t *vm) {
  if (vm == NULL) return;
  while (vm->devices) {
    vmm_device_t *d = vm->devices;
    vm->devices = d->next;
    d->next = NULL;
    d->vm = NULL;
    d->ops->destroy(d);
  }
  for (size_t i = 0; i < VMM_MAX_VCPUS; i++) {
    if (vm->vcpus[i]) vmm__vcpu_free(vm->vcpus[i]);
    vm->vcpus[i] = NULL;
  }
  for (size_t i = 0; i < vm->nregions; i++) {
    vm->ops->region_remove(vm, vm->regions[i]);
    vmm_region_free(vm->regions[i]);
  }
  vm->nregions = 0;
  vm->ops->vm_fini(vm);
  vmm_snapshot_release(vm->snap_base);
  vmm__bus_free(vm);
  pthread_rwlock_destroy(&vm->bus_lock);
  pthread_mutex_destroy(&vm->lock);
  free(vm);
}

vmm_backend_t vmm_vm_backend(const vmm_vm_t *vm) { return vm ? vm->backend : VMM_BACKEND_AUTO; }

/* Regions are kept sorted by address and never overlap, so a lookup is a short scan. */
struct vmm_region *vmm__region_find(const vmm_vm_t *vm, uint64_t gpa, uint64_t len) {
  if (len == 0 || gpa + len < gpa) return NULL;
  for (size_t i = 0; i < vm->nregions; i++) {
    struct vmm_region *r = vm->regions[i];
    if (gpa >= r->gpa && gpa - r->gpa < r->size) {
      return (len <= r->size - (gpa - r->gpa)) ? r : NULL;
    }
  }
  return NULL;
}

void *vmm__gpa_ptr(const vmm_vm_t *vm, uint64_t gpa, uint64_t len) {
  struct vmm_region *r = vmm__region_find(vm, gpa, len);
  return r ? r->hva + (gpa - r->gpa) : NULL;
}

static bool vmm_ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) {
  return a < b + blen && b < a + alen;
}

enum vmm_ram_kind {
  VMM_RAM_NEW,     /* A new memfd shared with the backend. */
  VMM_RAM_COW,     /* A private copy-on-write mapping of base_fd: backends that use r->hva. */
  VMM_RAM_LAYERED, /* base_fd shared read-only plus an own memfd, page by page (clones). */
};

/* The memfd and hva of a new region. */
static int vmm_region_map(struct vmm_region *r, enum vmm_ram_kind kind, int base_fd) {
  r->cow = kind == VMM_RAM_COW;
  if (r->cow) {
    r->memfd = fcntl(base_fd, F_DUPFD_CLOEXEC, 0);
    if (r->memfd < 0) return vmm__from_errno(errno);
  } else {
    r->memfd = memfd_create("libvmm-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (r->memfd < 0) return vmm__from_errno(errno);
    if (ftruncate(r->memfd, (off_t)r->size) != 0)
      return errno == EFBIG ? VMM_ERANGE : vmm__from_errno(errno);
    /* Fixing the size keeps anyone holding the fd from shrinking it under a mapping. */
    fcntl(r->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
  }
  int fd = r->memfd, prot = PROT_READ | PROT_WRITE, share = r->cow ? MAP_PRIVATE : MAP_SHARED;
  if (kind == VMM_RAM_LAYERED) {
    r->layered = true;
    r->base_fd = -1;
    r->owned = calloc((r->size / VMM_PAGE_SIZE + 63) / 64, sizeof(uint64_t));
    if (r->owned == NULL) return VMM_ENOMEM;
    pthread_mutex_init(&r->own_lock, NULL);
    r->base_fd = fcntl(base_fd, F_DUPFD_CLOEXEC, 0);
    if (r->base_fd < 0) return vmm__from_errno(errno);
    /* Every page starts in the base, which nobody may write. */
    fd = r->base_fd;
    prot = PROT_READ;
  }
  r->hva = mmap(NULL, r->size, prot, share | MAP_NORESERVE, fd, 0);
  if (r->hva == MAP_FAILED) {
    r->hva = NULL;
    return vmm__from_errno(errno);
  }
  return 0;
}

/* Copies the unowned pages among [first, first+n) into memfd and maps them there in hva
 * (own_lock held). Nobody writes a base page, so the copy is the page; only then does hva show
 * the copy (read-write, at the same address) and do the bits say so. */
static int vmm_region_own_runs(struct vmm_region *r, uint64_t first, uint64_t n, bool map) {
  for (uint64_t pg = first; pg < first + n;) {
    if (vmm__region_page_owned(r, pg)) {
      pg++;
      continue;
    }
    uint64_t run = 1;
    while (pg + run < first + n && !vmm__region_page_owned(r, pg + run)) run++;
    uint64_t off = pg * VMM_PAGE_SIZE, len = run * VMM_PAGE_SIZE;
    if (vmm__pwrite_all(r->memfd, r->hva + off, len, off) != 0) return vmm__from_errno(errno);
    if (map) {
      /* Populated at once: the pages are in the page cache (just written), and one call
       * costs less than a fault per page at the next access. */
      if (mmap(r->hva + off, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_POPULATE,
               r->memfd, (off_t)off) == MAP_FAILED)
        return VMM_ENOMEM;
      /* Runs of own pages next to each other merge into one mapping: count separate runs. */
      bool left = pg > 0 && vmm__region_page_owned(r, pg - 1);
      bool right = pg + run < r->size / VMM_PAGE_SIZE && vmm__region_page_owned(r, pg + run);
      if (!left && !right) r->own_maps++;
      else if (left && right && r->own_maps) r->own_maps--;
      for (uint64_t i = pg; i < pg + run; i++)
        __atomic_fetch_or(&r->owned[i / 64], 1ull << (i % 64), __ATOMIC_RELEASE);
    }
    pg += run;
  }
  return 0;
}

int vmm__region_own_now(struct vmm_region *r, uint64_t *first, uint64_t *n) {
  pthread_mutex_lock(&r->own_lock);
  /* Each run of own pages splits hva (and the backend's mappings); Linux allows a process
   * vm.max_map_count mappings in all. Past VMM_OWN_MAX_MAPS runs, or when a mapping fails,
   * the region becomes wholly the VM's own: one mapping, a full copy. */
  int rc = r->own_maps < VMM_OWN_MAX_MAPS ? vmm_region_own_runs(r, *first, *n, true) : VMM_ENOMEM;
  if (rc == VMM_ENOMEM) {
    uint64_t all = r->size / VMM_PAGE_SIZE;
    /* Only the base's data needs copying: its holes are holes of memfd too. */
    rc = 0;
    for (off_t pos = 0; rc == 0 && pos < (off_t)r->size;) {
      off_t data = lseek(r->base_fd, pos, SEEK_DATA);
      if (data < 0) break; /* ENXIO: no data after pos */
      off_t hole = lseek(r->base_fd, data, SEEK_HOLE);
      if (hole < 0 || hole > (off_t)r->size) hole = (off_t)r->size;
      uint64_t f = (uint64_t)data / VMM_PAGE_SIZE, l = ((uint64_t)hole + VMM_PAGE_SIZE - 1) / VMM_PAGE_SIZE;
      rc = vmm_region_own_runs(r, f, l - f, false);
      pos = hole;
    }
    if (rc == 0 && mmap(r->hva, r->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
                        r->memfd, 0) == MAP_FAILED)
      rc = VMM_ENOMEM;
    if (rc == 0) {
      for (uint64_t i = 0; i < all; i++)
        __atomic_fetch_or(&r->owned[i / 64], 1ull << (i % 64), __ATOMIC_RELEASE);
      VMM_LOG_I("a clone's RAM region at %#llx became wholly its own (%llu runs of own pages)",
                (unsigned long long)r->gpa, (unsigned long long)r->own_maps);
      *first = 0;
      *n = all;
    } else {
      VMM_LOG_E("cannot map a clone's own pages: %s", vmm_strerror(rc));
    }
  }
  pthread_mutex_unlock(&r->own_lock);
  return rc;
}

int vmm__region_own(vmm_vm_t *vm, struct vmm_region *r, uint64_t off, uint64_t len) {
  if (!r->layered || len == 0) return 0;
  uint64_t first = off / VMM_PAGE_SIZE, last = (off + len - 1) / VMM_PAGE_SIZE;
  uint64_t pg = first;
  while (pg <= last && vmm__region_page_owned(r, pg)) pg++;
  if (pg > last) return 0;
  uint64_t n = last + 1 - pg;
  return vm->ops->own_pages ? vm->ops->own_pages(vm, r, pg, n) : vmm__region_own_now(r, &pg, &n);
}

/* Maps [first, first + n) of r's hva from fd (the own file, read-write) or from the base
 * (read-only), at the same addresses. */
static int vmm_region_map_run(struct vmm_region *r, uint64_t first, uint64_t n, bool own) {
  uint64_t off = first * VMM_PAGE_SIZE, len = n * VMM_PAGE_SIZE;
  void *p = mmap(r->hva + off, len, own ? PROT_READ | PROT_WRITE : PROT_READ,
                 MAP_SHARED | MAP_FIXED | MAP_NORESERVE, own ? r->memfd : r->base_fd, (off_t)off);
  return p == MAP_FAILED ? VMM_ENOMEM : 0;
}

int vmm__region_layer_in_place(vmm_vm_t *vm, struct vmm_region *r) {
  if (r->layered || r->cow || r->exposed_all || vm->ops->region_layered == NULL) return VMM_ENOSYS;
  uint64_t npages = r->size / VMM_PAGE_SIZE, words = (npages + 63) / 64;
  const uint64_t *ex = r->exposed;
  uint64_t runs = 0, pages = 0;
  for (uint64_t pg = 0; ex && pg < npages; pg++) {
    if (!((ex[pg / 64] >> (pg % 64)) & 1)) continue;
    pages++;
    if (pg == 0 || !((ex[(pg - 1) / 64] >> ((pg - 1) % 64)) & 1)) runs++;
  }
  /* Mostly pointers: a copy of the whole region is as cheap and keeps hva one mapping. */
  if (pages > npages / 2 || runs > VMM_OWN_MAX_MAPS / 2) return VMM_ENOSYS;
  int fd = memfd_create("libvmm-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return vmm__from_errno(errno);
  uint64_t *owned = calloc(words ? words : 1, sizeof(uint64_t));
  int rc = owned == NULL ? VMM_ENOMEM : 0;
  if (rc == 0 && ftruncate(fd, (off_t)r->size) != 0) rc = vmm__from_errno(errno);
  if (rc == 0) fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW);
  /* The program's pages go into the new file first, while hva still shows the old one. */
  for (uint64_t pg = 0; rc == 0 && ex && pg < npages; pg++) {
    if (!((ex[pg / 64] >> (pg % 64)) & 1)) continue;
    if (vmm__pwrite_all(fd, r->hva + pg * VMM_PAGE_SIZE, VMM_PAGE_SIZE, pg * VMM_PAGE_SIZE) != 0)
      rc = vmm__from_errno(errno);
    owned[pg / 64] |= 1ull << (pg % 64);
  }
  if (rc) {
    free(owned);
    close(fd);
    return rc;
  }
  r->base_fd = r->memfd;
  r->memfd = fd;
  /* hva, run by run: the program's pages from the new file, the rest read-only from the base
   * (which holds the same bytes). */
  for (uint64_t pg = 0; rc == 0 && pg < npages;) {
    bool own = (owned[pg / 64] >> (pg % 64)) & 1;
    uint64_t n = 1;
    while (pg + n < npages && ((owned[(pg + n) / 64] >> ((pg + n) % 64)) & 1) == own) n++;
    rc = vmm_region_map_run(r, pg, n, own);
    pg += n;
  }
  if (rc) {
    /* Back to the old file whole (one mapping replacing the pieces), as if nothing happened. */
    int back = mmap(r->hva, r->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_NORESERVE,
                    r->base_fd, 0) == MAP_FAILED;
    r->memfd = r->base_fd;
    r->base_fd = -1;
    free(owned);
    close(fd);
    if (back) VMM_LOG_E("snapshot: guest RAM at %#llx could not be mapped back: %s",
                        (unsigned long long)r->gpa, strerror(errno));
    return rc;
  }
  r->owned = owned;
  r->own_maps = runs;
  pthread_mutex_init(&r->own_lock, NULL);
  r->layered = true;
  rc = vm->ops->region_layered(vm, r);
  if (rc) {
    /* The backend dropped its mappings and refused: back to one plain file (nothing was
     * written to either since; the program's pages hold the same bytes in both). */
    if (mmap(r->hva, r->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_NORESERVE,
             r->base_fd, 0) == MAP_FAILED) {
      VMM_LOG_E("snapshot: guest RAM at %#llx could not be mapped back: %s",
                (unsigned long long)r->gpa, strerror(errno));
      return rc; /* Left layered, which the backend refused: its next run reports why. */
    }
    r->layered = false;
    close(r->memfd);
    r->memfd = r->base_fd;
    r->base_fd = -1;
    free(r->owned);
    r->owned = NULL;
    r->own_maps = 0;
    pthread_mutex_destroy(&r->own_lock);
    return rc;
  }
  free(r->exposed);
  r->exposed = NULL;
  return 0;
}

void *vmm__gpa_wptr(vmm_vm_t *vm, uint64_t gpa, uint64_t len) {
  struct vmm_region *r = vmm__region_find(vm, gpa, len);
  if (r == NULL || vmm__region_own(vm, r, gpa - r->gpa, len) != 0) return NULL;
  return r->hva + (gpa - r->gpa);
}

static int vmm_vm_map_region(vmm_vm_t *vm, uint64_t gpa, uint64_t size, uint32_t flags,
                             enum vmm_ram_kind kind, int base_fd, void **hva) {
  if (hva) *hva = NULL;
  if (vm == NULL || size == 0 || gpa % VMM_PAGE_SIZE || size % VMM_PAGE_SIZE) return VMM_EINVAL;
  if (flags & ~(uint32_t)VMM_MEM_READONLY) return VMM_EINVAL;
  if (gpa + size < gpa || gpa + size > (1ull << 52)) return VMM_ERANGE;
  if (atomic_load(&vm->running)) return VMM_EBUSY;

  pthread_mutex_lock(&vm->lock);
  int rc = 0;
  if (vm->nregions == VMM_MAX_REGIONS) {
    rc = VMM_ELIMIT;
    goto out_unlock;
  }
  for (size_t i = 0; i < vm->nregions; i++) {
    if (vmm_ranges_overlap(gpa, size, vm->regions[i]->gpa, vm->regions[i]->size)) {
      rc = VMM_EEXIST;
      goto out_unlock;
    }
  }
  if (vmm__bus_has_mmio(vm, gpa, size)) {
    rc = VMM_EEXIST;
    goto out_unlock;
  }

  struct vmm_region *r = calloc(1, sizeof(*r));
  if (r == NULL) {
    rc = VMM_ENOMEM;
    goto out_unlock;
  }
  r->gpa = gpa;
  r->size = size;
  r->flags = flags;
  r->slot = vm->next_slot++;
  r->memfd = -1;
  rc = vmm_region_map(r, kind, base_fd);
  if (rc) goto err_region;
  if (!(vm->flags & VMM_VM_NO_HUGEPAGES) && !r->layered) madvise(r->hva, size, MADV_HUGEPAGE);

  rc = vm->ops->region_add(vm, r);
  if (rc != 0) goto err_region;

  size_t pos = 0;
  while (pos < vm->nregions && vm->regions[pos]->gpa < gpa) pos++;
  memmove(&vm->regions[pos + 1], &vm->regions[pos],
          (vm->nregions - pos) * sizeof(vm->regions[0]));
  vm->regions[pos] = r;
  vm->nregions++;
  vm->dirty_all = false;
  if (hva) *hva = r->hva;
  r->exposed_all = hva != NULL;
  pthread_mutex_unlock(&vm->lock);
  return 0;

err_region:
  vmm_region_free(r);
out_unlock:
  pthread_mutex_unlock(&vm->lock);
  return rc;
}

int vmm_vm_map_ram(vmm_vm_t *vm, uint64_t gpa, uint64_t size, uint32_t flags, void **hva) {
  return vmm_vm_map_region(vm, gpa, size, flags, VMM_RAM_NEW, -1, hva);
}

int vmm__vm_map_ram_cow(vmm_vm_t *vm, uint64_t gpa, uint64_t size, uint32_t flags, int base_fd) {
  if (base_fd < 0) return VMM_EINVAL;
  return vmm_vm_map_region(vm, gpa, size, flags, VMM_RAM_COW, base_fd, NULL);
}

int vmm__vm_map_ram_layered(vmm_vm_t *vm, uint64_t gpa, uint64_t size, uint32_t flags,
                            int base_fd) {
  if (base_fd < 0) return VMM_EINVAL;
  return vmm_vm_map_region(vm, gpa, size, flags, VMM_RAM_LAYERED, base_fd, NULL);
}

int vmm_vm_unmap_ram(vmm_vm_t *vm, uint64_t gpa) {
  if (vm == NULL) return VMM_EINVAL;
  if (atomic_load(&vm->running)) return VMM_EBUSY;
  pthread_mutex_lock(&vm->lock);
  for (size_t i = 0; i < vm->nregions; i++) {
    struct vmm_region *r = vm->regions[i];
    if (r->gpa != gpa) continue;
    vm->ops->region_remove(vm, r);
    memmove(&vm->regions[i], &vm->regions[i + 1],
            (vm->nregions - i - 1) * sizeof(vm->regions[0]));
    vm->nregions--;
    vm->dirty_all = false;
    pthread_mutex_unlock(&vm->lock);
    vmm_region_free(r);
    return 0;
  }
  pthread_mutex_unlock(&vm->lock);
  return VMM_ENOENT;
}

int vmm_vm_ram_regions(const vmm_vm_t *vm, vmm_ram_region_t *out, size_t cap, size_t *count) {
  if (vm == NULL || count == NULL || (out == NULL && cap)) return VMM_EINVAL;
  for (size_t i = 0; i < vm->nregions && i < cap; i++) {
    out[i].gpa = vm->regions[i]->gpa;
    out[i].size = vm->regions[i]->size;
    out[i].flags = vm->regions[i]->flags;
    out[i].reserved = 0;
  }
  *count = vm->nregions;
  return 0;
}

void vmm__host_wrote(vmm_vm_t *vm, uint64_t gpa, uint64_t len) {
  while (len) {
    struct vmm_region *r = vmm__region_find(vm, gpa, 1);
    if (r == NULL) return;
    uint64_t off = gpa - r->gpa;
    uint64_t n = r->size - off < len ? r->size - off : len;
    if (vm->ops->memory_written) vm->ops->memory_written(vm, gpa, n);
    if (r->dirty_log && r->host_dirty) {
      for (uint64_t pg = off / VMM_PAGE_SIZE; pg <= (off + n - 1) / VMM_PAGE_SIZE; pg++)
        __atomic_fetch_or(&r->host_dirty[pg / 64], 1ull << (pg % 64), __ATOMIC_RELAXED);
    }
    gpa += n;
    len -= n;
  }
}

/* Walks [gpa, gpa+len) region by region; every byte must be RAM. */
static int vmm_vm_access(vmm_vm_t *vm, uint64_t gpa, void *buf, size_t len, bool write) {
  if (vm == NULL || (buf == NULL && len)) return VMM_EINVAL;
  if (gpa + len < gpa) return VMM_EFAULT;
  uint8_t *p = buf;
  while (len) {
    struct vmm_region *r = vmm__region_find(vm, gpa, 1);
    if (r == NULL) return VMM_EFAULT;
    uint64_t off = gpa - r->gpa;
    size_t n = r->size - off < len ? (size_t)(r->size - off) : len;
    if (write) {
      int rc = vmm__region_own(vm, r, off, n);
      if (rc) return rc;
      memcpy(r->hva + off, p, n);
      vmm__host_wrote(vm, gpa, n);
    } else {
      memcpy(p, r->hva + off, n);
    }
    p += n;
    gpa += n;
    len -= n;
  }
  return 0;
}

int vmm_vm_read(const vmm_vm_t *vm, uint64_t gpa, void *buf, size_t len) {
  return vmm_vm_access((vmm_vm_t *)vm, gpa, buf, len, false);
}

int vmm_vm_write(vmm_vm_t *vm, uint64_t gpa, const void *buf, size_t len) {
  return vmm_vm_access(vm, gpa, (void *)buf, len, true);
}

int vmm_vm_gpa_to_hva(vmm_vm_t *vm, uint64_t gpa, size_t len, void **hva) {
  if (vm == NULL || hva == NULL) return VMM_EINVAL;
  /* The caller may write through the pointer: a clone's pages become its own first. */
  struct vmm_region *r = vmm__region_find(vm, gpa, len ? len : 1);
  *hva = NULL;
  if (r == NULL) return VMM_EFAULT;
  int rc = vmm__region_own(vm, r, gpa - r->gpa, len ? len : 1);
  if (rc) return rc;
  if (!r->layered && !r->cow && !r->exposed_all) {
    /* Remembered, so that these pages stay writable if a snapshot layers the region. */
    uint64_t words = (r->size / VMM_PAGE_SIZE + 63) / 64;
    pthread_mutex_lock(&vm->lock);
    if (r->exposed == NULL) r->exposed = calloc(words, sizeof(uint64_t));
    if (r->exposed == NULL) r->exposed_all = true;
    uint64_t off = gpa - r->gpa, last = (off + (len ? len : 1) - 1) / VMM_PAGE_SIZE;
    for (uint64_t pg = off / VMM_PAGE_SIZE; r->exposed && pg <= last; pg++)
      r->exposed[pg / 64] |= 1ull << (pg % 64);
    pthread_mutex_unlock(&vm->lock);
  }
  *hva = r->hva + (gpa - r->gpa);
  return 0;
}

static struct vmm_region *vmm_region_at(vmm_vm_t *vm, uint64_t gpa) {
  for (size_t i = 0; i < vm->nregions; i++)
    if (vm->regions[i]->gpa == gpa) return vm->regions[i];
  return NULL;
}

static size_t vmm_bitmap_bytes(uint64_t size) {
  return (size_t)((size / VMM_PAGE_SIZE + 63) / 64 * 8);
}

int vmm_vm_dirty_log_enable(vmm_vm_t *vm, uint64_t gpa, int enable) {
  if (vm == NULL) return VMM_EINVAL;
  pthread_mutex_lock(&vm->lock);
  int rc = 0;
  struct vmm_region *r = vmm_region_at(vm, gpa);
  if (r == NULL) {
    rc = VMM_ENOENT;
    goto out;
  }
  if (!!enable == r->dirty_log) goto out;
  if (vm->ops->dirty_log_enable == NULL) {
    rc = VMM_ENOSYS;
    goto out;
  }
  if (enable && r->host_dirty == NULL) {
    r->host_dirty = calloc(1, vmm_bitmap_bytes(r->size));
    if (r->host_dirty == NULL) {
      rc = VMM_ENOMEM;
      goto out;
    }
  }
  rc = vm->ops->dirty_log_enable(vm, r, enable != 0);
  if (rc == 0) r->dirty_log = enable != 0;
  /* Enabling protects every page again: nothing is left writable. */
  if (rc == 0 && r->kept) memset(r->kept, 0, vmm_bitmap_bytes(r->size));
  /* Without the log, snapshots can no longer tell what changed. */
  if (rc == 0 && !enable) vm->dirty_all = false;
out:
  pthread_mutex_unlock(&vm->lock);
  return rc;
}

/* Roll backs may leave the pages they copy writable (dirty_log_get_keep), so that a guest that
 * writes the same pages each round takes no write faults. Those pages are copied again by
 * every roll back until a read protects them. A kept page the guest no longer writes costs a
 * 4 KiB copy per roll back (~0.1 us); protecting it again costs a write fault later if it is
 * written after all (3-50 us on the machines measured, docs/lifecycle.md). So one read in
 * VMM_KEEP_READS protects everything (whatever the number of kept pages, that bounds the waste
 * near the cost of re-learning which pages are written), and so does the read after one that
 * returned more than VMM_KEEP_PAGES pages (a guest that once wrote much and then little). */
#define VMM_KEEP_READS 64
#define VMM_KEEP_PAGES 8192

int vmm__dirty_get(vmm_vm_t *vm, struct vmm_region *r, uint64_t *bitmap, bool keep) {
  if (!r->dirty_log) return VMM_ESTATE;
  size_t need = vmm_bitmap_bytes(r->size);
  memset(bitmap, 0, need);
  keep = keep && vm->ops->dirty_log_get_keep && !r->user_log && r->keep_reads < VMM_KEEP_READS;
  if (keep && r->kept == NULL && (r->kept = calloc(1, need)) == NULL) keep = false;
  /* A protecting read protects what earlier reads left writable too, and reports it. */
  if (!keep && r->kept) memcpy(bitmap, r->kept, need);
  int rc = keep ? vm->ops->dirty_log_get_keep(vm, r, bitmap) : vm->ops->dirty_log_get(vm, r, bitmap);
  if (rc == 0) {
    uint64_t pages = 0;
    for (size_t i = 0; i < need / 8; i++) {
      bitmap[i] |= __atomic_exchange_n(&r->host_dirty[i], 0, __ATOMIC_RELAXED);
      if (keep) bitmap[i] = r->kept[i] |= bitmap[i];
      pages += (uint64_t)__builtin_popcountll(bitmap[i]);
    }
    if (!keep) {
      r->keep_reads = 0;
      if (r->kept) memset(r->kept, 0, need);
    } else {
      r->keep_reads = pages > VMM_KEEP_PAGES ? VMM_KEEP_READS : r->keep_reads + 1;
    }
  }
  return rc;
}

int vmm_vm_dirty_log_get(vmm_vm_t *vm, uint64_t gpa, uint64_t *bitmap, size_t bitmap_bytes) {
  if (vm == NULL || bitmap == NULL) return VMM_EINVAL;
  pthread_mutex_lock(&vm->lock);
  int rc = 0;
  struct vmm_region *r = vmm_region_at(vm, gpa);
  if (r == NULL) {
    rc = VMM_ENOENT;
    goto out;
  }
  size_t need = vmm_bitmap_bytes(r->size);
  if (r->dirty_log && bitmap_bytes < need) {
    rc = VMM_ERANGE;
    goto out;
  }
  r->user_log = true; /* From now on every read is exact (no page left writable). */
  rc = vmm__dirty_get(vm, r, bitmap, false);
  /* Snapshots read the same log: keep what this call takes for them, or roll backs would
   * miss these pages. */
  if (rc == 0 && vm->dirty_all) {
    if (r->snap_pending == NULL) r->snap_pending = calloc(1, need);
    if (r->snap_pending == NULL) {
      vm->dirty_all = false; /* The next snapshot or roll back copies everything. */
    } else {
      for (size_t i = 0; i < need / 8; i++) r->snap_pending[i] |= bitmap[i];
    }
  }
out:
  pthread_mutex_unlock(&vm->lock);
  return rc;
}

int vmm_vm_set_console(vmm_vm_t *vm, vmm_console_fn fn, void *user_data) {
  if (vm == NULL) return VMM_EINVAL;
  pthread_rwlock_wrlock(&vm->bus_lock);
  vm->console_fn = fn;
  vm->console_user_data = user_data;
  pthread_rwlock_unlock(&vm->bus_lock);
  return 0;
}

int vmm_vm_set_irq(vmm_vm_t *vm, uint32_t irq, int level) {
  if (vm == NULL) return VMM_EINVAL;
  if (vm->ops->set_irq == NULL) return VMM_ENOSYS;
  return vm->ops->set_irq(vm, irq, level);
}

void vmm__device_attach(vmm_vm_t *vm, vmm_device_t *dev) {
  pthread_mutex_lock(&vm->lock);
  dev->vm = vm;
  dev->seq = vm->next_device_seq++;
  dev->next = vm->devices;
  vm->devices = dev;
  pthread_mutex_unlock(&vm->lock);
}

void vmm_device_destroy(vmm_device_t *dev) {
  if (dev == NULL) return;
  vmm_vm_t *vm = dev->vm;
  if (vm) {
    pthread_mutex_lock(&vm->lock);
    for (vmm_device_t **pp = &vm->devices; *pp; pp = &(*pp)->next) {
      if (*pp == dev) {
        *pp = dev->next;
        break;
      }
    }
    pthread_mutex_unlock(&vm->lock);
  }
  dev->ops->destroy(dev);
}

const char *vmm_device_type(const vmm_device_t *dev) { return dev ? dev->ops->type : NULL; }

vmm_device_t *vmm_vm_device(vmm_vm_t *vm, size_t index) {
  if (vm == NULL) return NULL;
  pthread_mutex_lock(&vm->lock);
  size_t n = 0;
  for (vmm_device_t *d = vm->devices; d; d = d->next) n++;
  vmm_device_t *found = NULL;
  /* The list is newest first: device `index` sits n - 1 - index links in. */
  if (index < n) {
    found = vm->devices;
    for (size_t k = 0; k < n - 1 - index; k++) found = found->next;
  }
  pthread_mutex_unlock(&vm->lock);
  return found;
}

size_t vmm__vm_devices(vmm_vm_t *vm, vmm_device_t ***out) {
  pthread_mutex_lock(&vm->lock);
  size_t n = 0;
  for (vmm_device_t *d = vm->devices; d; d = d->next) n++;
  vmm_device_t **arr = n ? calloc(n, sizeof(*arr)) : NULL;
  if (arr) {
    /* The list is newest first. */
    size_t i = n;
    for (vmm_device_t *d = vm->devices; d; d = d->next) arr[--i] = d;
  } else {
    n = 0;
  }
  pthread_mutex_unlock(&vm->lock);
  *out = arr;
  return n;
}
