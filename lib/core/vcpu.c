/* vCPU objects and the run loop: the backend produces exits, the core dispatches them to
 * handlers, and only what nobody consumed goes back to the caller. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int vmm_vcpu_create(vmm_vm_t *vm, uint32_t index, vmm_vcpu_t **out) {
  if (out) *out = NULL;
  if (vm == NULL || out == NULL) return VMM_EINVAL;
  if (index >= vm->max_vcpus) return VMM_ERANGE;
  vmm_vcpu_t *vcpu = calloc(1, sizeof(*vcpu));
  if (vcpu == NULL) return VMM_ENOMEM;
  vcpu->vm = vm;
  vcpu->index = index;

  pthread_mutex_lock(&vm->lock);
  int rc = 0;
  if (vm->vcpus[index]) {
    rc = VMM_EEXIST;
  } else {
    rc = vm->ops->vcpu_init(vcpu);
    if (rc == 0) vm->vcpus[index] = vcpu;
  }
  pthread_mutex_unlock(&vm->lock);
  if (rc != 0) {
    free(vcpu);
    return rc;
  }
  *out = vcpu;
  return 0;
}

void vmm__vcpu_free(vmm_vcpu_t *vcpu) {
  vcpu->vm->ops->vcpu_fini(vcpu);
  free(vcpu);
}

vmm_vcpu_t *vmm_vm_vcpu(vmm_vm_t *vm, uint32_t index) {
  if (vm == NULL || index >= VMM_MAX_VCPUS) return NULL;
  pthread_mutex_lock(&vm->lock);
  vmm_vcpu_t *v = vm->vcpus[index];
  pthread_mutex_unlock(&vm->lock);
  return v;
}

vmm_vm_t *vmm_vcpu_vm(const vmm_vcpu_t *vcpu) { return vcpu ? vcpu->vm : NULL; }

uint32_t vmm_vcpu_index(const vmm_vcpu_t *vcpu) { return vcpu ? vcpu->index : 0; }

static bool vmm_vcpu_enter(vmm_vcpu_t *vcpu) {
  int expected = 0;
  if (!atomic_compare_exchange_strong(&vcpu->running, &expected, 1)) return false;
  vcpu->run_thread = pthread_self();
  atomic_fetch_add(&vcpu->vm->running, 1);
  return true;
}

static void vmm_vcpu_leave(vmm_vcpu_t *vcpu) {
  atomic_fetch_sub(&vcpu->vm->running, 1);
  atomic_store(&vcpu->running, 0);
}

/* Carries what the caller supplied for the exit it was given last time into the exit the
 * backend will complete. */
static void vmm_take_completion(vmm_vcpu_t *vcpu, const vmm_exit_t *user) {
  vmm_exit_t *cur = &vcpu->cur;
  if (vcpu->returned_reason != cur->reason) return;
  switch (cur->reason) {
    case VMM_EXIT_IO:
      if (!cur->io.is_write && cur->io.count <= 1) cur->io.data = user->io.data;
      break;
    case VMM_EXIT_MMIO:
      if (!cur->mmio.is_write) cur->mmio.data = user->mmio.data;
      break;
    case VMM_EXIT_HYPERCALL: cur->hypercall.result = user->hypercall.result; break;
    default: break;
  }
}

int vmm_vcpu_run(vmm_vcpu_t *vcpu, vmm_exit_t *exit) {
  if (vcpu == NULL || exit == NULL) return VMM_EINVAL;
  if (!vmm_vcpu_enter(vcpu)) return VMM_EBUSY;
  const struct vmm_backend_ops *ops = vcpu->vm->ops;
  vmm_take_completion(vcpu, exit);
  vcpu->exit_requested = false;

  int rc;
  for (;;) {
    rc = ops->vcpu_run(vcpu, &vcpu->cur);
    if (rc != 0) break;
    uint32_t reason = vcpu->cur.reason;
    if (reason < VMM_STAT_NREASONS) vcpu->exit_counts[reason]++;
    rc = vcpu->predispatched ? 0 : vmm__dispatch(vcpu, &vcpu->cur);
    vcpu->predispatched = false;
    if (rc < 0) break;
    if (vcpu->exit_requested) {
      /* Finish the instruction that asked to stop (a hypercall, a port write), so that the
       * state the caller sees is the same on every backend. */
      rc = ops->flush_pending(vcpu, &vcpu->cur);
      if (rc < 0) break;
      vcpu->cur.reason = VMM_EXIT_NONE;
      memset(exit, 0, sizeof(*exit));
      exit->reason = VMM_EXIT_GUEST_EXIT;
      exit->guest_exit.status = vcpu->exit_status;
      vcpu->exit_requested = false;
      vcpu->returned_reason = VMM_EXIT_GUEST_EXIT;
      rc = 0;
      break;
    }
    if (rc == 0) {
      *exit = vcpu->cur;
      vcpu->returned_reason = exit->reason;
      break;
    }
  }
  if (rc == 0) vcpu->exits_to_caller++;
  else vcpu->returned_reason = VMM_EXIT_NONE;
  vmm_vcpu_leave(vcpu);
  return rc;
}

