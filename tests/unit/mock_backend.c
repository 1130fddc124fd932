/* The scripted mock backend (see mock_backend.h). */
#include "mock_backend.h"

#include <stdlib.h>
#include <string.h>

static int mock_probe(void) { return 0; }

static int mock_vm_init(vmm_vm_t *vm) {
  vm->backend_data = calloc(1, sizeof(struct mock_vm));
  return vm->backend_data ? 0 : VMM_ENOMEM;
}

static void mock_vm_fini(vmm_vm_t *vm) { free(vm->backend_data); }

static int mock_region_add(vmm_vm_t *vm, struct vmm_region *r) {
  (void)r;
  struct mock_vm *m = vm->backend_data;
  if (m->fail_region_add) return VMM_ELIMIT;
  m->regions_added++;
  return 0;
}

static void mock_region_remove(vmm_vm_t *vm, struct vmm_region *r) {
  (void)r;
  ((struct mock_vm *)vm->backend_data)->regions_removed++;
}

static int mock_dirty_enable(vmm_vm_t *vm, struct vmm_region *r, bool enable) {
  (void)vm, (void)r, (void)enable;
  return 0;
}

static int mock_dirty_get(vmm_vm_t *vm, struct vmm_region *r, uint64_t *bitmap) {
  struct mock_vm *m = vm->backend_data;
  size_t words = (size_t)((r->size / 4096 + 63) / 64);
  for (size_t i = 0; i < words && i < 64; i++) {
    bitmap[i] |= m->dirty[i];
    m->dirty[i] = 0;
  }
  return 0;
}

static int mock_vcpu_init(vmm_vcpu_t *vcpu) {
  struct mock_vcpu *m = calloc(1, sizeof(*m));
  if (m == NULL) return VMM_ENOMEM;
  m->state.struct_size = sizeof(m->state);
  m->state.regs.rflags = 2;
  m->state.regs.rip = 0xfff0;
  vcpu->backend_data = m;
  return 0;
}

static void mock_vcpu_fini(vmm_vcpu_t *vcpu) { free(vcpu->backend_data); }

static int mock_vcpu_run(vmm_vcpu_t *vcpu, vmm_exit_t *exit) {
  struct mock_vcpu *m = vcpu->backend_data;
  if (m->ncompleted < MOCK_MAX_EXITS) m->completed[m->ncompleted++] = *exit;
  m->pending = false;
  if (m->kicked) {
    m->kicked = false;
    memset(exit, 0, sizeof(*exit));
    exit->reason = VMM_EXIT_KICKED;
    return 0;
  }
  if (m->pos < m->nscript) {
    *exit = m->script[m->pos++];
    m->pending = exit->reason == VMM_EXIT_IO || exit->reason == VMM_EXIT_MMIO ||
                 exit->reason == VMM_EXIT_HYPERCALL;
    return 0;
  }
  memset(exit, 0, sizeof(*exit));
  exit->reason = VMM_EXIT_HLT;
  return 0;
}

static int mock_flush(vmm_vcpu_t *vcpu, const vmm_exit_t *exit) {
  (void)exit;
  struct mock_vcpu *m = vcpu->backend_data;
  if (m->pending) m->flushes++;
  m->pending = false;
  return 0;
}

static void mock_kick(vmm_vcpu_t *vcpu) { ((struct mock_vcpu *)vcpu->backend_data)->kicked = true; }

static int mock_get_regs(vmm_vcpu_t *vcpu, vmm_regs_t *regs) {
  *regs = ((struct mock_vcpu *)vcpu->backend_data)->state.regs;
  return 0;
}

static int mock_set_regs(vmm_vcpu_t *vcpu, const vmm_regs_t *regs) {
  struct mock_vcpu *m = vcpu->backend_data;
  m->pending = false;
  m->state.regs = *regs;
  return 0;
}

static int mock_get_state(vmm_vcpu_t *vcpu, vmm_cpu_state_t *st) {
  *st = ((struct mock_vcpu *)vcpu->backend_data)->state;
  return 0;
}

static int mock_set_state(vmm_vcpu_t *vcpu, const vmm_cpu_state_t *st) {
  struct mock_vcpu *m = vcpu->backend_data;
  if (m->fail_set_state) return VMM_EINVAL;
  m->pending = false;
  m->state = *st;
  return 0;
}

/* Entry n: "nop; mov $n,%al; int3" so tests can recognize what was written. */
static int mock_fill_hc(vmm_vm_t *vm, uint64_t gpa, uint8_t *page) {
  (void)vm, (void)gpa;
  for (unsigned n = 0; n < VMM_HC_COUNT; n++) {
    uint8_t *e = page + n * VMM_HC_ENTRY_SIZE;
    e[0] = 0x90;
    e[1] = 0xb0;
    e[2] = (uint8_t)n;
    e[3] = 0xcc;
  }
  return 0;
}

