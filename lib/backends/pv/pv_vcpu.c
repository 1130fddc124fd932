/* pv backend: vCPUs and the run loop. The guest runs under PTRACE_SYSEMU: its syscalls stop
 * before the kernel would run them (hypercalls from the hypercall page, anything else a #UD),
 * and its faults stop as signals (pv_emu.c). */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pv.h"

#ifndef AUDIT_ARCH_X86_64
#define AUDIT_ARCH_X86_64 0xc000003eu
#endif

static bool vmm_pv_pin = true;
static pthread_once_t vmm_pv_vcpu_once = PTHREAD_ONCE_INIT;

static void vmm_pv_vcpu_init_once(void) {
  const char *e = getenv("LIBVMM_PV_PIN");
  if (e && strcmp(e, "0") == 0) vmm_pv_pin = false;
}

int vmm__pv_vcpu_init(vmm_vcpu_t *vcpu) {
  pthread_once(&vmm_pv_vcpu_once, vmm_pv_vcpu_init_once);
  struct vmm_pv_vcpu *pv = calloc(1, sizeof(*pv));
  if (pv == NULL) return VMM_ENOMEM;
  pv->pid = -1;
  pv->uffd = -1;
  pv->uffd_on = false;
  pthread_mutex_init(&pv->child_lock, NULL);
  pthread_mutex_init(&pv->remap_lock, NULL);
  pthread_cond_init(&pv->remap_cv, NULL);
  atomic_init(&pv->pidfd, -1);
  atomic_init(&pv->kicked, false);
  pv->pinned_cpu = -1;
  vmm__pv_state_reset(pv);
  vcpu->backend_data = pv;
  /* Get a sandbox going now; if that fails, the first run tries again and reports it. */
  if (vmm__pv_child_begin(vcpu) != 0)
    VMM_LOG_D("pv: no sandbox yet for vCPU %u; the first run starts one", vcpu->index);
  return 0;
}

void vmm__pv_vcpu_fini(vmm_vcpu_t *vcpu) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  if (pv == NULL) return;
  bool had_child = pv->pid > 0;
  vmm__pv_child_kill(vcpu);
  pthread_mutex_destroy(&pv->child_lock);
  pthread_mutex_destroy(&pv->remap_lock);
  pthread_cond_destroy(&pv->remap_cv);
  free(pv->remap);
  free(pv);
  vcpu->backend_data = NULL;
  /* Replace the process this vCPU used, outside anyone's creation path, and one more while the
   * pool is short (a clone-destroy loop then takes a stub that had a whole round to start,
   * not the one just spawned: taking that made clones wait 0.5 ms for its first message). At
   * most two, so destroying many clones of a prepared pool spreads the starts out. */
  if (had_child) (void)vmm__pv_pool_refill(VMM__PREPARE_MAX, 2);
}

void vmm__pv_vcpu_kick(vmm_vcpu_t *vcpu) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  atomic_store(&pv->kicked, true);
  int fd = atomic_load(&pv->pidfd);
  /* SIGSTOP stops the child in signal-delivery-stop wherever the guest is; the tracer turns
   * it into VMM_EXIT_KICKED and drops it. A pidfd cannot reach a recycled pid. */
  if (fd >= 0) syscall(SYS_pidfd_send_signal, fd, SIGSTOP, NULL, 0);
}

int vmm__pv_set_single_step(vmm_vcpu_t *vcpu, bool enable) {
  vmm_pv_vcpu(vcpu)->single_step = enable;
  return 0;
}

static int vmm_pv_read(vmm_vm_t *vm, uint64_t gpa, void *buf, size_t len) {
  return vmm_vm_read(vm, gpa, buf, len);
}

/* The registers a pending hypercall shows, identical to kvm's at its OUT: RIP at entry + 5,
 * RAX the number, RSP at the return address, RCX and R11 as the guest had them (the entry
 * saved them on the stack before `syscall` overwrote them). */
static int vmm_pv_hc_view(vmm_vcpu_t *vcpu, vmm_regs_t *r) {
  uint64_t slots[3];
  if (vmm_pv_read(vcpu->vm, r->rsp, slots, sizeof(slots)) != 0) return VMM_EFAULT;
  uint64_t entry = r->rip - VMM_PV_HC_AFTER_SYSCALL;
  r->rax = slots[0];
  r->r11 = slots[1];
  r->rcx = slots[2];
  r->rsp += 24;
  r->rip = entry + VMM_PV_HC_AT_TRAP;
  return 0;
}

