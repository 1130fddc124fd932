/* bt backend: the per-vCPU address-space reservation, the guest page walk, on-demand mapping
 * of guest pages into the window, and guest memory access from C.
 *
 * The window is a cache of the guest's translations, like a TLB: a page is mapped when
 * translated code first touches it (the SIGSEGV comes back here through the dispatcher), with
 * the rights the guest page tables give at the current privilege level, minus write access
 * for pages that hold translated code, pages whose dirty bit is still clear and pages not yet
 * logged dirty. CR3 writes, INVLPG and memory-map changes drop mappings. */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "bt.h"

#define PTE_P 0x1ull
#define PTE_W 0x2ull
#define PTE_U 0x4ull
#define PTE_A 0x20ull
#define PTE_D 0x40ull
#define PTE_PS 0x80ull
#define PTE_XD (1ull << 63)
#define PTE_ADDR 0x000ffffffffff000ull

#define PF_P 0x1u
#define PF_W 0x2u
#define PF_U 0x4u
#define PF_RSVD 0x8u
#define PF_I 0x10u


/* The inline lookup tables start as the mapping's zero pages: an entry {tag 0, host 0} can
 * only match guest RIP 0, and RIP 0 indexes entry 0, so entry 0 alone is marked empty. */
void vmm__bt_tables_init(struct bt_ctrl *c) {
  for (unsigned t = 0; t < 2; t++) {
    struct bt_table_entry *e = (void *)((uint8_t *)c + (t ? BT_C_TABLE3 : BT_C_TABLE0));
    e[0].tag = BT_TAG_EMPTY;
    e[0].host = 0;
  }
}

/* The low window: guest linear space at host address 0, so that translated code addresses
 * guest memory as (32-bit address) with no segment override. A non-zero segment base costs a
 * cycle of latency on every load on common x86 cores (a quarter of a pointer-chasing loop);
 * a zero one costs nothing. The 32-bit address still confines every access to [0, 4 GiB),
 * which the reservation below covers whole (plus a guard above), so nothing of the host can
 * live there while a vCPU uses it. One vCPU per process can have it: the first to ask while
 * the low 4 GiB of the address space are free (they are in position-independent programs; an
 * ASan shadow or a program mapped low keeps it from ever succeeding). Guest pages below
 * BT_LOW_FLOOR are never mapped, so null pointers of the host still fault; a vCPU whose guest
 * touches them moves to its GS window. LIBVMM_BT_LOW_WINDOW=0 turns it off. */
static atomic_bool bt_low_taken;
#define BT_LOW_SPAN (BT_WINDOW_SIZE + BT_GUARD_SIZE - BT_LOW_FLOOR)

