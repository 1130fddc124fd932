/* The pv backend's private declarations.
 *
 * Each vCPU runs in its own sandbox process (pv_sandbox.c) that maps guest RAM at the
 * guest-physical addresses and executes guest code natively under ptrace(PTRACE_SYSEMU). The
 * thread that last ran the vCPU is its tracer. Between runs the vCPU's whole state lives in
 * `st` (the cache): any thread may read or change it there, and the next run pushes what
 * changed into the child (or, when a different thread runs it, into a fresh child). */
#ifndef LIBVMM_PV_H
#define LIBVMM_PV_H

#include <stdatomic.h>
#include <sys/types.h>
#include <sys/user.h>

#include "../../core/internal.h"
#include "../common/x86emu.h"

/* Hypercall page entry layout (pv_vm.c); offsets within one VMM_HC_ENTRY_SIZE entry. */
#define VMM_PV_HC_AT_TRAP 5     /* Where kvm's entry has its OUT; RIP of a pending hypercall. */
#define VMM_PV_HC_AT_RET 7      /* The entry's `ret`. */
#define VMM_PV_HC_AFTER_SYSCALL 14

#define VMM_PV_RFLAGS_VIRT (VMM_RFLAGS_IF | VMM_RFLAGS_IOPL3)

struct vmm_pv_vm {
  uint64_t map_floor; /* Lowest address the sandbox can map (mmap_min_addr). */
};

enum vmm_pv_pending { VMM_PV_PEND_NONE, VMM_PV_PEND_HYPERCALL, VMM_PV_PEND_EMU };

struct vmm_pv_vcpu {
  vmm_cpu_state_t st;      /* The cache (see above); rflags holds the virtual IF and IOPL. */
  bool regs_dirty;         /* st.regs / fs / gs base differ from the child's. */
  bool xsave_dirty;        /* st.xsave differs from the child's. */
  int64_t tsc_offset;      /* Guest TSC minus host TSC. */

  /* The sandbox process. */
  pid_t pid;               /* -1 when there is none. */
  atomic_int pidfd;        /* For kicks; -1 when there is none. */
  pid_t tracer;            /* Thread id that seized the child. */
  int pinned_cpu;
  bool dead;               /* The child died under the guest: runs fail with VMM_ECHILD. */

  /* Inside vmm__pv_vcpu_run(): the child's registers are authoritative. */
  bool live;
  bool have_ur;            /* ur holds the child's registers at this stop. */
  bool ur_dirty;           /* ur was changed and must be written before resuming. */
  struct user_regs_struct ur;
  uint64_t vflags;         /* Virtual IF and IOPL while live. */

  atomic_bool kicked;
  bool single_step;

  /* An exit returned with its instruction not yet complete. */
  enum vmm_pv_pending pend;
  struct vmm_emu_insn insn;
  struct vmm_emu_access acc;

  uint64_t stat_stops, stat_syscalls, stat_signals, stat_emulated, stat_spawns, stat_kicks;
};

static inline struct vmm_pv_vm *vmm_pv_vm(const vmm_vm_t *vm) { return vm->backend_data; }
static inline struct vmm_pv_vcpu *vmm_pv_vcpu(const vmm_vcpu_t *v) { return v->backend_data; }

/* pv_sandbox.c */
int vmm__pv_sandbox_probe(void);
void vmm__pv_pool_refill(void);
int vmm__pv_child_start(vmm_vcpu_t *vcpu);
void vmm__pv_child_kill(struct vmm_pv_vcpu *pv);
int vmm__pv_wait(pid_t pid, int *status);
uint64_t vmm__pv_map_floor(void);

/* pv_state.c */
void vmm__pv_state_reset(struct vmm_pv_vcpu *pv);
int vmm__pv_getregs(struct vmm_pv_vcpu *pv);
int vmm__pv_push(struct vmm_pv_vcpu *pv);
int vmm__pv_unlive(vmm_vcpu_t *vcpu);
void vmm__pv_ur_to_regs(const struct user_regs_struct *u, uint64_t vflags, vmm_regs_t *r);
void vmm__pv_regs_to_ur(const vmm_regs_t *r, struct user_regs_struct *u);
int vmm__pv_get_regs(vmm_vcpu_t *vcpu, vmm_regs_t *regs);
int vmm__pv_set_regs(vmm_vcpu_t *vcpu, const vmm_regs_t *regs);
int vmm__pv_get_state(vmm_vcpu_t *vcpu, vmm_cpu_state_t *state);
int vmm__pv_set_state(vmm_vcpu_t *vcpu, const vmm_cpu_state_t *state);
uint64_t vmm__pv_rdtsc(void);

/* pv_vcpu.c */
int vmm__pv_vcpu_init(vmm_vcpu_t *vcpu);
void vmm__pv_vcpu_fini(vmm_vcpu_t *vcpu);
int vmm__pv_vcpu_run(vmm_vcpu_t *vcpu, vmm_exit_t *exit);
int vmm__pv_flush_pending(vmm_vcpu_t *vcpu, const vmm_exit_t *exit);
void vmm__pv_vcpu_kick(vmm_vcpu_t *vcpu);
int vmm__pv_set_single_step(vmm_vcpu_t *vcpu, bool enable);
size_t vmm__pv_vcpu_stats(vmm_vcpu_t *vcpu, vmm_stat_t *out, size_t cap);

/* pv_emu.c */
/* Handles a signal stop of the guest. Returns 0 to resume the guest, 1 when `exit` is filled
 * and the run must return it, or a negative VMM_E* code. */
int vmm__pv_on_signal(vmm_vcpu_t *vcpu, int sig, vmm_exit_t *exit);
/* Completes an IO/MMIO exit on the registers in `regs` (RIP advances). */
int vmm__pv_emu_complete(vmm_vcpu_t *vcpu, vmm_regs_t *regs, const vmm_exit_t *exit);
void vmm__pv_exception(vmm_exit_t *exit, unsigned vector, bool has_err, uint32_t err,
                       uint64_t rip, uint64_t cr2);

#endif /* LIBVMM_PV_H */
