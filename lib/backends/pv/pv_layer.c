/* pv backend: clones' layered RAM. A sandbox maps a layered region from the snapshot's shared
 * base file, read-only, and keeps the clone's own file open (pv_stub.c). A guest write to a base
 * page faults; the page becomes the VM's own (the core copies it into the own file) and the
 * tracer maps it there with an mmap call made in the sandbox through the stub's syscall gadget,
 * at a stop, before the guest resumes.
 *
 * Coherence across vCPUs (one sandbox each): a page becomes owned under the VM's own_lock,
 * after every other vCPU that runs guest code has stopped (a SIGSTOP its tracer swallows) with
 * the range queued for it; a tracer takes own_lock to work through its queue and to mark itself
 * in the guest again. So no sandbox runs with a base mapping of a page whose own copy may have
 * been written. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pv.h"
#include "pv_proto.h"

/* Runs one system call in the stopped sandbox through the stub's gadget (`syscall; ret`,
 * the only place its seccomp filter accepts calls from), with the guest's registers put back
 * afterwards. */
static int vmm_pv_remote_call(struct vmm_pv_vcpu *pv, long nr, const long a[6], long *ret) {
  struct user_regs_struct saved, r;
  if (ptrace(PTRACE_GETREGS, pv->pid, 0, &saved) != 0)
    return vmm__pv_ptrace_failed(pv, "PTRACE_GETREGS");
  r = saved;
  r.rip = VMM_PV_GADGET_SELF;
  r.rax = (unsigned long long)nr;
  r.orig_rax = (unsigned long long)-1; /* no system call restart on the way back */
  r.rdi = (unsigned long long)a[0];
  r.rsi = (unsigned long long)a[1];
  r.rdx = (unsigned long long)a[2];
  r.r10 = (unsigned long long)a[3];
  r.r8 = (unsigned long long)a[4];
  r.r9 = (unsigned long long)a[5];
  r.eflags &= ~0x100ull; /* TF: the single step below sets its own */
  if (ptrace(PTRACE_SETREGS, pv->pid, 0, &r) != 0)
    return vmm__pv_ptrace_failed(pv, "PTRACE_SETREGS");
  bool restop = false;
  int rc = 0;
  for (int tries = 0;; tries++) {
    if (ptrace(PTRACE_SINGLESTEP, pv->pid, 0, 0) != 0) {
      rc = vmm__pv_ptrace_failed(pv, "PTRACE_SINGLESTEP");
      break;
    }
    int st;
    if (vmm__pv_wait(pv->pid, &st) != 0 || !WIFSTOPPED(st)) return VMM_ECHILD; /* gone */
    if (ptrace(PTRACE_GETREGS, pv->pid, 0, &r) != 0) {
      rc = vmm__pv_ptrace_failed(pv, "PTRACE_GETREGS");
      break;
    }
    /* A kick's SIGSTOP (or another signal) may stop it first: let it go again after the call. */
    if (WSTOPSIG(st) == SIGSTOP) restop = true;
    /* After the `syscall` (whatever stopped it there): the call was made. */
    if (r.rip == VMM_PV_GADGET_SELF + 2) {
      *ret = (long)r.rax;
      break;
    }
    if (tries >= 8 || r.rip != VMM_PV_GADGET_SELF) {
      VMM_LOG_E("pv: call %ld in sandbox %d stopped at %#llx with signal %d", nr, (int)pv->pid,
                (unsigned long long)r.rip, WSTOPSIG(st));
      rc = VMM_EBACKEND;
      break;
    }
  }
  /* The guest's registers go back whatever happened, while the sandbox lives. */
  if (ptrace(PTRACE_SETREGS, pv->pid, 0, &saved) != 0 && rc == 0)
    rc = vmm__pv_ptrace_failed(pv, "PTRACE_SETREGS");
  int fd = atomic_load(&pv->pidfd);
  if (restop && fd >= 0) syscall(SYS_pidfd_send_signal, fd, SIGSTOP, NULL, 0);
  return rc;
}

