/* The pv backend's private declarations.
 *
 * Each vCPU runs in its own sandbox process (pv_sandbox.c) that maps guest RAM at the
 * guest-physical addresses and executes guest code natively under ptrace(PTRACE_SYSEMU). The
 * thread that last ran the vCPU is its tracer. Between runs the vCPU's whole state lives in
 * `st` (the cache): any thread may read or change it there, and the next run pushes what
 * changed into the child (or, when a different thread runs it, into a fresh child). */
#ifndef LIBVMM_PV_H
#define LIBVMM_PV_H

#include <sched.h>
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

/* FS and GS bases a process may have (the kernel's TASK_SIZE_MAX with 4-level paging). */
#define VMM_PV_BASE_LIMIT 0x7ffffffff000ull
static inline bool vmm__pv_base_ok(uint64_t base) { return base < VMM_PV_BASE_LIMIT; }

struct vmm_pv_vm {
  uint64_t map_floor; /* Lowest address the sandbox can map (mmap_min_addr). */
  /* Clones: some region is layered. own_lock is held while pages become the VM's own and
   * while a tracer brings its sandbox's mappings up to date before resuming (pv_layer.c). */
  bool layered;
  pthread_mutex_t own_lock;
};

/* A range of guest-physical addresses. */
struct vmm_pv_range {
  uint64_t gpa, len;
};

/* Per RAM region under dirty logging: pages whose write-protection a sandbox's write lifted
 * since the last read (pv_dirty.c). */
struct vmm_pv_region {
  uint64_t *dirty;
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
  uint64_t tracer;         /* vmm__pv_thread_token() of the thread that seized the child. */
  int pinned_cpu;          /* CPU the child is pinned to, or -1. */
  /* The child's userfaultfd, for dirty tracking (-1 when there is none; uffd_on once its API is
   * set). Changes of the child and dirty-log reads from other threads take child_lock. */
  int uffd;
  bool uffd_on;
  pthread_mutex_t child_lock;
  bool thread_pinned;      /* The tracer thread is pinned there for the current run. */
  cpu_set_t thread_mask;   /* The tracer thread's own affinity, restored after the run. */
  bool dead;               /* The child died under the guest: runs fail with VMM_ECHILD. */
  bool fresh;              /* The child has not run guest code yet (its FPU is in init state). */
  bool starting;           /* Begun (seized, RAM map sent), its int3 stop not collected yet. */

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
  uint64_t stat_wp_faults; /* Write-protection faults of dirty logging. */
  /* SIGBUS stops in a row at one page with no log read protecting pages again in between: a
   * page that keeps faulting after its protection was lifted faults for another reason,
   * reported after 1000 tries. protect_gen counts the reads' protections of this sandbox. */
  uint64_t wp_last_page, wp_last_gen;
  uint32_t wp_repeats;
  atomic_uint_fast64_t protect_gen;

  /* Clones: pages that became the VM's own while this sandbox maps them from the shared
   * base, to map from the own file before the guest runs again (remap_all: every own page,
   * for a new sandbox). in_guest: the tracer resumed the child and has not seen it stop. */
  pthread_mutex_t remap_lock;
  pthread_cond_t remap_cv;
  bool in_guest;
  bool remap_all;
  struct vmm_pv_range *remap;
  size_t nremap, remap_cap;
  uint64_t stat_remaps;
};

static inline struct vmm_pv_vm *vmm_pv_vm(const vmm_vm_t *vm) { return vm->backend_data; }
static inline struct vmm_pv_vcpu *vmm_pv_vcpu(const vmm_vcpu_t *v) { return v->backend_data; }

/* pv_sandbox.c */
/* A number that names the calling thread and is never given to another thread (thread ids
 * are reused once a thread has exited; ptrace tracing is not). */
uint64_t vmm__pv_thread_token(void);
int vmm__pv_sandbox_probe(void);
/* Starts stubs, at most max_new, until the pool holds its target, or upto stubs if fewer: 0,
 * or the code of the start that failed. */
int vmm__pv_pool_refill(int upto, int max_new);
/* vmm_backend_prepare(): keeps count started stubs, starting the missing ones now. */
int vmm__pv_pool_prepare(unsigned count);
/* Starts a sandbox for the vCPU without waiting for it (vCPU creation does this, so that the
 * stub maps RAM while the caller loads the guest). */
