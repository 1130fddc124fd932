/* Snapshot files.
 *
 * Layout (little-endian): a 64-byte header, the metadata (JSON), then page data starting on a
 * 4 KiB boundary. The header names the version, the offsets and lengths of both parts and the
 * file length, with an XXH32 checksum of the metadata and one of the header itself. The
 * metadata describes the vCPUs, devices and RAM regions, the parent file (by name and content
 * hash) for diff files, and every chunk of page data: a run of pages of one region, stored
 * raw with an XXH3-64 checksum, or a run of zero pages stored as nothing. The content hash of
 * a file is the XXH3-128 of its metadata, which covers every chunk's checksum and the parent's
 * hash. See docs/snapshot-format.md. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "snapshot.h"

#define PAGE VMM_PAGE_SIZE
#define SNAP_MAGIC "LVMMSNAP"
#define SNAP_VERSION 1
#define SNAP_HEADER_SIZE 64
#define SNAP_MAX_META (64u << 20)
/* JSON values in the metadata: a parsed value costs ~64 bytes however short its text, so the
 * byte limit alone would let 64 MiB of "0," cost gigabytes. 2M values describe ~280K chunks
 * (up to 280 GiB of non-zero pages) in one file. */
#define SNAP_MAX_META_VALUES (2u << 20)
#define SNAP_MAX_RAM (1ull << 40)     /* Per file, all regions together. */
#define SNAP_MAX_CHUNK_PAGES 256
#define SNAP_MAX_DEPTH 64
#define SNAP_MAX_DEVICES 256

struct snap_header {
  char magic[8];
  uint32_t version;
  uint32_t header_size;
  uint64_t meta_offset;
  uint64_t meta_length;
  uint64_t data_offset;
  uint64_t data_length;
  uint64_t file_length;
  uint32_t meta_check;
  uint32_t header_check;
};
_Static_assert(sizeof(struct snap_header) == SNAP_HEADER_SIZE, "header is 64 bytes");

bool vmm__json_hex(const cJSON *j, uint64_t *out);


static cJSON *hexstr(uint64_t v) {
  char b[24];
  snprintf(b, sizeof(b), "0x%" PRIx64, v);
  return cJSON_CreateString(b);
}

static void hash_hex(const uint8_t h[16], char out[33]) {
  for (int i = 0; i < 16; i++) snprintf(out + 2 * i, 3, "%02x", h[i]);
}

static void content_hash(const char *meta, size_t len, uint8_t out[16]) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits(meta, len));
  memcpy(out, c.digest, 16);
}

static bool page_zero(const uint8_t *p) {
  static const uint8_t z[PAGE];
  return memcmp(p, z, PAGE) == 0;
}

/* ---- save ---- */

struct chunk {
  uint32_t region;
  uint64_t page, count;
  bool zero;
  const struct vmm_snapshot *src; /* Where the pages come from (for full saves: any layer). */
  uint64_t offset;
  uint64_t check;
};

struct chunk_list {
  struct chunk *v;
  size_t n, cap;
};

static int chunk_push(struct chunk_list *l, struct chunk c) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 64;
    struct chunk *v = realloc(l->v, cap * sizeof(*v));
    if (v == NULL) return VMM_ENOMEM;
    l->v = v;
    l->cap = cap;
  }
  l->v[l->n++] = c;
  return 0;
}

/* The pages of region ri to write: the snapshot's own layer (diff save), or every non-zero
 * page as of the snapshot (full save). Runs of pages become chunks. */
static int plan_chunks(const struct vmm_snapshot *s, size_t ri, bool full, struct chunk_list *l) {
  const struct vmm_snap_region *r = &s->regions[ri];
  struct chunk cur = {0};
  bool open = false;
  for (uint64_t pg = 0; pg <= r->npages; pg++) {
    bool have = false, zero = false;
    if (pg < r->npages) {
      const uint8_t *p = NULL;
      if (full) {
        p = vmm__snap_page(s, ri, pg);
        have = p != NULL && !page_zero(p);
      } else if (vmm__snap_has(r, pg)) {
        p = r->map + pg * PAGE;
        have = true;
        zero = page_zero(p);
      }
    }
    if (open && (!have || zero != cur.zero || cur.count == SNAP_MAX_CHUNK_PAGES)) {
      int rc = chunk_push(l, cur);
      if (rc) return rc;
      open = false;
    }
    if (have && !open) {
      cur = (struct chunk){.region = (uint32_t)ri, .page = pg, .count = 0, .zero = zero, .src = s};
      open = true;
    }
    if (have) cur.count++;
  }
  return 0;
}

