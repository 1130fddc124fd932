/* bt backend: probing, VM objects, RAM regions, the CPUID table and the hypercall page. */
#include <cpuid.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "bt.h"

static bool bt_host_avx(uint64_t *xcr0) {
  unsigned a, b, c, d;
  *xcr0 = 1;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  if (!(c & (1u << 27))) return false; /* OSXSAVE */
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  *xcr0 = ((uint64_t)hi << 32) | lo;
  return (c & (1u << 28)) && (lo & 6) == 6;
}

static bool bt_host_cpu_ok;

static void bt_probe_cpu(void) {
  unsigned a, b, c, d;
  bt_host_cpu_ok = __get_cpuid(1, &a, &b, &c, &d) && (d & (1u << 24)) && (d & (1u << 26));
}

static atomic_bool bt_space_ok;

/* Each vCPU needs a little more than 4 GiB of address space: can this process have that? */
static void bt_probe_space(void) {
  size_t len = BT_WINDOW_SIZE * 2;
  void *p = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p != MAP_FAILED) munmap(p, len);
  atomic_store(&bt_space_ok, p != MAP_FAILED);
}

static int bt_probe(void) {
  /* Once per process, as every VM creation probes: the address space check costs two system
   * calls (a clone's creation makes about twenty in all), CPUID a trip to the host under
   * nested virtualization. A process that later runs out of address space gets VMM_ENOMEM
   * from vmm_vcpu_create(). */
  static pthread_once_t space_once = PTHREAD_ONCE_INIT, once = PTHREAD_ONCE_INIT;
  pthread_once(&space_once, bt_probe_space);
  if (!atomic_load(&bt_space_ok)) {
    VMM_LOG_I("bt: cannot reserve address space for a guest window");
    return VMM_ENODEV;
  }
  pthread_once(&once, bt_probe_cpu);
  if (!bt_host_cpu_ok) {
    VMM_LOG_I("bt: the host lacks FXSR or SSE2");
    return VMM_ENODEV;
  }
  return 0;
}

/* ---- CPUID: the host's, minus what bt does not offer, plus the hypervisor leaves ---- */

static void bt_cpuid_mask(uint32_t leaf, uint32_t sub, uint32_t r[4], bool avx) {
  switch (leaf) {
    case 1:
      /* ECX: keep SSE3 PCLMUL SSSE3 FMA CX16 SSE4.1 SSE4.2 MOVBE POPCNT AES XSAVE AVX F16C
       * RDRAND; drop MONITOR VMX SMX EST TM2 CNXT-ID SDBG xTPR PDCM PCID DCA x2APIC
       * TSC-deadline; OSXSAVE follows CR4; set the hypervisor bit. */
      r[2] &= (1u << 0) | (1u << 1) | (1u << 9) | (1u << 12) | (1u << 13) | (1u << 19) |
              (1u << 20) | (1u << 22) | (1u << 23) | (1u << 25) | (1u << 26) | (1u << 28) |
              (1u << 29) | (1u << 30);
      if (!avx) r[2] &= ~((1u << 28) | (1u << 12) | (1u << 29));
      r[2] |= 1u << 31;
      /* EDX: drop APIC, SEP (SYSENTER), MTRR?, ACPI, TM, PBE, PSN, DS. */
      r[3] &= ~((1u << 9) | (1u << 11) | (1u << 18) | (1u << 21) | (1u << 22) | (1u << 29) |
                (1u << 31));
      r[1] &= 0x0000ffffu; /* APIC id set per vCPU, one logical processor */
      r[1] |= 1u << 16;
      break;
    case 5: case 6: case 0xa: case 0xf: case 0x10: case 0x12: case 0x14: case 0x18:
    case 0x1b: case 0x1c: case 0x1d: case 0x1e: case 0x20:
      r[0] = r[1] = r[2] = r[3] = 0;
      break;
    case 7:
      if (sub == 0) {
        /* EBX: BMI1 AVX2 BMI2 ERMS RDSEED ADX CLFLUSHOPT CLWB SHA */
        r[1] &= (1u << 3) | (1u << 5) | (1u << 8) | (1u << 9) | (1u << 18) | (1u << 19) |
                (1u << 23) | (1u << 24) | (1u << 29);
        if (!avx) r[1] &= ~(1u << 5);
        /* ECX: GFNI VAES VPCLMULQDQ RDPID */
        r[2] &= (1u << 8) | (1u << 9) | (1u << 10) | (1u << 22);
        if (!avx) r[2] &= ~((1u << 9) | (1u << 10));
        r[3] &= 1u << 4; /* FSRM */
        r[0] = r[0] >= 1 ? 1 : 0;
      } else if (sub == 1) {
        r[0] &= avx ? (1u << 4) : 0; /* AVX-VNNI */
        r[1] = r[2] = r[3] = 0;
      } else {
        r[0] = r[1] = r[2] = r[3] = 0;
      }
      break;
    case 0xd:
      if (sub == 0) {
        r[0] = avx ? 7 : 3;
        r[1] = avx ? 832 : 576;
        r[2] = avx ? 832 : 576;
        r[3] = 0;
      } else if (sub == 1) {
        r[0] &= 1u; /* XSAVEOPT only */
        r[1] = r[2] = r[3] = 0;
      } else if (sub == 2 && avx) {
        r[0] = 256;
        r[1] = 576;
        r[2] = r[3] = 0;
      } else {
        r[0] = r[1] = r[2] = r[3] = 0;
      }
      break;
    case 0x80000001:
      /* ECX: LAHF ABM SSE4A MISALIGNSSE PREFETCHW; EDX: SYSCALL NX MMXEXT RDTSCP LM */
      r[2] &= (1u << 0) | (1u << 5) | (1u << 6) | (1u << 7) | (1u << 8);
      r[3] &= (1u << 11) | (1u << 20) | (1u << 22) | (1u << 27) | (1u << 29) | 0x0183f3ffu;
      r[3] &= ~((1u << 9) | (1u << 12) | (1u << 26) | (1u << 25));
      break;
    case 0x80000007: r[0] = r[1] = r[2] = 0; r[3] &= 1u << 8; break;
    case 0x80000008: r[1] = 0; r[2] = 0; r[3] = 0; break;
    case 0x8000000a: r[0] = r[1] = r[2] = r[3] = 0; break;
    default:
      if (leaf > 0x80000008) r[0] = r[1] = r[2] = r[3] = 0;
      break;
  }
}