/* Moves a vCPU that stopped inside a hypercall entry (a kick, a single step) to an equivalent
 * point where the entry is restartable, as kvm's is: its trap at entry + 5 before the
 * hypercall, its `ret` after it. Then no state depends on this backend's entry code beyond what
 * kvm's has too (snapshots move vCPUs between backends, whose pages differ). */
void vmm__pv_hc_normalize(vmm_vcpu_t *vcpu, vmm_regs_t *r) {
  uint64_t page = vcpu->vm->hypercall_page_gpa;
  if (page == 0 || r->rip < page || r->rip - page >= VMM_PAGE_SIZE) return;
  uint64_t entry = r->rip & ~(uint64_t)(VMM_HC_ENTRY_SIZE - 1);
  unsigned pushed = 0, popped_to = 0; /* Slots on the stack; first slot still there. */
  switch (r->rip - entry) {
    case 8: pushed = 0; break;
    case 9: pushed = 1; break;
    case 11: pushed = 2; break;
    case 12: pushed = 3; break;
    case 14: popped_to = 1; break; /* rax, r11, rcx still on the stack */
    case 15: popped_to = 2; break; /* r11, rcx */
    case 17: popped_to = 3; break; /* rcx */
    case 18: popped_to = 4; break;
    default: return;
  }
  if (popped_to == 0) {
    /* Before the syscall: the pushed slots are copies of registers that still hold them. */
    r->rsp += 8ull * pushed;
    r->rip = entry + VMM_PV_HC_AT_TRAP;
    return;
  }
  uint64_t s[3] = {0, 0, 0};
  unsigned left = 4 - popped_to;
  if (left && vmm_pv_read(vcpu->vm, r->rsp, s, 8ull * left) != 0) return;
  if (left == 3) {
    r->rax = s[0];
    r->r11 = s[1];
    r->rcx = s[2];
  } else if (left == 2) {
    r->r11 = s[0];
    r->rcx = s[1];
  } else if (left == 1) {
    r->rcx = s[0];
  }
  r->rsp += 8ull * left;
  r->rip = entry + VMM_PV_HC_AT_RET;
}

/* Completes what the last exit left unfinished, on the cache. */
static int vmm_pv_complete(vmm_vcpu_t *vcpu, const vmm_exit_t *exit) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  enum vmm_pv_pending pend = pv->pend;
  if (pend == VMM_PV_PEND_NONE) return 0;
  pv->pend = VMM_PV_PEND_NONE;
  pv->regs_dirty = true;
  if (pend == VMM_PV_PEND_HYPERCALL) {
    pv->st.regs.rax = exit->reason == VMM_EXIT_HYPERCALL ? exit->hypercall.result
                                                         : (uint64_t)(int64_t)VMM_ENOSYS;
    pv->st.regs.rip += VMM_PV_HC_AT_RET - VMM_PV_HC_AT_TRAP;
    return 0;
  }
  return vmm__pv_emu_complete(vcpu, &pv->st.regs, exit);
}

/* Completes the pending exit and leaves the vCPU at an instruction boundary that every backend
 * has (what snapshots need). */
int vmm__pv_flush_pending(vmm_vcpu_t *vcpu, const vmm_exit_t *exit) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  int rc = vmm__pv_unlive(vcpu);
  if (rc) return rc;
  rc = vmm_pv_complete(vcpu, exit);
  if (rc) return rc;
  vmm_regs_t before = pv->st.regs;
  vmm__pv_hc_normalize(vcpu, &pv->st.regs);
  if (memcmp(&before, &pv->st.regs, sizeof(before)) != 0) pv->regs_dirty = true;
  return 0;
}

