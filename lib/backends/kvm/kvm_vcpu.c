/* kvm backend: vCPUs, KVM_RUN and the translation of KVM exits into vmm_exit_t. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "kvm.h"

/* A kick interrupts KVM_RUN with this signal; its handler does nothing. The signal is chosen
 * high in the real-time range, away from what language runtimes and libraries take. */
#define VMM_KVM_KICK_SIGNAL (SIGRTMAX - 3)

static void vmm_kvm_kick_handler(int sig) { (void)sig; }

static pthread_once_t vmm_kvm_signal_once = PTHREAD_ONCE_INIT;

static void vmm_kvm_install_signal(void) {
  struct sigaction old;
  if (sigaction(VMM_KVM_KICK_SIGNAL, NULL, &old) == 0 && old.sa_handler != SIG_DFL &&
      old.sa_handler != SIG_IGN)
    return; /* Someone handles it already; any handler interrupts KVM_RUN. */
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = vmm_kvm_kick_handler;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_ONSTACK; /* No SA_RESTART: KVM_RUN must return. */
  sigaction(VMM_KVM_KICK_SIGNAL, &sa, NULL);
}

static int vmm_kvm_set_cpuid(vmm_vcpu_t *vcpu, int fd) {
  const struct kvm_cpuid2 *src = vmm_kvm_vm(vcpu->vm)->cpuid;
  size_t bytes = sizeof(*src) + src->nent * sizeof(src->entries[0]);
  struct kvm_cpuid2 *c = malloc(bytes);
  if (c == NULL) return VMM_ENOMEM;
  memcpy(c, src, bytes);
  for (uint32_t i = 0; i < c->nent; i++) {
    struct kvm_cpuid_entry2 *e = &c->entries[i];
    if (e->function == 1) {
      e->ebx = (e->ebx & 0x00ffffff) | (vcpu->index << 24);
    } else if (e->function == 0xb || e->function == 0x1f) {
      e->edx = vcpu->index;
    }
  }
  int rc = vmm__kvm_ioctl(fd, KVM_SET_CPUID2, c, "KVM_SET_CPUID2");
  free(c);
  return rc < 0 ? rc : 0;
}

int vmm__kvm_vcpu_init(vmm_vcpu_t *vcpu) {
  struct vmm_kvm_vm *k = vmm_kvm_vm(vcpu->vm);
  pthread_once(&vmm_kvm_signal_once, vmm_kvm_install_signal);
  struct vmm_kvm_vcpu *kv = calloc(1, sizeof(*kv));
  if (kv == NULL) return VMM_ENOMEM;
  int rc;
  kv->fd = ioctl(k->vm_fd, KVM_CREATE_VCPU, (unsigned long)vcpu->index);
  if (kv->fd < 0) {
    VMM_LOG_E("kvm: KVM_CREATE_VCPU failed: %s", strerror(errno));
    rc = VMM_EBACKEND;
    goto err_create;
  }
  kv->run = mmap(NULL, k->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, kv->fd, 0);
  if (kv->run == MAP_FAILED) {
    rc = vmm__from_errno(errno);
    goto err_mmap;
  }
  rc = vmm_kvm_set_cpuid(vcpu, kv->fd);
  if (rc) goto err_cpuid;
  kv->run->kvm_valid_regs = k->sync_regs;
  vcpu->backend_data = kv;
  return 0;

err_cpuid:
  munmap(kv->run, k->run_size);
err_mmap:
  close(kv->fd);
err_create:
  free(kv);
  return rc;
}

void vmm__kvm_vcpu_fini(vmm_vcpu_t *vcpu) {
  struct vmm_kvm_vcpu *kv = vmm_kvm_vcpu(vcpu);
  if (kv == NULL) return;
  munmap(kv->run, vmm_kvm_vm(vcpu->vm)->run_size);
  close(kv->fd);
  free(kv);
  vcpu->backend_data = NULL;
}

/* Pushes registers written into the shared kvm_run area to KVM now, so that an ioctl reading
 * or writing registers does not race with a deferred write. */
