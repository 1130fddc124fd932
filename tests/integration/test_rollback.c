/* Roll backs that leave pages writable: a guest writes page sets the host picks, round after
 * round, and the VM is rolled back after each. Checks, on every backend there is:
 *   - after each roll back every page the guest wrote in any round holds the snapshot's bytes
 *     again (pages kept writable by earlier roll backs and pages new in this round alike);
 *   - on bt and pv, the first round takes a write fault per page, and a round that writes the
 *     pages of the round before takes (almost) none;
 *   - a snapshot taken after such rounds stores only the pages that changed, not every page a
 *     roll back left writable;
 *   - once the program reads the dirty log itself, roll backs keep nothing writable, and the
 *     log names only the pages written since the last read;
 *   - the first snapshot, taken with the log already on (so that no later step remaps guest
 *     RAM), does not see what the guest writes afterwards.
 * usage: test_rollback --guest-dir DIR [--backend NAME]... ; exit 77 when nothing could run. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libvmm/vmm.h>

#include "itest.h"

#define RAM (64ull << 20)
#define NPAGES (RAM / 4096)
#define AREA (16ull << 20)
#define AREA_PAGES 512
#define HC_STOP (VMM_HC_USER_BASE + 0)
#define HC_SPEC (VMM_HC_USER_BASE + 1)
#define STOPPED 4242

static int failures;
#define CHECK(cond, ...)                  \
  do {                                    \
    if (!(cond)) {                        \
      printf("FAIL %s: ", bn);            \
      printf(__VA_ARGS__);                \
      printf("\n");                       \
      failures++;                         \
      goto out;                           \
    }                                     \
  } while (0)

struct ctx {
  uint64_t spec;
};

static int hc_stop(vmm_vcpu_t *vcpu, uint64_t nr, const uint64_t a[6], uint64_t *res, void *ud) {
  (void)nr, (void)a, (void)ud;
  *res = 0;
  vmm_vcpu_request_exit(vcpu, STOPPED);
  return VMM_HANDLED;
}

static int hc_spec(vmm_vcpu_t *vcpu, uint64_t nr, const uint64_t a[6], uint64_t *res, void *ud) {
  (void)vcpu, (void)nr, (void)a;
  *res = ((struct ctx *)ud)->spec;
  return VMM_HANDLED;
}

/* Runs to the guest's next HC_STOP; 0 when it got there. */
static int run_to_stop(vmm_vcpu_t *v) {
  vmm_exit_t e;
  memset(&e, 0, sizeof(e));
  for (int n = 0; n < 100000; n++) {
    if (vmm_vcpu_run(v, &e) != 0) return -1;
    if (e.reason == VMM_EXIT_GUEST_EXIT) return e.guest_exit.status == STOPPED ? 0 : -1;
    if (e.reason != VMM_EXIT_IO && e.reason != VMM_EXIT_MMIO) return -1;
  }
  return -1;
}

/* One round: the guest writes value + i into pages [first, first + count) of the area. */
static int round_of(vmm_vcpu_t *v, struct ctx *c, uint64_t first, uint64_t count, uint64_t value) {
  c->spec = first << 40 | count << 20 | value;
  return run_to_stop(v);
}

static uint64_t word_at(vmm_vm_t *vm, uint64_t page) {
  uint64_t w = 0;
  vmm_vm_read(vm, AREA + page * 4096, &w, sizeof(w));
  return w;
}

static uint64_t fill(uint64_t page) { return 0x5eed0000ull + page; }

static uint64_t stat_of(vmm_vcpu_t *v, const char *name) {
  vmm_stat_t st[64];
  size_t n = 0;
  if (vmm_vcpu_stats(v, st, 64, &n) != 0) return 0;
  for (size_t i = 0; i < n && i < 64; i++)
    if (strcmp(st[i].name, name) == 0) return st[i].value;
  return 0;
}

static int bit(const uint64_t *bm, uint64_t page) { return (bm[page / 64] >> (page % 64)) & 1; }

