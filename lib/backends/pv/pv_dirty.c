/* pv backend: dirty-page logging. Each sandbox hands the library a userfaultfd of its address
 * space (pv_stub.c); guest RAM under logging is registered there for write-protection, with
 * faults turned into SIGBUS (UFFD_FEATURE_SIGBUS). The first write to a protected page stops
 * the sandbox with that signal; the vCPU thread notes the page, lifts the protection of that
 * page in that sandbox and resumes the guest, which repeats the write. A log read returns the
 * noted pages and protects them again, in every sandbox; a roll back's read may leave them
 * writable (then every later read returns them until one protects them). So a read costs in
 * proportion to the pages written, not to the size of RAM. */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "pv.h"

/* From Linux 6.4 uapi headers, which older distributions lack. */
#define VMM_UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1ull << 12)
#define VMM_UFFD_FEATURE_WP_UNPOPULATED (1ull << 13)
#define VMM_UFFD_WANT                                                              \
  (VMM_UFFD_FEATURE_WP_HUGETLBFS_SHMEM | VMM_UFFD_FEATURE_WP_UNPOPULATED | \
   UFFD_FEATURE_SIGBUS)

uint64_t vmm__pv_uffd_features(void) { return VMM_UFFD_WANT; }

static void vmm_pv_span(const struct vmm_region *r, uint64_t *lo, uint64_t *hi) {
  uint64_t floor = vmm__pv_map_floor();
  *lo = r->gpa > floor ? r->gpa : floor;
  *hi = r->gpa + r->size;
  if (*hi < *lo) *hi = *lo;
}

