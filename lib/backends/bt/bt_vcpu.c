/* bt backend: vCPUs - the dispatcher loop around translated code, fault handling, the
 * completion contract, CPU state in the backend-neutral format, kicks and counters. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <x86intrin.h>

#include "bt_priv.h"

_Static_assert(offsetof(struct bt_ctrl, rflags) == BT_C_RFLAGS, "layout");
_Static_assert(offsetof(struct bt_ctrl, kick) == BT_C_KICK, "layout");
_Static_assert(offsetof(struct bt_ctrl, vec_avx) == BT_C_VEC_AVX, "layout");
_Static_assert(offsetof(struct bt_ctrl, x87_live) == BT_C_X87_LIVE, "layout");
_Static_assert(offsetof(struct bt_ctrl, host_avx) == BT_C_HOST_AVX, "layout");
_Static_assert(offsetof(struct bt_ctrl, spill) == BT_C_SPILL, "layout");
_Static_assert(offsetof(struct bt_ctrl, mxcsr_host) == BT_C_MXCSR_HOST, "layout");
_Static_assert(offsetof(struct bt_ctrl, shadow_sp) == BT_C_SHADOW_SP, "layout");
_Static_assert(offsetof(struct bt_ctrl, save_rsp) == BT_C_SAVE_RSP, "layout");
_Static_assert(offsetof(struct bt_ctrl, vec) == BT_C_VEC, "layout");
_Static_assert(offsetof(struct bt_ctrl, fxsave) == BT_C_FXSAVE, "layout");
_Static_assert(offsetof(struct bt_ctrl, fn_helper) == BT_C_FN_HELPER, "layout");

#define BT_KICK_HARD 1ull
#define BT_KICK_SOFT 2ull

static void bt_reset_state(struct bt_vcpu *v) {
  vmm_cpu_state_t *s = &v->sys;
  memset(s, 0, sizeof(*s));
  s->struct_size = sizeof(*s);
  vmm_segment_t data = {.limit = 0xffff, .type = 3, .present = 1, .s = 1};
  s->cs = (vmm_segment_t){.base = 0xffff0000, .limit = 0xffff, .selector = 0xf000, .type = 0xb,
                          .present = 1, .s = 1};
  s->ds = s->es = s->fs = s->gs = s->ss = data;
  s->tr = (vmm_segment_t){.limit = 0xffff, .type = 0xb, .present = 1};
  s->ldt = (vmm_segment_t){.limit = 0xffff, .type = 2, .present = 1};
  s->gdt.limit = s->idt.limit = 0xffff;
  s->cr0 = 0x60000010;
  s->xcr0 = 1;
  s->pat = 0x0007040600070406ull;
  s->apic_base = 0xfee00900ull;
  s->dr6 = 0xffff0ff0;
  s->dr7 = 0x400;
  memset(v->ctrl->gpr, 0, sizeof(v->ctrl->gpr));
  v->ctrl->gpr[2] = 0x600; /* EDX: processor signature */
  v->ctrl->rip = 0xfff0;
  v->ctrl->rflags = 0;
  v->vflags = 0;
  v->ctrl->mxcsr = 0x1f80;
  memset(v->ctrl->vec, 0, sizeof(v->ctrl->vec));
  memset(v->ctrl->fxsave, 0, sizeof(v->ctrl->fxsave));
  uint16_t fcw = 0x37f;
  uint32_t mx = 0x1f80, mask = 0xffff;
  memcpy(v->ctrl->fxsave, &fcw, 2);
  memcpy(v->ctrl->fxsave + 24, &mx, 4);
  memcpy(v->ctrl->fxsave + 28, &mask, 4);
  v->ctrl->x87_live = 0;
  v->ctrl->vec_avx = 0;
}

