/* PIO, MMIO and hypercall handler registries. Lookups take the read side of bus_lock so that a
 * handler being removed is never running when vmm_vm_remove_handler() returns. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static struct vmm_handler *vmm_vec_find(const struct vmm_handler_vec *v, uint64_t addr) {
  size_t lo = 0, hi = v->count;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    struct vmm_handler *h = v->items[mid];
    if (addr < h->base) {
      hi = mid;
    } else if (addr - h->base >= h->len) {
      lo = mid + 1;
    } else {
      return h;
    }
  }
  return NULL;
}

static bool vmm_vec_overlaps(const struct vmm_handler_vec *v, uint64_t base, uint64_t len) {
  for (size_t i = 0; i < v->count; i++) {
    const struct vmm_handler *h = v->items[i];
    if (base < h->base + h->len && h->base < base + len) return true;
  }
  return false;
}

static int vmm_vec_insert(struct vmm_handler_vec *v, struct vmm_handler *h) {
  if (v->count == v->cap) {
    size_t cap = v->cap ? v->cap * 2 : 8;
    struct vmm_handler **items = realloc(v->items, cap * sizeof(*items));
    if (items == NULL) return VMM_ENOMEM;
    v->items = items;
    v->cap = cap;
  }
  size_t pos = 0;
  while (pos < v->count && v->items[pos]->base < h->base) pos++;
  memmove(&v->items[pos + 1], &v->items[pos], (v->count - pos) * sizeof(v->items[0]));
  v->items[pos] = h;
  v->count++;
  return 0;
}

static bool vmm_vec_remove(struct vmm_handler_vec *v, struct vmm_handler *h) {
  for (size_t i = 0; i < v->count; i++) {
    if (v->items[i] != h) continue;
    memmove(&v->items[i], &v->items[i + 1], (v->count - i - 1) * sizeof(v->items[0]));
    v->count--;
    return true;
  }
  return false;
}

bool vmm__bus_has_mmio(vmm_vm_t *vm, uint64_t gpa, uint64_t len) {
  pthread_rwlock_rdlock(&vm->bus_lock);
  bool r = vmm_vec_overlaps(&vm->mmio, gpa, len);
  pthread_rwlock_unlock(&vm->bus_lock);
  return r;
}

static int vmm_add_range(vmm_vm_t *vm, enum vmm_handler_kind kind, uint64_t base, uint64_t len,
                         vmm_io_fn fn, void *ud, vmm_handler_t **out) {
  if (out) *out = NULL;
  if (vm == NULL || fn == NULL || len == 0 || base + len < base) return VMM_EINVAL;
  if (kind == VMM_HANDLER_PIO && base + len > 0x10000) return VMM_EINVAL;
  struct vmm_handler *h = calloc(1, sizeof(*h));
  if (h == NULL) return VMM_ENOMEM;
  h->kind = kind;
  h->base = base;
  h->len = len;
  h->io_fn = fn;
  h->user_data = ud;

  int rc = 0;
  /* Lock order: vm->lock (regions) before bus_lock. */
  pthread_mutex_lock(&vm->lock);
  pthread_rwlock_wrlock(&vm->bus_lock);
  struct vmm_handler_vec *v = kind == VMM_HANDLER_PIO ? &vm->pio : &vm->mmio;
  if (vmm_vec_overlaps(v, base, len)) {
    rc = VMM_EEXIST;
  } else if (kind == VMM_HANDLER_MMIO) {
    for (size_t i = 0; i < vm->nregions; i++) {
      struct vmm_region *r = vm->regions[i];
      if (base < r->gpa + r->size && r->gpa < base + len) rc = VMM_EEXIST;
    }
  }
  if (rc == 0) rc = vmm_vec_insert(v, h);
  pthread_rwlock_unlock(&vm->bus_lock);
  pthread_mutex_unlock(&vm->lock);
  if (rc != 0) {
    free(h);
    return rc;
  }
  if (out) *out = h;
  return 0;
}

int vmm_vm_add_pio_handler(vmm_vm_t *vm, uint32_t port, uint32_t len, vmm_io_fn fn,
                           void *user_data, vmm_handler_t **out) {
  return vmm_add_range(vm, VMM_HANDLER_PIO, port, len, fn, user_data, out);
}

int vmm_vm_add_mmio_handler(vmm_vm_t *vm, uint64_t gpa, uint64_t len, vmm_io_fn fn,
                            void *user_data, vmm_handler_t **out) {
  return vmm_add_range(vm, VMM_HANDLER_MMIO, gpa, len, fn, user_data, out);
}

