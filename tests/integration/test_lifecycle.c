/* VM lifecycle on real backends, with the counter guest:
 *   - roll back to a snapshot and re-run from it many times: identical results every time;
 *   - branch one snapshot into several children that diverge, each checked against the
 *     result computed on the host, and the snapshot tree that this builds;
 *   - clone many VMs from one snapshot and run them at the same time; report memory growth;
 *   - save to a file, load, restore into a fresh VM and finish there;
 *   - cross-backend continuation: snapshot on one backend, finish on every other one.
 * usage: test_lifecycle --guest-dir DIR [--backend NAME]... [--clones N]
 * Exit 77 when no requested backend can run here. */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libvmm/snapshot.h>
#include <libvmm/vmm.h>

#include "itest.h"
#include "itest_check.h"

#define HC_CHECKPOINT (VMM_HC_USER_BASE + 0)
#define HC_BRANCH (VMM_HC_USER_BASE + 1)
#define STEPS 5000

static const char *guest_dir = ".";

/* The guest's computation, redone on the host; branch[k] answers checkpoint k (1-based). */
static void expected(const uint64_t branch[6], char *out, size_t cap, int *status) {
  static uint64_t table[512];
  memset(table, 0, sizeof(table));
  uint64_t hash = 1469598103934665603ull, counter = 0;
  for (uint64_t i = 1; i <= STEPS; i++) {
    counter++;
    hash = (hash ^ (counter * 0x9e3779b97f4a7c15ull)) * 1099511628211ull;
    table[(hash >> 7) % 512] += hash;
    if (i % 1000 == 0) hash ^= branch[i / 1000] << 32;
  }
  uint64_t sum = 0;
  for (int k = 0; k < 512; k++) sum += table[k] * (uint64_t)(k + 1);
  snprintf(out, cap, "counter=%" PRIu64 " hash=%016" PRIx64 " sum=%016" PRIx64 "\n", counter, hash,
           sum);
  *status = (int)(hash & 0x7f);
}

struct ctx {
  uint64_t stop_at;     /* Checkpoint argument at which to stop (0: never). */
  uint64_t branch;      /* Answer to the branch hypercall. */
  char console[256];
  size_t len;
};

static void sink(const char *d, size_t n, void *ud) {
  struct ctx *c = ud;
  for (size_t i = 0; i < n && c->len + 1 < sizeof(c->console); i++) c->console[c->len++] = d[i];
  c->console[c->len] = 0;
}

static int hc_checkpoint(vmm_vcpu_t *vcpu, uint64_t nr, const uint64_t a[6], uint64_t *res, void *ud) {
  (void)nr;
  struct ctx *c = ud;
  *res = 0;
  if (c->stop_at && a[0] == c->stop_at) vmm_vcpu_request_exit(vcpu, 1000 + (int64_t)a[0]);
  return VMM_HANDLED;
}

static int hc_branch(vmm_vcpu_t *vcpu, uint64_t nr, const uint64_t a[6], uint64_t *res, void *ud) {
  (void)vcpu, (void)nr, (void)a;
  *res = ((struct ctx *)ud)->branch;
  return VMM_HANDLED;
}

/* A VM with the counter guest loaded, its handlers and a UART (for device state). */
static vmm_vm_t *make_vm(vmm_backend_t b, struct ctx *c, int load) {
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = b;
  cfg.ram_size = 64 << 20;
  vmm_vm_t *vm;
  if (vmm_vm_create(&cfg, &vm) != 0) return NULL;
  vmm_vcpu_t *v;
  vmm_uart_config_t u = VMM_UART_CONFIG_INIT;
  char path[1024];
  snprintf(path, sizeof(path), "%s/counter.elf", guest_dir);
  vmm_image_info_t img;
  vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
  if (vmm_vm_set_console(vm, sink, c) || vmm_uart_create(vm, &u, NULL) ||
      vmm_vm_add_hypercall_handler(vm, HC_CHECKPOINT, hc_checkpoint, c, NULL) ||
      vmm_vm_add_hypercall_handler(vm, HC_BRANCH, hc_branch, c, NULL) || vmm_vcpu_create(vm, 0, &v)) {
    vmm_vm_destroy(vm);
    return NULL;
  }
  if (load) {
    if (vmm_load_file(vm, path, 0, 0, &img) != 0) {
      vmm_vm_destroy(vm);
      return NULL;
    }
    lm.entry = img.entry;
    lm.cpl = 3; /* Compute at CPL3: native speed on kvm hosts that emulate CPL0. */
    if (vmm_vcpu_setup_long_mode(v, &lm) != 0) {
      vmm_vm_destroy(vm);
      return NULL;
    }
  }
  return vm;
}

