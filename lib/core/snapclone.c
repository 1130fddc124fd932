/* Clones: new VMs from snapshots, sharing memory copy-on-write with the nearest full layer:
 * a private mapping where the backend works on the VMM's mapping (kvm), a layered region where
 * the backend maps RAM itself and takes one (bt), else with the stored pages copied in. */
#include <stdlib.h>
#include <string.h>

#include "snapshot.h"

#define PAGE VMM_PAGE_SIZE


/* The nearest full layer of region ri, and whether every layer above it is a diff. */
static const struct vmm_snapshot *vmm_snap_full_layer(const struct vmm_snapshot *s, size_t ri) {
  for (; s; s = s->parent)
    if (s->regions[ri].full) return s;
  return NULL;
}

static int vmm_snap_clone_memory(vmm_vm_t *vm, const struct vmm_snapshot *s) {
  for (size_t i = 0; i < s->nregions; i++) {
    const struct vmm_snap_region *r = &s->regions[i];
    const struct vmm_snapshot *full = vmm_snap_full_layer(s, i);
    int rc = VMM_ENOSYS;
    if (full && (vm->ops->caps & VMM__CAP_RAM_COW))
      rc = vmm__vm_map_ram_cow(vm, r->gpa, r->size, r->flags, full->regions[i].fd);
    else if (full && (vm->ops->caps & VMM__CAP_RAM_LAYERED))
      rc = vmm__vm_map_ram_layered(vm, r->gpa, r->size, r->flags, full->regions[i].fd);
    if (rc == 0) {
      /* Shared with the full layer; only the diff layers above it are copied. */
      struct vmm_region *live = vmm__region_find(vm, r->gpa, r->size);
      for (const struct vmm_snapshot *d = s; d != full; d = d->parent) {
        const struct vmm_snap_region *dr = &d->regions[i];
        for (uint64_t pg = 0; pg < dr->npages; pg++) {
          if (!vmm__snap_has(dr, pg) || vmm__snap_page(s, i, pg) != dr->map + pg * PAGE)
            continue;
          rc = vmm__region_own(vm, live, pg * PAGE, PAGE);
          if (rc) return rc;
          memcpy(live->hva + pg * PAGE, dr->map + pg * PAGE, PAGE);
        }
      }
      continue;
    }
    if (rc != VMM_ENOSYS) return rc;
    /* The backend needs a shared memfd of its own: copy the stored pages into one. Runs of
     * pages go in with one pwrite each, which fills the file without a page fault per page. */
    rc = vmm_vm_map_ram(vm, r->gpa, r->size, r->flags, NULL);
    if (rc) return rc;
    struct vmm_region *live = vmm__region_find(vm, r->gpa, r->size);
    uint64_t run_start = 0, run_len = 0;
    const uint8_t *run_src = NULL;
    for (uint64_t pg = 0; pg <= r->npages; pg++) {
      const uint8_t *src = pg < r->npages ? vmm__snap_page(s, i, pg) : NULL;
      if (run_len && (src == NULL || src != run_src + run_len * PAGE)) {
        if (vmm__pwrite_all(live->memfd, run_src, run_len * PAGE, run_start * PAGE) != 0)
          return VMM_EIO;
        run_len = 0;
      }
      if (src && run_len == 0) {
        run_start = pg;
        run_src = src;
      }
      if (src) run_len++;
    }
  }
  return 0;
}

/* Fills a new, empty VM from a snapshot; on failure the caller destroys the VM. */
static int vmm_snap_clone_into(struct vmm_snapshot *s, vmm_vm_t *vm) {
  int rc = vmm_snap_clone_memory(vm, s);
  for (uint32_t i = 0; rc == 0 && i < s->nvcpus; i++) {
    vmm_vcpu_t *v;
    rc = vmm_vcpu_create(vm, i, &v);
  }
  if (rc == 0) vmm_vm_set_console(vm, s->console_fn, s->console_user_data);
  for (size_t i = 0; rc == 0 && i < s->nhandlers; i++) {
    const struct vmm_snap_handler *h = &s->handlers[i];
    switch (h->kind) {
      case VMM_HANDLER_PIO:
        rc = vmm_vm_add_pio_handler(vm, (uint32_t)h->base, (uint32_t)h->len, h->io_fn,
                                    h->user_data, NULL);
        break;
      case VMM_HANDLER_MMIO:
        rc = vmm_vm_add_mmio_handler(vm, h->base, h->len, h->io_fn, h->user_data, NULL);
        break;
      case VMM_HANDLER_HYPERCALL:
        rc = vmm_vm_add_hypercall_handler(vm, h->base, h->hc_fn, h->user_data, NULL);
        break;
    }
  }
  for (size_t i = 0; rc == 0 && i < s->ndevices; i++) {
    const struct vmm_snap_device *d = &s->devices[i];
    if (d->ops == NULL || d->ops->create_from_config == NULL || d->config == NULL) {
      VMM_LOG_E("clone: device %s cannot be cloned", d->type);
      return VMM_ENOSYS;
    }
    vmm_device_t *dev;
    rc = d->ops->create_from_config(vm, d->config, &dev);
  }
  vmm_device_t **devs = NULL;
  size_t ndevs = 0;
  if (rc == 0) rc = vmm__snap_check_devices(vm, s, &devs, &ndevs);
  if (rc == 0) rc = vmm__snap_apply(vm, s, devs, ndevs);
  free(devs);
  if (rc) return rc;
  vmm__snap_start_logging(vm);
  vm->snap_base = vmm_snapshot_retain(s);
  return 0;
}

int vmm__snap_clone_with_ops(vmm_snapshot_t *s, const struct vmm_backend_ops *ops, vmm_vm_t **out) {
  vmm_vm_config_t vc = VMM_VM_CONFIG_INIT;
  vc.max_vcpus = s->nvcpus ? s->nvcpus : 1;
  vc.flags = s->platform ? VMM_VM_IRQCHIP : 0;
  int rc = vmm__vm_create_with_ops(&vc, ops, out);
  if (rc) return rc;
  rc = vmm_snap_clone_into(s, *out);
  if (rc) {
    vmm_vm_destroy(*out);
    *out = NULL;
  }
  return rc;
}

int vmm_snapshot_clone(vmm_snapshot_t *s, const vmm_clone_config_t *config, vmm_vm_t **out) {
  if (out) *out = NULL;
  if (s == NULL || out == NULL) return VMM_EINVAL;
  vmm_clone_config_t cfg = VMM_CLONE_CONFIG_INIT;
  if (config) {
    if (config->struct_size < sizeof(cfg) || config->flags) return VMM_EINVAL;
    cfg = *config;
  } else {
    cfg.backend = vmm_backend_probe(s->backend) == 0 ? s->backend : VMM_BACKEND_AUTO;
  }
  if (s->from_file) {
    VMM_LOG_E("clone: a snapshot loaded from a file has no device configuration; create the VM "
              "and its devices and use vmm_vm_restore()");
    return VMM_ESTATE;
  }
  vmm_vm_config_t vc = VMM_VM_CONFIG_INIT;
  vc.backend = cfg.backend;
  vc.max_vcpus = s->nvcpus ? s->nvcpus : 1;
  vc.flags = s->platform ? VMM_VM_IRQCHIP : 0;
  vmm_vm_t *vm = NULL;
  int rc = vmm_vm_create(&vc, &vm);
  if (rc) return rc;
  rc = vmm_snap_clone_into(s, vm);
  if (rc) {
    vmm_vm_destroy(vm);
    return rc;
  }
  *out = vm;
  return 0;
}