int vmm_vm_add_hypercall_handler(vmm_vm_t *vm, uint64_t nr, vmm_hypercall_fn fn,
                                 void *user_data, vmm_handler_t **out) {
  if (out) *out = NULL;
  if (vm == NULL || fn == NULL || nr >= VMM_HC_COUNT) return VMM_EINVAL;
  struct vmm_handler *h = calloc(1, sizeof(*h));
  if (h == NULL) return VMM_ENOMEM;
  h->kind = VMM_HANDLER_HYPERCALL;
  h->base = nr;
  h->len = 1;
  h->hc_fn = fn;
  h->user_data = user_data;
  int rc = 0;
  pthread_rwlock_wrlock(&vm->bus_lock);
  if (vm->hypercalls[nr])
    rc = VMM_EEXIST;
  else
    vm->hypercalls[nr] = h;
  pthread_rwlock_unlock(&vm->bus_lock);
  if (rc) {
    free(h);
    return rc;
  }
  if (out) *out = h;
  return 0;
}

int vmm_vm_remove_handler(vmm_vm_t *vm, vmm_handler_t *h) {
  if (vm == NULL || h == NULL) return VMM_EINVAL;
  /* Found by identity first: a handle that is not registered is never dereferenced. */
  pthread_rwlock_wrlock(&vm->bus_lock);
  bool found = vmm_vec_remove(&vm->pio, h) || vmm_vec_remove(&vm->mmio, h);
  for (size_t i = 0; !found && i < VMM_HC_COUNT; i++) {
    if (vm->hypercalls[i] == h) {
      vm->hypercalls[i] = NULL;
      found = true;
    }
  }
  pthread_rwlock_unlock(&vm->bus_lock);
  if (!found) return VMM_ENOENT;
  free(h);
  return 0;
}

void vmm__bus_free(vmm_vm_t *vm) {
  for (size_t i = 0; i < vm->pio.count; i++) free(vm->pio.items[i]);
  for (size_t i = 0; i < vm->mmio.count; i++) free(vm->mmio.items[i]);
  for (size_t i = 0; i < VMM_HC_COUNT; i++) free(vm->hypercalls[i]);
  free(vm->pio.items);
  free(vm->mmio.items);
  memset(&vm->pio, 0, sizeof(vm->pio));
  memset(&vm->mmio, 0, sizeof(vm->mmio));
  memset(vm->hypercalls, 0, sizeof(vm->hypercalls));
}

/* ---- dispatch ---- */

static uint64_t vmm_ones(uint32_t size) { return size >= 8 ? ~0ull : (1ull << (size * 8)) - 1; }

static int vmm_call_io(vmm_vcpu_t *vcpu, struct vmm_handler *h, uint64_t addr, uint32_t size,
                       bool is_write, uint64_t *data) {
  uint64_t v = is_write ? (*data & vmm_ones(size)) : vmm_ones(size);
  int rc = h->io_fn(vcpu, addr - h->base, size, is_write, &v, h->user_data);
  if (rc == VMM_HANDLED && !is_write) *data = v & vmm_ones(size);
  return rc;
}

static int vmm_dispatch_pio(vmm_vcpu_t *vcpu, vmm_exit_t *exit) {
  vmm_vm_t *vm = vcpu->vm;
  uint32_t size = exit->io.size;
  if (size != 1 && size != 2 && size != 4) return 0;
  struct vmm_handler *h = vmm_vec_find(&vm->pio, exit->io.port);
  /* An access that runs past the end of the handler's window is not the handler's. */
  if (h == NULL || exit->io.port - h->base + size > h->len) return 0;
  if (exit->io.count <= 1) {
    int rc = vmm_call_io(vcpu, h, exit->io.port, size, exit->io.is_write, &exit->io.data);
    return rc == VMM_HANDLED ? 1 : rc == VMM_UNHANDLED ? 0 : rc;
  }
  /* String I/O: every element goes to the same port. A handler that declines the first
   * element declines the string (the caller gets it whole); one that declines a later element
   * has taken the earlier ones, which must not reach the caller again: the rest of the string
   * goes where an absent device's accesses go (reads see all-ones, writes vanish). */
  uint8_t *p = exit->io.buf;
  for (uint32_t i = 0; i < exit->io.count; i++, p += size) {
    uint64_t v = 0;
    memcpy(&v, p, size);
    int rc = vmm_call_io(vcpu, h, exit->io.port, size, exit->io.is_write, &v);
    if (rc == VMM_UNHANDLED && i > 0) {
      VMM_LOG_D("port %#x: the handler declined element %u of %u of a string; the rest is "
                "dropped (writes) or all-ones (reads)", exit->io.port, i, exit->io.count);
      if (!exit->io.is_write) memset(p, 0xff, (size_t)(exit->io.count - i) * size);
      return 1;
    }
    if (rc != VMM_HANDLED) return rc == VMM_UNHANDLED ? 0 : rc;
    if (!exit->io.is_write) memcpy(p, &v, size);
  }
  return 1;
}

