/* Snapshots: restoring one into a VM (roll back, and the last step of a clone). Only the pages
 * written since the VM's base snapshot and those that differ along the tree between the base
 * and the target are copied; everything that can refuse is checked before anything changes. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "snapshot.h"

#define PAGE VMM_PAGE_SIZE

int vmm__snap_check_devices(vmm_vm_t *vm, const struct vmm_snapshot *s, vmm_device_t ***devs,
                                  size_t *n) {
  *n = vmm__vm_devices(vm, devs);
  if (*n != s->ndevices) {
    VMM_LOG_E("restore: the VM has %zu devices, the snapshot %zu", *n, s->ndevices);
    return VMM_EINVAL;
  }
  for (size_t i = 0; i < *n; i++) {
    if (strcmp((*devs)[i]->ops->type, s->devices[i].type) != 0) {
      VMM_LOG_E("restore: device %zu is a %s, the snapshot has a %s", i, (*devs)[i]->ops->type,
                s->devices[i].type);
      return VMM_EINVAL;
    }
    /* A device that had no state (version 0, state null) still restores as it was saved. */
    bool stateless_v0 = s->devices[i].version == 0 && s->devices[i].state == NULL;
    if (s->devices[i].version != (*devs)[i]->ops->version && !stateless_v0) {
      VMM_LOG_E("restore: %s state version %u, this library reads version %u", s->devices[i].type,
                s->devices[i].version, (*devs)[i]->ops->version);
      return VMM_EVERSION;
    }
    /* Refused now, before RAM or a vCPU changes, the VM stays as it was. */
    const struct vmm_device_ops *ops = (*devs)[i]->ops;
    int rc = ops->check && s->devices[i].state ? ops->check((*devs)[i], s->devices[i].state) : 0;
    if (rc) {
      VMM_LOG_E("restore: device %zu (%s) refuses the snapshot's state; nothing was changed", i,
                s->devices[i].type);
      return rc;
    }
  }
  /* The in-kernel devices (VMM_VM_IRQCHIP) go with the VM kind: both or neither. */
  bool has = (vm->flags & VMM_VM_IRQCHIP) != 0;
  if (has != (s->platform != NULL)) {
    VMM_LOG_E("restore: the snapshot %s interrupt controllers and timer (VMM_VM_IRQCHIP), the VM "
              "%s", s->platform ? "has" : "has no", has ? "has" : "has not");
    return VMM_EINVAL;
  }
  if (s->platform && vm->ops->platform_check == NULL) {
    VMM_LOG_E("restore: backend %s cannot load interrupt controller state", vm->ops->name);
    return VMM_ENOSYS;
  }
  return s->platform ? vm->ops->platform_check(vm, s->platform) : 0;
}

/* The lowest common ancestor of a and b, or NULL. */
static const struct vmm_snapshot *vmm_snap_lca(const struct vmm_snapshot *a,
                                               const struct vmm_snapshot *b) {
  while (a && b && a->depth > b->depth) a = a->parent;
  while (a && b && b->depth > a->depth) b = b->parent;
  while (a && b && a != b) {
    a = a->parent;
    b = b->parent;
  }
  return a == b ? a : NULL;
}

/* Marks in `want` the pages that a layer on the path from `from` up to (not including) `stop`
 * stores. Returns false when a full layer lies on that path (then every page may differ). */
static bool vmm_snap_mark_path(const struct vmm_snapshot *from, const struct vmm_snapshot *stop,
                               size_t ri, uint64_t *want, size_t words) {
  for (const struct vmm_snapshot *s = from; s && s != stop; s = s->parent) {
    const struct vmm_snap_region *r = &s->regions[ri];
    if (r->full) return false;
    for (size_t w = 0; w < words; w++) want[w] |= r->present[w];
  }
  return true;
}

