/* Clones on real backends: memory shared with the snapshot until written, and still coherent.
 *   - two vCPUs of a clone pass a message through pages each first read from the shared
 *     snapshot (clone_guest.S): a write by one must reach the other, whose sandbox or window
 *     mapped the shared copy (without the step that drops those mappings one vCPU spins until
 *     the watchdog gives up);
 *   - what the clone writes stays its own: the snapshot's VM and later clones still see the
 *     snapshot's bytes.
 * usage: test_clones [--backend NAME]...   Exit 77 when no requested backend can run here. */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libvmm/snapshot.h>
#include <libvmm/vmm.h>

extern const uint8_t prog_mp_start[], prog_mp_consumer[], prog_mp_end[];

#define LOAD_GPA 0x100000ull
#define FLAG_GPA 0x200000ull

static int failures;

#define CHECK(cond, ...)           \
  do {                             \
    if (!(cond)) {                 \
      printf("FAIL " __VA_ARGS__); \
      printf("\n");                \
      failures++;                  \
    }                              \
  } while (0)

static uint64_t ms_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct runner {
  vmm_vcpu_t *vcpu;
  vmm_exit_t ex;
  int rc;
  atomic_bool done;
};

static void *run_main(void *arg) {
  struct runner *m = arg;
  memset(&m->ex, 0, sizeof(m->ex));
  m->rc = vmm_vcpu_run(m->vcpu, &m->ex);
  atomic_store(&m->done, true);
  return NULL;
}

/* A two-vCPU VM at the start of prog_mp (vCPU 0 the producer, vCPU 1 the consumer). */
static vmm_vm_t *make_mp_vm(vmm_backend_t b) {
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = b;
  cfg.ram_size = 16u << 20;
  cfg.max_vcpus = 2;
  vmm_vm_t *vm;
  if (vmm_vm_create(&cfg, &vm) != 0) return NULL;
  vmm_image_info_t info;
  int rc = vmm_load_flat(vm, LOAD_GPA, prog_mp_start, (size_t)(prog_mp_end - prog_mp_start), &info);
  for (uint32_t i = 0; rc == 0 && i < 2; i++) {
    vmm_vcpu_t *v;
    rc = vmm_vcpu_create(vm, i, &v);
    vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
    lm.entry = LOAD_GPA + (i ? (uint64_t)(prog_mp_consumer - prog_mp_start) : 0);
    lm.stack_top = (8u << 20) - i * 0x10000u;
    if (rc == 0) rc = vmm_vcpu_setup_long_mode(v, &lm);
  }
  if (rc) {
    printf("FAIL %s: VM setup: %s\n", vmm_backend_name(b), vmm_strerror(rc));
    vmm_vm_destroy(vm);
    return NULL;
  }
  return vm;
}

/* Runs both vCPUs of a clone at once; false when one did not finish within 20 s. */
static bool run_pair(vmm_vm_t *c, struct runner m[2]) {
  pthread_t t[2];
  for (int i = 0; i < 2; i++) {
    memset(&m[i], 0, sizeof(m[i]));
    m[i].vcpu = vmm_vm_vcpu(c, (uint32_t)i);
    pthread_create(&t[i], NULL, run_main, &m[i]);
  }
  uint64_t t0 = ms_now();
  while (!(atomic_load(&m[0].done) && atomic_load(&m[1].done)) && ms_now() - t0 < 20000) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  bool finished = atomic_load(&m[0].done) && atomic_load(&m[1].done);
  for (int i = 0; i < 2; i++) vmm_vcpu_kick(m[i].vcpu);
  for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
  return finished;
}

