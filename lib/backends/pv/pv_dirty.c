/* pv backend: dirty-page logging. Each sandbox hands the library a userfaultfd of its address
 * space (pv_stub.c); guest RAM under logging is registered for write-protection in the kernel's
 * asynchronous mode, where a write to a protected page only marks it written and goes on, with
 * no stop of the guest. PAGEMAP_SCAN on the sandbox's /proc/PID/pagemap reports the written
 * pages and protects them again in one step, from any thread, even while the guest runs. */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "pv.h"

/* From Linux 6.7 uapi headers, which older distributions lack. */
#define VMM_UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1ull << 12)
#define VMM_UFFD_FEATURE_WP_UNPOPULATED (1ull << 13)
#define VMM_UFFD_FEATURE_WP_ASYNC (1ull << 15)
#define VMM_UFFD_WANT                                                              \
  (VMM_UFFD_FEATURE_WP_HUGETLBFS_SHMEM | VMM_UFFD_FEATURE_WP_UNPOPULATED | \
   VMM_UFFD_FEATURE_WP_ASYNC)

struct vmm_page_region {
  uint64_t start, end, categories;
};

struct vmm_pm_scan_arg {
  uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
  uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};

#define VMM_PAGEMAP_SCAN _IOWR('f', 16, struct vmm_pm_scan_arg)
#define VMM_PAGE_IS_WRITTEN (1ull << 1)
#define VMM_PM_SCAN_WP_MATCHING (1ull << 0)
#define VMM_PM_SCAN_CHECK_WPASYNC (1ull << 1)

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

/* Adds the pages of `r` written in this sandbox since the last scan to `bitmap` and
 * write-protects them again. */
static int vmm_pv_scan(struct vmm_pv_vcpu *pv, const struct vmm_region *r, uint64_t *bitmap) {
  uint64_t lo, hi;
  vmm_pv_span(r, &lo, &hi);
  if (pv->pagemap < 0 || hi == lo) return 0;
  struct vmm_page_region vec[256];
  for (uint64_t start = lo; start < hi;) {
    struct vmm_pm_scan_arg a = {
        .size = sizeof(a),
        .flags = VMM_PM_SCAN_WP_MATCHING | VMM_PM_SCAN_CHECK_WPASYNC,
        .start = start,
        .end = hi,
        .vec = (uint64_t)(uintptr_t)vec,
        .vec_len = VMM_ARRAY_SIZE(vec),
        .category_mask = VMM_PAGE_IS_WRITTEN,
        .return_mask = VMM_PAGE_IS_WRITTEN,
    };
    long n = ioctl(pv->pagemap, VMM_PAGEMAP_SCAN, &a);
    if (n < 0) {
      /* ESRCH: the sandbox died (its tracer thread ended); the caller counts all as dirty. */
      if (errno == ESRCH) return VMM_ECHILD;
      VMM_LOG_E("pv: PAGEMAP_SCAN of sandbox %d: %s", (int)pv->pid, strerror(errno));
      return VMM_EBACKEND;
    }
    for (long i = 0; i < n; i++)
      vmm_pv_set_bits(bitmap, (vec[i].start - r->gpa) / VMM_PAGE_SIZE,
                      (vec[i].end - vec[i].start) / VMM_PAGE_SIZE);
    if (a.walk_end <= start || a.walk_end >= hi) break;
    start = a.walk_end;
  }
  return 0;
}

/* Makes a sandbox's userfaultfd usable and opens its pagemap: on first use only, which keeps
 * both off the path of VMs that never log. Called with child_lock held. */
static int vmm_pv_activate(struct vmm_pv_vcpu *pv) {
  if (pv->pagemap >= 0 || pv->uffd < 0) return 0;
  struct uffdio_api api = {.api = UFFD_API, .features = VMM_UFFD_WANT};
  if (ioctl(pv->uffd, UFFDIO_API, &api) != 0) {
    VMM_LOG_E("pv: no asynchronous userfaultfd write-protection: %s", strerror(errno));
    return VMM_ENOSYS;
  }
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pv->pid);
  pv->pagemap = open(path, O_RDONLY | O_CLOEXEC);
  if (pv->pagemap < 0) {
    VMM_LOG_E("pv: cannot open %s: %s", path, strerror(errno));
    return VMM_EBACKEND;
  }
  return 0;
}

int vmm__pv_dirty_track_range(struct vmm_pv_vcpu *pv, uint64_t lo, uint64_t len) {
  if (pv->uffd < 0 || pv->pagemap < 0 || len == 0) return 0;
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
  pv->pagemap = -1;
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

void vmm__pv_dirty_child_fini(vmm_vcpu_t *vcpu, bool alive) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  vmm_vm_t *vm = vcpu->vm;
  for (size_t i = 0; i < vm->nregions; i++) {
    struct vmm_region *r = vm->regions[i];
    struct vmm_pv_region *pr = r->backend_data;
    if (pr == NULL || pr->dirty == NULL) continue;
    /* A sandbox that died took its record along: count all of it as written. */
    if (!alive || vmm_pv_scan(pv, r, pr->dirty) != 0)
      vmm_pv_set_bits(pr->dirty, 0, r->size / VMM_PAGE_SIZE);
  }
  if (pv->pagemap >= 0) close(pv->pagemap);
  if (pv->uffd >= 0) close(pv->uffd);
  pv->pagemap = pv->uffd = -1;
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

int vmm__pv_dirty_log_get(vmm_vm_t *vm, struct vmm_region *r, uint64_t *bitmap) {
  struct vmm_pv_region *pr = r->backend_data;
  int rc = 0;
  for (size_t i = 0; i < VMM_MAX_VCPUS; i++) {
    vmm_vcpu_t *v = vm->vcpus[i];
    if (v == NULL || v->backend_data == NULL) continue;
    struct vmm_pv_vcpu *pv = vmm_pv_vcpu(v);
    pthread_mutex_lock(&pv->child_lock);
    int r2 = vmm_pv_scan(pv, r, bitmap);
    pthread_mutex_unlock(&pv->child_lock);
    if (r2 && rc == 0) rc = r2;
  }
  if (pr && pr->dirty) {
    size_t words = (r->size / VMM_PAGE_SIZE + 63) / 64;
    for (size_t w = 0; w < words; w++)
      bitmap[w] |= __atomic_exchange_n(&pr->dirty[w], 0, __ATOMIC_RELAXED);
  }
  return rc;
}

void vmm__pv_region_free(struct vmm_region *r) {
  struct vmm_pv_region *pr = r->backend_data;
  if (pr == NULL) return;
  free(pr->dirty);
  free(pr);
  r->backend_data = NULL;
}