static size_t vmm_pv_region_index(const vmm_vm_t *vm, const struct vmm_region *r) {
  for (size_t i = 0; i < vm->nregions; i++)
    if (vm->regions[i] == r) return i;
  return vm->nregions;
}

/* Maps the own pages among [first, first+n) of r from the kept fd, run by run. */
static int vmm_pv_map_own(vmm_vcpu_t *vcpu, struct vmm_region *r, uint64_t first, uint64_t n) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  uint64_t floor = vmm__pv_map_floor();
  long fd = VMM_PV_KEEP_FD_BASE + (long)vmm_pv_region_index(vcpu->vm, r);
  int prot = PROT_READ | PROT_EXEC | ((r->flags & VMM_MEM_READONLY) ? 0 : PROT_WRITE);
  for (uint64_t pg = first; pg < first + n;) {
    if (!vmm__region_page_owned(r, pg)) {
      pg++;
      continue;
    }
    uint64_t run = 1;
    while (pg + run < first + n && vmm__region_page_owned(r, pg + run)) run++;
    uint64_t lo = r->gpa + pg * VMM_PAGE_SIZE, hi = lo + run * VMM_PAGE_SIZE;
    pg += run;
    if (lo < floor) lo = floor < hi ? floor : hi;
    if (lo == hi) continue;
    const long a[6] = {(long)lo, (long)(hi - lo), prot, MAP_SHARED | MAP_FIXED, fd,
                       (long)(lo - r->gpa)};
    long got = 0;
    int rc = vmm_pv_remote_call(pv, __NR_mmap, a, &got);
    if (rc) return rc;
    if (got != (long)lo) {
      VMM_LOG_E("pv: sandbox %d could not map a clone's own pages at %#llx: error %ld",
                (int)pv->pid, (unsigned long long)lo, -got);
      return VMM_EBACKEND;
    }
    pv->stat_remaps++;
    /* The new mapping is not under the old one's dirty tracking. */
    pthread_mutex_lock(&pv->child_lock);
    rc = r->backend_data ? vmm__pv_dirty_track_range(pv, lo, hi - lo) : 0;
    pthread_mutex_unlock(&pv->child_lock);
    if (rc) return rc;
  }
  return 0;
}

int vmm__pv_layer_enter(vmm_vcpu_t *vcpu) {
  struct vmm_pv_vm *pvm = vmm_pv_vm(vcpu->vm);
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  if (!pvm->layered) return 0;
  pthread_mutex_lock(&pvm->own_lock);
  pthread_mutex_lock(&pv->remap_lock);
  struct vmm_pv_range *list = pv->remap;
  size_t n = pv->nremap;
  bool all = pv->remap_all;
  pv->remap = NULL;
  pv->nremap = pv->remap_cap = 0;
  pv->remap_all = false;
  pthread_mutex_unlock(&pv->remap_lock);
  int rc = 0;
  vmm_vm_t *vm = vcpu->vm;
  for (size_t i = 0; all && rc == 0 && i < vm->nregions; i++)
    if (vm->regions[i]->layered)
      rc = vmm_pv_map_own(vcpu, vm->regions[i], 0, vm->regions[i]->size / VMM_PAGE_SIZE);
  for (size_t i = 0; !all && rc == 0 && i < n; i++) {
    struct vmm_region *r = vmm__region_find(vm, list[i].gpa, list[i].len);
    if (r && r->layered)
      rc = vmm_pv_map_own(vcpu, r, (list[i].gpa - r->gpa) / VMM_PAGE_SIZE,
                          list[i].len / VMM_PAGE_SIZE);
  }
  free(list);
  pthread_mutex_lock(&pv->remap_lock);
  if (rc) pv->remap_all = true; /* Try everything again at the next resume. */
  else pv->in_guest = true;
  pthread_mutex_unlock(&pv->remap_lock);
  pthread_mutex_unlock(&pvm->own_lock);
  return rc;
}

void vmm__pv_layer_leave(vmm_vcpu_t *vcpu) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  if (!vmm_pv_vm(vcpu->vm)->layered) return;
  pthread_mutex_lock(&pv->remap_lock);
  pv->in_guest = false;
  pthread_cond_broadcast(&pv->remap_cv);
  pthread_mutex_unlock(&pv->remap_lock);
}