/* Makes the calling thread the tracer of a child that holds the cached state. */
static int vmm_pv_prepare(vmm_vcpu_t *vcpu) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  uint64_t self = vmm__pv_thread_token();
  if (pv->pid > 0 && pv->tracer != self) {
    /* ptrace belongs to one thread: another thread runs the vCPU now. The cache holds the
     * whole state, so a fresh child picks up exactly where this one stopped. */
    VMM_LOG_D("pv: vCPU %u is run by another thread: new sandbox", vcpu->index);
    vmm__pv_child_kill(vcpu);
  }
  if (pv->pid <= 0 || pv->starting) {
    int rc = vmm__pv_child_start(vcpu);
    if (rc) return rc;
    pv->have_ur = false;
    pv->regs_dirty = pv->xsave_dirty = true;
  }
  if (vmm_pv_pin) {
    /* A stop wakes the tracer and a resume wakes the child: on one CPU these are cheap
     * switches, across CPUs expensive wake-ups (DESIGN.md). */
    int cpu = sched_getcpu();
    if (cpu >= 0 && cpu != pv->pinned_cpu) {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(cpu, &set);
      if (sched_setaffinity(pv->pid, sizeof(set), &set) == 0) pv->pinned_cpu = cpu;
    }
  }
  return vmm__pv_push(pv);
}

static int vmm_pv_child_died(vmm_vcpu_t *vcpu, int status) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  if (WIFSIGNALED(status))
    VMM_LOG_E("pv: sandbox process %d of vCPU %u was killed by signal %d (%s)", (int)pv->pid,
              vcpu->index, WTERMSIG(status), strsignal(WTERMSIG(status)));
  else if (WIFEXITED(status))
    VMM_LOG_E("pv: sandbox process %d of vCPU %u exited with status %d", (int)pv->pid,
              vcpu->index, WEXITSTATUS(status));
  else
    VMM_LOG_E("pv: sandbox process %d of vCPU %u is gone", (int)pv->pid, vcpu->index);
  pthread_mutex_lock(&pv->child_lock);
  vmm__pv_dirty_child_fini(vcpu, false);
  int fd = atomic_exchange(&pv->pidfd, -1);
  if (fd >= 0) close(fd);
  pv->pid = -1;
  pv->live = false;
  pv->have_ur = false;
  pv->dead = true;
  pthread_mutex_unlock(&pv->child_lock);
  return VMM_ECHILD;
}