/* Runs until the guest exits or stops at a checkpoint; returns the exit status, -1 on error. */
static int64_t run(vmm_vcpu_t *v, vmm_regs_t *regs) {
  vmm_exit_t e;
  memset(&e, 0, sizeof(e));
  for (int n = 0; n < 100000; n++) {
    if (vmm_vcpu_run(v, &e) != 0) return -1;
    if (e.reason == VMM_EXIT_GUEST_EXIT) {
      if (regs) vmm_vcpu_get_regs(v, regs);
      return e.guest_exit.status;
    }
    if (e.reason != VMM_EXIT_IO && e.reason != VMM_EXIT_MMIO) {
      printf("     unexpected exit %s\n", vmm_exit_reason_name(e.reason));
      return -1;
    }
  }
  return -1;
}

static void test_rerun_and_branches(vmm_backend_t b) {
  const char *bn = vmm_backend_name(b);
  struct ctx c = {.stop_at = 1000};
  vmm_vm_t *vm = make_vm(b, &c, 1);
  CHECK(vm != NULL, "%s: VM setup", bn);
  if (!vm) return;
  vmm_vcpu_t *v = vmm_vm_vcpu(vm, 0);
  int64_t st = run(v, NULL);
  CHECK(st == 2000, "%s: stop at the first checkpoint (status %" PRId64 ")", bn, st);
  vmm_snapshot_t *s;
  int rc = vmm_vm_snapshot(vm, &s);
  CHECK(rc == 0, "%s: snapshot: %s", bn, vmm_strerror(rc));
  if (rc) goto out;
  uint64_t zero[6] = {0};
  char want[128];
  int want_status;
  expected(zero, want, sizeof(want), &want_status);

  c.stop_at = 0;
  c.len = 0;
  vmm_regs_t r1, r;
  st = run(v, &r1);
  CHECK(st == want_status && strcmp(c.console, want) == 0, "%s: first run: status %" PRId64 ", '%s', want '%s'",
        bn, st, c.console, want);
  for (int i = 0; i < 10; i++) {
    c.len = 0;
    rc = vmm_vm_restore(vm, s);
    st = run(v, &r);
    CHECK(rc == 0 && st == want_status && strcmp(c.console, want) == 0 &&
              memcmp(&r, &r1, sizeof(r)) == 0,
          "%s: re-run %d from the snapshot differs", bn, i);
  }
  printf("PASS %s: 10 re-runs from one snapshot, identical output, status and registers\n", bn);

  /* Branches: each child answers the branch question differently from checkpoint 1 on. */
  vmm_snapshot_t *kids[3];
  for (uint64_t k = 1; k <= 3; k++) {
    c.len = 0;
    c.branch = k;
    c.stop_at = 3000;
    rc = vmm_vm_restore(vm, s);
    st = run(v, NULL);
    CHECK(rc == 0 && st == 4000, "%s: branch %" PRIu64 " did not reach checkpoint 3", bn, k);
    rc = vmm_vm_snapshot(vm, &kids[k - 1]);
    CHECK(rc == 0, "%s: snapshot of branch %" PRIu64, bn, k);
  }
  size_t n;
  vmm_snapshot_children(s, NULL, 0, &n);
  CHECK(n == 3, "%s: the snapshot has %zu children, want 3", bn, n);
  /* Finish the branches in reverse order, each from its own snapshot. */
  for (int k = 3; k >= 1; k--) {
    c.len = 0;
    c.branch = (uint64_t)k;
    c.stop_at = 0;
    rc = vmm_vm_restore(vm, kids[k - 1]);
    st = run(v, NULL);
    uint64_t br[6] = {0, (uint64_t)k, (uint64_t)k, (uint64_t)k, (uint64_t)k, (uint64_t)k};
    char w[128];
    int ws;
    expected(br, w, sizeof(w), &ws);
    CHECK(rc == 0 && st == ws && strcmp(c.console, w) == 0, "%s: branch %d: '%s', want '%s'", bn, k,
          c.console, w);
    vmm_snapshot_info_t info = VMM_SNAPSHOT_INFO_INIT;
    vmm_snapshot_info(kids[k - 1], &info);
    CHECK(info.depth >= 1 && vmm_snapshot_parent(kids[k - 1]) == s, "%s: branch %d parent", bn, k);
  }
  printf("PASS %s: 3 branches from one snapshot diverge as computed on the host\n", bn);
  for (int k = 0; k < 3; k++) vmm_snapshot_release(kids[k]);
  vmm_snapshot_release(s);
out:
  vmm_vm_destroy(vm);
}