static int vmm_snap_write_page(vmm_vm_t *vm, struct vmm_region *live,
                               const struct vmm_snapshot *s, size_t ri, uint64_t pg) {
  const uint8_t *src = vmm__snap_page(s, ri, pg);
  uint8_t *dst = live->hva + pg * PAGE;
  /* A clone's page that already holds the bytes stays shared (reading it costs nothing). */
  if (live->layered && !vmm__region_page_owned(live, pg) &&
      (src ? memcmp(dst, src, PAGE) == 0 : vmm__snap_page_is_zero(dst)))
    return 0;
  if (src) {
    int rc = vmm__region_own(vm, live, pg * PAGE, PAGE);
    if (rc) return rc;
    memcpy(dst, src, PAGE);
  } else if (!vmm__snap_page_is_zero(dst)) { /* Reading a hole allocates nothing. */
    int rc = vmm__region_own(vm, live, pg * PAGE, PAGE);
    if (rc) return rc;
    memset(dst, 0, PAGE);
  }
  return 0;
}

int vmm__pwrite_all(int fd, const uint8_t *p, uint64_t len, uint64_t off) {
  while (len) {
    ssize_t n = pwrite(fd, p, len, (off_t)off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    p += n;
    off += (uint64_t)n;
    len -= (uint64_t)n;
  }
  return 0;
}

/* Every page of a region as of the snapshot, without touching pages that are holes on both
 * sides: a page that must be zero is punched out of the memfd (never read, which would
 * allocate it), and stored pages go in with pwrite in runs. */
static int vmm_snap_restore_full(vmm_vm_t *vm, struct vmm_region *live,
                                 const struct vmm_snapshot *s, size_t ri) {
  uint64_t npages = live->size / PAGE;
  if (live->cow || live->layered) {
    /* A clone's RAM: reading a page reads the shared base, which costs nothing. */
    for (uint64_t pg = 0; pg < npages; pg++) {
      int rc = vmm_snap_write_page(vm, live, s, ri, pg);
      if (rc) return rc;
    }
    return 0;
  }
  off_t pos = 0, end = (off_t)live->size;
  while (pos < end) {
    off_t data = lseek(live->memfd, pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;
      return vmm__from_errno(errno);
    }
    off_t hole = lseek(live->memfd, data, SEEK_HOLE);
    if (hole < 0 || hole > end) hole = end;
    uint64_t first = (uint64_t)data / PAGE, last = ((uint64_t)hole + PAGE - 1) / PAGE;
    for (uint64_t pg = first; pg < last;) {
      uint64_t n = 0;
      while (pg + n < last && vmm__snap_page(s, ri, pg + n) == NULL) n++;
      if (n && fallocate(live->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                         (off_t)(pg * PAGE), (off_t)(n * PAGE)) != 0)
        return vmm__from_errno(errno);
      pg += n ? n : 1;
    }
    pos = hole;
  }
  for (uint64_t pg = 0; pg < npages;) {
    const uint8_t *src = vmm__snap_page(s, ri, pg);
    if (src == NULL) {
      pg++;
      continue;
    }
    uint64_t n = 1;
    while (pg + n < npages && vmm__snap_page(s, ri, pg + n) == src + n * PAGE) n++;
    if (vmm__pwrite_all(live->memfd, src, n * PAGE, pg * PAGE) != 0) return VMM_EIO;
    pg += n;
  }
  return 0;
}

static int vmm_snap_restore_memory(vmm_vm_t *vm, const struct vmm_snapshot *s) {
  const struct vmm_snapshot *base = vm->snap_base;
  const struct vmm_snapshot *lca = base ? vmm_snap_lca(base, s) : NULL;
  bool incremental = base && vm->dirty_all && lca && vmm__snap_same_layout(vm, base);
  for (size_t i = 0; i < vm->nregions; i++) {
    struct vmm_region *live = vm->regions[i];
    uint64_t npages = live->size / PAGE;
    size_t words = vmm__snap_bitmap_bytes(npages) / 8;
    uint64_t *want = NULL;
    bool partial = false;
    if (incremental) {
      int rc = vmm__snap_dirty(vm, i, &want, true);
      if (rc) return rc;
      partial = vmm_snap_mark_path(base, lca, i, want, words) &&
                vmm_snap_mark_path(s, lca, i, want, words);
    }
    if (partial) {
      for (size_t w = 0; w < words; w++) {
        uint64_t bits = want[w];
        while (bits) {
          uint64_t pg = w * 64 + (uint64_t)__builtin_ctzll(bits);
          bits &= bits - 1;
          int rc = vmm_snap_write_page(vm, live, s, i, pg);
          if (rc) {
            free(want);
            return rc;
          }
          if (vm->ops->memory_written) vm->ops->memory_written(vm, live->gpa + pg * PAGE, PAGE);
        }
      }
    } else {
      int rc = vmm_snap_restore_full(vm, live, s, i);
      if (vm->ops->memory_written) vm->ops->memory_written(vm, live->gpa, live->size);
      if (rc) {
        free(want);
        return rc;
      }
    }
    free(want);
  }
  /* The log was read (and so cleared) above; the copies went through the VMM's mapping,
   * which no backend logs. Only a VM that was not logging needs to start now. */
  if (!vm->dirty_all) vmm__snap_start_logging(vm);
  return 0;
}

/* CPU states, devices, the hypercall page of this VM's backend. */
int vmm__snap_apply(vmm_vm_t *vm, const struct vmm_snapshot *s, vmm_device_t **devs,
                          size_t ndevs) {
  int rc;
  vm->exc_stubs_gpa = s->exc_stubs_gpa;
  vm->hypercall_page_gpa = 0;
  if (s->hypercall_page_gpa) {
    rc = vmm__install_hypercall_page(vm, s->hypercall_page_gpa);
    if (rc) return rc;
  }
  for (uint32_t i = 0; i < s->nvcpus; i++) {
    vmm_vcpu_t *v = vm->vcpus[i];
    rc = vm->ops->set_state(v, &s->cpus[i]);
    if (rc) {
      VMM_LOG_E("restore: vCPU %u state refused by %s: %s", i, vm->ops->name, vmm_strerror(rc));
      return rc;
    }
    v->cur.reason = VMM_EXIT_NONE;
    v->returned_reason = VMM_EXIT_NONE;
  }
  for (size_t i = 0; i < ndevs; i++) {
    if (devs[i]->ops->load && s->devices[i].state) {
      rc = devs[i]->ops->load(devs[i], s->devices[i].state);
      if (rc) {
        VMM_LOG_E("restore: %s refused its saved state", s->devices[i].type);
        return rc;
      }
    }
  }
  /* Last: device loads may have moved interrupt lines, which the chips' state then sets. */
  if (s->platform) {
    rc = vm->ops->platform_load(vm, s->platform);
    if (rc) {
      VMM_LOG_E("restore: interrupt controllers and timer refused: %s", vmm_strerror(rc));
      return rc;
    }
  }
  return 0;
}

/* The parts of a restore the backend may refuse, tried before RAM or devices change: the vCPU
 * states and the platform state (platform_try: without what would write guest RAM) are set,
 * and on a refusal the VM's own (read just before, so acceptable to the backend) are put back
 * and the restore fails with nothing changed. Done
 * for states this backend did not produce in this process (a file, another backend) and for
 * platform state (the kernel checks bits a file may set, such as reserved MSR bits); the
 * restore proper sets everything again in its order. */
static int vmm_snap_trial(vmm_vm_t *vm, const struct vmm_snapshot *s) {
  vmm_cpu_state_t *old = calloc(s->nvcpus ? s->nvcpus : 1, sizeof(*old));
  if (old == NULL) return VMM_ENOMEM;
  int rc = 0;
  for (uint32_t i = 0; rc == 0 && i < s->nvcpus; i++) {
    old[i].struct_size = sizeof(old[i]);
    rc = vm->ops->get_state(vm->vcpus[i], &old[i]);
  }
  cJSON *old_platform = NULL;
  if (rc == 0 && s->platform) old_platform = vm->ops->platform_save(vm, &rc);
  if (rc) {
    free(old);
    return rc;
  }
  uint32_t set = 0; /* vCPUs whose state was taken */
  while (rc == 0 && set < s->nvcpus) {
    rc = vm->ops->set_state(vm->vcpus[set], &s->cpus[set]);
    if (rc)
      VMM_LOG_E("restore: vCPU %u state refused by %s: %s", set, vm->ops->name, vmm_strerror(rc));
    else
      set++;
  }
  int (*try_platform)(vmm_vm_t *, const cJSON *) =
      vm->ops->platform_try ? vm->ops->platform_try : vm->ops->platform_load;
  bool platform_tried = false;
  if (rc == 0 && s->platform) {
    platform_tried = true;
    rc = try_platform(vm, s->platform);
    if (rc) VMM_LOG_E("restore: interrupt controllers and timer refused: %s", vmm_strerror(rc));
  }
  if (rc) {
    int back = 0;
    for (uint32_t i = 0; i < set; i++) {
      int r = vm->ops->set_state(vm->vcpus[i], &old[i]);
      if (r && !back) back = r;
    }
    if (platform_tried && old_platform) {
      int r = try_platform(vm, old_platform);
      if (r && !back) back = r;
    }
    if (back)
      VMM_LOG_E("restore: the VM's own state could not be put back either: %s", vmm_strerror(back));
    else
      VMM_LOG_I("restore: refused before RAM or devices changed; the VM is as it was");
  }
  cJSON_Delete(old_platform);
  free(old);
  return rc;
}

int vmm_vm_restore(vmm_vm_t *vm, vmm_snapshot_t *s) {
  if (vm == NULL || s == NULL) return VMM_EINVAL;
  if (!vmm__snap_vm_stopped(vm)) return VMM_EBUSY;
  if (s->nregions != vm->nregions) {
    VMM_LOG_E("restore: the VM has %zu RAM regions, the snapshot %zu", vm->nregions, s->nregions);
    return VMM_EINVAL;
  }
  for (size_t i = 0; i < s->nregions; i++) {
    if (s->regions[i].gpa != vm->regions[i]->gpa || s->regions[i].size != vm->regions[i]->size ||
        s->regions[i].flags != vm->regions[i]->flags) {
      VMM_LOG_E("restore: RAM region %zu differs from the snapshot's", i);
      return VMM_EINVAL;
    }
  }
  uint32_t nvcpus = 0;
  int rc0 = vmm__snap_count_vcpus(vm, &nvcpus);
  if (rc0) return rc0;
  if (nvcpus != s->nvcpus) {
    VMM_LOG_E("restore: the VM has %u vCPUs, the snapshot %u", nvcpus, s->nvcpus);
    return VMM_EINVAL;
  }
  vmm_device_t **devs = NULL;
  size_t ndevs = 0;
  int rc = vmm__snap_check_devices(vm, s, &devs, &ndevs);
  for (uint32_t i = 0; rc == 0 && i < nvcpus; i++) {
    rc = vm->ops->flush_pending(vm->vcpus[i], &vm->vcpus[i]->cur);
    vm->vcpus[i]->cur.reason = VMM_EXIT_NONE;
  }
  if (rc == 0 && (s->platform || s->from_file || s->backend != vm->ops->id))
    rc = vmm_snap_trial(vm, s);
  if (rc == 0) {
    vm->restoring = true;
    rc = vmm_snap_restore_memory(vm, s);
    if (rc == 0) rc = vmm__snap_apply(vm, s, devs, ndevs);
    vm->restoring = false;
    /* Memory may be half restored and the logs consumed: nothing is known to match. */
    if (rc) vm->dirty_all = false;
  }
  free(devs);
  if (rc) return rc;
  vmm_snapshot_t *old = vm->snap_base;
  vm->snap_base = vmm_snapshot_retain(s);
  vmm_snapshot_release(old);
  return 0;
}
