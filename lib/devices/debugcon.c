/* Debug console on one port (the Bochs/QEMU 0xe9 convention). */
#include <stdlib.h>

#include "../core/internal.h"

struct vmm_debugcon {
  struct vmm_device dev;
  vmm_handler_t *handler;
  uint32_t port;
  vmm_console_fn fn;
  void *user_data;
};

static int vmm_debugcon_io(vmm_vcpu_t *vcpu, uint64_t offset, uint32_t size, int is_write,
                           uint64_t *data, void *user_data) {
  (void)vcpu;
  (void)offset;
  struct vmm_debugcon *d = user_data;
  if (!is_write) {
    *data = VMM_DEBUGCON_PORT;
    return VMM_HANDLED;
  }
  /* A wider write carries several bytes, lowest first, as on the real port. */
  char buf[4];
  for (uint32_t i = 0; i < size && i < sizeof(buf); i++) buf[i] = (char)(*data >> (8 * i));
  if (d->fn) d->fn(buf, size < sizeof(buf) ? size : sizeof(buf), d->user_data);
  return VMM_HANDLED;
}

static void vmm_debugcon_destroy(vmm_device_t *dev) {
  struct vmm_debugcon *d = (struct vmm_debugcon *)dev;
  if (dev->vm) vmm_vm_remove_handler(dev->vm, d->handler);
  free(d);
}

struct vmm_debugcon_config {
  uint32_t port;
  vmm_console_fn fn;
  void *user_data;
};

static void *vmm_debugcon_dup_config(const vmm_device_t *dev) {
  const struct vmm_debugcon *d = (const struct vmm_debugcon *)dev;
  struct vmm_debugcon_config *c = malloc(sizeof(*c));
  if (c) *c = (struct vmm_debugcon_config){d->port, d->fn, d->user_data};
  return c;
}

static int vmm_debugcon_from_config(vmm_vm_t *vm, const void *config, vmm_device_t **out) {
  const struct vmm_debugcon_config *c = config;
  return vmm_debugcon_create(vm, c->port, c->fn, c->user_data, out);
}

/* Stateless: nothing to save. */
static const struct vmm_device_ops vmm_debugcon_ops = {
    .type = "debugcon",
    .version = 1,
    .destroy = vmm_debugcon_destroy,
    .dup_config = vmm_debugcon_dup_config,
    .create_from_config = vmm_debugcon_from_config,
};

int vmm_debugcon_create(vmm_vm_t *vm, uint32_t port, vmm_console_fn fn, void *user_data,
                        vmm_device_t **out) {
  if (out) *out = NULL;
  if (vm == NULL || port > 0xffff) return VMM_EINVAL;
  struct vmm_debugcon *d = calloc(1, sizeof(*d));
  if (d == NULL) return VMM_ENOMEM;
  d->dev.ops = &vmm_debugcon_ops;
  d->fn = fn;
  d->user_data = user_data;
  d->port = port ? port : VMM_DEBUGCON_PORT;
  int rc = vmm_vm_add_pio_handler(vm, d->port, 1, vmm_debugcon_io, d, &d->handler);
  if (rc) {
    free(d);
    return rc;
  }
  vmm__handler_set_device(d->handler, &d->dev);
  vmm__device_attach(vm, &d->dev);
  if (out) *out = &d->dev;
  return 0;
}