/* ---- clones ---- */

struct clone_job {
  vmm_vm_t *vm;
  struct ctx c;
  int64_t status;
};

static void *clone_main(void *arg) {
  struct clone_job *j = arg;
  j->status = run(vmm_vm_vcpu(j->vm, 0), NULL);
  return NULL;
}

/* The value of `key` (in KiB) in a /proc file of "Key: N kB" lines, or -1. */
static long proc_kib(const char *path, const char *key) {
  FILE *f = fopen(path, "r");
  char line[256];
  long kib = -1;
  size_t kl = strlen(key);
  while (f && fgets(line, sizeof(line), f))
    if (strncmp(line, key, kl) == 0 && line[kl] == ':' && sscanf(line + kl + 1, "%ld", &kib) == 1)
      break;
  if (f) fclose(f);
  return kib;
}

/* Memory the clones cost: this process's anonymous pages plus every shared-memory page in the
 * system (guest RAM lives in memfds, which per-process RSS counts once per mapping, or not at
 * all when only a pv sandbox maps them). */
static long mem_kib(void) {
  return proc_kib("/proc/self/status", "RssAnon") + proc_kib("/proc/meminfo", "Shmem");
}

static void test_clones(vmm_backend_t b, int nclones) {
  const char *bn = vmm_backend_name(b);
  static struct ctx shared;
  shared = (struct ctx){.stop_at = 1000, .branch = 7};
  vmm_vm_t *vm = make_vm(b, &shared, 1);
  CHECK(vm != NULL, "%s: VM setup", bn);
  if (!vm) return;
  int64_t st = run(vmm_vm_vcpu(vm, 0), NULL);
  /* 16 MiB of data the guest never touches: a clone that copied it instead of sharing it
   * would cost more than the limit checked below. */
  enum { BALLAST_GPA = 16 << 20, BALLAST_SIZE = 16 << 20 };
  uint8_t *ballast = malloc(BALLAST_SIZE);
  for (size_t k = 0; ballast && k < BALLAST_SIZE; k++) ballast[k] = (uint8_t)(k * 7 + 1);
  if (ballast == NULL || vmm_vm_write(vm, BALLAST_GPA, ballast, BALLAST_SIZE) != 0) st = -1;
  vmm_snapshot_t *s = NULL;
  long pre = mem_kib();
  int rc = st == 2000 ? vmm_vm_snapshot(vm, &s) : -1;
  long taken = mem_kib() - pre;
  CHECK(rc == 0, "%s: snapshot for clones", bn);
  /* The first snapshot takes the VM's RAM as its layer: it copies none of the 16 MiB. */
  CHECK(rc || taken < 4096, "%s: the first snapshot of a VM holding 16 MiB of data took %ld KiB",
        bn, taken);
  if (rc == 0 && taken < 4096)
    printf("PASS %s: the first snapshot of a VM holding 16 MiB of data took %ld KiB\n", bn, taken);
  if (rc) {
    free(ballast);
    vmm_vm_destroy(vm);
    return;
  }
  shared.stop_at = 0; /* The clones share the handlers' context: never stop, branch 7. */
  struct clone_job *jobs = calloc((size_t)nclones, sizeof(*jobs));
  long before = mem_kib();
  int made = 0;
  for (int i = 0; i < nclones; i++) {
    rc = vmm_snapshot_clone(s, NULL, &jobs[i].vm);
    if (rc) {
      CHECK(0, "%s: clone %d: %s", bn, i, vmm_strerror(rc));
      break;
    }
    vmm_vm_set_console(jobs[i].vm, sink, &jobs[i].c); /* Each clone prints into its own buffer. */
    made++;
  }
  pthread_t *t = calloc((size_t)made, sizeof(*t));
  for (int i = 0; i < made; i++) pthread_create(&t[i], NULL, clone_main, &jobs[i]);
  for (int i = 0; i < made; i++) pthread_join(t[i], NULL);
  long after = mem_kib();
  uint64_t br[6] = {0, 7, 7, 7, 7, 7};
  char w[128];
  int ws, ok = 0;
  expected(br, w, sizeof(w), &ws);
  for (int i = 0; i < made; i++) ok += jobs[i].status == ws && strcmp(jobs[i].c.console, w) == 0;
  CHECK(ok == nclones, "%s: %d of %d clones finished with the right result", bn, ok, nclones);
  vmm_ram_region_t r;
  size_t n;
  vmm_vm_ram_regions(vm, &r, 1, &n);
  long per_clone = made ? (after - before) / made : 0;
  printf("%s %s: %d clones ran at once; memory (anonymous + shared) grew %ld KiB in all, %ld "
         "KiB per clone (guest RAM %" PRIu64 " KiB each)\n",
         ok == nclones && per_clone < (long)(r.size >> 10) / 8 ? "PASS" : "FAIL", bn, made,
         after - before, per_clone, r.size >> 10);
  /* Sharing: a clone must cost a small fraction of its RAM (and of the data it holds). */
  CHECK(per_clone < (long)(r.size >> 10) / 8, "%s: clones do not share memory (%ld KiB each)", bn,
        per_clone);
  /* What one clone writes stays its own: not in a sibling, not in the snapshot's VM, not in
   * a clone made afterwards, which still finishes as the snapshot would. */
  if (made >= 2) {
    uint8_t mark[64], got[64];
    memset(mark, 0xa5, sizeof(mark));
    rc = vmm_vm_write(jobs[0].vm, BALLAST_GPA + 4096, mark, sizeof(mark));
    bool own = rc == 0 && vmm_vm_read(jobs[0].vm, BALLAST_GPA + 4096, got, sizeof(got)) == 0 &&
               memcmp(got, mark, sizeof(mark)) == 0;
    bool sib = vmm_vm_read(jobs[1].vm, BALLAST_GPA + 4096, got, sizeof(got)) == 0 &&
               memcmp(got, ballast + 4096, sizeof(got)) == 0;
    bool orig = vmm_vm_read(vm, BALLAST_GPA + 4096, got, sizeof(got)) == 0 &&
                memcmp(got, ballast + 4096, sizeof(got)) == 0;
    CHECK(own && sib && orig, "%s: a clone's write: seen by itself %d, sibling unchanged %d, "
          "original unchanged %d", bn, own, sib, orig);
    /* The original goes on: the host writes a page, the guest runs to its end writing its
     * own. The snapshot, which holds the original's RAM of that moment, sees none of it. */
    uint8_t snap[64];
    rc = vmm_vm_write(vm, BALLAST_GPA + 8192, mark, sizeof(mark));
    int64_t ost = rc == 0 ? run(vmm_vm_vcpu(vm, 0), NULL) : -1;
    bool kept = vmm_snapshot_read(s, BALLAST_GPA + 8192, snap, sizeof(snap)) == 0 &&
                memcmp(snap, ballast + 8192, sizeof(snap)) == 0 &&
                vmm_vm_read(vm, BALLAST_GPA + 8192, got, sizeof(got)) == 0 &&
                memcmp(got, mark, sizeof(mark)) == 0;
    CHECK(ost == ws && kept, "%s: the original after the snapshot: status %lld (want %d), "
          "its write in itself and not in the snapshot %d", bn, (long long)ost, ws, kept);
    struct clone_job late = {0};
    rc = vmm_snapshot_clone(s, NULL, &late.vm);
    if (rc == 0) {
      vmm_vm_set_console(late.vm, sink, &late.c);
      clone_main(&late);
      bool same = late.status == ws && strcmp(late.c.console, w) == 0 &&
                  vmm_vm_read(late.vm, BALLAST_GPA, got, sizeof(got)) == 0 &&
                  memcmp(got, ballast, sizeof(got)) == 0;
      CHECK(same, "%s: a clone made after the others ran does not start from the snapshot", bn);
      vmm_vm_destroy(late.vm);
    }
    CHECK(rc == 0, "%s: late clone: %s", bn, vmm_strerror(rc));
  }
  free(ballast);
  for (int i = 0; i < made; i++) vmm_vm_destroy(jobs[i].vm);
  free(t);
  free(jobs);
  vmm_snapshot_release(s);
  vmm_vm_destroy(vm);
}

