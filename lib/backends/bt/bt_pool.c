/* bt backend: a small per-process pool of vCPU memory. A vCPU's address-space reservation (its
 * control area and 4 GiB window), page-state array, code cache and block hash cost about a
 * dozen mappings to make and as many to undo, and page faults on the pages every vCPU touches
 * first; on hosts where those are dear (virtualized ones: tens of microseconds each) that is
 * most of a clone. A destroyed vCPU's set is emptied and kept for the next vCPU instead, up to
 * bt_pool_cap sets (BT_POOL_DEFAULT unless vmm_backend_prepare() says otherwise, which also
 * makes sets ahead of need, with those first pages already touched).
 *
 * Emptied means: no guest page mapped in the window (the same flush that a change of the memory
 * map uses), the page states zero, no translation reachable (lookup tables and hash emptied,
 * the code cache's pages given back to the kernel), the control block zeroed. What a vCPU
 * translated or mapped never reaches the next one, whatever VM it belongs to. The low window
 * is process-wide and goes back before a set is kept; the next user claims it again. */
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bt.h"

#define BT_POOL_DEFAULT 4

struct bt_parked {
  uint8_t *res;
  size_t res_size;
  uintptr_t gsbase;
  struct bt_ctrl *ctrl;
  uint8_t *pstate;
  int cache_fd;
  uint8_t *cache_rw, *cache_rx;
  size_t cache_size;
  int32_t *hash;
  uint32_t hash_size;
};

static pthread_mutex_t bt_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct bt_parked bt_pool[VMM__PREPARE_MAX];
static int bt_pool_n;
static int bt_pool_cap = BT_POOL_DEFAULT;

bool vmm__bt_pool_take(struct bt_vcpu *v) {
  size_t want = vmm__bt_cache_size_wanted();
  bool got = false;
  pthread_mutex_lock(&bt_pool_lock);
  for (int i = bt_pool_n - 1; i >= 0 && !got; i--) {
    struct bt_parked *p = &bt_pool[i];
    if (p->cache_size != want) continue;
    v->res = p->res;
    v->res_size = p->res_size;
    v->gsbase = p->gsbase;
    v->ctrl = p->ctrl;
    v->pstate = p->pstate;
    v->cache_fd = p->cache_fd;
    v->cache_rw = p->cache_rw;
    v->cache_rx = p->cache_rx;
    v->cache_size = p->cache_size;
    v->hash = p->hash;
    v->hash_size = p->hash_size;
    bt_pool[i] = bt_pool[--bt_pool_n];
    got = true;
  }
  pthread_mutex_unlock(&bt_pool_lock);
  if (got) {
    vmm__bt_tables_init(v->ctrl);
    vmm__bt_mem_place(v);
  }
  return got;
}

/* Gives the cache's pages back (all of it: a flush earlier in the vCPU's life leaves code past
 * the current fill): a later vCPU starts with what a new cache has. */
static void bt_pool_drop_code(struct bt_vcpu *v) {
  if (v->cache_fd < 0 || fallocate(v->cache_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0,
                                   (off_t)v->cache_size) != 0)
    madvise(v->cache_rw, v->cache_size, MADV_DONTNEED);
  v->cache_used = 0;
}

bool vmm__bt_pool_put(struct bt_vcpu *v) {
  if (v->res == NULL || v->ctrl == NULL || v->pstate == NULL || v->hash == NULL ||
      v->cache_rw == NULL)
    return false;
  pthread_mutex_lock(&bt_pool_lock);
  bool room = bt_pool_n < bt_pool_cap;
  pthread_mutex_unlock(&bt_pool_lock);
  if (!room) return false;
  vmm__bt_mem_unplace(v);
  if (v->nblocks || v->cache_used) {
    vmm__bt_tables_clear(v);
    madvise(v->hash, v->hash_size * sizeof(*v->hash), MADV_DONTNEED);
  }
  if (v->stats.blocks) bt_pool_drop_code(v);
  memset(v->ctrl, 0, sizeof(*v->ctrl));
  free(v->blocks);
  free(v->maps);
  free(v->descs);
  free(v->mapped_list);
  free(v->wlist);
  free(v->blist);
  struct bt_parked p = {v->res, v->res_size, v->gsbase, v->ctrl, v->pstate, v->cache_fd,
                        v->cache_rw, v->cache_rx, v->cache_size, v->hash, v->hash_size};
  pthread_mutex_lock(&bt_pool_lock);
  room = bt_pool_n < bt_pool_cap;
  if (room) bt_pool[bt_pool_n++] = p;
  pthread_mutex_unlock(&bt_pool_lock);
  if (!room) {
    /* Another thread filled the pool meanwhile: undo this set as a vCPU's own would be. */
    v->blocks = NULL, v->maps = NULL, v->descs = NULL;
    v->mapped_list = NULL, v->wlist = NULL, v->blist = NULL;
    vmm__bt_cache_fini(v);
    vmm__bt_mem_fini(v);
  }
  return true;
}

