/* bt backend: signals. Translated code runs with the guest's RSP in the host RSP, so
 *  - every signal the backend handles runs on an alternate stack (SA_ONSTACK), set up once
 *    per thread that runs a vCPU;
 *  - all other signals are blocked on the vCPU thread while vmm_vcpu_run() is inside the
 *    backend (their frames would otherwise be written at a guest address), and delivered
 *    when it returns;
 *  - SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGTRAP raised by translated code become guest
 *    faults; the handlers claim only faults whose PC lies in this thread's code cache and
 *    chain to the previous handler for everything else;
 *  - BT_KICK_SIGNAL stops translated code for vmm_vcpu_kick(): at a guest instruction
 *    boundary it exits at once; elsewhere it single-steps (TF) to the next boundary.
 * The thread's GS base is set to the vCPU's window and left there; nothing in a Linux x86-64
 * process uses GS otherwise. */
#include <asm/prctl.h>
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#include "bt.h"

#define BT_KICK_SIGNAL (SIGRTMAX - 2)
#define BT_ALTSTACK_SIZE (256u << 10)
#define BT_EFL_TF 0x100ull

static const int bt_sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP};
static struct sigaction bt_old[6];
static int bt_kick_sig;
static pthread_once_t bt_sig_once = PTHREAD_ONCE_INIT;
static int bt_sig_status;
static pthread_key_t bt_altstack_key;

static __thread struct bt_vcpu *bt_cur __attribute__((tls_model("initial-exec")));
static __thread uintptr_t bt_gs_set __attribute__((tls_model("initial-exec")));
static __thread int bt_tid __attribute__((tls_model("initial-exec")));
static __thread bool bt_altstack_done __attribute__((tls_model("initial-exec")));

static int bt_sig_index(int sig) {
  for (int i = 0; i < 5; i++)
    if (bt_sigs[i] == sig) return i;
  return sig == bt_kick_sig ? 5 : -1;
}

static void bt_chain(int sig, siginfo_t *si, void *uc) {
  int i = bt_sig_index(sig);
  if (i < 0) return;
  const struct sigaction *o = &bt_old[i];
  if (o->sa_flags & SA_SIGINFO) {
    if (o->sa_sigaction) o->sa_sigaction(sig, si, uc);
    return;
  }
  if (o->sa_handler == SIG_IGN) return;
  if (o->sa_handler == SIG_DFL) {
    if (sig == bt_kick_sig) return; /* a stray kick: ignore it */
    /* Default action: reinstate it; a fault re-triggers on return, a trap is re-raised. */
    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
    if (sig == SIGTRAP || si->si_code <= 0) raise(sig);
    return;
  }
  o->sa_handler(sig);
}

static const int bt_greg[16] = {REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP,
                                REG_RSI, REG_RDI, REG_R8,  REG_R9,  REG_R10, REG_R11,
                                REG_R12, REG_R13, REG_R14, REG_R15};

/* Saves the guest state described by map entry m and resumes at the landing pad on the host
 * stack, which returns from vmm__bt_asm_enter with `kind`. */
static void bt_redirect(struct bt_vcpu *v, ucontext_t *uc, const struct bt_block *b,
                        const struct bt_map *m, int kind) {
  struct bt_ctrl *c = v->ctrl;
  greg_t *g = uc->uc_mcontext.gregs;
  for (int i = 0; i < 16; i++) c->gpr[i] = (uint64_t)g[bt_greg[i]];
  if (m) {
    for (int i = 0; i < 16; i++)
      if (m->fixup & (1u << i)) c->gpr[i] = c->spill[i];
    if (m->fixup & BT_FIX_RSI_HOST) c->gpr[6] = (uint32_t)c->gpr[6];
    if (m->fixup & BT_FIX_RDI_HOST) c->gpr[7] = (uint32_t)c->gpr[7];
    c->gpr[4] += (uint64_t)(int64_t)m->rsp_adj;
    c->rip = b->rip + m->rip_off;
  }
  c->rflags = (uint64_t)g[REG_EFL] & BT_RFLAGS_HOST;
  c->exit_kind = (uint64_t)kind;
  g[REG_RIP] = (greg_t)(uintptr_t)vmm__bt_asm_fault_landing;
  g[REG_RSP] = (greg_t)c->entry_rsp;
  g[REG_EFL] &= ~(greg_t)(BT_EFL_TF | 0x400 | 0x40000);
}