int vmm__bt_vcpu_init(vmm_vcpu_t *vcpu) {
  struct bt_vcpu *v = calloc(1, sizeof(*v));
  if (v == NULL) return VMM_ENOMEM;
  v->vcpu = vcpu;
  v->bvm = bt_vm(vcpu->vm);
  v->cache_fd = -1;
  int rc = 0;
  v->reused = vmm__bt_pool_take(v);
  if (!v->reused) {
    rc = vmm__bt_mem_init(v);
    if (rc) goto err_mem;
    rc = vmm__bt_cache_init(v);
    if (rc) goto err_cache;
    vmm__bt_mem_place(v);
  }
  struct bt_ctrl *c = v->ctrl;
  c->self = (uint64_t)(uintptr_t)c;
  c->window = (uint64_t)v->window;
  c->fn_exit_chain = (uint64_t)(uintptr_t)vmm__bt_asm_exit_chain;
  c->fn_exit_indirect = (uint64_t)(uintptr_t)vmm__bt_asm_exit_indirect;
  c->fn_helper = (uint64_t)(uintptr_t)vmm__bt_asm_helper;
  c->owner = v;
  const char *rsb = getenv("LIBVMM_BT_RSB");
  v->use_rsb = rsb && *rsb == '1';
  const char *isl = getenv("LIBVMM_BT_ISLOTS");
  v->indirect_slots = isl && *isl == '1';
  vmm__bt_shadow_reset(v);
  bt_reset_state(v);
  v->mem_gen = atomic_load(&v->bvm->mem_gen);
  v->code_gen = atomic_load(&v->bvm->code_gen);
  vcpu->backend_data = v;
  return 0;

err_cache:
  vmm__bt_mem_fini(v);
err_mem:
  free(v);
  return rc;
}

void vmm__bt_vcpu_fini(vmm_vcpu_t *vcpu) {
  struct bt_vcpu *v = bt_vcpu(vcpu);
  if (v == NULL) return;
  /* Debugging aid: LIBVMM_BT_DUMP=FILE writes the code cache out (objdump -b binary). */
  const char *dump = getenv("LIBVMM_BT_DUMP");
  if (dump && *dump && v->cache_rw) {
    FILE *f = fopen(dump, "wb");
    if (f) {
      fwrite(v->cache_rw, 1, v->cache_used, f);
      fclose(f);
    }
  }
  vmm__bt_thread_forget(v);
  if (!vmm__bt_pool_put(v)) {
    vmm__bt_cache_fini(v);
    vmm__bt_mem_fini(v);
  }
  free(v);
  vcpu->backend_data = NULL;
}

/* ---- completion contract ---- */

int vmm__bt_complete_pending(struct bt_vcpu *v, const vmm_exit_t *exit) {
  enum bt_pending p = v->pending;
  if (p == BT_PEND_NONE) return 0;
  v->pending = BT_PEND_NONE;
  if (p == BT_PEND_HC) {
    if (exit && exit->reason == VMM_EXIT_HYPERCALL) v->ctrl->gpr[0] = exit->hypercall.result;
    return 0;
  }
  uint64_t data = ~0ull;
  if (p == BT_PEND_IO && exit && exit->reason == VMM_EXIT_IO) data = exit->io.data;
  if (p == BT_PEND_MMIO && exit && exit->reason == VMM_EXIT_MMIO) data = exit->mmio.data;
  struct vmm_emu_cpu cpu;
  struct vmm_emu_mem mem = vmm__bt_emu_mem(v);
  vmm__bt_emu_cpu_get(v, &cpu);
  int rc = vmm__emu_finish(&cpu, &mem, &v->pend_insn, &v->pend_acc, data);
  if (rc) return rc;
  vmm__bt_emu_cpu_put(v, &cpu);
  return 0;
}

int vmm__bt_flush_pending(vmm_vcpu_t *vcpu, const vmm_exit_t *exit) {
  return vmm__bt_complete_pending(bt_vcpu(vcpu), exit);
}

/* ---- the dispatcher ---- */

static bool bt_in_long_mode(const struct bt_vcpu *v) {
  const vmm_cpu_state_t *s = &v->sys;
  return (s->efer & VMM_EFER_LMA) && (s->cr0 & VMM_CR0_PG) && (s->cr4 & VMM_CR4_PAE) && s->cs.l &&
         !s->cs.db;
}

static void bt_internal(struct bt_vcpu *v, int code, const char *msg) {
  vmm__exit_internal(&v->out, code, "bt: %s (rip %#llx)", msg,
                     (unsigned long long)v->ctrl->rip);
  v->have_out = true;
}