static bool bt_leaf_has_subleaves(uint32_t leaf) {
  return leaf == 4 || leaf == 7 || leaf == 0xb || leaf == 0xd || leaf == 0x1f ||
         leaf == 0x8000001d;
}

static int bt_cpuid_add(struct bt_vm *bvm, size_t *cap, uint32_t leaf, uint32_t sub, bool subl,
                        const uint32_t r[4]) {
  if (bvm->ncpuid == *cap) {
    size_t n = *cap ? *cap * 2 : 64;
    struct bt_cpuid_entry *e = realloc(bvm->cpuid, n * sizeof(*e));
    if (e == NULL) return VMM_ENOMEM;
    bvm->cpuid = e;
    *cap = n;
  }
  struct bt_cpuid_entry *e = &bvm->cpuid[bvm->ncpuid++];
  e->leaf = leaf;
  e->subleaf = sub;
  e->has_subleaf = subl;
  memcpy(e->regs, r, 16);
  return 0;
}

static int bt_cpuid_build(struct bt_vm *bvm) {
  size_t cap = 0;
  unsigned r[4];
  unsigned max = __get_cpuid_max(0, NULL);
  if (max > 0x20) max = 0x20;
  static const uint32_t bases[] = {0, 0x80000000u};
  for (size_t bi = 0; bi < 2; bi++) {
    uint32_t base = bases[bi];
    uint32_t top = base ? __get_cpuid_max(0x80000000u, NULL) : max;
    if (base && top > 0x80000021u) top = 0x80000021u;
    for (uint32_t leaf = base; leaf <= top; leaf++) {
      unsigned nsub = bt_leaf_has_subleaves(leaf) ? 64 : 1;
      for (uint32_t sub = 0; sub < nsub; sub++) {
        __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
        if (nsub > 1 && sub > 0) {
          if ((leaf == 4 || leaf == 0x8000001d) && (r[0] & 0x1f) == 0) break;
          if ((leaf == 0xb || leaf == 0x1f) && ((r[2] >> 8) & 0xff) == 0) break;
          if (leaf == 7 && sub > 1) break;
          if (leaf == 0xd && sub > 2) break;
        }
        uint32_t m[4] = {r[0], r[1], r[2], r[3]};
        if (leaf == 0) m[0] = max;
        if (leaf == 0x80000000u) m[0] = top;
        bt_cpuid_mask(leaf, sub, m, bvm->host_avx);
        if (bt_cpuid_add(bvm, &cap, leaf, sub, nsub > 1, m) != 0) return VMM_ENOMEM;
      }
    }
    if (base == 0) {
      /* The hypervisor leaf sits between the two ranges. */
      uint32_t hv[4] = {0x40000000u, 0, 0, 0};
      memcpy(&hv[1], "libv", 4);
      memcpy(&hv[2], "mm\0\0", 4);
      if (bt_cpuid_add(bvm, &cap, 0x40000000u, 0, false, hv) != 0) return VMM_ENOMEM;
    }
  }
  return 0;
}