static size_t mock_stats(vmm_vcpu_t *vcpu, vmm_stat_t *out, size_t cap) {
  struct mock_vcpu *m = vcpu->backend_data;
  if (cap >= 1) {
    strcpy(out[0].name, "mock.runs");
    out[0].value = m->ncompleted;
  }
  return 1;
}

const struct vmm_backend_ops mock_backend_ops = {
    .id = VMM_BACKEND_BT, /* Pretends to be a software backend. */
    .name = "mock",
    .caps = VMM__CAP_RAM_LAYERED, /* clones get layered RAM, as on bt and pv */
    .probe = mock_probe,
    .vm_init = mock_vm_init,
    .vm_fini = mock_vm_fini,
    .region_add = mock_region_add,
    .region_remove = mock_region_remove,
    .dirty_log_enable = mock_dirty_enable,
    .dirty_log_get = mock_dirty_get,
    .vcpu_init = mock_vcpu_init,
    .vcpu_fini = mock_vcpu_fini,
    .vcpu_run = mock_vcpu_run,
    .flush_pending = mock_flush,
    .vcpu_kick = mock_kick,
    .get_regs = mock_get_regs,
    .set_regs = mock_set_regs,
    .get_state = mock_get_state,
    .set_state = mock_set_state,
    .fill_hypercall_page = mock_fill_hc,
    .vcpu_stats = mock_stats,
};

vmm_vm_t *mock_vm_create(uint64_t ram) {
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.ram_size = ram;
  vmm_vm_t *vm = NULL;
  if (vmm__vm_create_with_ops(&cfg, &mock_backend_ops, &vm) != 0) return NULL;
  return vm;
}

static cJSON *mock_platform_save(vmm_vm_t *vm, int *rc) {
  cJSON *j = cJSON_CreateObject();
  *rc = j && cJSON_AddNumberToObject(j, "value", (double)mock_vm_of(vm)->platform) ? 0 : VMM_ENOMEM;
  if (*rc) {
    cJSON_Delete(j);
    return NULL;
  }
  return j;
}

static int mock_platform_check(vmm_vm_t *vm, const cJSON *j) {
  (void)vm;
  return cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "value")) ? 0 : VMM_ECORRUPT;
}

static int mock_platform_load(vmm_vm_t *vm, const cJSON *j) {
  struct mock_vm *m = mock_vm_of(vm);
  int rc = mock_platform_check(vm, j);
  if (rc) return rc;
  uint64_t v = (uint64_t)cJSON_GetObjectItemCaseSensitive(j, "value")->valuedouble;
  if (m->refuse_platform && v == m->refuse_platform) return VMM_EBACKEND;
  m->platform = v;
  m->platform_loads++;
  return 0;
}

vmm_vm_t *mock_vm_create_irqchip(uint64_t ram) {
  static struct vmm_backend_ops irq_ops;
  irq_ops = mock_backend_ops;
  irq_ops.caps |= VMM__CAP_IRQCHIP;
  irq_ops.platform_save = mock_platform_save;
  irq_ops.platform_check = mock_platform_check;
  irq_ops.platform_load = mock_platform_load;
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.ram_size = ram;
  cfg.flags = VMM_VM_IRQCHIP;
  vmm_vm_t *vm = NULL;
  if (vmm__vm_create_with_ops(&cfg, &irq_ops, &vm) != 0) return NULL;
  return vm;
}

vmm_vm_t *mock_vm_create_cow(uint64_t ram) {
  static struct vmm_backend_ops cow_ops;
  cow_ops = mock_backend_ops;
  cow_ops.caps = VMM__CAP_RAM_COW; /* works on the VMM's mapping, as kvm does */
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.ram_size = ram;
  vmm_vm_t *vm = NULL;
  if (vmm__vm_create_with_ops(&cfg, &cow_ops, &vm) != 0) return NULL;
  return vm;
}

struct mock_vcpu *mock_vcpu_of(vmm_vcpu_t *vcpu) { return vcpu->backend_data; }
struct mock_vm *mock_vm_of(vmm_vm_t *vm) { return vm->backend_data; }

void mock_push_exit(vmm_vcpu_t *vcpu, const vmm_exit_t *exit) {
  struct mock_vcpu *m = vcpu->backend_data;
  if (m->nscript < MOCK_MAX_EXITS) m->script[m->nscript++] = *exit;
}

vmm_exit_t mock_io_exit(uint16_t port, uint8_t size, int is_write, uint64_t data) {
  vmm_exit_t e;
  memset(&e, 0, sizeof(e));
  e.reason = VMM_EXIT_IO;
  e.io.port = port;
  e.io.size = size;
  e.io.is_write = (uint8_t)is_write;
  e.io.count = 1;
  e.io.data = data;
  return e;
}