/* A host fault in translated code, turned into what the guest sees. */
static void bt_handle_fault(struct bt_vcpu *v) {
  struct bt_ctrl *c = v->ctrl;
  if (v->fault.nomap) {
    bt_internal(v, VMM_EBACKEND, "host fault in translated code without a state map");
    return;
  }
  int sig = v->fault.sig, trap = v->fault.trapno;
  bool user = bt_cpl(v) == 3;
  if (sig == SIGFPE) {
    unsigned vec = trap == 16 ? 16 : trap == 19 ? 19 : 0;
    if (trap != 0 && trap != 16 && trap != 19)
      vec = (v->fault.code == FPE_INTDIV || v->fault.code == FPE_INTOVF) ? 0 : 19;
    vmm__bt_raise(v, vec, false, 0, 0);
    return;
  }
  if (sig == SIGILL) {
    vmm__bt_raise(v, 6, false, 0, 0);
    return;
  }
  if (sig != SIGSEGV) {
    bt_internal(v, VMM_EBACKEND, "bus error in translated code");
    return;
  }
  if (trap == 13 || trap == 12 || trap == 17) {
    vmm__bt_raise(v, (unsigned)trap, true, 0, 0);
    return;
  }
  if (trap != 14) {
    bt_internal(v, VMM_EBACKEND, "unexpected host exception in translated code");
    return;
  }
  /* Offset from the window, wrapping: the low window's lower guard is the top of the address
   * space (a string instruction running down past 0). */
  uint64_t la = (uint64_t)(uintptr_t)v->fault.addr - (uint64_t)v->window;
  if (la >= BT_WINDOW_SIZE + BT_GUARD_SIZE && la < (uint64_t)-BT_GUARD_SIZE) {
    VMM_LOG_E("bt: translated code faulted outside its window at %#lx",
              (unsigned long)(uintptr_t)v->fault.addr);
    bt_internal(v, VMM_EBACKEND, "access outside the guest window");
    return;
  }
  bool write = (v->fault.err & 2) != 0;
  if (la >= BT_WINDOW_SIZE) {
    /* Ran off either end of the 4 GiB the window covers. */
    vmm__bt_raise(v, 14, true, (write ? 2u : 0) | (user ? 4u : 0), la);
    return;
  }
  if (v->low && la < BT_LOW_FLOOR) {
    /* The low window cannot hold this page: run on from the GS window (same instruction). */
    vmm__bt_low_window_leave(v);
    return;
  }
  if (c->rip == v->last_fault_rip && la == v->last_fault_la) {
    if (++v->fault_repeat > 16) {
      bt_internal(v, VMM_EBACKEND, "the same fault repeats");
      return;
    }
  } else {
    v->last_fault_rip = c->rip;
    v->last_fault_la = la;
    v->fault_repeat = 0;
  }
  unsigned acc = (write ? 1u : 0) | (user ? 2u : 0);
  uint32_t pf = 0;
  uint64_t pa = 0;
  switch (vmm__bt_map_page(v, la, acc, &pf, &pa)) {
    case BT_MAP_OK: return;
    case BT_MAP_PF: vmm__bt_raise(v, 14, true, pf, la); return;
    case BT_MAP_SMC:
      /* Drop the translations and re-run the writing instruction alone: the rest of its
       * block may be what it overwrites. (This repeats at a page mixing code and data.) */
      v->fault_repeat = 0;
      vmm__bt_invalidate_page(v, pa);
      v->smc_single = true;
      if (vmm__bt_map_page(v, la, acc, &pf, &pa) != BT_MAP_OK) bt_internal(v, VMM_EBACKEND, "cannot map after SMC");
      return;
    case BT_MAP_MMIO:
    case BT_MAP_RO_WRITE: {
      bool to_caller;
      v->fault_repeat = 0;
      int rc = vmm__bt_do_mmio(v, la, &to_caller);
      if (rc < 0) v->run_error = rc;
      return;
    }
    default: bt_internal(v, VMM_EBACKEND, "cannot map guest memory"); return;
  }
}

/* Keeps state in step with what others changed: memory map, code, window policy. */
static void bt_sync(struct bt_vcpu *v) {
  unsigned mg = atomic_load(&v->bvm->mem_gen), cg = atomic_load(&v->bvm->code_gen);
  if (mg != v->mem_gen) {
    v->mem_gen = mg;
    v->window_flush_needed = true;
  }
  if (cg != v->code_gen) {
    v->code_gen = cg;
    v->flush_needed = true;
  }
  if (v->flush_needed) {
    vmm__bt_cache_flush(v);
    v->flush_needed = false;
  }
  if (v->window_flush_needed) {
    vmm__bt_window_flush(v);
    v->window_flush_needed = false;
  }
  v->state_changed = false;
}