static void bt_parked_free(struct bt_parked *p) {
  if (p->cache_rw != p->cache_rx) munmap(p->cache_rw, p->cache_size);
  munmap(p->cache_rx, p->cache_size);
  if (p->cache_fd >= 0) close(p->cache_fd);
  munmap(p->hash, p->hash_size * sizeof(*p->hash));
  munmap(p->pstate, BT_WINDOW_PAGES);
  munmap(p->res, p->res_size);
}

/* A new set, as a vCPU would make it, with the pages every vCPU writes at its creation (the
 * control block, the two lookup tables' first entries, the top of the return cache) written
 * now: a vCPU that takes it faults on none of them. */
static int bt_parked_make(struct bt_parked *out) {
  struct bt_vcpu tmp;
  memset(&tmp, 0, sizeof(tmp));
  tmp.cache_fd = -1;
  int rc = vmm__bt_mem_init(&tmp);
  if (rc) return rc;
  rc = vmm__bt_cache_init(&tmp);
  if (rc) {
    vmm__bt_mem_fini(&tmp);
    return rc;
  }
  memset(tmp.ctrl, 0, sizeof(*tmp.ctrl));
  memset((uint8_t *)tmp.ctrl + BT_C_SHADOW_TOP - 8, 0, 8);
  *out = (struct bt_parked){tmp.res,     tmp.res_size, tmp.gsbase,     tmp.ctrl,
                            tmp.pstate,  tmp.cache_fd, tmp.cache_rw,   tmp.cache_rx,
                            tmp.cache_size, tmp.hash,  tmp.hash_size};
  return 0;
}

int vmm__bt_pool_prepare(unsigned count) {
  struct bt_parked drop[VMM__PREPARE_MAX];
  int ndrop = 0;
  size_t want = vmm__bt_cache_size_wanted();
  pthread_mutex_lock(&bt_pool_lock);
  bt_pool_cap = (int)count;
  /* Sets of a code cache size no vCPU would take go first, then those beyond the new size. */
  for (int i = bt_pool_n - 1; i >= 0; i--) {
    if (bt_pool[i].cache_size == want) continue;
    drop[ndrop++] = bt_pool[i];
    bt_pool[i] = bt_pool[--bt_pool_n];
  }
  while (bt_pool_n > bt_pool_cap) drop[ndrop++] = bt_pool[--bt_pool_n];
  int have = bt_pool_n;
  pthread_mutex_unlock(&bt_pool_lock);
  for (int i = 0; i < ndrop; i++) bt_parked_free(&drop[i]);
  for (int rc; have < (int)count; have++) {
    struct bt_parked p;
    if ((rc = bt_parked_make(&p)) != 0) return rc;
    pthread_mutex_lock(&bt_pool_lock);
    bool room = bt_pool_n < bt_pool_cap;
    if (room) bt_pool[bt_pool_n++] = p;
    pthread_mutex_unlock(&bt_pool_lock);
    if (!room) bt_parked_free(&p);
  }
  return 0;
}

/* A library unloaded from a running process gives its address space back. */
__attribute__((destructor)) static void bt_pool_drain(void) {
  pthread_mutex_lock(&bt_pool_lock);
  for (int i = 0; i < bt_pool_n; i++) bt_parked_free(&bt_pool[i]);
  bt_pool_n = 0;
  pthread_mutex_unlock(&bt_pool_lock);
}