/* ---- files and other backends ---- */

/* A snapshot moved to another VM (`how`) on backend `to`: PASS when it ran to the status and
 * console output of an unmoved run. */
static void report_moved(const char *how, const char *from, vmm_backend_t to, int rc,
                         int64_t status, int want_status, const char *console, const char *want) {
  bool ok = rc == 0 && status == want_status && strcmp(console, want) == 0;
  printf("%s snapshot on %s %s on %s%s\n", ok ? "PASS" : "FAIL", from, how,
         vmm_backend_name(to), ok ? "" : ": wrong result");
  if (!ok) {
    printf("     %s, status %" PRId64 " (want %d), console '%s', want '%s'\n", vmm_strerror(rc),
           status, want_status, console, want);
    failures++;
  }
}
static void test_file_and_cross_backend(vmm_backend_t from, const vmm_backend_t *all, int nall) {
  const char *bn = vmm_backend_name(from);
  struct ctx c = {.stop_at = 2000, .branch = 3};
  vmm_vm_t *vm = make_vm(from, &c, 1);
  CHECK(vm != NULL, "%s: VM setup", bn);
  if (!vm) return;
  int64_t st = run(vmm_vm_vcpu(vm, 0), NULL);
  vmm_snapshot_t *s = NULL;
  int rc = st == 3000 ? vmm_vm_snapshot(vm, &s) : -1;
  CHECK(rc == 0, "%s: snapshot at checkpoint 2", bn);
  char path[] = "/tmp/vmm-lifecycle-XXXXXX";
  int fd = mkstemp(path);
  if (fd >= 0) close(fd);
  if (rc == 0) {
    rc = vmm_snapshot_save(s, path, 0);
    CHECK(rc == 0, "%s: save: %s", bn, vmm_strerror(rc));
  }
  vmm_snapshot_t *loaded = NULL;
  if (rc == 0) {
    rc = vmm_snapshot_load(path, &loaded);
    CHECK(rc == 0, "%s: load: %s", bn, vmm_strerror(rc));
  }
  /* Checkpoint 1 answered 3 before the snapshot, checkpoint 2's answer comes after it. */
  uint64_t br[6] = {0, 3, 9, 9, 9, 9};
  char w[128];
  int ws;
  expected(br, w, sizeof(w), &ws);
  for (int i = 0; rc == 0 && i < nall; i++) {
    struct ctx c2 = {.branch = 9};
    vmm_vm_t *fresh = make_vm(all[i], &c2, 0);
    int r2 = fresh ? vmm_vm_restore(fresh, loaded) : VMM_ENOMEM;
    int64_t st2 = r2 == 0 ? run(vmm_vm_vcpu(fresh, 0), NULL) : -1;
    report_moved("saved, loaded, finished", bn, all[i], r2, st2, ws, c2.console, w);
    vmm_vm_destroy(fresh);
  }
  /* A clone on another backend shares the snapshot's RAM, whose hypercall page is this
   * backend's: the clone's must be rewritten for its own before the guest calls it. */
  for (int i = 0; s && i < nall; i++) {
    if (all[i] == from) continue;
    vmm_clone_config_t cc = VMM_CLONE_CONFIG_INIT;
    cc.backend = all[i];
    vmm_vm_t *cl = NULL;
    c.stop_at = 0;
    c.branch = 9;
    c.len = 0;
    c.console[0] = 0;
    int r2 = vmm_snapshot_clone(s, &cc, &cl);
    int64_t st2 = r2 == 0 ? run(vmm_vm_vcpu(cl, 0), NULL) : -1;
    report_moved("cloned and finished", bn, all[i], r2, st2, ws, c.console, w);
    vmm_vm_destroy(cl);
  }
  unlink(path);
  vmm_snapshot_release(loaded);
  vmm_snapshot_release(s);
  vmm_vm_destroy(vm);
}

int main(int argc, char **argv) {
  int nclones = 100;
  vmm_backend_t want[3];
  int nwant;
  if (itest_args(argc, argv, &guest_dir, want, &nwant, &nclones)) return 2;
  vmm_backend_t avail[3];
  int ran = 0;
  for (int i = 0; i < nwant; i++) {
    int rc = vmm_backend_probe(want[i]);
    if (rc) {
      printf("SKIP %s: %s\n", vmm_backend_name(want[i]), rc == VMM_ENOSYS ? "not built in" : vmm_strerror(rc));
      continue;
    }
    avail[ran++] = want[i];
  }
  if (!ran) return 77;
  for (int i = 0; i < ran; i++) {
    test_rerun_and_branches(avail[i]);
    test_clones(avail[i], nclones);
    test_file_and_cross_backend(avail[i], avail, ran);
  }
  printf("%s: %d failure(s)\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