static int vmm_kvm_apply_dirty(struct vmm_kvm_vcpu *kv) {
  if (!(kv->run->kvm_dirty_regs & KVM_SYNC_X86_REGS)) return 0;
  kv->run->kvm_dirty_regs &= ~(uint64_t)KVM_SYNC_X86_REGS;
  int rc = vmm__kvm_ioctl(kv->fd, KVM_SET_REGS, &kv->run->s.regs.regs, "KVM_SET_REGS");
  return rc < 0 ? rc : 0;
}

int vmm__kvm_get_regs(vmm_vcpu_t *vcpu, vmm_regs_t *regs) {
  struct vmm_kvm_vcpu *kv = vmm_kvm_vcpu(vcpu);
  _Static_assert(sizeof(vmm_regs_t) == sizeof(struct kvm_regs), "vmm_regs_t mirrors kvm_regs");
  if (kv->regs_valid) {
    memcpy(regs, &kv->run->s.regs.regs, sizeof(*regs));
    return 0;
  }
  int rc = vmm_kvm_apply_dirty(kv);
  if (rc) return rc;
  struct kvm_regs r;
  rc = vmm__kvm_ioctl(kv->fd, KVM_GET_REGS, &r, "KVM_GET_REGS");
  if (rc < 0) return rc;
  memcpy(regs, &r, sizeof(*regs));
  return 0;
}

/* Hands the data of a read or the result of a hypercall to KVM, which finishes the
 * instruction at the start of the next KVM_RUN. */
static void vmm_kvm_complete(struct vmm_kvm_vcpu *kv, const vmm_exit_t *exit) {
  struct kvm_run *run = kv->run;
  if (!kv->pending) return;
  if (exit->reason == VMM_EXIT_IO && run->exit_reason == KVM_EXIT_IO &&
      run->io.direction == KVM_EXIT_IO_IN && run->io.count == 1) {
    memcpy((uint8_t *)run + run->io.data_offset, &exit->io.data, run->io.size);
  } else if (exit->reason == VMM_EXIT_MMIO && run->exit_reason == KVM_EXIT_MMIO &&
             !run->mmio.is_write) {
    memcpy(run->mmio.data, &exit->mmio.data, run->mmio.len <= 8 ? run->mmio.len : 8);
  } else if (exit->reason == VMM_EXIT_HYPERCALL) {
    if (kv->regs_valid) {
      kv->run->s.regs.regs.rax = exit->hypercall.result;
      kv->run->kvm_dirty_regs |= KVM_SYNC_X86_REGS;
    } else {
      struct kvm_regs r;
      if (ioctl(kv->fd, KVM_GET_REGS, &r) == 0) {
        r.rax = exit->hypercall.result;
        ioctl(kv->fd, KVM_SET_REGS, &r);
      }
    }
  }
}

int vmm__kvm_flush_pending(vmm_vcpu_t *vcpu, const vmm_exit_t *exit) {
  struct vmm_kvm_vcpu *kv = vmm_kvm_vcpu(vcpu);
  if (!kv->pending) return 0;
  vmm_kvm_complete(kv, exit);
  /* KVM_RUN with immediate_exit finishes the instruction and returns EINTR without entering
   * the guest. A kick that arrived meanwhile keeps immediate_exit set for the next run. */
  kv->run->immediate_exit = 1;
  int r = ioctl(kv->fd, KVM_RUN, 0);
  int e = errno;
  if (!atomic_load(&kv->kicked)) kv->run->immediate_exit = 0;
  kv->pending = false;
  kv->regs_valid = false;
  if (r < 0 && e != EINTR && e != EAGAIN) {
    VMM_LOG_E("kvm: completing an exit failed: %s", strerror(e));
    return VMM_EBACKEND;
  }
  return 0;
}

int vmm__kvm_set_regs(vmm_vcpu_t *vcpu, const vmm_regs_t *regs) {
  struct vmm_kvm_vcpu *kv = vmm_kvm_vcpu(vcpu);
  int rc = vmm__kvm_flush_pending(vcpu, &vcpu->cur);
  if (rc) return rc;
  kv->run->kvm_dirty_regs &= ~(uint64_t)KVM_SYNC_X86_REGS;
  struct kvm_regs r;
  memcpy(&r, regs, sizeof(r));
  rc = vmm__kvm_ioctl(kv->fd, KVM_SET_REGS, &r, "KVM_SET_REGS");
  if (rc < 0) return rc;
  kv->regs_valid = false;
  return 0;
}