static int32_t bt_find_block(struct bt_vcpu *v, uint64_t rip) {
  if (!v->smc_single) {
    int32_t i = vmm__bt_block_lookup(v, rip, bt_mode(v));
    if (i >= 0) return i;
  }
  for (int attempt = 0; attempt < 2; attempt++) {
    uint64_t fla = 0;
    uint32_t pf = 0;
    int32_t i = vmm__bt_translate(v, rip, &fla, &pf);
    if (i >= 0) {
      v->smc_single = false;
      return i;
    }
    if (i == -1) {
      if (pf == 0xffffffffu) vmm__bt_raise(v, 13, true, 0, 0);
      else if (pf == 0xfffffffeu) bt_internal(v, VMM_EFAULT, "code fetch from memory that is not RAM");
      else vmm__bt_raise(v, 14, true, pf, fla);
      return -1;
    }
    vmm__bt_cache_flush(v); /* out of room or memory: start over once */
  }
  bt_internal(v, VMM_ENOMEM, "cannot translate");
  return -1;
}

static int bt_finish_exit(struct bt_vcpu *v, vmm_exit_t *exit) {
  if (v->run_error) {
    int rc = v->run_error;
    v->run_error = 0;
    return rc;
  }
  *exit = v->out;
  v->have_out = false;
  return 0;
}

/* One trip into translated code and back, with what the exit needs. True: return to the
 * caller. */
static bool bt_iteration(struct bt_vcpu *v) {
  struct bt_ctrl *c = v->ctrl;
  vmm_vcpu_t *vcpu = v->vcpu;
  if (__atomic_load_n(&c->kick, __ATOMIC_SEQ_CST) & BT_KICK_HARD) {
    atomic_store(&v->kicked, false);
    __atomic_and_fetch(&c->kick, ~BT_KICK_HARD, __ATOMIC_SEQ_CST);
    memset(&v->out, 0, sizeof(v->out));
    v->out.reason = VMM_EXIT_KICKED;
    v->have_out = true;
    v->stats.kicks++;
    return true;
  }
  __atomic_and_fetch(&c->kick, ~BT_KICK_SOFT, __ATOMIC_SEQ_CST);
  bt_sync(v);
  int32_t bi = bt_find_block(v, c->rip);
  if (bi < 0) return v->have_out; /* else an exception was delivered */
  c->entry_pc = (uint64_t)(uintptr_t)(v->cache_rx + v->blocks[bi].host_off);
  int kind = vmm__bt_asm_enter();
  if (v->single_step && kind != BT_EXIT_KICK && kind != BT_EXIT_FAULT) {
    if (v->have_out || v->run_error) return true;
    memset(&v->out, 0, sizeof(v->out));
    v->out.reason = VMM_EXIT_DEBUG;
    v->out.debug.rip = c->rip;
    v->have_out = true;
    return true;
  }
  switch (kind) {
    case BT_EXIT_CHAIN: {
      uint32_t site = (uint32_t)c->exit_site;
      if (v->flush_needed || v->window_flush_needed) break;
      int32_t ti = vmm__bt_block_lookup(v, c->rip, bt_mode(v));
      if (ti < 0 && !v->smc_single) ti = bt_find_block(v, c->rip);
      if (ti >= 0 && !v->smc_single) vmm__bt_block_link(v, site, ti);
      break;
    }
    case BT_EXIT_INDIRECT: {
      v->stats.indirect_misses++;
      uint32_t site = (uint32_t)c->exit_site;
      if (site == 0 || v->flush_needed || v->window_flush_needed || v->smc_single) break;
      int32_t ti = vmm__bt_block_lookup(v, c->rip, bt_mode(v));
      if (ti < 0) ti = bt_find_block(v, c->rip);
      if (ti >= 0) vmm__bt_ret_cache_fill(v, site - 1, ti);
      break;
    }
    case BT_EXIT_FAULT: bt_handle_fault(v); break;
    case BT_EXIT_KICK: break;
    case BT_EXIT_HELPER:
    default: break;
  }
  if (v->have_out || v->run_error) return true;
  if (vcpu->exit_requested) {
    memset(&v->out, 0, sizeof(v->out));
    vcpu->predispatched = true;
    v->have_out = true;
    return true;
  }
  return false;
}