static int write_all(int fd, const void *buf, size_t len, uint64_t off) {
  const uint8_t *p = buf;
  while (len) {
    ssize_t n = pwrite(fd, p, len, (off_t)off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return VMM_EIO;
    p += n;
    off += (uint64_t)n;
    len -= (size_t)n;
  }
  return 0;
}

/* The bytes of a chunk, page by page. */
static const uint8_t *chunk_page(const struct chunk *c, bool full, uint64_t i) {
  const struct vmm_snapshot *s = c->src;
  if (full) return vmm__snap_page(s, c->region, c->page + i);
  return s->regions[c->region].map + (c->page + i) * PAGE;
}

static cJSON *build_meta(const struct vmm_snapshot *s, bool full, const char *parent_file,
                         const struct chunk_list *chunks) {
  cJSON *m = cJSON_CreateObject();
  if (m == NULL) return NULL;
  bool ok = cJSON_AddNumberToObject(m, "format", SNAP_VERSION) &&
            cJSON_AddStringToObject(m, "library", vmm_version_string()) &&
            cJSON_AddStringToObject(m, "name", s->name) &&
            cJSON_AddStringToObject(m, "backend", vmm_backend_name(s->backend)) &&
            cJSON_AddItemToObject(m, "hypercall_page", hexstr(s->hypercall_page_gpa)) &&
            cJSON_AddItemToObject(m, "exc_stubs", hexstr(s->exc_stubs_gpa));
  if (!full && s->parent) {
    char hx[33];
    vmm__snap_lock();
    hash_hex(s->parent->hash, hx);
    vmm__snap_unlock();
    cJSON *p = cJSON_AddObjectToObject(m, "parent");
    ok &= p && cJSON_AddStringToObject(p, "hash", hx) && cJSON_AddStringToObject(p, "file", parent_file);
  } else {
    ok &= cJSON_AddNullToObject(m, "parent") != NULL;
  }
  cJSON *vcpus = cJSON_AddArrayToObject(m, "vcpus");
  for (uint32_t i = 0; ok && vcpus && i < s->nvcpus; i++) {
    cJSON *c = vmm__cpu_state_to_json(&s->cpus[i]);
    ok &= c && cJSON_AddItemToArray(vcpus, c);
  }
  if (ok && s->platform) {
    cJSON *pl = cJSON_Duplicate(s->platform, 1);
    ok &= pl && cJSON_AddItemToObject(m, "platform", pl);
  }
  cJSON *devs = cJSON_AddArrayToObject(m, "devices");
  for (size_t i = 0; ok && devs && i < s->ndevices; i++) {
    cJSON *d = cJSON_CreateObject();
    ok &= d && cJSON_AddItemToArray(devs, d) && cJSON_AddStringToObject(d, "type", s->devices[i].type) &&
          cJSON_AddNumberToObject(d, "version", s->devices[i].version);
    if (ok && s->devices[i].state) {
      cJSON *st = cJSON_Duplicate(s->devices[i].state, 1);
      ok &= st && cJSON_AddItemToObject(d, "state", st);
    } else if (ok) {
      ok &= cJSON_AddNullToObject(d, "state") != NULL;
    }
  }
  cJSON *regs = cJSON_AddArrayToObject(m, "regions");
  for (size_t i = 0; ok && regs && i < s->nregions; i++) {
    const struct vmm_snap_region *r = &s->regions[i];
    cJSON *o = cJSON_CreateObject();
    ok &= o && cJSON_AddItemToArray(regs, o) && cJSON_AddItemToObject(o, "gpa", hexstr(r->gpa)) &&
          cJSON_AddItemToObject(o, "size", hexstr(r->size)) &&
          cJSON_AddNumberToObject(o, "flags", r->flags) &&
          cJSON_AddBoolToObject(o, "full", full || r->full);
  }
  cJSON *ch = cJSON_AddArrayToObject(m, "chunks");
  for (size_t i = 0; ok && ch && i < chunks->n; i++) {
    const struct chunk *c = &chunks->v[i];
    cJSON *o = cJSON_CreateObject();
    ok &= o && cJSON_AddItemToArray(ch, o) && cJSON_AddNumberToObject(o, "region", c->region) &&
          cJSON_AddItemToObject(o, "page", hexstr(c->page)) &&
          cJSON_AddNumberToObject(o, "count", (double)c->count);
    if (ok && c->zero) {
      ok &= cJSON_AddBoolToObject(o, "zero", 1) != NULL;
    } else if (ok) {
      ok &= cJSON_AddItemToObject(o, "offset", hexstr(c->offset)) &&
            cJSON_AddItemToObject(o, "check", hexstr(c->check));
    }
  }
  if (!ok || !vcpus || !devs || !regs || !ch) {
    cJSON_Delete(m);
    return NULL;
  }
  return m;
}

/* The parent's file name when it lies in the same directory as the child will, else NULL
 * (the child is then saved whole: parents are looked up by name next to their children). */
static char *parent_ref(const char *child_path, const char *parent_path) {
  char *a = strdup(child_path), *b = strdup(parent_path);
  char *ref = NULL;
  char ra[PATH_MAX], rb[PATH_MAX];
  if (a && b && realpath(dirname(a), ra) && realpath(dirname(b), rb) && strcmp(ra, rb) == 0) {
    char *c = strdup(parent_path);
    if (c) ref = strdup(basename(c));
    free(c);
  }
  free(a);
  free(b);
  return ref;
}

int vmm_snapshot_save(vmm_snapshot_t *s, const char *path, uint32_t flags) {
  if (s == NULL || path == NULL || (flags & ~(uint32_t)VMM_SNAPSHOT_SAVE_FULL)) return VMM_EINVAL;
  /* A diff needs a saved parent next to it, of the same layout, not about to be replaced by
   * this very file, and a chain short enough to load back. */
  char *parent_path = NULL;
  vmm__snap_lock();
  if (s->parent && s->parent->hashed && s->parent->path) parent_path = strdup(s->parent->path);
  vmm__snap_unlock();
  bool full = (flags & VMM_SNAPSHOT_SAVE_FULL) || parent_path == NULL ||
              s->depth + 1 >= SNAP_MAX_DEPTH;
  for (size_t i = 0; i < s->nregions; i++) full |= s->regions[i].full;
  char *pref = NULL;
  if (!full) {
    char *dest = realpath(path, NULL);
    if (dest && strcmp(dest, parent_path) == 0) full = true;
    free(dest);
  }
  if (!full) {
    pref = parent_ref(path, parent_path);
    if (pref == NULL) full = true;
  }
  free(parent_path);
  struct chunk_list chunks = {0};
  int rc = 0;
  for (size_t i = 0; i < s->nregions && rc == 0; i++) rc = plan_chunks(s, i, full, &chunks);
  uint64_t data_len = 0;
  for (size_t i = 0; i < chunks.n && rc == 0; i++) {
    struct chunk *c = &chunks.v[i];
    if (c->zero) continue;
    c->offset = data_len;
    XXH3_state_t st;
    XXH3_64bits_reset(&st);
    for (uint64_t k = 0; k < c->count; k++) XXH3_64bits_update(&st, chunk_page(c, full, k), PAGE);
    c->check = XXH3_64bits_digest(&st);
    data_len += c->count * PAGE;
  }
  cJSON *meta = rc ? NULL : build_meta(s, full, pref, &chunks);
  char *text = meta ? cJSON_PrintUnformatted(meta) : NULL;
  cJSON_Delete(meta);
  if (rc == 0 && text == NULL) rc = VMM_ENOMEM;
  if (rc == 0 && strlen(text) > SNAP_MAX_META) {
    VMM_LOG_E("snapshot save: metadata of %zu bytes exceeds the %u MiB a file may have",
              strlen(text), SNAP_MAX_META >> 20);
    rc = VMM_ELIMIT;
  }

  char *tmp = NULL;
  int fd = -1;
  if (rc == 0) {
    size_t plen = strlen(path) + 16;
    tmp = malloc(plen);
    if (tmp == NULL) rc = VMM_ENOMEM;
    else snprintf(tmp, plen, "%s.tmp.XXXXXX", path);
  }
  if (rc == 0 && (fd = mkostemp(tmp, O_CLOEXEC)) < 0) {
    VMM_LOG_E("snapshot save: cannot create a file next to %s: %s", path, strerror(errno));
    rc = VMM_EIO;
  }
  if (rc == 0) {
    size_t mlen = strlen(text);
    struct snap_header h;
    memset(&h, 0, sizeof(h));
    memcpy(h.magic, SNAP_MAGIC, 8);
    h.version = SNAP_VERSION;
    h.header_size = SNAP_HEADER_SIZE;
    h.meta_offset = SNAP_HEADER_SIZE;
    h.meta_length = mlen;
    h.data_offset = (SNAP_HEADER_SIZE + mlen + PAGE - 1) / PAGE * PAGE;
    h.data_length = data_len;
    h.file_length = h.data_offset + data_len;
    h.meta_check = XXH32(text, mlen, 0);
    h.header_check = XXH32(&h, offsetof(struct snap_header, header_check), 0);
    rc = write_all(fd, &h, sizeof(h), 0);
    if (rc == 0) rc = write_all(fd, text, mlen, SNAP_HEADER_SIZE);
    for (size_t i = 0; i < chunks.n && rc == 0; i++) {
      const struct chunk *c = &chunks.v[i];
      /* Pages that lie next to each other in one layer go out in one write. */
      for (uint64_t k = 0; k < c->count && !c->zero && rc == 0;) {
        const uint8_t *p0 = chunk_page(c, full, k);
        uint64_t n = 1;
        while (k + n < c->count && chunk_page(c, full, k + n) == p0 + n * PAGE) n++;
        rc = write_all(fd, p0, n * PAGE, h.data_offset + c->offset + k * PAGE);
        k += n;
      }
    }
    if (rc == 0 && ftruncate(fd, (off_t)h.file_length) != 0) rc = VMM_EIO;
    if (rc == 0 && fsync(fd) != 0) rc = VMM_EIO;
    if (rc) VMM_LOG_E("snapshot save: writing %s failed: %s", tmp, strerror(errno));
  }
  if (fd >= 0) close(fd);
  if (rc == 0 && rename(tmp, path) != 0) {
    VMM_LOG_E("snapshot save: cannot rename to %s: %s", path, strerror(errno));
    rc = VMM_EIO;
  }
  if (rc == 0) {
    /* Make the rename itself durable. */
    char *d = strdup(path);
    int dfd = d ? open(dirname(d), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (dfd >= 0) {
      fsync(dfd);
      close(dfd);
    }
    free(d);
    char *rp = realpath(path, NULL);
    vmm__snap_lock();
    content_hash(text, strlen(text), s->hash);
    s->hashed = true;
    if (rp) {
      free(s->path);
      s->path = rp;
    }
    vmm__snap_unlock();
  } else if (tmp && fd >= 0) {
    unlink(tmp);
  }
  free(tmp);
  free(text);
  free(chunks.v);
  free(pref);
  return rc;
}

/* ---- load ---- */

struct loader {
  const char *path;
  int fd;
  struct snap_header h;
  uint64_t file_size;
  uint8_t visited[SNAP_MAX_DEPTH][16];
  int depth;
  uint8_t *bounce;
  const uint8_t *expect; /* Content hash a parent must have, or NULL. */
};

/* Logs "snapshot <message>" and refuses the file. */
#define BAD(...)                          \
  do {                                    \
    VMM_LOG_E("snapshot " __VA_ARGS__);   \
    return VMM_ECORRUPT;                  \
  } while (0)

static int read_exact(int fd, void *buf, size_t len, uint64_t off) {
  uint8_t *p = buf;
  while (len) {
    ssize_t n = pread(fd, p, len, (off_t)off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return VMM_EIO;
    p += n;
    off += (uint64_t)n;
    len -= (size_t)n;
  }
  return 0;
}

static int check_header(struct loader *L) {
  struct snap_header *h = &L->h;
  if (L->file_size < SNAP_HEADER_SIZE) BAD("%s is shorter than a header (%" PRIu64 " bytes)", L->path, L->file_size);
  if (read_exact(L->fd, h, sizeof(*h), 0)) return VMM_EIO;
  if (memcmp(h->magic, SNAP_MAGIC, 8) != 0) BAD("%s: bad magic (not a libvmm snapshot)", L->path);
  if (h->header_check != XXH32(h, offsetof(struct snap_header, header_check), 0))
    BAD("%s: header checksum mismatch", L->path);
  if (h->version != SNAP_VERSION) {
    VMM_LOG_E("snapshot %s: format version %u, this library reads version %d", L->path, h->version,
              SNAP_VERSION);
    return VMM_EVERSION;
  }
  if (h->header_size != SNAP_HEADER_SIZE || h->meta_offset != SNAP_HEADER_SIZE)
    BAD("%s: bad header size or metadata offset", L->path);
  if (h->meta_length == 0 || h->meta_length > SNAP_MAX_META)
    BAD("%s: metadata length %" PRIu64 " out of range", L->path, h->meta_length);
  if (h->data_offset % PAGE || h->data_offset < h->meta_offset + h->meta_length ||
      h->data_offset - (h->meta_offset + h->meta_length) >= PAGE)
    BAD("%s: data offset %" PRIu64 " inconsistent with the metadata", L->path, h->data_offset);
  if (h->data_length % PAGE || h->data_offset + h->data_length < h->data_offset ||
      h->file_length != h->data_offset + h->data_length)
    BAD("%s: data length %" PRIu64 " inconsistent with the file length", L->path, h->data_length);
  if (h->file_length != L->file_size)
    BAD("%s: file is %" PRIu64 " bytes, header says %" PRIu64 " (truncated or extended)", L->path,
        L->file_size, h->file_length);
  return 0;
}

static int load_one(struct loader *L, struct vmm_snapshot **out);

static int load_parent(struct loader *L, const cJSON *pj, struct vmm_snapshot **parent) {
  *parent = NULL;
  if (cJSON_IsNull(pj)) return 0;
  const cJSON *hj = cJSON_GetObjectItemCaseSensitive(pj, "hash");
  const cJSON *fj = cJSON_GetObjectItemCaseSensitive(pj, "file");
  if (!cJSON_IsObject(pj) || !cJSON_IsString(hj) || !cJSON_IsString(fj) ||
      strlen(hj->valuestring) != 32 || fj->valuestring[0] == '\0' || strlen(fj->valuestring) >= PATH_MAX)
    BAD("%s: malformed parent reference", L->path);
  uint8_t want[16];
  for (int i = 0; i < 16; i++) {
    unsigned v;
    if (sscanf(hj->valuestring + 2 * i, "%2x", &v) != 1) BAD("%s: malformed parent hash", L->path);
    want[i] = (uint8_t)v;
  }
  for (int i = 0; i <= L->depth; i++)
    if (memcmp(L->visited[i], want, 16) == 0) BAD("%s: parent chain has a cycle", L->path);
  if (L->depth + 1 >= SNAP_MAX_DEPTH) {
    VMM_LOG_E("snapshot %s: parent chain deeper than %d", L->path, SNAP_MAX_DEPTH);
    return VMM_ELIMIT;
  }
  /* Parents live next to their children: a reference is a plain file name, so a crafted
   * file cannot pull in a snapshot from anywhere else on the host. */
  if (strchr(fj->valuestring, '/') || strcmp(fj->valuestring, ".") == 0 ||
      strcmp(fj->valuestring, "..") == 0)
    BAD("%s: parent reference '%s' is not a file name in the same directory", L->path,
        fj->valuestring);
  char *full = malloc(PATH_MAX * 2);
  char *d = strdup(L->path);
  if (full == NULL || d == NULL) {
    free(full);
    free(d);
    return VMM_ENOMEM;
  }
  snprintf(full, PATH_MAX * 2, "%s/%s", dirname(d), fj->valuestring);
  free(d);
  struct loader P = {.path = full, .expect = want};
  memcpy(P.visited, L->visited, sizeof(P.visited));
  P.depth = L->depth + 1;
  P.fd = open(full, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (P.fd < 0) {
    VMM_LOG_E("snapshot %s: parent %s cannot be opened: %s", L->path, full, strerror(errno));
    free(full);
    return VMM_ENOENT;
  }
  int rc = load_one(&P, parent);
  close(P.fd);
  free(P.bounce);
  free(full);
  return rc;
}

static int parse_regions(struct loader *L, const cJSON *arr, struct vmm_snapshot *s) {
  int n = cJSON_GetArraySize(arr);
  if (!cJSON_IsArray(arr) || n < 0 || n > VMM_MAX_REGIONS) BAD("%s: bad region list", L->path);
  s->regions = calloc((size_t)(n ? n : 1), sizeof(*s->regions));
  if (s->regions == NULL) return VMM_ENOMEM;
  uint64_t total = 0, prev_end = 0;
  const cJSON *o;
  cJSON_ArrayForEach(o, arr) {
    uint64_t gpa, size, flags;
    const cJSON *fj = cJSON_GetObjectItemCaseSensitive(o, "flags");
    const cJSON *full = cJSON_GetObjectItemCaseSensitive(o, "full");
    if (!vmm__json_hex(cJSON_GetObjectItemCaseSensitive(o, "gpa"), &gpa) ||
        !vmm__json_hex(cJSON_GetObjectItemCaseSensitive(o, "size"), &size) || !cJSON_IsNumber(fj) ||
        !cJSON_IsBool(full))
      BAD("%s: region %zu malformed", L->path, s->nregions);
    if (!(fj->valuedouble == 0 || fj->valuedouble == 1))
      BAD("%s: region %zu has unknown flags", L->path, s->nregions);
    flags = (uint64_t)fj->valuedouble;
    if (gpa % PAGE || size % PAGE || size == 0 || gpa + size < gpa)
      BAD("%s: region %zu has a bad address, size or flags", L->path, s->nregions);
    if (s->nregions && gpa < prev_end) BAD("%s: regions overlap or are out of order", L->path);
    total += size;
    if (total > SNAP_MAX_RAM || total < size) {
      VMM_LOG_E("snapshot %s: RAM size beyond the %llu GiB limit", L->path, SNAP_MAX_RAM >> 30);
      return VMM_ELIMIT;
    }
    prev_end = gpa + size;
    int rc = vmm__snap_region_init(&s->regions[s->nregions], gpa, size, (uint32_t)flags, cJSON_IsTrue(full));
    s->nregions++;
    if (rc) return rc;
  }
  return 0;
}

static int parse_chunks(struct loader *L, const cJSON *arr, struct vmm_snapshot *s) {
  if (!cJSON_IsArray(arr)) BAD("%s: no chunk list", L->path);
  uint64_t next_offset = 0;
  const cJSON *o;
  size_t idx = 0;
  cJSON_ArrayForEach(o, arr) {
    const cJSON *rj = cJSON_GetObjectItemCaseSensitive(o, "region");
    const cJSON *cj = cJSON_GetObjectItemCaseSensitive(o, "count");
    uint64_t page, offset = 0, check = 0;
    if (!cJSON_IsNumber(rj) || rj->valuedouble < 0 || rj->valuedouble >= (double)s->nregions ||
        rj->valuedouble != (double)(size_t)rj->valuedouble || !cJSON_IsNumber(cj) ||
        cj->valuedouble < 1 || cj->valuedouble > SNAP_MAX_CHUNK_PAGES ||
        cj->valuedouble != (double)(uint64_t)cj->valuedouble ||
        !vmm__json_hex(cJSON_GetObjectItemCaseSensitive(o, "page"), &page))
      BAD("%s: chunk %zu malformed", L->path, idx);
    size_t ri = (size_t)rj->valuedouble;
    uint64_t count = (uint64_t)cj->valuedouble;
    struct vmm_snap_region *r = &s->regions[ri];
    if (page >= r->npages || count > r->npages - page)
      BAD("%s: chunk %zu lies outside region %zu", L->path, idx, ri);
    for (uint64_t k = 0; k < count; k++)
      if (vmm__snap_has(r, page + k)) BAD("%s: chunk %zu overlaps another chunk", L->path, idx);
    bool zero = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "zero"));
    if (zero) {
      if (r->full) BAD("%s: chunk %zu: zero chunks only belong in diff regions", L->path, idx);
      vmm__snap_mark(r, page, count);
      idx++;
      continue;
    }
    if (!vmm__json_hex(cJSON_GetObjectItemCaseSensitive(o, "offset"), &offset) ||
        !vmm__json_hex(cJSON_GetObjectItemCaseSensitive(o, "check"), &check))
      BAD("%s: chunk %zu lacks an offset or checksum", L->path, idx);
    if (offset != next_offset || offset > L->h.data_length || count * PAGE > L->h.data_length - offset)
      BAD("%s: chunk %zu data at %" PRIu64 " is outside the data area or out of order", L->path, idx,
          offset);
    /* Through a bounce buffer: filling the layer with pwrite costs no page fault per page. */
    if (L->bounce == NULL && (L->bounce = malloc(SNAP_MAX_CHUNK_PAGES * PAGE)) == NULL)
      return VMM_ENOMEM;
    if (read_exact(L->fd, L->bounce, count * PAGE, L->h.data_offset + offset)) {
      VMM_LOG_E("snapshot %s: cannot read chunk %zu", L->path, idx);
      return VMM_EIO;
    }
    if (XXH3_64bits(L->bounce, count * PAGE) != check)
      BAD("%s: chunk %zu checksum mismatch", L->path, idx);
    if (pwrite(r->fd, L->bounce, count * PAGE, (off_t)(page * PAGE)) != (ssize_t)(count * PAGE)) {
      VMM_LOG_E("snapshot %s: out of memory for chunk %zu", L->path, idx);
      return VMM_ENOMEM;
    }
    vmm__snap_mark(r, page, count);
    next_offset = offset + count * PAGE;
    idx++;
  }
  if (next_offset != L->h.data_length) BAD("%s: data area has bytes no chunk describes", L->path);
  return 0;
}

static int parse_devices(struct loader *L, const cJSON *arr, struct vmm_snapshot *s) {
  int n = cJSON_GetArraySize(arr);
  if (!cJSON_IsArray(arr) || n > SNAP_MAX_DEVICES) BAD("%s: bad device list", L->path);
  s->devices = calloc((size_t)(n ? n : 1), sizeof(*s->devices));
  if (s->devices == NULL) return VMM_ENOMEM;
  const cJSON *o;
  cJSON_ArrayForEach(o, arr) {
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "type");
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "version");
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(o, "state");
    if (!cJSON_IsString(t) || strlen(t->valuestring) >= sizeof(s->devices[0].type) ||
        !cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 65535 ||
        !(cJSON_IsNull(st) || cJSON_IsObject(st)))
      BAD("%s: device %zu malformed", L->path, s->ndevices);
    struct vmm_snap_device *d = &s->devices[s->ndevices++];
    snprintf(d->type, sizeof(d->type), "%s", t->valuestring);
    d->version = (uint32_t)v->valuedouble;
    if (cJSON_IsObject(st) && (d->state = cJSON_Duplicate(st, 1)) == NULL) return VMM_ENOMEM;
  }
  return 0;
}

