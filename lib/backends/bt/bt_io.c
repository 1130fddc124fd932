/* bt backend: port I/O, MMIO and hypercalls, dispatched to the VM's handlers from the
 * backend itself (fast dispatch): exits a handler consumes never leave vcpu_run(). */
#include <string.h>

#include "bt_priv.h"

static void bt_io_internal(struct bt_vcpu *v, const char *what) {
  vmm__exit_internal(&v->out, VMM_ENOSYS, "bt: %s at rip %#llx", what,
                     (unsigned long long)v->ctrl->rip);
  v->have_out = true;
}

/* ---- port I/O, MMIO, hypercalls ---- */

/* The processor reads the TSS with supervisor rights whatever the CPL. */
static int bt_tss_read(void *ctx, uint64_t la, void *buf, size_t len) {
  return vmm__bt_lin_read(ctx, la, buf, len, 0, NULL) == 0 ? 0 : VMM_EFAULT;
}

/* I/O permission at CPL > IOPL: the TSS bitmap. */
static bool bt_io_allowed(struct bt_vcpu *v, uint16_t port, unsigned size) {
  if (bt_cpl(v) <= ((bt_get_rflags(v) >> 12) & 3)) return true;
  struct vmm_emu_mem mem = {.read = bt_tss_read, .ctx = v};
  return vmm__emu_io_bitmap_allows(&mem, v->sys.tr.base, v->sys.tr.limit, port, size);
}

/* Handlers run outside the run lock: one may wait for a thread that waits for every vCPU to
 * leave guest code (a host write making a clone's page its own, a dirty-log read), and this
 * vCPU's window may change meanwhile as while it is stopped. */
static int bt_run_dispatch(struct bt_vcpu *v, vmm_exit_t *exit) {
  bool held = v->in_run_lock;
  if (held) {
    v->in_run_lock = false;
    pthread_rwlock_unlock(&v->bvm->run_lock);
  }
  int rc = vmm__dispatch(v->vcpu, exit);
  if (held) {
    pthread_rwlock_rdlock(&v->bvm->run_lock);
    v->in_run_lock = true;
  }
  if (rc == 1) vmm__bt_fast_exit_count(v, exit->reason);
  return rc;
}

enum bt_emu_result vmm__bt_emu_io(struct bt_vcpu *v, struct bt_exc *e) {
  struct vmm_emu_cpu cpu;
  struct vmm_emu_mem mem = vmm__bt_emu_mem(v);
  vmm__bt_emu_cpu_get(v, &cpu);
  struct vmm_emu_insn *insn = &v->pend_insn;
  struct vmm_emu_access *acc = &v->pend_acc;
  if (vmm__emu_decode(&cpu, &mem, insn) != 0) return BT_EMU_ERROR;
  int rc = vmm__emu_pio_start(&cpu, &mem, insn, acc);
  if (rc != 0) return rc == VMM_EFAULT ? BT_GP0(e) : BT_EMU_ERROR;
  if (!bt_io_allowed(v, (uint16_t)acc->addr, acc->size ? acc->size : 1)) return BT_GP0(e);
  if (acc->size == 0) { /* REP with RCX = 0 */
    vmm__emu_finish(&cpu, &mem, insn, acc, 0);
    vmm__bt_emu_cpu_put(v, &cpu);
    return BT_EMU_JUMP;
  }
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  ex.reason = VMM_EXIT_IO;
  ex.io.port = (uint16_t)acc->addr;
  ex.io.size = acc->size;
  ex.io.is_write = acc->is_write;
  ex.io.count = 1;
  ex.io.data = acc->is_write ? acc->value : (acc->size >= 4 ? 0xffffffffull : (1ull << (acc->size * 8)) - 1);
  v->pending = BT_PEND_IO;
  rc = bt_run_dispatch(v, &ex);
  if (rc < 0) {
    v->pending = BT_PEND_NONE;
    v->run_error = rc;
    return BT_EMU_ERROR;
  }
  if (rc == 1) {
    if (v->pending == BT_PEND_IO) {
      v->pending = BT_PEND_NONE;
      vmm__bt_emu_cpu_get(v, &cpu);
      if (vmm__emu_finish(&cpu, &mem, insn, acc, ex.io.data) != 0) return BT_EMU_ERROR;
      vmm__bt_emu_cpu_put(v, &cpu);
    }
    /* String I/O may stay on the instruction; the caller decides. */
    return insn->kind == VMM_EMU_IN || insn->kind == VMM_EMU_OUT ? BT_EMU_NEXT : BT_EMU_JUMP;
  }
  v->out = ex;
  v->have_out = true;
  v->vcpu->predispatched = true;
  return BT_EMU_OUT;
}