int vmm__bt_vcpu_run(vmm_vcpu_t *vcpu, vmm_exit_t *exit) {
  struct bt_vcpu *v = bt_vcpu(vcpu);
  struct bt_ctrl *c = v->ctrl;
  int rc = vmm__bt_complete_pending(v, exit);
  if (rc) return rc;
  v->have_out = false;
  if (atomic_load(&v->kicked)) {
    atomic_store(&v->kicked, false);
    __atomic_and_fetch(&c->kick, ~BT_KICK_HARD, __ATOMIC_SEQ_CST);
    memset(exit, 0, sizeof(*exit));
    exit->reason = VMM_EXIT_KICKED;
    v->stats.kicks++;
    return 0;
  }
  if (!bt_in_long_mode(v)) {
    vmm__exit_internal(exit, VMM_ENOSYS, "bt runs 64-bit long mode only");
    return 0;
  }
  sigset_t saved;
  rc = vmm__bt_thread_enter(v, &saved);
  if (rc) return rc;
  c->vec_avx = (v->sys.xcr0 & 4) && v->bvm->host_avx;
  c->host_avx = v->bvm->host_avx;
  for (;;) {
    /* Held while guest code runs or its faults are handled: see bt_with_vcpus_stopped(). */
    pthread_rwlock_rdlock(&v->bvm->run_lock);
    v->in_run_lock = true;
    bool stop = bt_iteration(v);
    v->in_run_lock = false;
    pthread_rwlock_unlock(&v->bvm->run_lock);
    if (stop) break;
  }
  vmm__bt_thread_leave(v, &saved);
  return bt_finish_exit(v, exit);
}

void vmm__bt_vcpu_kick(vmm_vcpu_t *vcpu) {
  struct bt_vcpu *v = bt_vcpu(vcpu);
  atomic_store(&v->kicked, true);
  __atomic_or_fetch(&v->ctrl->kick, BT_KICK_HARD, __ATOMIC_SEQ_CST);
  vmm__bt_kick_signal(v);
}

int vmm__bt_set_single_step(vmm_vcpu_t *vcpu, bool enable) {
  bt_vcpu(vcpu)->single_step = enable;
  return 0;
}

/* ---- state ---- */

int vmm__bt_get_regs(vmm_vcpu_t *vcpu, vmm_regs_t *r) {
  struct bt_vcpu *v = bt_vcpu(vcpu);
  const uint64_t *g = v->ctrl->gpr;
  r->rax = g[0];
  r->rcx = g[1];
  r->rdx = g[2];
  r->rbx = g[3];
  r->rsp = g[4];
  r->rbp = g[5];
  r->rsi = g[6];
  r->rdi = g[7];
  r->r8 = g[8];
  r->r9 = g[9];
  r->r10 = g[10];
  r->r11 = g[11];
  r->r12 = g[12];
  r->r13 = g[13];
  r->r14 = g[14];
  r->r15 = g[15];
  r->rip = v->ctrl->rip;
  r->rflags = bt_get_rflags(v);
  return 0;
}

int vmm__bt_set_regs(vmm_vcpu_t *vcpu, const vmm_regs_t *r) {
  struct bt_vcpu *v = bt_vcpu(vcpu);
  int rc = vmm__bt_complete_pending(v, &vcpu->cur);
  if (rc) return rc;
  uint64_t *g = v->ctrl->gpr;
  g[0] = r->rax;
  g[1] = r->rcx;
  g[2] = r->rdx;
  g[3] = r->rbx;
  g[4] = r->rsp;
  g[5] = r->rbp;
  g[6] = r->rsi;
  g[7] = r->rdi;
  g[8] = r->r8;
  g[9] = r->r9;
  g[10] = r->r10;
  g[11] = r->r11;
  g[12] = r->r12;
  g[13] = r->r13;
  g[14] = r->r14;
  g[15] = r->r15;
  v->ctrl->rip = r->rip;
  bt_set_rflags(v, r->rflags);
  v->state_changed = true;
  return 0;
}