/* ---- VM ---- */

/* The host's CPUID does not change while the process runs, and each CPUID instruction can
 * cost microseconds where the host is itself virtualized: the table is built once and every
 * VM starts from a copy. */
static pthread_mutex_t bt_host_lock = PTHREAD_MUTEX_INITIALIZER;
static struct bt_vm bt_host; /* host_avx, host_xcr0, cpuid, ncpuid; built on first use. */

static int bt_host_table(void) {
  int rc = 0;
  pthread_mutex_lock(&bt_host_lock);
  if (bt_host.cpuid == NULL) {
    bt_host.host_avx = bt_host_avx(&bt_host.host_xcr0);
    rc = bt_cpuid_build(&bt_host);
    if (rc) {
      free(bt_host.cpuid);
      bt_host.cpuid = NULL;
      bt_host.ncpuid = 0;
    }
  }
  pthread_mutex_unlock(&bt_host_lock);
  return rc;
}

static int bt_vm_init(vmm_vm_t *vm) {
  int rc = vmm__bt_signals_init();
  if (rc == 0) rc = bt_host_table();
  if (rc) return rc;
  struct bt_vm *bvm = calloc(1, sizeof(*bvm));
  if (bvm == NULL) return VMM_ENOMEM;
  bvm->cpuid = malloc(bt_host.ncpuid * sizeof(*bvm->cpuid));
  if (bvm->cpuid == NULL) {
    free(bvm);
    return VMM_ENOMEM;
  }
  memcpy(bvm->cpuid, bt_host.cpuid, bt_host.ncpuid * sizeof(*bvm->cpuid));
  bvm->ncpuid = bt_host.ncpuid;
  bvm->host_avx = bt_host.host_avx;
  bvm->host_xcr0 = bt_host.host_xcr0;
  pthread_rwlockattr_t ra;
  pthread_rwlockattr_init(&ra);
  pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(&bvm->run_lock, &ra);
  pthread_rwlockattr_destroy(&ra);
  vm->backend_data = bvm;
  return 0;
}

static void bt_vm_fini(vmm_vm_t *vm) {
  struct bt_vm *bvm = bt_vm(vm);
  if (bvm == NULL) return;
  pthread_rwlock_destroy(&bvm->run_lock);
  free(bvm->cpuid);
  free(bvm);
  vm->backend_data = NULL;
}

static size_t bt_bitmap_words(uint64_t size) { return (size_t)((size / VMM_PAGE_SIZE + 63) / 64); }

/* ---- dirty logging: write-protection and write faults, per 4 KiB page ---- */

enum bt_stop_then { BT_STOP_FLUSH, BT_STOP_REVOKE, BT_STOP_ONLY };

/* Runs fn with every vCPU of the VM outside guest code, after emptying their windows (FLUSH)
 * or protecting again the pages made writable since the last log read (REVOKE), so that the
 * next write to any page faults again; ONLY leaves the windows to fn. */
static void bt_with_vcpus_stopped(vmm_vm_t *vm, void (*fn)(struct vmm_region *, void *),
                                  struct vmm_region *r, void *arg, enum bt_stop_then then) {
  struct bt_vm *bvm = bt_vm(vm);
  struct bt_vcpu *self = vmm__bt_current();
  bool own = self && self->vcpu->vm == vm && self->in_run_lock;
  if (own) pthread_rwlock_unlock(&bvm->run_lock); /* called from a handler on a vCPU thread */
  for (;;) {
    for (uint32_t i = 0; i < VMM_MAX_VCPUS; i++) {
      vmm_vcpu_t *c = vm->vcpus[i];
      if (c && c->backend_data && bt_vcpu(c) != self) {
        __atomic_or_fetch(&bt_vcpu(c)->ctrl->kick, 2ull, __ATOMIC_SEQ_CST);
        vmm__bt_kick_signal(bt_vcpu(c));
      }
    }
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += 10000000;
    if (until.tv_nsec >= 1000000000) until.tv_sec++, until.tv_nsec -= 1000000000;
    if (pthread_rwlock_timedwrlock(&bvm->run_lock, &until) == 0) break;
  }
  for (uint32_t i = 0; i < VMM_MAX_VCPUS && then != BT_STOP_ONLY; i++) {
    vmm_vcpu_t *c = vm->vcpus[i];
    if (c && c->backend_data) {
      if (then == BT_STOP_FLUSH) vmm__bt_window_flush(bt_vcpu(c));
      else vmm__bt_window_revoke_writes(bt_vcpu(c));
    }
  }
  fn(r, arg);
  pthread_rwlock_unlock(&bvm->run_lock);
  if (own) pthread_rwlock_rdlock(&bvm->run_lock);
}