int vmm__bt_do_mmio(struct bt_vcpu *v, uint64_t la, bool *to_caller) {
  *to_caller = false;
  struct vmm_emu_cpu cpu;
  struct vmm_emu_mem mem = vmm__bt_emu_mem(v);
  vmm__bt_emu_cpu_get(v, &cpu);
  struct vmm_emu_insn *insn = &v->pend_insn;
  struct vmm_emu_access *acc = &v->pend_acc;
  if (vmm__emu_decode(&cpu, &mem, insn) != 0 || vmm__emu_mmio_start(&cpu, insn, acc) != 0) {
    bt_io_internal(v, "MMIO access by an instruction the emulator does not handle");
    *to_caller = true;
    return 0;
  }
  /* The address is the one translated code faulted on: 32 bits, like every access bt runs. */
  struct vmm__bt_walk w;
  int wr = vmm__bt_walk(v, la, (acc->is_write ? 1u : 0) | (bt_cpl(v) == 3 ? 2u : 0), true, &w);
  if (wr != 0) {
    bt_io_internal(v, "MMIO access with an unmapped address");
    *to_caller = true;
    return 0;
  }
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  ex.reason = VMM_EXIT_MMIO;
  ex.mmio.gpa = w.pa;
  ex.mmio.size = acc->size;
  ex.mmio.is_write = acc->is_write;
  ex.mmio.data = acc->is_write ? acc->value : (acc->size >= 8 ? ~0ull : (1ull << (acc->size * 8)) - 1);
  v->pending = BT_PEND_MMIO;
  v->stats.mmio++;
  int rc = bt_run_dispatch(v, &ex);
  if (rc < 0) {
    v->pending = BT_PEND_NONE;
    return rc;
  }
  if (rc == 1) {
    if (v->pending == BT_PEND_MMIO) {
      v->pending = BT_PEND_NONE;
      vmm__bt_emu_cpu_get(v, &cpu);
      if (vmm__emu_finish(&cpu, &mem, insn, acc, ex.mmio.data) != 0) return VMM_EFAULT;
      vmm__bt_emu_cpu_put(v, &cpu);
    }
    return 0;
  }
  v->out = ex;
  v->have_out = true;
  v->vcpu->predispatched = true;
  *to_caller = true;
  return 0;
}

enum bt_emu_result vmm__bt_emu_hypercall(struct bt_vcpu *v, const struct bt_desc *d) {
  struct bt_ctrl *c = v->ctrl;
  vmm_exit_t ex;
  ex.reason = VMM_EXIT_HYPERCALL;
  ex.reserved = 0;
  ex.hypercall.nr = c->gpr[0];
  ex.hypercall.args[0] = c->gpr[7];
  ex.hypercall.args[1] = c->gpr[6];
  ex.hypercall.args[2] = c->gpr[2];
  ex.hypercall.args[3] = c->gpr[10];
  ex.hypercall.args[4] = c->gpr[8];
  ex.hypercall.args[5] = c->gpr[9];
  ex.hypercall.result = (uint64_t)(int64_t)VMM_ENOSYS;
  c->rip = d->rip + d->len; /* like the OUT the kvm backend traps: complete but for rax */
  v->pending = BT_PEND_HC;
  int rc = bt_run_dispatch(v, &ex);
  if (rc < 0) {
    v->pending = BT_PEND_NONE;
    v->run_error = rc;
    return BT_EMU_ERROR;
  }
  if (rc == 1) {
    if (v->pending == BT_PEND_HC) c->gpr[0] = ex.hypercall.result;
    v->pending = BT_PEND_NONE;
    return BT_EMU_NEXT;
  }
  v->out = ex;
  v->have_out = true;
  v->vcpu->predispatched = true;
  return BT_EMU_OUT;
}