static bool bt_low_window_claim(void) {
  const char *e = getenv("LIBVMM_BT_LOW_WINDOW");
  if (e && *e == '0') return false;
  bool expect = false;
  if (!atomic_compare_exchange_strong(&bt_low_taken, &expect, true)) return false;
  void *p = mmap((void *)BT_LOW_FLOOR, BT_LOW_SPAN, PROT_NONE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
  if (p == (void *)BT_LOW_FLOOR) return true;
  /* Kernels before 4.17 take the flag as a hint and may map elsewhere. */
  if (p != MAP_FAILED) munmap(p, BT_LOW_SPAN);
  atomic_store(&bt_low_taken, false);
  return false;
}

static void bt_low_window_release(void) {
  munmap((void *)BT_LOW_FLOOR, BT_LOW_SPAN);
  atomic_store(&bt_low_taken, false);
}

void vmm__bt_low_window_leave(struct bt_vcpu *v) {
  if (!v->low) return;
  vmm__bt_window_flush(v);
  bt_low_window_release();
  v->low = false;
  v->window = v->gsbase;
  v->ctrl->window = v->gsbase;
  v->flush_needed = true; /* translations address guest memory without GS */
  VMM_LOG_D("bt: vCPU %u leaves the low window (guest page below %#llx)", v->vcpu->index,
            BT_LOW_FLOOR);
}

int vmm__bt_mem_init(struct bt_vcpu *v) {
  size_t span = BT_CTRL_SIZE + BT_GUARD_SIZE + BT_WINDOW_SIZE + BT_GUARD_SIZE;
  size_t reserve = span + BT_WINDOW_SIZE;
  uint8_t *p = mmap(NULL, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    VMM_LOG_E("bt: cannot reserve %zu bytes of address space: %s", reserve, strerror(errno));
    return VMM_ENOMEM;
  }
  uintptr_t w = ((uintptr_t)p + BT_CTRL_SIZE + BT_GUARD_SIZE + BT_WINDOW_SIZE - 1) &
                ~(uintptr_t)(BT_WINDOW_SIZE - 1);
  uint8_t *start = (uint8_t *)(w - BT_CTRL_SIZE - BT_GUARD_SIZE);
  if (start > p) munmap(p, (size_t)(start - p));
  uint8_t *end = start + span;
  if (end < p + reserve) munmap(end, (size_t)(p + reserve - end));
  v->res = start;
  v->res_size = span;
  v->gsbase = w;
  void *c = mmap(start, BT_CTRL_SIZE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  if (c == MAP_FAILED) goto err;
  v->ctrl = (struct bt_ctrl *)c;
  mprotect((uint8_t *)c + BT_C_SHADOW_GUARD, BT_C_SHADOW_LO - BT_C_SHADOW_GUARD, PROT_NONE);
  v->pstate = mmap(NULL, BT_WINDOW_PAGES, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (v->pstate == MAP_FAILED) {
    v->pstate = NULL;
    goto err;
  }
  vmm__bt_tables_init(v->ctrl);
  return 0;
err:
  munmap(v->res, v->res_size);
  v->res = NULL;
  return VMM_ENOMEM;
}

void vmm__bt_mem_place(struct bt_vcpu *v) {
  v->low = bt_low_window_claim();
  v->window = v->low ? 0 : v->gsbase;
}

void vmm__bt_mem_unplace(struct bt_vcpu *v) {
  if (v->nmapped) vmm__bt_window_flush(v);
  if (v->low) bt_low_window_release();
  v->low = false;
  v->window = v->gsbase;
}

void vmm__bt_mem_fini(struct bt_vcpu *v) {
  if (v->low) bt_low_window_release();
  v->low = false;
  if (v->pstate) munmap(v->pstate, BT_WINDOW_PAGES);
  if (v->res) munmap(v->res, v->res_size);
  free(v->mapped_list);
  free(v->wlist);
  free(v->blist);
  v->wlist = NULL;
  v->blist = NULL;
  v->pstate = NULL;
  v->res = NULL;
  v->mapped_list = NULL;
}

/* mapped_list holds (first page, count) pairs of what was mapped since the last flush. */
static void bt_note_mapped(struct bt_vcpu *v, uint32_t first, uint32_t count) {
  if (v->nmapped + 2 > v->mapped_cap) {
    size_t cap = v->mapped_cap ? v->mapped_cap * 2 : 256;
    uint32_t *n = realloc(v->mapped_list, cap * sizeof(*n));
    if (n == NULL) {
      /* Without room to remember, forget everything instead: flush now. */
      vmm__bt_window_flush(v);
      return;
    }
    v->mapped_list = n;
    v->mapped_cap = cap;
  }
  v->mapped_list[v->nmapped++] = first;
  v->mapped_list[v->nmapped++] = count;
}

static void bt_window_none(struct bt_vcpu *v, uint64_t la, uint64_t len) {
  if (v->low && la < BT_LOW_FLOOR) { /* never mapped, and not ours to map */
    if (la + len <= BT_LOW_FLOOR) return;
    len -= BT_LOW_FLOOR - la;
    la = BT_LOW_FLOOR;
  }
  mmap((void *)(v->window + la), len, PROT_NONE,
       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
}

void vmm__bt_window_flush(struct bt_vcpu *v) {
  if (v->nmapped > 512) {
    bt_window_none(v, 0, BT_WINDOW_SIZE);
    madvise(v->pstate, BT_WINDOW_PAGES, MADV_DONTNEED);
  } else {
    for (size_t i = 0; i + 1 < v->nmapped; i += 2) {
      uint64_t first = v->mapped_list[i], count = v->mapped_list[i + 1];
      bt_window_none(v, first * VMM_PAGE_SIZE, count * VMM_PAGE_SIZE);
      memset(v->pstate + first, 0, count);
    }
  }
  v->nmapped = 0;
  v->nwlist = 0;
  v->nblist = 0;
  v->wlist_overflow = false;
  v->has_super_pages = false;
  v->stats.window_flushes++;
}

static void bt_note_writable(struct bt_vcpu *v, uint32_t page) {
  if (v->wlist_overflow) return;
  if (v->nwlist == v->wlist_cap) {
    size_t cap = v->wlist_cap ? v->wlist_cap * 2 : 256;
    uint32_t *n = cap <= (1u << 22) ? realloc(v->wlist, cap * sizeof(*n)) : NULL;
    if (n == NULL) {
      v->wlist_overflow = true; /* The next log read empties the window instead. */
      return;
    }
    v->wlist = n;
    v->wlist_cap = cap;
  }
  v->wlist[v->nwlist++] = page;
}

/* After a dirty-log read (every vCPU stopped): the pages that became writable since the last
 * one are read-only again, so the next write to each faults and is logged. The rest of the
 * window stays mapped. */
void vmm__bt_window_revoke_writes(struct bt_vcpu *v) {
  if (v->wlist_overflow) {
    vmm__bt_window_flush(v);
    return;
  }
  size_t i = 0;
  while (i < v->nwlist) {
    uint32_t first = v->wlist[i++];
    if (!(v->pstate[first] & BT_PG_WRITE)) continue; /* unmapped or protected since */
    uint32_t n = 1;
    while (i < v->nwlist && v->wlist[i] == first + n && (v->pstate[first + n] & BT_PG_WRITE)) {
      n++;
      i++;
    }
    if (mprotect((void *)(v->window + (uint64_t)first * VMM_PAGE_SIZE), (size_t)n * VMM_PAGE_SIZE,
                 PROT_READ) != 0) {
      /* Out of mappings (the protection splits them): empty the window instead. */
      vmm__bt_window_flush(v);
      return;
    }
    for (uint32_t k = 0; k < n; k++) v->pstate[first + k] &= (uint8_t)~BT_PG_WRITE;
  }
  v->nwlist = 0;
}

/* False when the page cannot be remembered (it must not stay mapped then). */
static bool bt_note_base(struct bt_vcpu *v, uint32_t lpage, uint64_t pa) {
  if (v->nblist == v->blist_cap) {
    size_t cap = v->blist_cap ? v->blist_cap * 2 : 256;
    struct bt_base_map *n = cap <= (1u << 20) ? realloc(v->blist, cap * sizeof(*n)) : NULL;
    if (n == NULL) {
      if (v->blist_cap == 0) return false;
      vmm__bt_window_flush(v); /* Forget every mapping instead (this one too). */
      return true;
    }
    v->blist = n;
    v->blist_cap = cap;
  }
  v->blist[v->nblist++] = (struct bt_base_map){lpage, pa};
  return true;
}

void vmm__bt_window_drop_base(struct bt_vcpu *v, uint64_t pa, uint64_t len) {
  for (size_t i = 0; i < v->nblist;) {
    struct bt_base_map *m = &v->blist[i];
    if (m->pa - pa >= len) {
      i++;
      continue;
    }
    /* The entry may be stale (the page was mapped again since); unmapping is always safe. */
    vmm__bt_window_unmap_page(v, (uint64_t)m->lpage * VMM_PAGE_SIZE);
    *m = v->blist[--v->nblist];
  }
}

void vmm__bt_window_unmap_page(struct bt_vcpu *v, uint64_t la) {
  if (la >= BT_WINDOW_SIZE) return;
  uint64_t pg = la / VMM_PAGE_SIZE;
  if (!v->pstate[pg]) return;
  bt_window_none(v, pg * VMM_PAGE_SIZE, VMM_PAGE_SIZE);
  v->pstate[pg] = 0;
}

struct vmm_region *vmm__bt_region_of(struct bt_vcpu *v, uint64_t pa) {
  return vmm__region_find(v->vcpu->vm, pa, 1);
}

void *vmm__bt_phys_ptr(struct bt_vcpu *v, uint64_t pa, size_t len) {
  return vmm__gpa_ptr(v->vcpu->vm, pa, len);
}

static uint64_t *bt_pte_ptr(struct bt_vcpu *v, uint64_t pa) {
  return (uint64_t *)vmm__bt_phys_ptr(v, pa, 8);
}

/* Remembers that pa holds a page table, so that a host write to it (a snapshot restore) drops
 * the mappings built from it. */
static void bt_mark_table_page(struct bt_vcpu *v, uint64_t pa) {
  struct vmm_region *r = vmm__bt_region_of(v, pa);
  if (r == NULL) return;
  uint64_t pg = (pa - r->gpa) / VMM_PAGE_SIZE;
  uint64_t *w = &((struct bt_region *)r->backend_data)->pt[pg / 64], bit = 1ull << (pg % 64);
  if (!(__atomic_load_n(w, __ATOMIC_RELAXED) & bit)) __atomic_fetch_or(w, bit, __ATOMIC_RELAXED);
}

int vmm__bt_walk(struct bt_vcpu *v, uint64_t la, unsigned acc, bool set_ad, struct vmm__bt_walk *w) {
  const vmm_cpu_state_t *s = &v->sys;
  bool write = acc & 1, user = acc & 2, fetch = acc & 4;
  bool nxe = (s->efer & VMM_EFER_NXE) != 0, wp = (s->cr0 & VMM_CR0_WP) != 0;
  uint32_t err_base = (write ? PF_W : 0) | (user ? PF_U : 0) | (fetch && nxe ? PF_I : 0);
  /* Non-canonical addresses are #GP, reported as a negative error code of their own. */
  if (!vmm__canonical(la)) return BT_WALK_NONCANON;
  uint64_t table = s->cr3 & PTE_ADDR;
  unsigned rw = 1, us = 1, nx = 0;
  uint64_t *ents[4], ents_pa[4];
  int nents = 0;
  uint64_t e = 0, size = 0, base = 0;
  for (int level = 3; level >= 0; level--) {
    unsigned idx = (unsigned)((la >> (12 + 9 * level)) & 511);
    uint64_t *pe = bt_pte_ptr(v, table + idx * 8);
    if (pe == NULL) return BT_PF(err_base | PF_RSVD | PF_P);
    bt_mark_table_page(v, table);
    e = __atomic_load_n(pe, __ATOMIC_RELAXED);
    if (!(e & PTE_P)) return BT_PF(err_base);
    if ((e & PTE_XD) && !nxe) return BT_PF(err_base | PF_RSVD | PF_P);
    if (level == 3 && (e & PTE_PS)) return BT_PF(err_base | PF_RSVD | PF_P);
    ents_pa[nents] = table + idx * 8;
    ents[nents++] = pe;
    rw &= (e & PTE_W) != 0;
    us &= (e & PTE_U) != 0;
    nx |= nxe && (e & PTE_XD);
    if (level == 0 || (e & PTE_PS)) {
      size = 1ull << (12 + 9 * level);
      base = e & PTE_ADDR & ~(size - 1);
      if (level > 0 && ((e & PTE_ADDR) & (size - 1) & ~0x1000ull)) /* reserved low bits */
        return BT_PF(err_base | PF_RSVD | PF_P);
      break;
    }
    table = e & PTE_ADDR;
  }
  if (user && !us) return BT_PF(err_base | PF_P);
  if (write && !rw && (user || wp)) return BT_PF(err_base | PF_P);
  if (fetch && nx) return BT_PF(err_base | PF_P);
  if (set_ad) {
    for (int i = 0; i < nents; i++) {
      uint64_t add = PTE_A | ((i == nents - 1 && write) ? PTE_D : 0);
      if ((*ents[i] & add) == add) continue;
      /* A clone's table page shared with its siblings becomes its own first (same address).
       * If the host cannot do that, the bits stay clear and the run ends with the error at the
       * next exit check: not the guest's fault, so no page fault for it. */
      struct vmm_region *tr = vmm__bt_region_of(v, ents_pa[i]);
      int orc = tr ? vmm__region_own(v->vcpu->vm, tr, ents_pa[i] - tr->gpa, 8) : 0;
      if (orc) {
        if (!v->run_error) v->run_error = orc;
        continue;
      }
      __atomic_fetch_or(ents[i], add, __ATOMIC_RELAXED);
    }
  }
  w->page_size = size;
  w->pa = base | (la & (size - 1));
  w->pte_addr = 0;
  w->rights = (rw ? 1u : 0) | (us ? 2u : 0) | (nx ? 0 : 4u);
  w->dirty = (__atomic_load_n(ents[nents - 1], __ATOMIC_RELAXED) & PTE_D) != 0;
  return 0;
}

static struct bt_region *bt_rdata(struct vmm_region *r) { return r->backend_data; }

bool vmm__bt_page_is_code(struct bt_vcpu *v, uint64_t pa) {
  struct vmm_region *r = vmm__bt_region_of(v, pa);
  if (r == NULL) return false;
  uint64_t pg = (pa - r->gpa) / VMM_PAGE_SIZE;
  return (__atomic_load_n(&bt_rdata(r)->code[pg / 64], __ATOMIC_RELAXED) >> (pg % 64)) & 1;
}

void vmm__bt_mark_code_page(struct bt_vcpu *v, uint64_t la, uint64_t pa) {
  struct vmm_region *r = vmm__bt_region_of(v, pa);
  if (r == NULL) return;
  uint64_t pg = (pa - r->gpa) / VMM_PAGE_SIZE;
  __atomic_fetch_or(&bt_rdata(r)->code[pg / 64], 1ull << (pg % 64), __ATOMIC_RELAXED);
  if (la < BT_WINDOW_SIZE) {
    uint64_t lp = la / VMM_PAGE_SIZE;
    if (v->pstate[lp] & BT_PG_WRITE) {
      mprotect((void *)(v->window + lp * VMM_PAGE_SIZE), VMM_PAGE_SIZE, PROT_READ);
      v->pstate[lp] &= (uint8_t)~BT_PG_WRITE;
    }
    if (v->pstate[lp]) v->pstate[lp] |= BT_PG_CODE;
  }
}

void vmm__bt_clear_code_page(struct bt_vcpu *v, uint64_t pa) {
  struct vmm_region *r = vmm__bt_region_of(v, pa);
  if (r == NULL) return;
  uint64_t pg = (pa - r->gpa) / VMM_PAGE_SIZE;
  __atomic_fetch_and(&bt_rdata(r)->code[pg / 64], ~(1ull << (pg % 64)), __ATOMIC_RELAXED);
}

static bool bt_page_dirty_logged(struct vmm_region *r, uint64_t pa) {
  struct bt_region *d = bt_rdata(r);
  if (!d->logging || d->dirty == NULL) return true;
  uint64_t pg = (pa - r->gpa) / VMM_PAGE_SIZE;
  return (__atomic_load_n(&d->dirty[pg / 64], __ATOMIC_RELAXED) >> (pg % 64)) & 1;
}

static void bt_page_set_dirty(struct vmm_region *r, uint64_t pa) {
  struct bt_region *d = bt_rdata(r);
  if (!d->logging || d->dirty == NULL) return;
  uint64_t pg = (pa - r->gpa) / VMM_PAGE_SIZE;
  __atomic_fetch_or(&d->dirty[pg / 64], 1ull << (pg % 64), __ATOMIC_RELAXED);
}

/* Whether a 4 KiB page may be mapped writable now. */
static bool bt_page_writable(struct bt_vcpu *v, struct vmm_region *r, uint64_t pa) {
  if (r->flags & VMM_MEM_READONLY) return false;
  if (!vmm__region_page_owned(r, (pa - r->gpa) / VMM_PAGE_SIZE)) return false;
  if (vmm__bt_page_is_code(v, pa)) return false;
  return bt_page_dirty_logged(r, pa);
}

static int bt_mmap_guest(struct bt_vcpu *v, uint64_t la, uint64_t len, struct vmm_region *r,
                         uint64_t pa, int prot) {
  /* A clone's page it does not own yet comes from the shared base, read-only. */
  int fd = vmm__region_page_owned(r, (pa - r->gpa) / VMM_PAGE_SIZE) ? r->memfd : r->base_fd;
  void *p = mmap((void *)(v->window + la), len, prot, MAP_SHARED | MAP_FIXED, fd,
                 (off_t)(pa - r->gpa));
  if (p == MAP_FAILED) {
    if (errno == ENOMEM) {
      /* Too many mappings: start over with an empty window and try once more. */
      vmm__bt_window_flush(v);
      p = mmap((void *)(v->window + la), len, prot, MAP_SHARED | MAP_FIXED, fd,
               (off_t)(pa - r->gpa));
    }
    if (p == MAP_FAILED) {
      VMM_LOG_E("bt: cannot map guest page %#llx: %s", (unsigned long long)la, strerror(errno));
      return VMM_ENOMEM;
    }
  }
  return 0;
}

enum bt_map_result vmm__bt_map_page(struct bt_vcpu *v, uint64_t la, unsigned acc, uint32_t *pf_err,
                               uint64_t *pa_out) {
  struct vmm__bt_walk w;
  bool write = acc & 1;
  int rc = vmm__bt_walk(v, la, acc, true, &w);
  if (rc == BT_WALK_NONCANON) {
    *pf_err = 0;
    return BT_MAP_PF;
  }
  if (rc != 0) {
    *pf_err = (uint32_t)rc & 0xffff;
    return BT_MAP_PF;
  }
  *pa_out = w.pa;
  struct vmm_region *r = vmm__bt_region_of(v, w.pa);
  if (r == NULL) return BT_MAP_MMIO;
  if (write && (r->flags & VMM_MEM_READONLY)) return BT_MAP_RO_WRITE;
  if (la >= BT_WINDOW_SIZE) return BT_MAP_ERR;
  if (write && vmm__bt_page_is_code(v, w.pa)) return BT_MAP_SMC;
  /* A clone writes a page it shares with its siblings: it gets its own copy first. */
  if (write && vmm__region_own(v->vcpu->vm, r, w.pa - r->gpa, 1) != 0) return BT_MAP_ERR;
  if (write) bt_page_set_dirty(r, w.pa);

  bool guest_w = (w.rights & 1) && (w.dirty || write);
  bool super = !(w.rights & 2);
  if (!(w.rights & 1) && !(v->sys.cr0 & VMM_CR0_WP) && bt_cpl(v) != 3) {
    /* CR0.WP clear: the kernel may write read-only pages; user mode may not. */
    guest_w = w.dirty || write;
    super = true;
  }
  struct bt_region *rd = bt_rdata(r);

  /* Map the whole guest page when it is large and lies in one region; page by page while
   * dirty logging needs 4 KiB write faults. */
  uint64_t size = VMM_PAGE_SIZE;
  uint64_t pbase = w.pa & ~(VMM_PAGE_SIZE - 1), lbase = la & ~(VMM_PAGE_SIZE - 1);
  if (w.page_size > VMM_PAGE_SIZE && !rd->logging && !r->layered) {
    uint64_t gb = w.pa & ~(w.page_size - 1), lb = la & ~(w.page_size - 1);
    if (gb >= r->gpa && gb + w.page_size <= r->gpa + r->size &&
        lb + w.page_size <= BT_WINDOW_SIZE) {
      size = w.page_size;
      pbase = gb;
      lbase = lb;
      if (v->low && lbase < BT_LOW_FLOOR) { /* the part above the floor */
        size -= BT_LOW_FLOOR - lbase;
        pbase += BT_LOW_FLOOR - lbase;
        lbase = BT_LOW_FLOOR;
      }
    }
  }
  bool all_w = guest_w && !(r->flags & VMM_MEM_READONLY) && !rd->logging;
  int prot = PROT_READ | (all_w ? PROT_WRITE : 0);
  if (size == VMM_PAGE_SIZE) {
    all_w = guest_w && bt_page_writable(v, r, pbase);
    prot = PROT_READ | (all_w ? PROT_WRITE : 0);
  }
  if (bt_mmap_guest(v, lbase, size, r, pbase, prot) != 0) return BT_MAP_ERR;
  uint64_t first = lbase / VMM_PAGE_SIZE, n = size / VMM_PAGE_SIZE;
  uint8_t st = BT_PG_MAPPED | (all_w ? BT_PG_WRITE : 0) | (super ? BT_PG_SUPER : 0);
  memset(v->pstate + first, st, n);
  if (super) v->has_super_pages = true;
  if (all_w && size > VMM_PAGE_SIZE) {
    /* Pages with translations inside a large mapping stay read-only. */
    uint64_t pg0 = (pbase - r->gpa) / VMM_PAGE_SIZE;
    for (uint64_t i = 0; i < n; i++) {
      uint64_t word = __atomic_load_n(&rd->code[(pg0 + i) / 64], __ATOMIC_RELAXED);
      if (word == 0 && (pg0 + i) % 64 == 0 && i + 64 <= n) {
        i += 63;
        continue;
      }
      if ((word >> ((pg0 + i) % 64)) & 1) {
        mprotect((void *)(v->window + (first + i) * VMM_PAGE_SIZE), VMM_PAGE_SIZE, PROT_READ);
        v->pstate[first + i] = (uint8_t)((st & ~BT_PG_WRITE) | BT_PG_CODE);
      }
    }
  }
  bt_note_mapped(v, (uint32_t)first, (uint32_t)n);
  if (all_w && size == VMM_PAGE_SIZE && rd->logging) bt_note_writable(v, (uint32_t)first);
  if (!vmm__region_page_owned(r, (pbase - r->gpa) / VMM_PAGE_SIZE) &&
      !bt_note_base(v, (uint32_t)first, pbase)) {
    vmm__bt_window_unmap_page(v, lbase);
    return BT_MAP_ERR;
  }
  v->stats.demand_maps++;
  return BT_MAP_OK;
}

int vmm__bt_note_guest_write(struct bt_vcpu *v, uint64_t pa, uint64_t len) {
  struct vmm_region *r = vmm__bt_region_of(v, pa);
  if (r == NULL) return 0;
  int rc = vmm__region_own(v->vcpu->vm, r, pa - r->gpa, len);
  if (rc) return rc;
  if (vmm__bt_page_is_code(v, pa)) {
    vmm__bt_invalidate_page(v, pa & ~(VMM_PAGE_SIZE - 1));
    v->state_changed = true;
  }
  bt_page_set_dirty(r, pa);
  return 0;
}

/* Copies between a guest linear range and buf, page by page, with full permission checks. */
static int bt_lin_access(struct bt_vcpu *v, uint64_t la, void *buf, size_t len, unsigned acc,
                         uint64_t *fault_la, bool is_write) {
  uint8_t *p = buf;
  while (len) {
    size_t chunk = VMM_PAGE_SIZE - (la & (VMM_PAGE_SIZE - 1));
    if (chunk > len) chunk = len;
    struct vmm__bt_walk w;
    int rc = vmm__bt_walk(v, la, acc | (is_write ? 1u : 0), true, &w);
    if (rc != 0) {
      if (fault_la) *fault_la = la;
      return rc;
    }
    struct vmm_region *r = vmm__bt_region_of(v, w.pa);
    if (r == NULL || w.pa + chunk > r->gpa + r->size) return VMM_EFAULT;
    uint8_t *h = r->hva + (w.pa - r->gpa);
    if (is_write) {
      if (r->flags & VMM_MEM_READONLY) return VMM_EFAULT;
      rc = vmm__bt_note_guest_write(v, w.pa, chunk);
      if (rc) return rc;
      memcpy(h, p, chunk);
    } else {
      memcpy(p, h, chunk);
    }
    p += chunk;
    la += chunk;
    len -= chunk;
  }
  return 0;
}

int vmm__bt_lin_read(struct bt_vcpu *v, uint64_t la, void *buf, size_t len, unsigned acc,
                uint64_t *fault_la) {
  return bt_lin_access(v, la, buf, len, acc, fault_la, false);
}

int vmm__bt_lin_write(struct bt_vcpu *v, uint64_t la, const void *buf, size_t len, unsigned acc,
                 uint64_t *fault_la) {
  return bt_lin_access(v, la, (void *)buf, len, acc, fault_la, true);
}