static void bt_log_switch(struct vmm_region *r, void *arg) {
  struct bt_region *d = r->backend_data;
  d->logging = *(bool *)arg;
}

static int bt_dirty_log_enable(vmm_vm_t *vm, struct vmm_region *r, bool enable) {
  struct bt_region *d = r->backend_data;
  if (enable && d->dirty == NULL) {
    d->dirty = calloc(bt_bitmap_words(r->size), sizeof(uint64_t));
    if (d->dirty == NULL) return VMM_ENOMEM;
  } else if (enable) {
    memset(d->dirty, 0, bt_bitmap_words(r->size) * sizeof(uint64_t));
  }
  bt_with_vcpus_stopped(vm, bt_log_switch, r, &enable, BT_STOP_FLUSH);
  return 0;
}

/* With every vCPU stopped: the pages written since the last read. A protecting read revokes
 * every window's writable pages first (which covers any the core asks to protect again). */
static void bt_log_collect(struct vmm_region *r, void *bitmap) {
  struct bt_region *d = r->backend_data;
  for (size_t i = 0; i < bt_bitmap_words(r->size); i++)
    ((uint64_t *)bitmap)[i] |= __atomic_exchange_n(&d->dirty[i], 0, __ATOMIC_RELAXED);
}

static int bt_dirty_log_get(vmm_vm_t *vm, struct vmm_region *r, uint64_t *bitmap) {
  struct bt_region *d = r->backend_data;
  if (!d->logging || d->dirty == NULL) return VMM_ESTATE;
  bt_with_vcpus_stopped(vm, bt_log_collect, r, bitmap, BT_STOP_REVOKE);
  return 0;
}

/* A roll back's read: the windows keep their writable pages. */
static int bt_dirty_log_get_keep(vmm_vm_t *vm, struct vmm_region *r, uint64_t *bitmap) {
  struct bt_region *d = r->backend_data;
  if (!d->logging || d->dirty == NULL) return VMM_ESTATE;
  bt_with_vcpus_stopped(vm, bt_log_collect, r, bitmap, BT_STOP_ONLY);
  return 0;
}

/* ---- clones: pages of a layered region becoming the VM's own ---- */

struct bt_own_job {
  vmm_vm_t *vm;
  uint64_t first, n;
  int rc;
};

static void bt_own_now(struct vmm_region *r, void *arg) {
  struct bt_own_job *j = arg;
  j->rc = vmm__region_own_now(r, &j->first, &j->n);
  /* Every window that maps one of the pages from the base must see the own copy instead. */
  for (uint32_t i = 0; i < VMM_MAX_VCPUS; i++) {
    vmm_vcpu_t *c = j->vm->vcpus[i];
    if (c && c->backend_data)
      vmm__bt_window_drop_base(bt_vcpu(c), r->gpa + j->first * VMM_PAGE_SIZE,
                               j->n * VMM_PAGE_SIZE);
  }
}

/* With every vCPU outside guest code, so that none reads the base copy of a page after a write
 * to the own copy (a single-vCPU VM faulting on its own thread pays no kick). */
static int bt_own_pages(vmm_vm_t *vm, struct vmm_region *r, uint64_t first, uint64_t n) {
  struct bt_own_job j = {vm, first, n, 0};
  bt_with_vcpus_stopped(vm, bt_own_now, r, &j, BT_STOP_ONLY);
  return j.rc;
}

static void bt_nothing(struct vmm_region *r, void *arg) { (void)r, (void)arg; }

/* A region became layered (a first snapshot took its memfd): windows may map its pages
 * writable from what is now the base; they start empty. */
static int bt_region_layered(vmm_vm_t *vm, struct vmm_region *r) {
  bt_with_vcpus_stopped(vm, bt_nothing, r, NULL, BT_STOP_FLUSH);
  return 0;
}

static int bt_region_add(vmm_vm_t *vm, struct vmm_region *r) {
  /* The backend maps the memfd itself; a private copy-on-write region (kvm's kind of clone
   * RAM) would not be what the VMM sees through r->hva. Layered regions are taken. */
  if (r->cow) return VMM_ENOSYS;
  struct bt_region *d = calloc(1, sizeof(*d));
  if (d == NULL) return VMM_ENOMEM;
  d->code = calloc(bt_bitmap_words(r->size), sizeof(uint64_t));
  d->pt = calloc(bt_bitmap_words(r->size), sizeof(uint64_t));
  if (d->code == NULL || d->pt == NULL) {
    free(d->code);
    free(d->pt);
    free(d);
    return VMM_ENOMEM;
  }
  r->backend_data = d;
  atomic_fetch_add(&bt_vm(vm)->mem_gen, 1);
  atomic_fetch_add(&bt_vm(vm)->code_gen, 1);
  return 0;
}