/* A syscall stop. Returns 0 to resume, 1 with `exit` filled, or a negative code. */
static int vmm_pv_on_syscall(vmm_vcpu_t *vcpu, vmm_exit_t *exit) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  vmm_vm_t *vm = vcpu->vm;
  struct __ptrace_syscall_info si;
  if (ptrace(PTRACE_GET_SYSCALL_INFO, pv->pid, sizeof(si), &si) <= 0)
    return vmm__pv_ptrace_failed(pv, "PTRACE_GET_SYSCALL_INFO");
  pv->stat_syscalls++;
  uint64_t page = vm->hypercall_page_gpa, ip = si.instruction_pointer;
  if (si.arch == AUDIT_ARCH_X86_64 && page && ip - page < VMM_PAGE_SIZE &&
      (ip - page) % VMM_HC_ENTRY_SIZE == VMM_PV_HC_AFTER_SYSCALL) {
    memset(exit, 0, sizeof(*exit));
    exit->reason = VMM_EXIT_HYPERCALL;
    exit->hypercall.nr = si.entry.nr;
    memcpy(exit->hypercall.args, si.entry.args, sizeof(exit->hypercall.args));
    exit->hypercall.result = (uint64_t)(int64_t)VMM_ENOSYS;
    int rc = vmm__dispatch(vcpu, exit);
    if (rc < 0) return rc;
    if (rc == 1 && !vcpu->exit_requested) {
      /* The entry pops its result from the slot it pushed: no register write needed. */
      struct vmm_region *sr = vmm__region_find(vm, si.stack_pointer, 8);
      if (sr && !(sr->flags & VMM_MEM_READONLY) &&
          vmm__region_own(vm, sr, si.stack_pointer - sr->gpa, 8) == 0) {
        uint64_t *slot = (uint64_t *)(sr->hva + (si.stack_pointer - sr->gpa));
        __atomic_store_n(slot, exit->hypercall.result, __ATOMIC_RELAXED);
        vmm__host_wrote(vm, si.stack_pointer, 8); /* for dirty logs: the guest may not have */
        return 0;
      }
    }
    /* The exit leaves the run (or the stack is not RAM): present the entry as kvm's. */
    int r = vmm__pv_getregs(pv);
    if (r) return r;
    vmm_regs_t regs;
    vmm__pv_ur_to_regs(&pv->ur, pv->vflags, &regs);
    if (vmm_pv_hc_view(vcpu, &regs) != 0) {
      vmm__exit_internal(exit, VMM_EFAULT,
                         "pv: hypercall with the stack outside guest RAM (rsp %#llx)",
                         (unsigned long long)si.stack_pointer);
      return 1;
    }
    vmm__pv_regs_to_ur(&regs, &pv->ur);
    pv->ur_dirty = true;
    pv->pend = VMM_PV_PEND_HYPERCALL;
    if (rc == 1 && !vcpu->exit_requested) {
      /* Consumed, but the slot is not RAM: finish it in the registers. */
      pv->pend = VMM_PV_PEND_NONE;
      pv->ur.rax = exit->hypercall.result;
      pv->ur.rip += VMM_PV_HC_AT_RET - VMM_PV_HC_AT_TRAP;
      return 0;
    }
    vcpu->predispatched = true;
    return 1;
  }

  /* Not a hypercall: no Linux system call ever reaches the host kernel from a guest. */
  int rc = vmm__pv_getregs(pv);
  if (rc) return rc;
  bool cpl3 = (pv->st.cs.selector & 3) == 3;
  pv->ur.rax = si.entry.nr;
  pv->ur.orig_rax = (unsigned long long)-1;
  pv->ur_dirty = true;
  if (si.arch == AUDIT_ARCH_X86_64) {
    /* syscall: #UD, as on a CPU with EFER.SCE clear (RCX and R11 are already overwritten). */
    pv->ur.rip = ip - 2;
    vmm__pv_exception(exit, 6, false, 0, pv->ur.rip, 0);
    VMM_LOG_D("pv: guest syscall %llu at %#llx reported as #UD", (unsigned long long)si.entry.nr,
              (unsigned long long)pv->ur.rip);
    return 1;
  }
  uint8_t b[2] = {0, 0};
  if (vmm_pv_read(vm, ip - 2, b, 2) == 0 && b[0] == 0xcd && b[1] == 0x80) {
    /* int $0x80: what the IDT of vmm_vcpu_setup_long_mode makes of it. */
    if (cpl3) {
      pv->ur.rip = ip - 2;
      vmm__pv_exception(exit, 13, true, (0x80 << 3) | 2, pv->ur.rip, 0);
    } else {
      vmm__pv_exception(exit, 0x80, false, 0, ip, 0);
    }
    return 1;
  }
  /* sysenter: the kernel does not keep its address; report #UD where it left the guest. */
  VMM_LOG_W("pv: guest executed a 32-bit system call entry (sysenter?); reported as #UD at "
            "%#llx, which is not the instruction's address", (unsigned long long)ip);
  vmm__pv_exception(exit, 6, false, 0, ip, 0);
  return 1;
}

/* While a run lasts, the tracer stays on the child's CPU: a stop and a resume then cost two
 * context switches instead of two cross-CPU wake-ups. Without it the scheduler may wake the
 * tracer on the other CPU at every stop (the child is still running where the tracer slept),
 * the next run moves the child there, and every run and every copy of what the guest wrote
 * crosses CPUs: seen as runs and roll backs taking twice as long in some processes. The
 * caller's affinity comes back when the run returns. */