static void bt_handler(int sig, siginfo_t *si, void *ucv) {
  ucontext_t *uc = ucv;
  struct bt_vcpu *v = bt_cur;
  greg_t *g = uc->uc_mcontext.gregs;
  uintptr_t pc = (uintptr_t)g[REG_RIP];
  bool kickish = sig == bt_kick_sig || (sig == SIGTRAP && v && v->stepping);
  if (v == NULL) {
    bt_chain(sig, si, ucv);
    return;
  }
  int saved_errno = errno;
  if (pc >= (uintptr_t)vmm__bt_asm_enter_window && pc < (uintptr_t)vmm__bt_asm_enter_window_end) {
    if (kickish) {
      g[REG_RIP] = (greg_t)(uintptr_t)vmm__bt_asm_kicked_at_entry;
      g[REG_EFL] &= ~(greg_t)BT_EFL_TF;
      v->stepping = 0;
    } else {
      bt_chain(sig, si, ucv);
    }
    errno = saved_errno;
    return;
  }
  struct bt_block *b = vmm__bt_block_at_host(v, pc);
  if (b == NULL && kickish && pc >= (uintptr_t)v->cache_rx &&
      pc < (uintptr_t)v->cache_rx + v->cache_used) {
    /* A block's indirect entry (the only code between blocks): step into the block. */
    g[REG_EFL] |= (greg_t)BT_EFL_TF;
    v->stepping = 1;
    errno = saved_errno;
    return;
  }
  if (b == NULL) {
    if (kickish) {
      /* In C or in the shared assembly: the kick flag is looked at on the way out. */
      g[REG_EFL] &= ~(greg_t)BT_EFL_TF;
      v->stepping = 0;
    } else {
      bt_chain(sig, si, ucv);
    }
    errno = saved_errno;
    return;
  }
  const struct bt_map *m = vmm__bt_map_at(v, b, pc);
  if (kickish) {
    if (m) {
      v->stepping = 0;
      bt_redirect(v, uc, b, m, BT_EXIT_KICK);
    } else {
      g[REG_EFL] |= (greg_t)BT_EFL_TF;
      v->stepping = 1;
    }
    errno = saved_errno;
    return;
  }
  if (sig == SIGTRAP) {
    bt_chain(sig, si, ucv);
    errno = saved_errno;
    return;
  }
  uintptr_t fa = (uintptr_t)si->si_addr, ctrl = (uintptr_t)v->ctrl;
  if (sig == SIGSEGV && fa >= ctrl + BT_C_SHADOW_GUARD && fa < ctrl + BT_C_SHADOW_LO) {
    /* The return cache overflowed (deep recursion): empty it and retry the CALL. */
    g[REG_RSP] = (greg_t)(ctrl + BT_C_SHADOW_TOP - 8);
    errno = saved_errno;
    return;
  }
  v->fault.sig = sig;
  v->fault.code = si->si_code;
  v->fault.trapno = (int)g[REG_TRAPNO];
  v->fault.err = (uint64_t)g[REG_ERR];
  v->fault.addr = (uint64_t)(uintptr_t)si->si_addr;
  v->fault.nomap = m == NULL;
  v->stats.faults++;
  bt_redirect(v, uc, b, m, BT_EXIT_FAULT);
  errno = saved_errno;
}

static void bt_altstack_free(void *p) {
  stack_t ss = {.ss_flags = SS_DISABLE};
  stack_t cur;
  if (sigaltstack(NULL, &cur) == 0 && cur.ss_sp == p) sigaltstack(&ss, NULL);
  munmap(p, BT_ALTSTACK_SIZE);
}

static void bt_install(void) {
  bt_kick_sig = BT_KICK_SIGNAL;
  if (pthread_key_create(&bt_altstack_key, bt_altstack_free) != 0) {
    bt_sig_status = VMM_ENOMEM;
    return;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = bt_handler;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  sigfillset(&sa.sa_mask);
  for (int i = 0; i < 6; i++) {
    int sig = i < 5 ? bt_sigs[i] : bt_kick_sig;
    if (sigaction(sig, &sa, &bt_old[i]) != 0) {
      VMM_LOG_E("bt: cannot install the handler of signal %d: %s", sig, strerror(errno));
      bt_sig_status = VMM_EBACKEND;
      return;
    }
  }
}

int vmm__bt_signals_init(void) {
  pthread_once(&bt_sig_once, bt_install);
  return bt_sig_status;
}

static int bt_thread_altstack(void) {
  if (bt_altstack_done) return 0;
  stack_t cur;
  if (sigaltstack(NULL, &cur) == 0 && !(cur.ss_flags & SS_DISABLE) &&
      cur.ss_size >= BT_ALTSTACK_SIZE / 4) {
    bt_altstack_done = true; /* The application's own is big enough. */
    return 0;
  }
  void *p = mmap(NULL, BT_ALTSTACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return VMM_ENOMEM;
  stack_t ss = {.ss_sp = p, .ss_size = BT_ALTSTACK_SIZE, .ss_flags = 0};
  if (sigaltstack(&ss, NULL) != 0) {
    munmap(p, BT_ALTSTACK_SIZE);
    return VMM_EBACKEND;
  }
  pthread_setspecific(bt_altstack_key, p);
  bt_altstack_done = true;
  return 0;
}

int vmm__bt_thread_enter(struct bt_vcpu *v, sigset_t *saved) {
  int rc = bt_thread_altstack();
  if (rc) return rc;
  if (bt_gs_set != v->gsbase) {
    if (syscall(SYS_arch_prctl, ARCH_SET_GS, (unsigned long)v->gsbase) != 0) {
      VMM_LOG_E("bt: cannot set the GS base: %s", strerror(errno));
      return VMM_EBACKEND;
    }
    bt_gs_set = v->gsbase;
  }
  if (bt_tid == 0) bt_tid = (int)syscall(SYS_gettid);
  sigset_t run;
  sigfillset(&run);
  for (int i = 0; i < 5; i++) sigdelset(&run, bt_sigs[i]);
  sigdelset(&run, bt_kick_sig);
  pthread_sigmask(SIG_SETMASK, &run, saved);
  bt_cur = v;
  atomic_store(&v->tid, bt_tid);
  return 0;
}

void vmm__bt_thread_forget(struct bt_vcpu *v) {
  if (bt_gs_set != v->gsbase) return;
  syscall(SYS_arch_prctl, ARCH_SET_GS, 0ul);
  bt_gs_set = 0;
}

void vmm__bt_thread_leave(struct bt_vcpu *v, const sigset_t *saved) {
  atomic_store(&v->tid, 0);
  bt_cur = NULL;
  pthread_sigmask(SIG_SETMASK, saved, NULL);
}

struct bt_vcpu *vmm__bt_current(void) { return bt_cur; }

void vmm__bt_kick_signal(struct bt_vcpu *v) {
  int tid = atomic_load(&v->tid);
  if (tid) syscall(SYS_tgkill, getpid(), tid, bt_kick_sig);
}