/* Queues a range for one vCPU (remap_lock held); on allocation failure, everything. */
static void vmm_pv_queue(struct vmm_pv_vcpu *pv, uint64_t gpa, uint64_t len) {
  if (pv->remap_all) return;
  if (pv->nremap == pv->remap_cap) {
    size_t cap = pv->remap_cap ? pv->remap_cap * 2 : 16;
    struct vmm_pv_range *n = cap <= 65536 ? realloc(pv->remap, cap * sizeof(*n)) : NULL;
    if (n == NULL) {
      pv->remap_all = true;
      return;
    }
    pv->remap = n;
    pv->remap_cap = cap;
  }
  pv->remap[pv->nremap++] = (struct vmm_pv_range){gpa, len};
}

int vmm__pv_own_pages(vmm_vm_t *vm, struct vmm_region *r, uint64_t first, uint64_t n) {
  struct vmm_pv_vm *pvm = vmm_pv_vm(vm);
  uint64_t gpa = r->gpa + first * VMM_PAGE_SIZE, len = n * VMM_PAGE_SIZE;
  pthread_mutex_lock(&pvm->own_lock);
  for (size_t i = 0; i < VMM_MAX_VCPUS; i++) {
    vmm_vcpu_t *v = vm->vcpus[i];
    if (v == NULL || v->backend_data == NULL) continue;
    struct vmm_pv_vcpu *pv = vmm_pv_vcpu(v);
    pthread_mutex_lock(&pv->remap_lock);
    vmm_pv_queue(pv, gpa, len);
    /* A sandbox running guest code may read the base copy: stop it first. Its tracer
     * swallows the SIGSTOP (no kick is pending for it) and waits for own_lock to remap. */
    bool sent = false;
    while (pv->in_guest) {
      int fd = atomic_load(&pv->pidfd);
      if (!sent && fd >= 0) syscall(SYS_pidfd_send_signal, fd, SIGSTOP, NULL, 0);
      sent = true;
      struct timespec until;
      clock_gettime(CLOCK_REALTIME, &until);
      until.tv_sec += 1;
      if (pthread_cond_timedwait(&pv->remap_cv, &pv->remap_lock, &until) == ETIMEDOUT)
        sent = false; /* signal again */
    }
    pthread_mutex_unlock(&pv->remap_lock);
  }
  uint64_t f = first, c = n;
  int rc = vmm__region_own_now(r, &f, &c);
  if (rc == 0 && (f != first || c != n)) {
    /* The whole region became owned: every sandbox maps all of it (none resumes before, as
     * resuming takes own_lock). */
    for (size_t i = 0; i < VMM_MAX_VCPUS; i++) {
      vmm_vcpu_t *v = vm->vcpus[i];
      if (v == NULL || v->backend_data == NULL) continue;
      struct vmm_pv_vcpu *pv = vmm_pv_vcpu(v);
      pthread_mutex_lock(&pv->remap_lock);
      vmm_pv_queue(pv, r->gpa + f * VMM_PAGE_SIZE, c * VMM_PAGE_SIZE);
      pthread_mutex_unlock(&pv->remap_lock);
    }
  }
  pthread_mutex_unlock(&pvm->own_lock);
  return rc;
}

int vmm__pv_layer_write_fault(vmm_vcpu_t *vcpu, struct vmm_region *r, uint64_t addr) {
  uint64_t off = (addr - r->gpa) & ~(uint64_t)(VMM_PAGE_SIZE - 1);
  int rc = vmm__region_own(vcpu->vm, r, off, VMM_PAGE_SIZE);
  if (rc) return rc;
  /* Owned already (by a host write or another vCPU) yet still faulting here: map it anyway. */
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  pthread_mutex_lock(&pv->remap_lock);
  vmm_pv_queue(pv, r->gpa + off, VMM_PAGE_SIZE);
  pthread_mutex_unlock(&pv->remap_lock);
  return 0;
}
