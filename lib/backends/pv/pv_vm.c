/* pv backend: probing, VMs, guest RAM regions and the hypercall page. */
#include <stdlib.h>
#include <string.h>

#include "pv.h"
#include "pv_proto.h"

static int vmm_pv_probe(void) { return vmm__pv_sandbox_probe(); }

static int vmm_pv_vm_init(vmm_vm_t *vm) {
  struct vmm_pv_vm *p = calloc(1, sizeof(*p));
  if (p == NULL) return VMM_ENOMEM;
  p->map_floor = vmm__pv_map_floor();
  pthread_mutex_init(&p->own_lock, NULL);
  vm->backend_data = p;
  /* One stub waiting per vCPU the VM may have, started now if missing: their execs overlap
   * with the caller loading the guest. With enough waiting (a prepared pool) this VM starts
   * none; vCPUs that go are replaced one for one. */
  int want = (int)vm->max_vcpus;
  (void)vmm__pv_pool_refill(want, want);
  return 0;
}

static void vmm_pv_vm_fini(vmm_vm_t *vm) {
  struct vmm_pv_vm *p = vm->backend_data;
  if (p) pthread_mutex_destroy(&p->own_lock);
  free(vm->backend_data);
  vm->backend_data = NULL;
}

/* Sandboxes map RAM once, when they start. After a change of the memory map (no vCPU runs
 * then) each vCPU's sandbox is dropped; the next run starts one with the new map and the
 * cached CPU state. */
static void vmm_pv_drop_sandboxes(vmm_vm_t *vm) {
  for (size_t i = 0; i < VMM_MAX_VCPUS; i++) {
    vmm_vcpu_t *v = vm->vcpus[i];
    if (v && v->backend_data && vmm_pv_vcpu(v)->pid > 0) vmm__pv_child_kill(v);
  }
}

static int vmm_pv_region_add(vmm_vm_t *vm, struct vmm_region *r) {
  /* The backend maps the memfd itself: a private copy-on-write region (kvm's kind of clone
   * RAM) would not be what the VMM sees through r->hva. Layered regions are taken. */
  if (r->cow) return VMM_ENOSYS;
  if (r->gpa + r->size > VMM_PV_RAM_LIMIT) {
    VMM_LOG_E("pv: RAM at [%#llx, %#llx) lies beyond what a sandbox can map (%#llx)",
              (unsigned long long)r->gpa, (unsigned long long)(r->gpa + r->size),
              (unsigned long long)VMM_PV_RAM_LIMIT);
    return VMM_ERANGE;
  }
  /* One map per region in the sandbox's setup message, two for a layered one. */
  size_t maps = r->layered ? 2 : 1;
  for (size_t i = 0; i < vm->nregions; i++) maps += vm->regions[i]->layered ? 2 : 1;
  if (maps > VMM_PV_MAX_MAPS) return VMM_ELIMIT;
  if (r->layered) vmm_pv_vm(vm)->layered = true;
  if (r->gpa < vmm_pv_vm(vm)->map_floor)
    VMM_LOG_D("pv: RAM below %#llx cannot be mapped in the sandbox; accesses there are "
              "emulated", (unsigned long long)vmm_pv_vm(vm)->map_floor);
  vmm_pv_drop_sandboxes(vm);
  return 0;
}

/* A region became layered (a first snapshot took its memfd): the sandboxes map it writable, so
 * they go; the next run starts one that maps the base and the own file. */
static int vmm_pv_region_layered(vmm_vm_t *vm, struct vmm_region *r) {
  vmm_pv_drop_sandboxes(vm);
  size_t maps = 0;
  for (size_t i = 0; i < vm->nregions; i++) maps += vm->regions[i]->layered ? 2 : 1;
  if (maps > VMM_PV_MAX_MAPS) return VMM_ELIMIT;
  (void)r;
  vmm_pv_vm(vm)->layered = true;
  return 0;
}

static void vmm_pv_region_remove(vmm_vm_t *vm, struct vmm_region *r) {
  vmm_pv_drop_sandboxes(vm);
  vmm__pv_region_free(r);
}

/* Entry n (VMM_HC_ENTRY_SIZE bytes), with the offsets pv.h names:
 *    0  mov $n, %eax
 *    5  jmp 8             ; kvm has its OUT here: a pending hypercall shows RIP = entry + 5
 *    7  ret
 *    8  push %rcx         ; syscall overwrites RCX and R11
 *    9  push %r11
 *   11  push %rax         ; slot: the VMM writes the result here
 *   12  syscall           ; stops the sandbox (PTRACE_SYSEMU)
 *   14  pop %rax
 *   15  pop %r11
 *   17  pop %rcx
 *   18  jmp 7
 * Every register but RAX is preserved; the entry uses 24 bytes below RSP. */
static int vmm_pv_fill_hypercall_page(vmm_vm_t *vm, uint64_t gpa, uint8_t *page) {
  (void)vm;
  (void)gpa;
  static const uint8_t tmpl[20] = {0xb8, 0,    0,    0,    0,    0xeb, 0x01, 0xc3, 0x51, 0x41,
                                   0x53, 0x50, 0x0f, 0x05, 0x58, 0x41, 0x5b, 0x59, 0xeb, 0xf3};
  _Static_assert(sizeof(tmpl) <= VMM_HC_ENTRY_SIZE, "entry too long");
  for (uint32_t n = 0; n < VMM_HC_COUNT; n++) {
    uint8_t *e = page + n * VMM_HC_ENTRY_SIZE;
    memcpy(e, tmpl, sizeof(tmpl));
    memcpy(e + 1, &n, 4);
  }
  return 0;
}

const struct vmm_backend_ops vmm__pv_ops = {
    .id = VMM_BACKEND_PV,
    .name = "pv",
    .caps = VMM__CAP_RAM_LAYERED,
    .probe = vmm_pv_probe,
    .vm_init = vmm_pv_vm_init,
    .vm_fini = vmm_pv_vm_fini,
    .region_add = vmm_pv_region_add,
    .region_remove = vmm_pv_region_remove,
    .dirty_log_enable = vmm__pv_dirty_log_enable,
    .dirty_log_get = vmm__pv_dirty_log_get,
    .dirty_log_get_keep = vmm__pv_dirty_log_get_keep,
    .own_pages = vmm__pv_own_pages,
    .region_layered = vmm_pv_region_layered,
    .vcpu_init = vmm__pv_vcpu_init,
    .vcpu_fini = vmm__pv_vcpu_fini,
    .vcpu_run = vmm__pv_vcpu_run,
    .flush_pending = vmm__pv_flush_pending,
    .vcpu_kick = vmm__pv_vcpu_kick,
    .get_regs = vmm__pv_get_regs,
    .set_regs = vmm__pv_set_regs,
    .get_state = vmm__pv_get_state,
    .set_state = vmm__pv_set_state,
    .set_single_step = vmm__pv_set_single_step,
    .fill_hypercall_page = vmm_pv_fill_hypercall_page,
    .set_irq = NULL,
    .vcpu_stats = vmm__pv_vcpu_stats,
    .prepare = vmm__pv_pool_prepare,
};