static void check_backend(vmm_backend_t b, const char *guest_dir) {
  const char *bn = vmm_backend_name(b);
  char path[1024];
  snprintf(path, sizeof(path), "%s/rounds.elf", guest_dir);
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = b;
  cfg.ram_size = RAM;
  vmm_vm_t *vm = NULL;
  vmm_vcpu_t *v;
  vmm_snapshot_t *s0 = NULL, *s1 = NULL;
  vmm_image_info_t img;
  vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
  static uint64_t bm[NPAGES / 64];
  struct ctx c = {0};
  int rc = vmm_vm_create(&cfg, &vm);
  CHECK(rc == 0, "create: %s", vmm_strerror(rc));
  rc = vmm_vcpu_create(vm, 0, &v);
  if (rc == 0) rc = vmm_load_file(vm, path, 0, 0, &img);
  if (rc == 0) rc = vmm_vm_add_hypercall_handler(vm, HC_STOP, hc_stop, &c, NULL);
  if (rc == 0) rc = vmm_vm_add_hypercall_handler(vm, HC_SPEC, hc_spec, &c, NULL);
  lm.entry = img.entry;
  lm.cpl = 3;
  if (rc == 0) rc = vmm_vcpu_setup_long_mode(v, &lm);
  CHECK(rc == 0, "setup: %s", vmm_strerror(rc));
  for (uint64_t p = 0; p < AREA_PAGES; p++) {
    uint64_t w = fill(p);
    vmm_vm_write(vm, AREA + p * 4096, &w, sizeof(w));
  }
  CHECK(run_to_stop(v) == 0, "first stop not reached");
  rc = vmm_vm_dirty_log_enable(vm, 0, 1);
  CHECK(rc == 0 || rc == VMM_ENOSYS, "dirty log: %s", vmm_strerror(rc));
  rc = vmm_vm_snapshot(vm, &s0);
  CHECK(rc == 0, "snapshot: %s", vmm_strerror(rc));

  /* Page sets that repeat, overlap, move and grow; a roll back after each. */
  static const uint64_t sets[][2] = {{0, 64}, {0, 64}, {32, 64}, {200, 16}, {0, 64},
                                     {0, 64}, {300, 100}, {0, 64}, {64, 8}, {0, 64}};
  /* The counter of the backend's write faults under dirty logging. */
  const char *faults = b == VMM_BACKEND_BT ? "bt.demand_maps"
                       : b == VMM_BACKEND_PV ? "pv.wp_faults" : NULL;
  for (size_t k = 0; k < sizeof(sets) / sizeof(sets[0]); k++) {
    uint64_t first = sets[k][0], count = sets[k][1], value = 1000 * (k + 1);
    uint64_t maps0 = faults ? stat_of(v, faults) : 0;
    CHECK(round_of(v, &c, first, count, value) == 0, "round %zu did not reach its stop", k);
    uint64_t maps = faults ? stat_of(v, faults) - maps0 : 0;
    if (faults && k == 0)
      CHECK(maps >= count, "the first round wrote %" PRIu64 " protected pages and took only %"
            PRIu64 " %s", count, maps, faults);
    for (uint64_t i = 0; i < count; i++) {
      uint64_t w = 0;
      CHECK(word_at(vm, first + i) == value + i, "round %zu: page %" PRIu64 " not written", k,
            first + i);
      CHECK(vmm_snapshot_read(s0, AREA + (first + i) * 4096, &w, sizeof(w)) == 0 &&
            w == fill(first + i), "round %zu: the guest's write to page %" PRIu64
            " reached the snapshot (%#" PRIx64 ")", k, first + i, w);
    }
    /* The round before wrote the same pages and was rolled back: they stayed writable. */
    if (faults && k > 0 && sets[k - 1][0] == first && sets[k - 1][1] == count)
      CHECK(maps < count / 4, "round %zu rewrote pages a roll back kept, yet took %" PRIu64
            " %s for %" PRIu64 " pages", k, maps, faults, count);
    rc = vmm_vm_restore(vm, s0);
    CHECK(rc == 0, "roll back %zu: %s", k, vmm_strerror(rc));
    for (uint64_t p = 0; p < AREA_PAGES; p++)
      CHECK(word_at(vm, p) == fill(p), "after roll back %zu page %" PRIu64 " holds %#" PRIx64
            ", the snapshot %#" PRIx64, k, p, word_at(vm, p), fill(p));
  }
  printf("PASS %s: 10 rounds over moving page sets, each rolled back to the snapshot's bytes\n", bn);

  /* After rounds that left pages 0-63 writable, a round writes 16 other pages: the snapshot
   * stores those (and the few the guest's stack and the hypercalls touch), not pages 0-63. */
  CHECK(round_of(v, &c, 0, 64, 77) == 0 && vmm_vm_restore(vm, s0) == 0, "warm-up round");
  CHECK(round_of(v, &c, 400, 16, 99) == 0, "round before the snapshot");
  rc = vmm_vm_snapshot(vm, &s1);
  CHECK(rc == 0, "second snapshot: %s", vmm_strerror(rc));
  vmm_snapshot_info_t info = VMM_SNAPSHOT_INFO_INIT;
  CHECK(vmm_snapshot_info(s1, &info) == 0, "snapshot info");
  CHECK(info.own_pages >= 16 && info.own_pages <= 16 + 8,
        "the diff snapshot stores %" PRIu64 " pages; 16 were written (plus a few of the stack)",
        info.own_pages);
  printf("PASS %s: a diff snapshot after kept roll backs stores %" PRIu64 " pages for 16 written\n",
         bn, info.own_pages);

  /* The program reads the log: from now on the log is exact. */
  CHECK(vmm_vm_restore(vm, s0) == 0, "roll back before the log test");
  CHECK(vmm_vm_dirty_log_get(vm, 0, bm, sizeof(bm)) == 0, "first log read");
  CHECK(round_of(v, &c, 0, 64, 5) == 0 && vmm_vm_restore(vm, s0) == 0, "log round 1");
  CHECK(round_of(v, &c, 100, 8, 6) == 0, "log round 2");
  CHECK(vmm_vm_dirty_log_get(vm, 0, bm, sizeof(bm)) == 0, "second log read");
  uint64_t area0 = AREA / 4096;
  for (uint64_t i = 0; i < 8; i++)
    CHECK(bit(bm, area0 + 100 + i), "page %" PRIu64 " was written but the log lacks it", 100 + i);
  for (uint64_t i = 0; i < 64; i++)
    CHECK(!bit(bm, area0 + i), "page %" PRIu64 " was written before the roll back only, yet the "
          "log read after it names it", i);
  /* The pages kept writable before were protected again: writing them now is logged. */
  CHECK(round_of(v, &c, 0, 64, 8) == 0, "log round 3");
  CHECK(vmm_vm_dirty_log_get(vm, 0, bm, sizeof(bm)) == 0, "third log read");
  for (uint64_t i = 0; i < 64; i++)
    CHECK(bit(bm, area0 + i), "page %" PRIu64 " was kept writable, written again, and the log "
          "lacks it", i);
  printf("PASS %s: once the program reads the log, roll backs keep no page writable\n", bn);
out:
  vmm_snapshot_release(s1);
  vmm_snapshot_release(s0);
  vmm_vm_destroy(vm);
}

int main(int argc, char **argv) {
  const char *dir = ".";
  vmm_backend_t want[3];
  int nwant;
  if (itest_args(argc, argv, &dir, want, &nwant, NULL)) return 2;
  int ran = 0;
  for (int i = 0; i < nwant; i++) {
    int rc = vmm_backend_probe(want[i]);
    if (rc != 0) {
      printf("SKIP %s: %s\n", vmm_backend_name(want[i]),
             rc == VMM_ENOSYS ? "not built in" : vmm_strerror(rc));
      continue;
    }
    check_backend(want[i], dir);
    ran++;
  }
  if (!ran) return 77;
  printf(failures ? "FAILED: %d failure(s)\n" : "OK\n", failures);
  return failures ? 1 : 0;
}