void vmm__kvm_vcpu_kick(vmm_vcpu_t *vcpu) {
  struct vmm_kvm_vcpu *kv = vmm_kvm_vcpu(vcpu);
  atomic_store(&kv->kicked, true);
  kv->run->immediate_exit = 1;
  int tid = atomic_load(&kv->tid);
  if (tid) syscall(SYS_tgkill, getpid(), tid, VMM_KVM_KICK_SIGNAL);
}

/* Per-thread: the kick signal unblocked once, and the thread id cached (gettid is a syscall,
 * and vcpu_run is entered once per exit). */
static __thread int vmm_kvm_thread_tid;

static int vmm_kvm_thread_prepare(void) {
  if (vmm_kvm_thread_tid) return vmm_kvm_thread_tid;
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, VMM_KVM_KICK_SIGNAL);
  pthread_sigmask(SIG_UNBLOCK, &s, NULL);
  vmm_kvm_thread_tid = (int)syscall(SYS_gettid);
  return vmm_kvm_thread_tid;
}

static bool vmm_kvm_in_page(uint64_t addr, uint64_t page) {
  return page && addr >= page && addr < page + VMM_PAGE_SIZE;
}

/* Translates the exit KVM just reported. Returns 1 to re-enter the guest at once. */
static int vmm_kvm_translate(vmm_vcpu_t *vcpu, struct vmm_kvm_vcpu *kv, vmm_exit_t *exit) {
  struct kvm_run *run = kv->run;
  memset(exit, 0, sizeof(*exit));
  switch (run->exit_reason) {
    case KVM_EXIT_IO: {
      uint8_t *data = (uint8_t *)run + run->io.data_offset;
      kv->pending = true;
      if (run->io.port == VMM_HC_PORT && run->io.direction == KVM_EXIT_IO_OUT &&
          run->io.size == 4 && run->io.count == 1) {
        vmm_regs_t r;
        if (vmm__kvm_get_regs(vcpu, &r) != 0) return -1;
        if (vmm_kvm_in_page(r.rip, vcpu->vm->hypercall_page_gpa)) {
          exit->reason = VMM_EXIT_HYPERCALL;
          exit->hypercall.nr = r.rax;
          exit->hypercall.args[0] = r.rdi;
          exit->hypercall.args[1] = r.rsi;
          exit->hypercall.args[2] = r.rdx;
          exit->hypercall.args[3] = r.r10;
          exit->hypercall.args[4] = r.r8;
          exit->hypercall.args[5] = r.r9;
          exit->hypercall.result = (uint64_t)(int64_t)VMM_ENOSYS;
          return 0;
        }
      }
      exit->reason = VMM_EXIT_IO;
      exit->io.port = run->io.port;
      exit->io.size = run->io.size;
      exit->io.is_write = run->io.direction == KVM_EXIT_IO_OUT;
      exit->io.count = run->io.count;
      exit->io.buf = data;
      if (run->io.count == 1) {
        if (exit->io.is_write)
          memcpy(&exit->io.data, data, run->io.size);
        else
          exit->io.data = run->io.size >= 4 ? 0xffffffffull : (1ull << (run->io.size * 8)) - 1;
      } else if (!exit->io.is_write) {
        memset(data, 0xff, (size_t)run->io.size * run->io.count);
      }
      return 0;
    }
    case KVM_EXIT_MMIO:
      kv->pending = true;
      exit->reason = VMM_EXIT_MMIO;
      exit->mmio.gpa = run->mmio.phys_addr;
      exit->mmio.size = (uint8_t)run->mmio.len;
      exit->mmio.is_write = run->mmio.is_write;
      if (run->mmio.is_write)
        memcpy(&exit->mmio.data, run->mmio.data, run->mmio.len <= 8 ? run->mmio.len : 8);
      else
        exit->mmio.data = run->mmio.len >= 8 ? ~0ull : (1ull << (run->mmio.len * 8)) - 1;
      return 0;
    case KVM_EXIT_HLT: exit->reason = VMM_EXIT_HLT; return 0;
    case KVM_EXIT_SHUTDOWN: exit->reason = VMM_EXIT_SHUTDOWN; return 0;
    case KVM_EXIT_SYSTEM_EVENT: exit->reason = VMM_EXIT_SHUTDOWN; return 0;
    case KVM_EXIT_DEBUG:
      exit->reason = VMM_EXIT_DEBUG;
      exit->debug.rip = run->debug.arch.pc;
      exit->debug.dr6 = run->debug.arch.dr6;
      return 0;
    case KVM_EXIT_INTR: return 1;
    case KVM_EXIT_INTERNAL_ERROR:
      vmm__exit_internal(exit, VMM_EBACKEND, "KVM internal error, suberror %u",
                         run->internal.suberror);
      exit->internal.suberror = run->internal.suberror;
      for (uint32_t i = 0; i < run->internal.ndata && i < 4; i++)
        exit->internal.data[i] = run->internal.data[i];
      return 0;
    case KVM_EXIT_FAIL_ENTRY:
      vmm__exit_internal(exit, VMM_EBACKEND, "KVM entry failed, reason %#llx",
                         (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
      exit->internal.data[0] = run->fail_entry.hardware_entry_failure_reason;
      return 0;
    default:
      vmm__exit_internal(exit, VMM_EBACKEND, "unexpected KVM exit %u", run->exit_reason);
      return 0;
  }
}

int vmm__kvm_vcpu_run(vmm_vcpu_t *vcpu, vmm_exit_t *exit) {
  struct vmm_kvm_vcpu *kv = vmm_kvm_vcpu(vcpu);
  int tid = vmm_kvm_thread_prepare();
  vmm_kvm_complete(kv, exit);
  kv->pending = false;
  atomic_store(&kv->tid, tid);
  for (;;) {
    if (atomic_load(&kv->kicked)) kv->run->immediate_exit = 1;
    kv->runs++;
    int r = ioctl(kv->fd, KVM_RUN, 0);
    int e = errno;
    kv->regs_valid = (kv->run->kvm_valid_regs & KVM_SYNC_X86_REGS) != 0 && r == 0;
    if (r < 0) {
      if (e != EINTR && e != EAGAIN) {
        atomic_store(&kv->tid, 0);
        vmm__exit_internal(exit, VMM_EBACKEND, "KVM_RUN failed: %s", strerror(e));
        return 0;
      }
      kv->eintr++;
      if (atomic_exchange(&kv->kicked, false)) {
        kv->run->immediate_exit = 0;
        atomic_store(&kv->tid, 0);
        memset(exit, 0, sizeof(*exit));
        exit->reason = VMM_EXIT_KICKED;
        return 0;
      }
      continue;
    }
    int t = vmm_kvm_translate(vcpu, kv, exit);
    if (t < 0) {
      atomic_store(&kv->tid, 0);
      return VMM_EBACKEND;
    }
    if (t == 0) break;
  }
  atomic_store(&kv->tid, 0);
  return 0;
}

int vmm__kvm_set_single_step(vmm_vcpu_t *vcpu, bool enable) {
  struct vmm_kvm_vcpu *kv = vmm_kvm_vcpu(vcpu);
  struct kvm_guest_debug dbg;
  memset(&dbg, 0, sizeof(dbg));
  if (enable) dbg.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP;
  int rc = vmm__kvm_ioctl(kv->fd, KVM_SET_GUEST_DEBUG, &dbg, "KVM_SET_GUEST_DEBUG");
  if (rc < 0) return rc;
  kv->single_step = enable;
  return 0;
}

size_t vmm__kvm_vcpu_stats(vmm_vcpu_t *vcpu, vmm_stat_t *out, size_t cap) {
  struct vmm_kvm_vcpu *kv = vmm_kvm_vcpu(vcpu);
  const struct {
    const char *name;
    uint64_t value;
  } s[] = {{"kvm.runs", kv->runs}, {"kvm.eintr", kv->eintr}};
  for (size_t i = 0; i < VMM_ARRAY_SIZE(s) && i < cap; i++) {
    snprintf(out[i].name, sizeof(out[i].name), "%s", s[i].name);
    out[i].value = s[i].value;
  }
  return VMM_ARRAY_SIZE(s);
}