int vmm__pv_child_begin(vmm_vcpu_t *vcpu);
int vmm__pv_child_start(vmm_vcpu_t *vcpu);
void vmm__pv_child_kill(vmm_vcpu_t *vcpu);
int vmm__pv_wait(pid_t pid, int *status);
uint64_t vmm__pv_map_floor(void);

/* pv_dirty.c */
/* Prepares a new child's dirty tracking (its userfaultfd arrived in `uffd`). */
int vmm__pv_dirty_child_init(vmm_vcpu_t *vcpu, int uffd);
/* Before a child goes. */
void vmm__pv_dirty_child_fini(vmm_vcpu_t *vcpu, bool alive);
int vmm__pv_dirty_log_enable(vmm_vm_t *vm, struct vmm_region *r, bool enable);
/* A SIGBUS at addr stopped the sandbox: 1 if it was the write-protection of a logged page
 * (noted and lifted; resume the guest without the signal), 0 if not, or an error. */
int vmm__pv_dirty_fault(vmm_vcpu_t *vcpu, uint64_t addr);
/* The userfaultfd features dirty logging asks for. */
uint64_t vmm__pv_uffd_features(void);
int vmm__pv_dirty_log_get(vmm_vm_t *vm, struct vmm_region *r, uint64_t *bitmap);
int vmm__pv_dirty_log_get_keep(vmm_vm_t *vm, struct vmm_region *r, uint64_t *bitmap);
void vmm__pv_region_free(struct vmm_region *r);
/* Tracks [lo, lo+len) of a sandbox already tracking dirty pages again, after a new mapping
 * there (child_lock held). */
int vmm__pv_dirty_track_range(struct vmm_pv_vcpu *pv, uint64_t lo, uint64_t len);
/* Whether this host can track dirty pages in sandboxes (known once the backend was probed). */
bool vmm__pv_dirty_supported(void);

/* pv_state.c */
/* After a failed ptrace request: VMM_ECHILD when the sandbox is gone (it was killed while
 * stopped), else VMM_EBACKEND with a log message naming the request. */
int vmm__pv_ptrace_failed(struct vmm_pv_vcpu *pv, const char *what);
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
void vmm__pv_hc_normalize(vmm_vcpu_t *vcpu, vmm_regs_t *r);
int vmm__pv_vcpu_init(vmm_vcpu_t *vcpu);
void vmm__pv_vcpu_fini(vmm_vcpu_t *vcpu);
int vmm__pv_vcpu_run(vmm_vcpu_t *vcpu, vmm_exit_t *exit);
int vmm__pv_flush_pending(vmm_vcpu_t *vcpu, const vmm_exit_t *exit);
void vmm__pv_vcpu_kick(vmm_vcpu_t *vcpu);
int vmm__pv_set_single_step(vmm_vcpu_t *vcpu, bool enable);
size_t vmm__pv_vcpu_stats(vmm_vcpu_t *vcpu, vmm_stat_t *out, size_t cap);

/* pv_layer.c: clones (layered RAM regions) */
int vmm__pv_own_pages(vmm_vm_t *vm, struct vmm_region *r, uint64_t first, uint64_t n);
/* Before the tracer resumes the guest: maps the sandbox's own pages, then marks the vCPU as
 * in the guest. On failure the vCPU is not marked. */
int vmm__pv_layer_enter(vmm_vcpu_t *vcpu);
/* After the tracer saw the child stop. */
void vmm__pv_layer_leave(vmm_vcpu_t *vcpu);
/* A write fault at addr in a layered region: the page becomes the VM's own and is mapped
 * before the guest resumes (0), or a negative code. */
int vmm__pv_layer_write_fault(vmm_vcpu_t *vcpu, struct vmm_region *r, uint64_t addr);

/* pv_emu.c */
/* Handles a signal stop of the guest. Returns 0 to resume the guest, 1 when `exit` is filled
 * and the run must return it, or a negative VMM_E* code. */
int vmm__pv_on_signal(vmm_vcpu_t *vcpu, int sig, vmm_exit_t *exit);
/* Completes an IO/MMIO exit on the registers in `regs` (RIP advances). */
int vmm__pv_emu_complete(vmm_vcpu_t *vcpu, vmm_regs_t *regs, const vmm_exit_t *exit);
void vmm__pv_exception(vmm_exit_t *exit, unsigned vector, bool has_err, uint32_t err,
                       uint64_t rip, uint64_t cr2);

#endif /* LIBVMM_PV_H */
