/* bt backend: the code cache. Blocks are bump-allocated in a memfd mapped twice (read-write
 * for the translator, read-execute for running), found by (guest RIP, mode) in a hash table,
 * linked to each other by patching their exit branches, and dropped all at once when the cache
 * fills up. Invalidation of single pages (self-modifying code, INVLPG) marks blocks dead and
 * unlinks every chain, so no live code can reach them. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bt.h"

#define BT_DEFAULT_CACHE (64u << 20)
#define BT_HASH_SIZE (1u << 16)

size_t vmm__bt_cache_size_wanted(void) {
  /* Tuning and tests: LIBVMM_BT_CACHE_KB overrides the default size. */
  const char *s = getenv("LIBVMM_BT_CACHE_KB");
  if (s && *s) {
    char *end;
    unsigned long kb = strtoul(s, &end, 10);
    if (*end == '\0' && kb >= 16 && kb <= (1ul << 22)) return (size_t)kb << 10;
  }
  return BT_DEFAULT_CACHE;
}

int vmm__bt_cache_init(struct bt_vcpu *v) {
  v->cache_size = vmm__bt_cache_size_wanted();
  v->cache_fd = memfd_create("libvmm-bt-code", MFD_CLOEXEC);
  if (v->cache_fd >= 0 && ftruncate(v->cache_fd, (off_t)v->cache_size) == 0) {
    v->cache_rw = mmap(NULL, v->cache_size, PROT_READ | PROT_WRITE, MAP_SHARED, v->cache_fd, 0);
    v->cache_rx = mmap(NULL, v->cache_size, PROT_READ | PROT_EXEC, MAP_SHARED, v->cache_fd, 0);
  } else {
    v->cache_rw = v->cache_rx = MAP_FAILED;
  }
  if (v->cache_rw == MAP_FAILED || v->cache_rx == MAP_FAILED) {
    /* No executable shared mappings (noexec memfd policy): one RWX anonymous mapping. */
    if (v->cache_rw != MAP_FAILED) munmap(v->cache_rw, v->cache_size);
    if (v->cache_rx != MAP_FAILED) munmap(v->cache_rx, v->cache_size);
    if (v->cache_fd >= 0) close(v->cache_fd);
    v->cache_fd = -1;
    void *p = mmap(NULL, v->cache_size, PROT_READ | PROT_WRITE | PROT_EXEC,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      VMM_LOG_E("bt: cannot map a %zu-byte code cache: %s", v->cache_size, strerror(errno));
      v->cache_rw = v->cache_rx = NULL;
      return VMM_ENOMEM;
    }
    v->cache_rw = v->cache_rx = p;
  }
  v->hash_size = BT_HASH_SIZE;
  /* Buckets hold a block index + 1, so that fresh zero pages are empty buckets: writing the
   * table out costs a page fault per page, which is most of a vCPU's creation on hosts where
   * faults are dear. Mapped, not allocated, so that the pool (bt_pool.c) can empty it by
   * dropping its pages. */
  void *h = mmap(NULL, v->hash_size * sizeof(*v->hash), PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (h == MAP_FAILED) {
    vmm__bt_cache_fini(v);
    return VMM_ENOMEM;
  }
  v->hash = h;
  return 0;
}

void vmm__bt_cache_fini(struct bt_vcpu *v) {
  if (v->cache_rw && v->cache_rw != v->cache_rx) munmap(v->cache_rw, v->cache_size);
  if (v->cache_rx) munmap(v->cache_rx, v->cache_size);
  if (v->cache_fd >= 0) close(v->cache_fd);
  v->cache_rw = v->cache_rx = NULL;
  v->cache_fd = -1;
  if (v->hash) munmap(v->hash, v->hash_size * sizeof(*v->hash));
  free(v->blocks);
  free(v->maps);
  free(v->descs);
  v->hash = NULL;
  v->blocks = NULL;
  v->maps = NULL;
  v->descs = NULL;
}

/* What the lookup table holds for a block: the host address of its indirect entry. */
static uint64_t bt_table_host(const struct bt_vcpu *v, const struct bt_block *b) {
  return (uint64_t)(uintptr_t)(v->cache_rx + b->host_off - BT_IND_LOAD);
}

static struct bt_table_entry *bt_table(struct bt_vcpu *v, unsigned cpl) {
  return (struct bt_table_entry *)((uint8_t *)v->ctrl + (cpl == 3 ? BT_C_TABLE3 : BT_C_TABLE0));
}

void vmm__bt_tables_clear(struct bt_vcpu *v) {
  uint8_t *t = (uint8_t *)v->ctrl + BT_C_TABLE0;
  size_t len = BT_C_TABLE3 + BT_TABLE_BYTES - BT_C_TABLE0;
  if (madvise(t, len, MADV_DONTNEED) != 0) memset(t, 0, len);
  vmm__bt_tables_init(v->ctrl);
}

/* Empties the return cache: only the sentinel stays. Its entries point into the code cache,
 * so it goes whenever the code cache does. */
void vmm__bt_shadow_reset(struct bt_vcpu *v) {
  uint8_t *top = (uint8_t *)v->ctrl + BT_C_SHADOW_TOP;
  uint64_t sentinel = (uint64_t)(uintptr_t)vmm__bt_asm_shadow_underflow;
  memcpy(top - 8, &sentinel, 8);
  v->ctrl->shadow_sp = (uint64_t)(uintptr_t)(top - 8);
}

void vmm__bt_cache_flush(struct bt_vcpu *v) {
  vmm__bt_shadow_reset(v);
  v->stats.flushes++;
  /* Nothing translated since the last flush: the tables are already empty. */
  if (v->nblocks == 0 && v->cache_used == 0) return;
  /* With one vCPU nobody else needs the code pages protected; with more, over-protection
   * only costs extra write faults. */
  if (v->vcpu->vm->max_vcpus == 1) {
    for (uint32_t i = 0; i < v->nblocks; i++) {
      vmm__bt_clear_code_page(v, v->blocks[i].pa[0]);
      vmm__bt_clear_code_page(v, v->blocks[i].pa[1]);
    }
  }
  v->cache_used = 0;
  v->nblocks = 0;
  v->nmaps = 0;
  v->ndescs = 0;
  memset(v->hash, 0, v->hash_size * sizeof(*v->hash));
  vmm__bt_tables_clear(v);
}

static uint32_t bt_hash(uint64_t rip, uint8_t mode) {
  uint64_t h = (rip ^ ((uint64_t)mode << 58)) * 0x9e3779b97f4a7c15ull;
  return (uint32_t)(h >> 48);
}

int32_t vmm__bt_block_lookup(struct bt_vcpu *v, uint64_t rip, uint8_t mode) {
  for (int32_t i = v->hash[bt_hash(rip, mode) & (v->hash_size - 1)] - 1; i >= 0;
       i = v->blocks[i].hash_next) {
    const struct bt_block *b = &v->blocks[i];
    if (b->rip == rip && b->mode == mode && (b->flags & BT_BLK_VALID)) return i;
  }
  return -1;
}

void vmm__bt_block_insert(struct bt_vcpu *v, int32_t idx) {
  struct bt_block *b = &v->blocks[idx];
  uint32_t h = bt_hash(b->rip, b->mode) & (v->hash_size - 1);
  b->hash_next = v->hash[h] - 1;
  v->hash[h] = idx + 1;
  if (!(b->flags & BT_BLK_SINGLE)) {
    struct bt_table_entry *e = &bt_table(v, b->mode & 3)[b->rip & ((1u << BT_TABLE_BITS) - 1)];
    e->tag = b->rip;
    e->host = bt_table_host(v, b);
  }
}

static void bt_hash_remove(struct bt_vcpu *v, int32_t idx) {
  struct bt_block *b = &v->blocks[idx];
  /* The bucket holds index + 1; the chain links hold plain indices (-1 ends them). */
  int32_t *bucket = &v->hash[bt_hash(b->rip, b->mode) & (v->hash_size - 1)];
  if (*bucket == idx + 1) {
    *bucket = b->hash_next + 1;
  } else {
    for (int32_t i = *bucket - 1; i >= 0; i = v->blocks[i].hash_next) {
      if (v->blocks[i].hash_next == idx) {
        v->blocks[i].hash_next = b->hash_next;
        break;
      }
    }
  }
  uint32_t slot = (uint32_t)(b->rip & ((1u << BT_TABLE_BITS) - 1));
  struct bt_table_entry *e = &bt_table(v, b->mode & 3)[slot];
  if (e->tag == b->rip && e->host == bt_table_host(v, b)) {
    /* An empty entry's tag must be a RIP that does not index it: 0 everywhere but in slot 0
     * (which RIP 0 indexes), where it is BT_TAG_EMPTY (whose own slot is the last one). */
    e->tag = slot == 0 ? BT_TAG_EMPTY : 0;
    e->host = 0;
  }
}

static void bt_write_rel32(struct bt_vcpu *v, uint32_t patch_off, uint32_t target_off) {
  uint32_t rel = target_off - (patch_off + 4);
  memcpy(v->cache_rw + patch_off, &rel, 4);
}

void vmm__bt_block_link(struct bt_vcpu *v, uint32_t patch_off, int32_t target) {
  /* Find the exit record by its patch offset: the block that contains it. */
  struct bt_block *src = vmm__bt_block_at_host(v, (uintptr_t)(v->cache_rx + patch_off));
  if (src == NULL || !(src->flags & BT_BLK_VALID) || (src->flags & BT_BLK_SINGLE)) return;
  const struct bt_block *dst = &v->blocks[target];
  if (dst->mode != src->mode || (dst->flags & BT_BLK_SINGLE)) return;
  for (unsigned i = 0; i < src->nexits; i++) {
    struct bt_exit_site *x = &src->exits[i];
    if (x->patch_off != patch_off) continue;
    if (x->target != dst->rip) return;
    bt_write_rel32(v, patch_off, dst->host_off);
    x->linked = target;
    v->stats.chains++;
    return;
  }
}

void vmm__bt_ret_cache_fill(struct bt_vcpu *v, uint32_t site, int32_t target) {
  struct bt_block *src = vmm__bt_block_at_host(v, (uintptr_t)(v->cache_rx + site));
  const struct bt_block *dst = &v->blocks[target];
  if (src == NULL || !(src->flags & BT_BLK_VALID) || dst->mode != src->mode ||
      (dst->flags & BT_BLK_SINGLE) || dst->rip >= BT_RET_EMPTY || dst->rip == 0)
    return;
  unsigned slot = 0;
  for (unsigned i = 0; i < src->nexits && slot < BT_RET_SLOTS; i++) {
    struct bt_exit_site *x = &src->exits[i];
    if (x->patch_off < site) continue;
    if (x->target == dst->rip) return; /* already cached */
    if (x->target != BT_RET_EMPTY) {
      slot++;
      continue;
    }
    uint32_t disp = (uint32_t)-(int32_t)dst->rip;
    memcpy(v->cache_rw + site + 9 * slot + 3, &disp, 4);
    /* The exit stub must name the new target too, for when the link is undone. */
    uint32_t lo = (uint32_t)dst->rip, hi = (uint32_t)(dst->rip >> 32);
    memcpy(v->cache_rw + x->stub_off + 8, &lo, 4);
    memcpy(v->cache_rw + x->stub_off + 20, &hi, 4);
    x->target = dst->rip;
    vmm__bt_block_link(v, x->patch_off, target);
    if (slot + 1 == BT_RET_SLOTS) {
      /* All slots in use: misses now go through the table lookup. */
      uint32_t at = site + 9 * BT_RET_SLOTS + 1, rel;
      memcpy(&rel, v->cache_rw + at, 4);
      uint32_t lookup = at + 4 + rel + BT_RET_MISS_LEN;
      rel = lookup - (at + 4);
      memcpy(v->cache_rw + at, &rel, 4);
    }
    return;
  }
}

void vmm__bt_unlink_all(struct bt_vcpu *v) {
  for (uint32_t i = 0; i < v->nblocks; i++) {
    struct bt_block *b = &v->blocks[i];
    for (unsigned k = 0; k < b->nexits; k++) {
      if (b->exits[k].linked < 0) continue;
      bt_write_rel32(v, b->exits[k].patch_off, b->exits[k].stub_off);
      b->exits[k].linked = -1;
    }
  }
}

static void bt_kill_block(struct bt_vcpu *v, uint32_t i) {
  v->blocks[i].flags &= (uint8_t)~BT_BLK_VALID;
  bt_hash_remove(v, (int32_t)i);
}

void vmm__bt_invalidate_page(struct bt_vcpu *v, uint64_t pa) {
  pa &= ~(VMM_PAGE_SIZE - 1);
  bool any = false;
  for (uint32_t i = 0; i < v->nblocks; i++) {
    struct bt_block *b = &v->blocks[i];
    if (!(b->flags & BT_BLK_VALID) || (b->pa[0] != pa && b->pa[1] != pa)) continue;
    bt_kill_block(v, i);
    any = true;
  }
  if (any) vmm__bt_unlink_all(v);
  vmm__bt_clear_code_page(v, pa);
  if (v->vcpu->vm->max_vcpus > 1) v->code_gen = atomic_fetch_add(&v->bvm->code_gen, 1) + 1;
  v->stats.smc++;
}

void vmm__bt_invalidate_la_page(struct bt_vcpu *v, uint64_t la) {
  la &= ~(VMM_PAGE_SIZE - 1);
  bool any = false;
  for (uint32_t i = 0; i < v->nblocks; i++) {
    struct bt_block *b = &v->blocks[i];
    if (!(b->flags & BT_BLK_VALID)) continue;
    uint64_t lo = b->rip & ~(VMM_PAGE_SIZE - 1), hi = (b->rip_end - 1) & ~(VMM_PAGE_SIZE - 1);
    if (la != lo && la != hi) continue;
    bt_kill_block(v, i);
    any = true;
  }
  if (any) vmm__bt_unlink_all(v);
}

void vmm__bt_invalidate_flags(struct bt_vcpu *v, uint8_t flags) {
  bool any = false;
  for (uint32_t i = 0; i < v->nblocks; i++) {
    struct bt_block *b = &v->blocks[i];
    if (!(b->flags & BT_BLK_VALID) || !(b->flags & flags)) continue;
    bt_kill_block(v, i);
    any = true;
  }
  if (any) vmm__bt_unlink_all(v);
}

/* Blocks lie in the cache in allocation order: a binary search by host offset. Safe in a
 * signal handler that interrupted translated code (nothing is being modified then). */
struct bt_block *vmm__bt_block_at_host(struct bt_vcpu *v, uintptr_t pc) {
  uintptr_t base = (uintptr_t)v->cache_rx;
  if (pc < base || pc >= base + v->cache_used) return NULL;
  uint32_t off = (uint32_t)(pc - base);
  uint32_t lo = 0, hi = v->nblocks;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    const struct bt_block *b = &v->blocks[mid];
    if (off < b->host_off) hi = mid;
    else if (off >= b->host_off + b->host_len) lo = mid + 1;
    else return &v->blocks[mid];
  }
  return NULL;
}

const struct bt_map *vmm__bt_map_at(struct bt_vcpu *v, const struct bt_block *b, uintptr_t pc) {
  uint32_t off = (uint32_t)(pc - (uintptr_t)v->cache_rx) - b->host_off;
  const struct bt_map *m = v->maps + b->map_first;
  uint32_t lo = 0, hi = b->map_count;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (m[mid].host_off <= off) lo = mid + 1;
    else hi = mid;
  }
  /* Several entries share an offset when an instruction emitted nothing (a dropped NOP):
   * the last one names the instruction about to run. */
  if (lo > 0 && m[lo - 1].host_off == off) return &m[lo - 1];
  return NULL;
}

uint32_t vmm__bt_desc_add(struct bt_vcpu *v, const struct bt_desc *d) {
  if (v->ndescs == v->descs_cap) {
    uint32_t cap = v->descs_cap ? v->descs_cap * 2 : 256;
    struct bt_desc *n = realloc(v->descs, cap * sizeof(*n));
    if (n == NULL) return UINT32_MAX;
    v->descs = n;
    v->descs_cap = cap;
  }
  v->descs[v->ndescs] = *d;
  return v->ndescs++;
}