static void bt_region_remove(vmm_vm_t *vm, struct vmm_region *r) {
  struct bt_region *d = r->backend_data;
  if (d) {
    free(d->code);
    free(d->pt);
    free(d->dirty);
    free(d);
  }
  r->backend_data = NULL;
  if (bt_vm(vm)) {
    atomic_fetch_add(&bt_vm(vm)->mem_gen, 1);
    atomic_fetch_add(&bt_vm(vm)->code_gen, 1);
  }
}

/* Entry n: mov $n, %eax; out %eax, $VMM_HC_PORT; ret - the same bytes as on kvm. The
 * translator recognizes the OUT inside this page and turns it into a direct call of the
 * dispatcher, so a hypercall never leaves translated code for the slow path. */
static int bt_fill_hypercall_page(vmm_vm_t *vm, uint64_t gpa, uint8_t *page) {
  vmm__hypercall_page_port(page);
  /* Translations look at where the page is; its bytes are the core's to compare. */
  struct bt_vm *bvm = bt_vm(vm);
  if (gpa != bvm->hc_gpa) {
    bvm->hc_gpa = gpa;
    atomic_fetch_add(&bvm->code_gen, 1);
  }
  return 0;
}

/* The VMM wrote guest memory behind the translator's back: if any of it holds translated
 * code, every vCPU drops its translations at its next entry into the dispatcher. */
/* Host writes: translated code in the range drops the translations. During a snapshot restore
 * page tables in it drop every vCPU's window and translations too (both cache the
 * linear-to-physical map, and the restore's set_state keeps them otherwise); other host writes
 * to page tables take effect, as on a CPU, when the guest invalidates its TLB. */
static void bt_memory_written(vmm_vm_t *vm, uint64_t gpa, uint64_t len) {
  struct vmm_region *r = vmm__region_find(vm, gpa, len);
  if (r == NULL || r->backend_data == NULL || len == 0) return;
  const struct bt_region *d = r->backend_data;
  bool code = false, pt = false;
  for (uint64_t pg = (gpa - r->gpa) / VMM_PAGE_SIZE;
       pg <= (gpa - r->gpa + len - 1) / VMM_PAGE_SIZE && !(code && pt); pg++) {
    code |= (__atomic_load_n(&d->code[pg / 64], __ATOMIC_RELAXED) >> (pg % 64)) & 1;
    pt |= vm->restoring && ((__atomic_load_n(&d->pt[pg / 64], __ATOMIC_RELAXED) >> (pg % 64)) & 1);
  }
  if (pt) atomic_fetch_add(&bt_vm(vm)->mem_gen, 1);
  if (code || pt) atomic_fetch_add(&bt_vm(vm)->code_gen, 1);
}

const struct vmm_backend_ops vmm__bt_ops = {
    .id = VMM_BACKEND_BT,
    .name = "bt",
    .caps = VMM__CAP_RAM_LAYERED,
    .probe = bt_probe,
    .vm_init = bt_vm_init,
    .vm_fini = bt_vm_fini,
    .region_add = bt_region_add,
    .memory_written = bt_memory_written,
    .own_pages = bt_own_pages,
    .region_layered = bt_region_layered,
    .region_remove = bt_region_remove,
    .dirty_log_enable = bt_dirty_log_enable,
    .dirty_log_get = bt_dirty_log_get,
    .dirty_log_get_keep = bt_dirty_log_get_keep,
    .vcpu_init = vmm__bt_vcpu_init,
    .vcpu_fini = vmm__bt_vcpu_fini,
    .vcpu_run = vmm__bt_vcpu_run,
    .flush_pending = vmm__bt_flush_pending,
    .vcpu_kick = vmm__bt_vcpu_kick,
    .get_regs = vmm__bt_get_regs,
    .set_regs = vmm__bt_set_regs,
    .get_state = vmm__bt_get_state,
    .set_state = vmm__bt_set_state,
    .set_single_step = vmm__bt_set_single_step,
    .fill_hypercall_page = bt_fill_hypercall_page,
    .set_irq = NULL,
    .vcpu_stats = vmm__bt_vcpu_stats,
    .prepare = vmm__bt_pool_prepare,
};
