/* Clones on real backends: memory shared with the snapshot until written, and still coherent.
 *   - two vCPUs of a clone pass a message through pages each first read from the shared
 *     snapshot (clone_guest.S): a write by one must reach the other, whose sandbox or window
 *     mapped the shared copy (without the step that drops those mappings one vCPU spins until
 *     the watchdog gives up);
 *   - what the clone writes stays its own: the snapshot's VM and later clones still see the
 *     snapshot's bytes;
 *   - a host write into a clone does not wait for a vCPU that sits in a handler (a thread
 *     holding the handler's lock writes guest memory);
 *   - read-only memory stays read-only for the guest after a host write made its page the
 *     clone's own;
 *   - a clone that comes to own pages scattered over more runs than the library maps one by
 *     one owns its whole region at once and goes on correctly.
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

#include "itest_check.h"

extern const uint8_t prog_mp_start[], prog_mp_consumer[], prog_mp_end[];
extern const uint8_t prog_ioloop_start[], prog_ioloop_end[], prog_romw_start[], prog_romw_end[];

#define LOAD_GPA 0x100000ull
#define FLAG_GPA 0x200000ull

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

/* A one-vCPU VM at the start of `prog`, loaded at 1 MiB in 16 MiB of RAM; rom: a 64 KiB
 * read-only region at 16 MiB holding 0xcafebabe. */
static vmm_vm_t *make_vm(vmm_backend_t b, const uint8_t *start, const uint8_t *end, bool rom) {
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = b;
  cfg.ram_size = 16u << 20;
  vmm_vm_t *vm;
  if (vmm_vm_create(&cfg, &vm) != 0) return NULL;
  vmm_image_info_t info;
  vmm_vcpu_t *v;
  int rc = vmm_load_flat(vm, LOAD_GPA, start, (size_t)(end - start), &info);
  if (rc == 0) rc = vmm_vcpu_create(vm, 0, &v);
  vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
  lm.entry = LOAD_GPA;
  if (rc == 0) rc = vmm_vcpu_setup_long_mode(v, &lm);
  uint64_t magic = 0xcafebabe;
  if (rc == 0 && rom) rc = vmm_vm_map_ram(vm, 16u << 20, 0x10000, VMM_MEM_READONLY, NULL);
  if (rc == 0 && rom) rc = vmm_vm_write(vm, 16u << 20, &magic, 8);
  if (rc) {
    printf("FAIL %s: VM setup: %s\n", vmm_backend_name(b), vmm_strerror(rc));
    vmm_vm_destroy(vm);
    return NULL;
  }
  return vm;
}

static pthread_mutex_t handler_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int handler_calls;

static int locking_io(vmm_vcpu_t *vcpu, uint64_t off, uint32_t size, int is_write, uint64_t *data,
                      void *ud) {
  (void)vcpu, (void)off, (void)size, (void)is_write, (void)data, (void)ud;
  pthread_mutex_lock(&handler_lock);
  atomic_fetch_add(&handler_calls, 1);
  pthread_mutex_unlock(&handler_lock);
  return VMM_HANDLED;
}

struct writer {
  vmm_vm_t *vm;
  int rc;
  atomic_bool done;
};

static void *write_main(void *arg) {
  struct writer *w = arg;
  uint64_t val = 0x77;
  w->rc = vmm_vm_write(w->vm, 0x300000, &val, 8); /* a page the clone still shares */
  atomic_store(&w->done, true);
  return NULL;
}

/* The device thread holds the lock the vCPU's handler waits for and writes guest memory: the
 * write must not wait for that vCPU (it is not running guest code). */
static void test_host_write_while_handler_waits(vmm_backend_t b) {
  const char *bn = vmm_backend_name(b);
  vmm_vm_t *vm = make_vm(b, prog_ioloop_start, prog_ioloop_end, false);
  if (vm == NULL) return;
  vmm_snapshot_t *snap = NULL;
  vmm_vm_t *c = NULL;
  int rc = vmm_vm_add_pio_handler(vm, 0x10, 1, locking_io, NULL, NULL);
  if (rc == 0) rc = vmm_vm_snapshot(vm, &snap);
  if (rc == 0) rc = vmm_snapshot_clone(snap, NULL, &c);
  CHECK(rc == 0, "%s: handler test setup: %s", bn, vmm_strerror(rc));
  if (rc == 0) {
    struct runner m = {.vcpu = vmm_vm_vcpu(c, 0)};
    pthread_mutex_lock(&handler_lock);
    atomic_store(&handler_calls, 0);
    pthread_t t, tw;
    pthread_create(&t, NULL, run_main, &m);
    struct timespec ts = {0, 50000000};
    nanosleep(&ts, NULL); /* the vCPU now waits in its handler */
    struct writer w = {.vm = c};
    pthread_create(&tw, NULL, write_main, &w);
    uint64_t t0 = ms_now();
    while (!atomic_load(&w.done) && ms_now() - t0 < 10000) nanosleep(&(struct timespec){0, 1000000}, NULL);
    bool finished = atomic_load(&w.done);
    pthread_mutex_unlock(&handler_lock); /* lets a stuck write finish too */
    pthread_join(tw, NULL);
    while (atomic_load(&handler_calls) < 3 && ms_now() - t0 < 20000)
      nanosleep(&(struct timespec){0, 1000000}, NULL);
    vmm_vcpu_kick(m.vcpu);
    pthread_join(t, NULL);
    uint64_t got = 0;
    vmm_vm_read(c, 0x300000, &got, 8);
    CHECK(finished, "%s: a host write waited for a vCPU blocked in a handler (10 s)", bn);
    CHECK(w.rc == 0 && got == 0x77, "%s: the host write: rc %d, value %#" PRIx64, bn, w.rc, got);
    CHECK(atomic_load(&handler_calls) >= 3, "%s: the guest did not go on after the write", bn);
    if (finished && w.rc == 0 && got == 0x77 && atomic_load(&handler_calls) >= 3)
      printf("PASS %s: a host write into a clone while its vCPU waits in a handler\n", bn);
  }
  vmm_vm_destroy(c);
  vmm_snapshot_release(snap);
  vmm_vm_destroy(vm);
}