int vmm__bt_get_state(vmm_vcpu_t *vcpu, vmm_cpu_state_t *st) {
  struct bt_vcpu *v = bt_vcpu(vcpu);
  struct bt_ctrl *c = v->ctrl;
  uint32_t size = st->struct_size;
  *st = v->sys;
  st->struct_size = size;
  vmm__bt_get_regs(vcpu, &st->regs);
  st->tsc = __rdtsc() + v->sys.tsc;
  st->halted = 0;
  memset(st->xsave, 0, sizeof(st->xsave));
  uint8_t *x = st->xsave;
  memcpy(x, c->fxsave, 24);
  memcpy(x + 32, c->fxsave + 32, 128);
  memcpy(x + 24, &c->mxcsr, 4);
  uint32_t mask = 0xffff;
  memcpy(x + 28, &mask, 4);
  for (int i = 0; i < 16; i++) memcpy(x + 160 + 16 * i, c->vec[i], 16);
  /* x87 state not saved since the last reset is in its initial configuration. */
  uint64_t bv = c->x87_live ? 3 : 2;
  if (v->sys.xcr0 & 4) {
    bv |= 4;
    for (int i = 0; i < 16; i++) memcpy(x + 576 + 16 * i, c->vec[i] + 16, 16);
  }
  memcpy(x + 512, &bv, 8);
  return 0;
}

/* Whether translations and window mappings made under state a remain valid under b: the same
 * segments, descriptor tables, control registers, EFER, XCR0, MSRs and debug registers
 * (general registers, RFLAGS, CR2, CR8, TSC and the event fields do not matter). */
static bool bt_same_translation_state(const vmm_cpu_state_t *a, const vmm_cpu_state_t *b,
                                      uint64_t b_xcr0) {
  const size_t from = offsetof(vmm_cpu_state_t, cs), to = offsetof(vmm_cpu_state_t, exception);
  vmm_cpu_state_t x, y;
  memcpy((uint8_t *)&x + from, (const uint8_t *)a + from, to - from);
  memcpy((uint8_t *)&y + from, (const uint8_t *)b + from, to - from);
  x.cr2 = y.cr2 = 0;
  x.cr8 = y.cr8 = 0;
  x.tsc = y.tsc = 0;
  y.xcr0 = b_xcr0;
  return memcmp((uint8_t *)&x + from, (uint8_t *)&y + from, to - from) == 0;
}

