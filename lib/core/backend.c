/* The static list of backends. A backend left out of the build has no table here. */
#include <string.h>

#include "internal.h"

/* Order is the preference of VMM_BACKEND_AUTO. */
static const struct vmm_backend_ops *const vmm_backends[] = {
#ifdef VMM_HAVE_KVM
    &vmm__kvm_ops,
#endif
#ifdef VMM_HAVE_BT
    &vmm__bt_ops,
#endif
#ifdef VMM_HAVE_PV
    &vmm__pv_ops,
#endif
};

const struct vmm_backend_ops *vmm__backend_ops(vmm_backend_t id) {
  for (size_t i = 0; i < VMM_ARRAY_SIZE(vmm_backends); i++)
    if (vmm_backends[i]->id == id) return vmm_backends[i];
  return NULL;
}

int vmm_backend_probe(vmm_backend_t backend) {
  if (backend == VMM_BACKEND_AUTO) {
    for (size_t i = 0; i < VMM_ARRAY_SIZE(vmm_backends); i++)
      if (vmm_backends[i]->probe() == 0) return 0;
    return VMM_ENODEV;
  }
  if (backend < VMM_BACKEND_KVM || backend > VMM_BACKEND_PV) return VMM_EINVAL;
  const struct vmm_backend_ops *ops = vmm__backend_ops(backend);
  if (ops == NULL) return VMM_ENOSYS;
  return ops->probe();
}

int vmm_backend_prepare(vmm_backend_t backend, unsigned count) {
  if (count > VMM__PREPARE_MAX) return VMM_EINVAL;
  if (backend == VMM_BACKEND_AUTO) {
    size_t i = 0;
    while (i < VMM_ARRAY_SIZE(vmm_backends) && vmm_backends[i]->probe() != 0) i++;
    if (i == VMM_ARRAY_SIZE(vmm_backends)) return VMM_ENODEV;
    backend = vmm_backends[i]->id;
  }
  int rc = vmm_backend_probe(backend);
  if (rc != 0) return rc;
  const struct vmm_backend_ops *ops = vmm__backend_ops(backend);
  if (ops->prepare == NULL) return VMM_ENOSYS;
  return ops->prepare(count);
}

static const char *const vmm_backend_names[] = {"auto", "kvm", "bt", "pv"};

const char *vmm_backend_name(vmm_backend_t backend) {
  if ((unsigned)backend >= VMM_ARRAY_SIZE(vmm_backend_names)) return "unknown";
  return vmm_backend_names[backend];
}

int vmm_backend_parse(const char *name, vmm_backend_t *out) {
  if (name == NULL || out == NULL) return VMM_EINVAL;
  for (size_t i = 0; i < VMM_ARRAY_SIZE(vmm_backend_names); i++) {
    if (strcmp(name, vmm_backend_names[i]) == 0) {
      *out = (vmm_backend_t)i;
      return 0;
    }
  }
  return VMM_EINVAL;
}