static int vmm_dispatch_mmio(vmm_vcpu_t *vcpu, vmm_exit_t *exit) {
  uint32_t size = exit->mmio.size;
  if (size != 1 && size != 2 && size != 4 && size != 8) return 0;
  struct vmm_handler *h = vmm_vec_find(&vcpu->vm->mmio, exit->mmio.gpa);
  if (h == NULL || exit->mmio.gpa - h->base + size > h->len) return 0;
  int rc = vmm_call_io(vcpu, h, exit->mmio.gpa, size, exit->mmio.is_write, &exit->mmio.data);
  return rc == VMM_HANDLED ? 1 : rc == VMM_UNHANDLED ? 0 : rc;
}

/* Built-in console write: bounded per call so a guest cannot make the VMM copy without end. */
#define VMM_CONSOLE_MAX (1u << 20)

static uint64_t vmm_hc_console_write(vmm_vm_t *vm, uint64_t gpa, uint64_t len) {
  if (len > VMM_CONSOLE_MAX) len = VMM_CONSOLE_MAX;
  if (len == 0) return 0;
  uint64_t done = 0;
  while (done < len) {
    struct vmm_region *r = vmm__region_find(vm, gpa + done, 1);
    if (r == NULL) return done ? done : (uint64_t)(int64_t)VMM_EFAULT;
    uint64_t off = gpa + done - r->gpa;
    uint64_t n = r->size - off < len - done ? r->size - off : len - done;
    if (vm->console_fn) vm->console_fn((const char *)r->hva + off, (size_t)n, vm->console_user_data);
    done += n;
  }
  return done;
}

static int vmm_dispatch_hypercall(vmm_vcpu_t *vcpu, vmm_exit_t *exit) {
  vmm_vm_t *vm = vcpu->vm;
  uint64_t nr = exit->hypercall.nr;
  vcpu->hypercalls++;
  if (nr < VMM_HC_COUNT && vm->hypercalls[nr]) {
    struct vmm_handler *h = vm->hypercalls[nr];
    uint64_t result = exit->hypercall.result;
    int rc = h->hc_fn(vcpu, nr, exit->hypercall.args, &result, h->user_data);
    if (rc == VMM_HANDLED) exit->hypercall.result = result;
    return rc == VMM_HANDLED ? 1 : rc == VMM_UNHANDLED ? 0 : rc;
  }
  switch (nr) {
    case VMM_HC_NOP: exit->hypercall.result = 0; return 1;
    case VMM_HC_EXIT:
      exit->hypercall.result = 0;
      vmm_vcpu_request_exit(vcpu, (int64_t)exit->hypercall.args[0]);
      return 1;
    case VMM_HC_CONSOLE_WRITE:
      exit->hypercall.result =
          vmm_hc_console_write(vm, exit->hypercall.args[0], exit->hypercall.args[1]);
      return 1;
    case VMM_HC_BACKEND: exit->hypercall.result = vm->backend; return 1;
    default: return 0;
  }
}

int vmm__dispatch(vmm_vcpu_t *vcpu, vmm_exit_t *exit) {
  vmm_vm_t *vm = vcpu->vm;
  int rc = 0;
  if (exit->reason == VMM_EXIT_IO && exit->io.port == VMM_EXC_PORT && exit->io.is_write &&
      vm->exc_stubs_gpa) {
    rc = vmm__exception_from_stub(vcpu, exit);
    if (rc != 0) return rc < 0 ? rc : 0;
  }
  pthread_rwlock_rdlock(&vm->bus_lock);
  switch (exit->reason) {
    case VMM_EXIT_IO: rc = vmm_dispatch_pio(vcpu, exit); break;
    case VMM_EXIT_MMIO: rc = vmm_dispatch_mmio(vcpu, exit); break;
    case VMM_EXIT_HYPERCALL: rc = vmm_dispatch_hypercall(vcpu, exit); break;
    default: rc = 0; break;
  }
  pthread_rwlock_unlock(&vm->bus_lock);
  return rc;
}

void vmm__handler_set_device(vmm_handler_t *h, vmm_device_t *dev) {
  if (h) h->device = dev;
}