int vmm__bt_set_state(vmm_vcpu_t *vcpu, const vmm_cpu_state_t *st) {
  struct bt_vcpu *v = bt_vcpu(vcpu);
  struct bt_ctrl *c = v->ctrl;
  bool lm = (st->efer & VMM_EFER_LMA) && (st->cr0 & VMM_CR0_PG) && (st->cr0 & VMM_CR0_PE) &&
            (st->cr4 & VMM_CR4_PAE) && st->cs.l && !st->cs.db;
  if (!lm) {
    VMM_LOG_E("bt: only 64-bit long mode with paging can run on bt");
    return VMM_ENOSYS;
  }
  uint64_t xcr0 = st->xcr0 ? st->xcr0 : 1;
  uint64_t supported = 3 | (v->bvm->host_avx ? 4 : 0);
  if (!(xcr0 & 1) || (xcr0 & ~supported)) {
    VMM_LOG_E("bt: XCR0 %#llx is not supported", (unsigned long long)xcr0);
    return VMM_EINVAL;
  }
  uint32_t mxcsr;
  memcpy(&mxcsr, st->xsave + 24, 4);
  if (mxcsr & ~0xffffu) {
    VMM_LOG_E("bt: invalid MXCSR %#x", mxcsr);
    return VMM_EINVAL;
  }
  int rc = vmm__bt_complete_pending(v, &vcpu->cur);
  if (rc) return rc;
  /* A snapshot restore tells the backend about every page it rewrote (memory_written); then
   * translations and mappings stay unless the state they were made under changes. Any other
   * caller may have changed memory behind the VMM's back (through vmm_vm_gpa_to_hva()). */
  bool keep = vcpu->vm->restoring && bt_same_translation_state(&v->sys, st, xcr0);
  /* Translations recognize hypercalls by where the page is: a restore may have removed it
   * without filling a new one. */
  if (v->bvm->hc_gpa != vcpu->vm->hypercall_page_gpa) {
    v->bvm->hc_gpa = vcpu->vm->hypercall_page_gpa;
    atomic_fetch_add(&v->bvm->code_gen, 1);
  }
  v->sys = *st;
  v->sys.struct_size = sizeof(v->sys);
  v->sys.xcr0 = xcr0;
  v->sys.tsc = st->tsc - __rdtsc();
  memset(&v->sys.regs, 0, sizeof(v->sys.regs));
  memset(v->sys.xsave, 0, sizeof(v->sys.xsave));
  vmm__bt_set_regs(vcpu, &st->regs);

  const uint8_t *x = st->xsave;
  uint64_t bv;
  memcpy(&bv, x + 512, 8);
  /* Only x87 state that differs from the initial one makes transitions save it. */
  static const uint8_t x87_init[24] = {0x7f, 0x03};
  static const uint8_t zero[128];
  bool x87_init_state = !(bv & 1) || (memcmp(x, x87_init, 24) == 0 && memcmp(x + 32, zero, 128) == 0);
  if (!x87_init_state) {
    memcpy(c->fxsave, x, 24);
    memcpy(c->fxsave + 32, x + 32, 128);
    c->x87_live = 1;
  } else {
    uint16_t fcw = 0x37f;
    memset(c->fxsave, 0, 24);
    memcpy(c->fxsave, &fcw, 2);
    memset(c->fxsave + 32, 0, 128);
    c->x87_live = 0;
  }
  c->mxcsr = mxcsr ? mxcsr : 0x1f80;
  for (int i = 0; i < 16; i++) {
    if (bv & 2) memcpy(c->vec[i], x + 160 + 16 * i, 16);
    else memset(c->vec[i], 0, 16);
    if ((bv & 4) && (xcr0 & 4)) memcpy(c->vec[i] + 16, x + 576 + 16 * i, 16);
    else memset(c->vec[i] + 16, 0, 16);
  }
  c->vec_avx = (xcr0 & 4) && v->bvm->host_avx;
  /* Otherwise translations and mappings go. Inside vcpu_run this happens when control
   * returns to the dispatcher. The return cache goes either way (its entries belong to the
   * old stack). */
  if (!keep) {
    v->flush_needed = true;
    v->window_flush_needed = true;
  }
  vmm__bt_shadow_reset(v);
  v->state_changed = true;
  v->smc_single = false;
  return 0;
}

/* ---- counters ---- */

size_t vmm__bt_vcpu_stats(vmm_vcpu_t *vcpu, vmm_stat_t *out, size_t cap) {
  struct bt_vcpu *v = bt_vcpu(vcpu);
  const struct bt_stats *s = &v->stats;
  struct {
    const char *name;
    uint64_t value;
  } t[32];
  size_t n = 0;
#define BT_STAT(nm, val) t[n].name = nm, t[n].value = (val), n++
  BT_STAT("bt.blocks_translated", s->blocks);
  BT_STAT("bt.insns_translated", s->insns);
  BT_STAT("bt.translate_ns", s->translate_ns);
  BT_STAT("bt.cache_flushes", s->flushes);
  BT_STAT("bt.cache_used", v->cache_used);
  BT_STAT("bt.cache_size", v->cache_size);
  BT_STAT("bt.chains", s->chains);
  BT_STAT("bt.indirect_misses", s->indirect_misses);
  BT_STAT("bt.helper_calls", s->helpers);
  BT_STAT("bt.host_faults", s->faults);
  BT_STAT("bt.demand_maps", s->demand_maps);
  BT_STAT("bt.window_flushes", s->window_flushes);
  BT_STAT("bt.mmio_emulated", s->mmio);
  BT_STAT("bt.smc_invalidations", s->smc);
  BT_STAT("bt.kicks", s->kicks);
  BT_STAT("bt.low_window", v->low ? 1 : 0);
  BT_STAT("bt.reused_memory", v->reused ? 1 : 0);
#undef BT_STAT
  for (size_t i = 0; i < n && i < cap; i++) {
    snprintf(out[i].name, sizeof(out[i].name), "%s", t[i].name);
    out[i].value = t[i].value;
  }
  /* Exits dispatched inside the backend (they never reached the core's loop). */
  for (uint32_t r = 1; r < VMM_STAT_NREASONS; r++, n++) {
    if (n >= cap) continue;
    snprintf(out[n].name, sizeof(out[n].name), "bt.fast_exits.%s", vmm_exit_reason_name(r));
    out[n].value = s->fast_exits[r];
  }
  return n;
}