/* Runs a one-vCPU VM to its port 0x80 exit, passing over MMIO exits (refused ROM writes). */
static bool run_to_end(vmm_vm_t *vm) {
  vmm_exit_t ex;
  for (int i = 0; i < 100; i++) {
    memset(&ex, 0, sizeof(ex));
    if (vmm_vcpu_run(vmm_vm_vcpu(vm, 0), &ex) != 0) return false;
    if (ex.reason == VMM_EXIT_IO && ex.io.port == 0x80) return true;
    if (ex.reason != VMM_EXIT_MMIO) return false;
  }
  return false;
}

static void test_rom_stays_read_only(vmm_backend_t b) {
  const char *bn = vmm_backend_name(b);
  vmm_vm_t *vm = make_vm(b, prog_romw_start, prog_romw_end, true);
  if (vm == NULL) return;
  vmm_snapshot_t *snap = NULL;
  vmm_vm_t *c = NULL;
  int rc = vmm_vm_snapshot(vm, &snap);
  if (rc == 0) rc = vmm_snapshot_clone(snap, NULL, &c);
  CHECK(rc == 0, "%s: ROM test setup: %s", bn, vmm_strerror(rc));
  if (rc == 0) {
    /* The host reloads the ROM (its page becomes the clone's own), then the guest writes. */
    uint64_t magic = 0xfeedf00d, got = 0;
    rc = vmm_vm_write(c, 16u << 20, &magic, 8);
    bool ran = rc == 0 && run_to_end(c);
    vmm_vm_read(c, 16u << 20, &got, 8);
    CHECK(ran && got == magic, "%s: the guest's write to a clone's ROM page: rc %d, ran %d, ROM "
          "holds %#" PRIx64, bn, rc, ran, got);
    if (ran && got == magic) printf("PASS %s: a clone's own ROM page stays read-only\n", bn);
  }
  vmm_vm_destroy(c);
  vmm_snapshot_release(snap);
  vmm_vm_destroy(vm);
}

static atomic_int wholly_owned_logs;

static void count_wholly(vmm_log_level_t level, const char *msg, void *ud) {
  (void)level, (void)ud;
  if (strstr(msg, "became wholly its own")) atomic_fetch_add(&wholly_owned_logs, 1);
}

/* Host writes to every other page make more runs of own pages than the library maps one by
 * one: the region becomes wholly the clone's own, and the clone's vCPUs still agree. */
static void test_scattered_writes(vmm_backend_t b) {
  const char *bn = vmm_backend_name(b);
  vmm_vm_t *vm = make_mp_vm(b);
  if (vm == NULL) return;
  vmm_snapshot_t *snap = NULL;
  vmm_vm_t *c = NULL;
  int rc = vmm_vm_snapshot(vm, &snap);
  if (rc == 0) rc = vmm_snapshot_clone(snap, NULL, &c);
  CHECK(rc == 0, "%s: scattered-writes setup: %s", bn, vmm_strerror(rc));
  atomic_store(&wholly_owned_logs, 0);
  vmm_log_set_callback(count_wholly, VMM_LOG_INFO, NULL);
  bool ok = rc == 0;
  uint64_t first = 0x400000, count = 1400; /* pages first, first + 8 KiB, ... */
  for (uint64_t k = 0; ok && k < count; k++) {
    uint64_t v = k + 1;
    ok = vmm_vm_write(c, first + k * 0x2000, &v, 8) == 0;
  }
  CHECK(ok, "%s: scattered host writes into a clone failed", bn);
  /* Layered RAM (bt, pv) goes whole once; kvm's private mapping never needs to. */
  int want_whole = b == VMM_BACKEND_KVM ? 0 : 1;
  CHECK(atomic_load(&wholly_owned_logs) == want_whole,
        "%s: the region was owned whole %d times (want %d)", bn, atomic_load(&wholly_owned_logs),
        want_whole);
  for (uint64_t k = 0; ok && k < count; k += 97) {
    uint64_t in_clone = 0, in_vm = 1;
    vmm_vm_read(c, first + k * 0x2000, &in_clone, 8);
    vmm_vm_read(vm, first + k * 0x2000, &in_vm, 8);
    ok = in_clone == k + 1 && in_vm == 0;
  }
  CHECK(ok, "%s: scattered writes: wrong contents in the clone or the original", bn);
  struct runner m[2];
  bool finished = ok && run_pair(c, m);
  vmm_regs_t regs = {0};
  if (finished) vmm_vcpu_get_regs(vmm_vm_vcpu(c, 1), &regs);
  CHECK(!ok || (finished && regs.rbx == 42),
        "%s: after scattered writes the clone's vCPUs did not pass their message", bn);
  vmm_log_set_callback(NULL, VMM_LOG_WARN, NULL);
  if (ok && finished && regs.rbx == 42 && atomic_load(&wholly_owned_logs) == want_whole)
    printf("PASS %s: %" PRIu64 " scattered own pages (%s), then a message between vCPUs\n", bn,
           count, want_whole ? "the whole region owned" : "private copy-on-write mapping");
  vmm_vm_destroy(c);
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
    test_host_write_while_handler_waits(want[i]);
    test_rom_stays_read_only(want[i]);
    test_scattered_writes(want[i]);
  }
  if (ran == 0) return 77;
  printf("%s: %d failure(s)\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
