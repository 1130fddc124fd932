/* The exit device with QEMU's isa-debug-exit convention. */
#include <stdlib.h>

#include "../core/internal.h"

struct vmm_debug_exit {
  struct vmm_device dev;
  vmm_handler_t *handler;
  uint32_t port;
};

static int vmm_debug_exit_io(vmm_vcpu_t *vcpu, uint64_t offset, uint32_t size, int is_write,
                             uint64_t *data, void *user_data) {
  (void)offset;
  (void)size;
  (void)user_data;
  if (!is_write) return VMM_HANDLED; /* Reads see all-ones, as QEMU's device does. */
  vmm_vcpu_request_exit(vcpu, (int64_t)((*data << 1) | 1));
  return VMM_HANDLED;
}

static void vmm_debug_exit_destroy(vmm_device_t *dev) {
  struct vmm_debug_exit *d = (struct vmm_debug_exit *)dev;
  if (dev->vm) vmm_vm_remove_handler(dev->vm, d->handler);
  free(d);
}

static void *vmm_debug_exit_dup_config(const vmm_device_t *dev) {
  uint32_t *port = malloc(sizeof(*port));
  if (port) *port = ((const struct vmm_debug_exit *)dev)->port;
  return port;
}

static int vmm_debug_exit_from_config(vmm_vm_t *vm, const void *config, vmm_device_t **out) {
  return vmm_debug_exit_create(vm, *(const uint32_t *)config, out);
}

/* Stateless: nothing to save. */
static const struct vmm_device_ops vmm_debug_exit_ops = {
    .type = "debug-exit",
    .version = 1,
    .destroy = vmm_debug_exit_destroy,
    .dup_config = vmm_debug_exit_dup_config,
    .create_from_config = vmm_debug_exit_from_config,
};

int vmm_debug_exit_create(vmm_vm_t *vm, uint32_t port, vmm_device_t **out) {
  if (out) *out = NULL;
  if (vm == NULL || port > 0xffff) return VMM_EINVAL;
  struct vmm_debug_exit *d = calloc(1, sizeof(*d));
  if (d == NULL) return VMM_ENOMEM;
  d->dev.ops = &vmm_debug_exit_ops;
  d->port = port ? port : VMM_DEBUG_EXIT_PORT;
  int rc = vmm_vm_add_pio_handler(vm, d->port, 1, vmm_debug_exit_io, d, &d->handler);
  if (rc) {
    free(d);
    return rc;
  }
  vmm__handler_set_device(d->handler, &d->dev);
  vmm__device_attach(vm, &d->dev);
  if (out) *out = &d->dev;
  return 0;
}