int vmm_vcpu_kick(vmm_vcpu_t *vcpu) {
  if (vcpu == NULL) return VMM_EINVAL;
  vcpu->vm->ops->vcpu_kick(vcpu);
  return 0;
}

void vmm_vcpu_request_exit(vmm_vcpu_t *vcpu, int64_t status) {
  if (vcpu == NULL) return;
  vcpu->exit_requested = true;
  vcpu->exit_status = status;
}

/* State access is refused while another thread runs the vCPU; handlers running inside
 * vmm_vcpu_run() on the vCPU thread itself may read. */
static int vmm_vcpu_check_stopped(vmm_vcpu_t *vcpu) {
  if (vcpu == NULL) return VMM_EINVAL;
  return atomic_load(&vcpu->running) ? VMM_EBUSY : 0;
}

static int vmm_vcpu_check_readable(vmm_vcpu_t *vcpu) {
  if (vcpu == NULL) return VMM_EINVAL;
  if (atomic_load(&vcpu->running) && !pthread_equal(vcpu->run_thread, pthread_self()))
    return VMM_EBUSY;
  return 0;
}

int vmm_vcpu_get_regs(vmm_vcpu_t *vcpu, vmm_regs_t *regs) {
  if (regs == NULL) return VMM_EINVAL;
  int rc = vmm_vcpu_check_readable(vcpu);
  if (rc) return rc;
  return vcpu->vm->ops->get_regs(vcpu, regs);
}

int vmm_vcpu_set_regs(vmm_vcpu_t *vcpu, const vmm_regs_t *regs) {
  if (regs == NULL) return VMM_EINVAL;
  int rc = vmm_vcpu_check_stopped(vcpu);
  if (rc) return rc;
  rc = vcpu->vm->ops->set_regs(vcpu, regs);
  if (rc == 0) vcpu->cur.reason = VMM_EXIT_NONE;
  return rc;
}

/* The first published layout ends after the XSAVE area. */
#define VMM_CPU_STATE_MIN_SIZE (offsetof(vmm_cpu_state_t, xsave) + VMM_XSAVE_SIZE)

int vmm_vcpu_get_state(vmm_vcpu_t *vcpu, vmm_cpu_state_t *state) {
  if (vcpu == NULL || state == NULL || state->struct_size < VMM_CPU_STATE_MIN_SIZE)
    return VMM_EINVAL;
  int rc = vmm_vcpu_check_readable(vcpu);
  if (rc) return rc;
  uint32_t size = state->struct_size;
  vmm_cpu_state_t tmp;
  memset(&tmp, 0, sizeof(tmp));
  tmp.struct_size = sizeof(tmp);
  rc = vcpu->vm->ops->get_state(vcpu, &tmp);
  if (rc) return rc;
  memcpy(state, &tmp, size < sizeof(tmp) ? size : sizeof(tmp));
  state->struct_size = size;
  return 0;
}

int vmm_vcpu_set_state(vmm_vcpu_t *vcpu, const vmm_cpu_state_t *state) {
  if (state == NULL || state->struct_size < VMM_CPU_STATE_MIN_SIZE) return VMM_EINVAL;
  int rc = vmm_vcpu_check_stopped(vcpu);
  if (rc) return rc;
  vmm_cpu_state_t tmp;
  memset(&tmp, 0, sizeof(tmp));
  memcpy(&tmp, state, state->struct_size < sizeof(tmp) ? state->struct_size : sizeof(tmp));
  tmp.struct_size = sizeof(tmp);
  rc = vcpu->vm->ops->set_state(vcpu, &tmp);
  if (rc == 0) vcpu->cur.reason = VMM_EXIT_NONE;
  return rc;
}

int vmm_vcpu_set_single_step(vmm_vcpu_t *vcpu, int enable) {
  int rc = vmm_vcpu_check_stopped(vcpu);
  if (rc) return rc;
  if (vcpu->vm->ops->set_single_step == NULL) return VMM_ENOSYS;
  return vcpu->vm->ops->set_single_step(vcpu, enable != 0);
}

static void vmm_stat_put(vmm_stat_t *out, size_t cap, size_t *n, const char *name,
                         uint64_t value) {
  if (*n < cap) {
    snprintf(out[*n].name, sizeof(out[*n].name), "%s", name);
    out[*n].value = value;
  }
  (*n)++;
}

int vmm_vcpu_stats(vmm_vcpu_t *vcpu, vmm_stat_t *out, size_t cap, size_t *count) {
  if (vcpu == NULL || count == NULL || (out == NULL && cap)) return VMM_EINVAL;
  size_t n = 0;
  char name[48];
  for (uint32_t r = 1; r < VMM_STAT_NREASONS; r++) {
    snprintf(name, sizeof(name), "exits.%s", vmm_exit_reason_name(r));
    vmm_stat_put(out, cap, &n, name, vcpu->exit_counts[r]);
  }
  vmm_stat_put(out, cap, &n, "exits.to_caller", vcpu->exits_to_caller);
  vmm_stat_put(out, cap, &n, "hypercalls", vcpu->hypercalls);
  if (vcpu->vm->ops->vcpu_stats) {
    size_t more = vcpu->vm->ops->vcpu_stats(vcpu, n < cap ? out + n : NULL, n < cap ? cap - n : 0);
    n += more;
  }
  *count = n;
  return 0;
}