static int load_one(struct loader *L, struct vmm_snapshot **out) {
  *out = NULL;
  struct stat stbuf;
  if (fstat(L->fd, &stbuf) != 0 || !S_ISREG(stbuf.st_mode)) {
    VMM_LOG_E("snapshot %s: not a regular file", L->path);
    return VMM_EIO;
  }
  L->file_size = (uint64_t)stbuf.st_size;
  int rc = check_header(L);
  if (rc) return rc;
  char *text = malloc(L->h.meta_length + 1);
  if (text == NULL) return VMM_ENOMEM;
  if (read_exact(L->fd, text, L->h.meta_length, L->h.meta_offset)) {
    free(text);
    return VMM_EIO;
  }
  text[L->h.meta_length] = '\0';
  cJSON *m = NULL;
  struct vmm_snapshot *s = NULL, *parent = NULL;
  if (XXH32(text, L->h.meta_length, 0) != L->h.meta_check) {
    VMM_LOG_E("snapshot %s: metadata checksum mismatch", L->path);
    rc = VMM_ECORRUPT;
    goto out;
  }
  size_t values = 0;
  for (size_t i = 0; i < L->h.meta_length; i++)
    values += text[i] == ',' || text[i] == '[' || text[i] == '{';
  if (values > SNAP_MAX_META_VALUES) {
    VMM_LOG_E("snapshot %s: metadata has more than %u values", L->path, SNAP_MAX_META_VALUES);
    rc = VMM_ELIMIT;
    goto out;
  }
  m = cJSON_ParseWithLength(text, L->h.meta_length);
  const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(m, "format");
  const cJSON *name = cJSON_GetObjectItemCaseSensitive(m, "name");
  const cJSON *backend = cJSON_GetObjectItemCaseSensitive(m, "backend");
  const cJSON *vcpus = cJSON_GetObjectItemCaseSensitive(m, "vcpus");
  vmm_backend_t b;
  if (!cJSON_IsObject(m) || !cJSON_IsNumber(fmt) || fmt->valuedouble != SNAP_VERSION ||
      !cJSON_IsString(name) || strlen(name->valuestring) >= 64 || !cJSON_IsString(backend) ||
      vmm_backend_parse(backend->valuestring, &b) != 0 || b == VMM_BACKEND_AUTO || !cJSON_IsArray(vcpus) ||
      cJSON_GetArraySize(vcpus) > VMM_MAX_VCPUS) {
    VMM_LOG_E("snapshot %s: metadata is not a valid snapshot description", L->path);
    rc = VMM_ECORRUPT;
    goto out;
  }
  s = vmm__snap_alloc();
  if (s == NULL) {
    rc = VMM_ENOMEM;
    goto out;
  }
  s->from_file = true;
  s->backend = b;
  snprintf(s->name, sizeof(s->name), "%s", name->valuestring);
  if (!vmm__json_hex(cJSON_GetObjectItemCaseSensitive(m, "hypercall_page"), &s->hypercall_page_gpa) ||
      !vmm__json_hex(cJSON_GetObjectItemCaseSensitive(m, "exc_stubs"), &s->exc_stubs_gpa)) {
    VMM_LOG_E("snapshot %s: hypercall page or exception stubs address malformed", L->path);
    rc = VMM_ECORRUPT;
    goto out;
  }
  if (s->hypercall_page_gpa % PAGE || s->exc_stubs_gpa % PAGE) {
    VMM_LOG_E("snapshot %s: hypercall page or exception stubs not page-aligned", L->path);
    rc = VMM_ECORRUPT;
    goto out;
  }
  content_hash(text, L->h.meta_length, s->hash);
  s->hashed = true;
  /* A parent is checked against the hash its child recorded before its pages are read, so a
   * chain of wrong files costs metadata only. */
  if (L->expect && memcmp(L->expect, s->hash, 16) != 0) {
    VMM_LOG_E("snapshot %s: is not the parent file its child was saved against (content hash "
              "differs)", L->path);
    rc = VMM_ENOENT;
    goto out;
  }
  memcpy(L->visited[L->depth], s->hash, 16);
  s->nvcpus = (uint32_t)cJSON_GetArraySize(vcpus);
  s->cpus = calloc(s->nvcpus ? s->nvcpus : 1, sizeof(*s->cpus));
  if (s->cpus == NULL) {
    rc = VMM_ENOMEM;
    goto out;
  }
  const cJSON *c;
  uint32_t ci = 0;
  cJSON_ArrayForEach(c, vcpus) {
    if ((rc = vmm__cpu_state_from_json(c, &s->cpus[ci++])) != 0) goto out;
  }
  if ((rc = parse_devices(L, cJSON_GetObjectItemCaseSensitive(m, "devices"), s)) != 0) goto out;
  {
    /* In-kernel interrupt controllers and timer: checked in full against the VM on restore. */
    cJSON *pl = cJSON_DetachItemFromObjectCaseSensitive(m, "platform");
    if (pl && !cJSON_IsObject(pl)) {
      cJSON_Delete(pl);
      VMM_LOG_E("snapshot %s: \"platform\" is not an object", L->path);
      rc = VMM_ECORRUPT;
      goto out;
    }
    s->platform = pl;
  }
  if ((rc = parse_regions(L, cJSON_GetObjectItemCaseSensitive(m, "regions"), s)) != 0) goto out;
  if ((rc = parse_chunks(L, cJSON_GetObjectItemCaseSensitive(m, "chunks"), s)) != 0) goto out;
  {
    /* The parent loads after this file's metadata is gone: a chain costs one file's
     * metadata at a time. */
    cJSON *pj = cJSON_DetachItemFromObjectCaseSensitive(m, "parent");
    cJSON_Delete(m);
    m = NULL;
    free(text);
    text = NULL;
    rc = load_parent(L, pj, &parent);
    cJSON_Delete(pj);
    if (rc) goto out;
  }
  if (parent) {
    /* A diff file is only meaningful over a parent of the same layout. */
    bool same = parent->nregions == s->nregions;
    for (size_t i = 0; same && i < s->nregions; i++)
      same = parent->regions[i].gpa == s->regions[i].gpa && parent->regions[i].size == s->regions[i].size;
    if (!same) {
      VMM_LOG_E("snapshot %s: RAM layout differs from its parent's", L->path);
      rc = VMM_ECORRUPT;
      goto out;
    }
    vmm__snap_link(s, parent);
  } else {
    for (size_t i = 0; i < s->nregions; i++) {
      if (!s->regions[i].full) {
        VMM_LOG_E("snapshot %s: diff region without a parent", L->path);
        rc = VMM_ECORRUPT;
        goto out;
      }
    }
  }
  s->path = realpath(L->path, NULL);
  vmm__snap_finish(s);
out:
  vmm_snapshot_release(parent);
  cJSON_Delete(m);
  free(text);
  if (rc) {
    vmm_snapshot_release(s);
    return rc;
  }
  *out = s;
  return 0;
}

int vmm_snapshot_load(const char *path, vmm_snapshot_t **out) {
  if (out) *out = NULL;
  if (path == NULL || out == NULL) return VMM_EINVAL;
  struct loader *L = calloc(1, sizeof(*L));
  if (L == NULL) return VMM_ENOMEM;
  L->path = path;
  L->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* A FIFO must not block us. */
  if (L->fd < 0) {
    VMM_LOG_E("snapshot %s: cannot open: %s", path, strerror(errno));
    free(L);
    return VMM_EIO;
  }
  int rc = load_one(L, out);
  close(L->fd);
  free(L->bounce);
  free(L);
  return rc;
}