static void vmm_pv_pin_thread(struct vmm_pv_vcpu *pv) {
  if (!vmm_pv_pin || pv->thread_pinned || pv->pinned_cpu < 0) return;
  if (sched_getaffinity(0, sizeof(pv->thread_mask), &pv->thread_mask) != 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(pv->pinned_cpu, &set);
  if (sched_setaffinity(0, sizeof(set), &set) == 0) pv->thread_pinned = true;
}

static void vmm_pv_unpin_thread(struct vmm_pv_vcpu *pv) {
  if (!pv->thread_pinned) return;
  sched_setaffinity(0, sizeof(pv->thread_mask), &pv->thread_mask);
  pv->thread_pinned = false;
}

static int vmm_pv_loop(vmm_vcpu_t *vcpu, vmm_exit_t *exit) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  vmm_pv_pin_thread(pv);
  for (;;) {
    if (atomic_load_explicit(&pv->kicked, memory_order_relaxed) &&
        atomic_exchange(&pv->kicked, false)) {
      memset(exit, 0, sizeof(*exit));
      exit->reason = VMM_EXIT_KICKED;
      pv->stat_kicks++;
      return 0;
    }
    if (!pv->live) {
      /* A handler read the whole state: put back what may have changed. */
      int rc = vmm__pv_push(pv);
      if (rc) return rc;
      pv->live = true;
    }
    if (pv->ur_dirty) {
      if (ptrace(PTRACE_SETREGS, pv->pid, 0, &pv->ur) != 0)
        return vmm__pv_ptrace_failed(pv, "PTRACE_SETREGS");
      pv->ur_dirty = false;
    }
    pv->have_ur = false;
    /* A clone's sandbox maps the pages the VM came to own since it last ran. */
    int rc = vmm__pv_layer_enter(vcpu);
    if (rc) return rc;
    int op = pv->single_step ? PTRACE_SYSEMU_SINGLESTEP : PTRACE_SYSEMU;
    if (ptrace(op, pv->pid, 0, 0) != 0 && errno != ESRCH) {
      vmm__pv_layer_leave(vcpu);
      VMM_LOG_E("pv: resuming sandbox %d: %s", (int)pv->pid, strerror(errno));
      return VMM_EBACKEND;
    }
    int st;
    int w = vmm__pv_wait(pv->pid, &st);
    vmm__pv_layer_leave(vcpu);
    if (w != 0 || WIFEXITED(st) || WIFSIGNALED(st)) return vmm_pv_child_died(vcpu, w ? 0 : st);
    pv->stat_stops++;
    if (!WIFSTOPPED(st)) continue;
    int sig = WSTOPSIG(st);
    if (sig == (SIGTRAP | 0x80)) {
      rc = vmm_pv_on_syscall(vcpu, exit);
    } else if ((st >> 16) != 0) {
      rc = 0; /* A ptrace event stop (group-stop): nothing of the guest's. */
    } else {
      pv->stat_signals++;
      rc = vmm__pv_on_signal(vcpu, sig, exit);
    }
    if (rc < 0) return rc;
    if (rc == 1) return 0;
  }
}

int vmm__pv_vcpu_run(vmm_vcpu_t *vcpu, vmm_exit_t *exit) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  if (pv->dead) {
    VMM_LOG_E("pv: vCPU %u lost its sandbox process; vmm_vcpu_set_state() starts a new one",
              vcpu->index);
    return VMM_ECHILD;
  }
  if (!pv->st.cs.l) {
    vmm__exit_internal(exit, VMM_ENOSYS,
                       "pv: the vCPU is not in 64-bit long mode (use vmm_vcpu_setup_long_mode)");
    return 0;
  }
  int rc = vmm_pv_complete(vcpu, exit);
  if (rc) return rc;
  rc = vmm_pv_prepare(vcpu);
  if (rc == 0) {
    pv->live = true;
    rc = vmm_pv_loop(vcpu, exit);
    vmm_pv_unpin_thread(pv);
    if (pv->live && rc != VMM_ECHILD) {
      int r2 = vmm__pv_unlive(vcpu);
      if (rc == 0) rc = r2;
    }
  }
  if (rc == VMM_ECHILD && pv->pid > 0) {
    /* A ptrace request found the sandbox gone: collect its death. */
    int st = 0;
    while (vmm__pv_wait(pv->pid, &st) == 0 && !WIFEXITED(st) && !WIFSIGNALED(st)) {
    }
    rc = vmm_pv_child_died(vcpu, st);
  }
  return rc;
}

size_t vmm__pv_vcpu_stats(vmm_vcpu_t *vcpu, vmm_stat_t *out, size_t cap) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  const struct {
    const char *name;
    uint64_t value;
  } s[] = {
      {"pv.stops", pv->stat_stops},       {"pv.syscall_stops", pv->stat_syscalls},
      {"pv.signal_stops", pv->stat_signals}, {"pv.emulated", pv->stat_emulated},
      {"pv.sandboxes_started", pv->stat_spawns}, {"pv.kicks", pv->stat_kicks},
      {"pv.wp_faults", pv->stat_wp_faults},
      {"pv.sandbox_pid", (uint64_t)(pv->pid > 0 ? pv->pid : 0)},
      {"pv.own_page_maps", pv->stat_remaps},
  };
  for (size_t i = 0; i < VMM_ARRAY_SIZE(s) && i < cap; i++) {
    snprintf(out[i].name, sizeof(out[i].name), "%s", s[i].name);
    out[i].value = s[i].value;
  }
  return VMM_ARRAY_SIZE(s);
}