static void test_backend(vmm_backend_t b) {
  const char *bn = vmm_backend_name(b);
  vmm_vm_t *vm = make_mp_vm(b);
  CHECK(vm != NULL, "%s: VM setup", bn);
  if (vm == NULL) return;
  vmm_snapshot_t *snap = NULL;
  int rc = vmm_vm_snapshot(vm, &snap);
  CHECK(rc == 0, "%s: snapshot: %s", bn, vmm_strerror(rc));
  if (rc) {
    vmm_vm_destroy(vm);
    return;
  }
  int ok_rounds = 0;
  for (int round = 0; round < 3; round++) {
    vmm_vm_t *c = NULL;
    rc = vmm_snapshot_clone(snap, NULL, &c);
    CHECK(rc == 0, "%s: clone: %s", bn, vmm_strerror(rc));
    if (rc) break;
    struct runner m[2];
    bool finished = run_pair(c, m);
    CHECK(finished, "%s: round %d: a vCPU never saw the other's write (20 s)", bn, round);
    bool ok = finished;
    for (int i = 0; finished && i < 2; i++) {
      bool at_end = m[i].rc == 0 && m[i].ex.reason == VMM_EXIT_IO && m[i].ex.io.port == 0x80;
      CHECK(at_end, "%s: round %d: vCPU %d ended with rc %d, exit %s", bn, round, i, m[i].rc,
            vmm_exit_reason_name(m[i].ex.reason));
      ok &= at_end;
    }
    vmm_regs_t regs = {0};
    vmm_vcpu_get_regs(vmm_vm_vcpu(c, 1), &regs);
    CHECK(!finished || regs.rbx == 42, "%s: round %d: the consumer read %" PRIu64 ", not 42", bn,
          round, (uint64_t)regs.rbx);
    ok &= regs.rbx == 42;
    /* The clone's writes stay its own: the snapshot's VM still has zeros there, the clone the
     * flag; a host write into the clone does not reach the VM either. */
    uint64_t in_vm = 1, in_clone = 0, mark = 0x5eed0000 + (uint64_t)round;
    vmm_vm_read(vm, FLAG_GPA, &in_vm, 8);
    vmm_vm_read(c, FLAG_GPA, &in_clone, 8);
    CHECK(in_vm == 0 && in_clone == 1, "%s: round %d: flag %" PRIu64 " in the VM, %" PRIu64
          " in the clone (want 0 and 1)", bn, round, in_vm, in_clone);
    ok &= in_vm == 0 && in_clone == 1;
    void *hva = NULL;
    rc = vmm_vm_gpa_to_hva(c, FLAG_GPA + 0x3000, 8, &hva);
    if (rc == 0) memcpy(hva, &mark, 8);
    in_vm = 1;
    vmm_vm_read(vm, FLAG_GPA + 0x3000, &in_vm, 8);
    vmm_vm_read(c, FLAG_GPA + 0x3000, &in_clone, 8);
    CHECK(rc == 0 && in_vm == 0 && in_clone == mark,
          "%s: round %d: a write through the clone's host pointer reached the VM or was lost", bn,
          round);
    ok &= rc == 0 && in_vm == 0 && in_clone == mark;
    ok_rounds += ok;
    vmm_vm_destroy(c);
  }
  if (ok_rounds == 3)
    printf("PASS %s: 3 clones x 2 vCPUs passed a message through shared pages; writes stayed "
           "in the clone\n", bn);
  vmm_snapshot_release(snap);
  vmm_vm_destroy(vm);
}

int main(int argc, char **argv) {
  vmm_backend_t want[3];
  int nwant = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc && nwant < 3) {
      if (vmm_backend_parse(argv[++i], &want[nwant]) != 0) {
        fprintf(stderr, "unknown backend %s\n", argv[i]);
        return 2;
      }
      nwant++;
    } else {
      fprintf(stderr, "usage: %s [--backend NAME]...\n", argv[0]);
      return 2;
    }
  }
  if (nwant == 0) {
    want[0] = VMM_BACKEND_KVM;
    want[1] = VMM_BACKEND_BT;
    want[2] = VMM_BACKEND_PV;
    nwant = 3;
  }
  int ran = 0;
  for (int i = 0; i < nwant; i++) {
    int rc = vmm_backend_probe(want[i]);
    if (rc) {
      printf("SKIP %s: %s\n", vmm_backend_name(want[i]), vmm_strerror(rc));
      continue;
    }
    ran++;
    test_backend(want[i]);
  }
  if (ran == 0) return 77;
  printf("%s: %d failure(s)\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