/* Registers (and write-protects) or unregisters one region in one sandbox. */
static int vmm_pv_track(struct vmm_pv_vcpu *pv, const struct vmm_region *r, bool on) {
  uint64_t lo, hi;
  vmm_pv_span(r, &lo, &hi);
  if (pv->uffd < 0 || hi == lo) return 0;
  if (!on) {
    struct uffdio_range range = {lo, hi - lo};
    ioctl(pv->uffd, UFFDIO_UNREGISTER, &range);
    return 0;
  }
  struct uffdio_register reg = {.range = {lo, hi - lo}, .mode = UFFDIO_REGISTER_MODE_WP};
  struct uffdio_writeprotect wp = {.range = {lo, hi - lo}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
  if (ioctl(pv->uffd, UFFDIO_REGISTER, &reg) != 0 ||
      ioctl(pv->uffd, UFFDIO_WRITEPROTECT, &wp) != 0) {
    VMM_LOG_E("pv: cannot write-protect [%#llx, %#llx) for dirty logging: %s",
              (unsigned long long)lo, (unsigned long long)hi, strerror(errno));
    return VMM_EBACKEND;
  }
  return 0;
}

static void vmm_pv_set_bits(uint64_t *bitmap, uint64_t first, uint64_t count) {
  for (uint64_t i = first; i < first + count; i++)
    __atomic_fetch_or(&bitmap[i / 64], 1ull << (i % 64), __ATOMIC_RELAXED);
}

/* Write-protects again, in one sandbox, the pages of `r` set in `pages`, run by run. */
static int vmm_pv_protect(struct vmm_pv_vcpu *pv, const struct vmm_region *r,
                          const uint64_t *pages) {
  uint64_t lo, hi;
  vmm_pv_span(r, &lo, &hi);
  if (!pv->uffd_on || hi == lo) return 0;
  atomic_fetch_add(&pv->protect_gen, 1);
  uint64_t n = r->size / VMM_PAGE_SIZE;
  for (uint64_t pg = 0; pg < n;) {
    if (pages[pg / 64] == 0 && pg % 64 == 0) {
      pg += 64;
      continue;
    }
    if (!((pages[pg / 64] >> (pg % 64)) & 1)) {
      pg++;
      continue;
    }
    uint64_t end = pg + 1;
    while (end < n && ((pages[end / 64] >> (end % 64)) & 1)) end++;
    uint64_t a = r->gpa + pg * VMM_PAGE_SIZE, b = r->gpa + end * VMM_PAGE_SIZE;
    if (a < lo) a = lo;
    if (b > hi) b = hi;
    pg = end;
    if (a >= b) continue;
    struct uffdio_writeprotect wp = {.range = {a, b - a}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    if (ioctl(pv->uffd, UFFDIO_WRITEPROTECT, &wp) != 0) {
      if (errno == ESRCH || errno == ENOENT) return VMM_ECHILD; /* the sandbox is going */
      VMM_LOG_E("pv: cannot write-protect [%#llx, %#llx) again: %s", (unsigned long long)a,
                (unsigned long long)b, strerror(errno));
      return VMM_EBACKEND;
    }
  }
  return 0;
}

/* Makes a sandbox's userfaultfd usable: on first use only, which keeps it off the path of VMs
 * that never log. Called with child_lock held. */
static int vmm_pv_activate(struct vmm_pv_vcpu *pv) {
  if (pv->uffd_on || pv->uffd < 0) return 0;
  struct uffdio_api api = {.api = UFFD_API, .features = VMM_UFFD_WANT};
  if (ioctl(pv->uffd, UFFDIO_API, &api) != 0) {
    VMM_LOG_E("pv: no userfaultfd write-protection of shared memory: %s", strerror(errno));
    return VMM_ENOSYS;
  }
  pv->uffd_on = true;
  return 0;
}

int vmm__pv_dirty_track_range(struct vmm_pv_vcpu *pv, uint64_t lo, uint64_t len) {
  if (pv->uffd < 0 || !pv->uffd_on || len == 0) return 0;
  struct uffdio_register reg = {.range = {lo, len}, .mode = UFFDIO_REGISTER_MODE_WP};
  struct uffdio_writeprotect wp = {.range = {lo, len}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
  if (ioctl(pv->uffd, UFFDIO_REGISTER, &reg) != 0 ||
      ioctl(pv->uffd, UFFDIO_WRITEPROTECT, &wp) != 0) {
    VMM_LOG_E("pv: cannot write-protect [%#llx, %#llx) for dirty logging: %s",
              (unsigned long long)lo, (unsigned long long)(lo + len), strerror(errno));
    return VMM_EBACKEND;
  }
  return 0;
}

int vmm__pv_dirty_child_init(vmm_vcpu_t *vcpu, int uffd) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  vmm_vm_t *vm = vcpu->vm;
  pv->uffd = uffd;
  pv->uffd_on = false;
  /* A region is under logging from the moment its record exists (dirty_log_enable makes it
   * before it looks at the sandboxes, and the core sets r->dirty_log only afterwards). */
  for (size_t i = 0; i < vm->nregions; i++) {
    if (vm->regions[i]->backend_data == NULL) continue;
    int rc = vmm_pv_activate(pv);
    if (rc == 0) rc = vmm_pv_track(pv, vm->regions[i], true);
    if (rc) return rc;
  }
  return 0;
}

int vmm__pv_dirty_fault(vmm_vcpu_t *vcpu, uint64_t addr) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  vmm_vm_t *vm = vcpu->vm;
  if (pv->uffd < 0 || !pv->uffd_on) return 0;
  for (size_t i = 0; i < vm->nregions; i++) {
    struct vmm_region *r = vm->regions[i];
    struct vmm_pv_region *pr = r->backend_data;
    if (addr - r->gpa >= r->size || pr == NULL || (r->flags & VMM_MEM_READONLY)) continue;
    uint64_t lo, hi, page = addr & ~(uint64_t)(VMM_PAGE_SIZE - 1);
    vmm_pv_span(r, &lo, &hi);
    if (page < lo || page >= hi) return 0;
    /* Protection off first, the note second: a read between them finds the page on its next
     * round, never loses it. */
    struct uffdio_writeprotect wp = {.range = {page, VMM_PAGE_SIZE}, .mode = 0};
    pthread_mutex_lock(&pv->child_lock);
    int rc = ioctl(pv->uffd, UFFDIO_WRITEPROTECT, &wp);
    pthread_mutex_unlock(&pv->child_lock);
    if (rc != 0) {
      VMM_LOG_E("pv: cannot lift write-protection of %#llx: %s", (unsigned long long)page,
                strerror(errno));
      return VMM_EBACKEND;
    }
    vmm_pv_set_bits(pr->dirty, (page - r->gpa) / VMM_PAGE_SIZE, 1);
    pv->stat_wp_faults++;
    return 1;
  }
  return 0;
}

/* Every write a sandbox made to a protected page was noted when it faulted: nothing is lost
 * when it goes, dead or alive. */
void vmm__pv_dirty_child_fini(vmm_vcpu_t *vcpu, bool alive) {
  (void)alive;
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  if (pv->uffd >= 0) close(pv->uffd);
  pv->uffd = -1;
  pv->uffd_on = false;
}

int vmm__pv_dirty_log_enable(vmm_vm_t *vm, struct vmm_region *r, bool enable) {
  if (!vmm__pv_dirty_supported()) return VMM_ENOSYS;
  struct vmm_pv_region *pr = r->backend_data;
  if (enable && pr == NULL) {
    pr = calloc(1, sizeof(*pr));
    if (pr) pr->dirty = calloc((r->size / VMM_PAGE_SIZE + 63) / 64, sizeof(uint64_t));
    if (pr == NULL || pr->dirty == NULL) {
      free(pr);
      return VMM_ENOMEM;
    }
    r->backend_data = pr;
  }
  int rc = 0;
  for (size_t i = 0; i < VMM_MAX_VCPUS && rc == 0; i++) {
    vmm_vcpu_t *v = vm->vcpus[i];
    if (v == NULL || v->backend_data == NULL) continue;
    struct vmm_pv_vcpu *pv = vmm_pv_vcpu(v);
    pthread_mutex_lock(&pv->child_lock);
    /* A sandbox still starting registers what is logged when it is ready. */
    bool ready = pv->pid > 0 && !pv->starting;
    if (ready && enable) rc = vmm_pv_activate(pv);
    if (rc == 0 && ready) rc = vmm_pv_track(pv, r, enable);
    pthread_mutex_unlock(&pv->child_lock);
  }
  if (!enable || rc) vmm__pv_region_free(r);
  return rc;
}

static int vmm_pv_dirty_read(vmm_vm_t *vm, struct vmm_region *r, uint64_t *bitmap, bool keep) {
  struct vmm_pv_region *pr = r->backend_data;
  if (pr == NULL) return VMM_ESTATE;
  size_t words = (r->size / VMM_PAGE_SIZE + 63) / 64;
  for (size_t w = 0; w < words; w++)
    bitmap[w] |= __atomic_exchange_n(&pr->dirty[w], 0, __ATOMIC_RELAXED);
  if (keep) return 0;
  /* Protected again: what was found and what the caller passed in (pages kept before). */
  int rc = 0;
  for (size_t i = 0; i < VMM_MAX_VCPUS; i++) {
    vmm_vcpu_t *v = vm->vcpus[i];
    if (v == NULL || v->backend_data == NULL) continue;
    struct vmm_pv_vcpu *pv = vmm_pv_vcpu(v);
    pthread_mutex_lock(&pv->child_lock);
    int r2 = vmm_pv_protect(pv, r, bitmap);
    pthread_mutex_unlock(&pv->child_lock);
    /* A sandbox that is going protects nothing any more; its successor starts protected. */
    if (r2 && r2 != VMM_ECHILD && rc == 0) rc = r2;
  }
  return rc;
}

int vmm__pv_dirty_log_get(vmm_vm_t *vm, struct vmm_region *r, uint64_t *bitmap) {
  return vmm_pv_dirty_read(vm, r, bitmap, false);
}

int vmm__pv_dirty_log_get_keep(vmm_vm_t *vm, struct vmm_region *r, uint64_t *bitmap) {
  return vmm_pv_dirty_read(vm, r, bitmap, true);
}

void vmm__pv_region_free(struct vmm_region *r) {
  struct vmm_pv_region *pr = r->backend_data;
  if (pr == NULL) return;
  free(pr->dirty);
  free(pr);
  r->backend_data = NULL;
}
