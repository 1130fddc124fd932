/* Lifecycle benchmark, for a 128 MiB guest whose memory holds data and which dirties 1 MiB
 * between snapshots, on every backend this host has, with baselines measured in the same run:
 *   the first snapshot (one sample: it takes RAM as it is, copying nothing),
 *   roll back latency (restore after the guest dirtied 1 MiB; median, and mean with the first
 *   roll back after the snapshot), the guest's run between roll backs (the 1 MiB of writes and
 *   the write faults they take; the median is a run after a roll back that kept the pages
 *   writable), clone latency (each clone destroyed before the next; the mean of ten clones
 *   kept at once, which mostly start cold; the same after vmm_backend_prepare(), with what
 *   their vCPUs need made ahead), snapshot save and load throughput next to raw
 *   memcpy and raw file write+fsync / read throughput.
 * Medians over repetitions. usage: bench_lifecycle --guest-dir DIR [--reps N] [--dir TMPDIR] */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libvmm/snapshot.h>
#include <libvmm/vmm.h>

#include "../bench_util.h"

#define RAM (128ull << 20)
#define HC_CHECKPOINT (VMM_HC_USER_BASE + 0)

static int stop_hc(vmm_vcpu_t *vcpu, uint64_t nr, const uint64_t a[6], uint64_t *res, void *ud) {
  (void)nr, (void)a, (void)ud;
  *res = 0;
  vmm_vcpu_request_exit(vcpu, 1);
  return VMM_HANDLED;
}

static int run_to_checkpoint(vmm_vcpu_t *v) {
  vmm_exit_t e;
  memset(&e, 0, sizeof(e));
  for (;;) {
    if (vmm_vcpu_run(v, &e) != 0) return -1;
    if (e.reason == VMM_EXIT_GUEST_EXIT) return 0;
    if (e.reason != VMM_EXIT_IO && e.reason != VMM_EXIT_MMIO) return -1;
  }
}

/* The mean time of ten clones made while all are kept, the median of three rounds. */
static double clone_ten(vmm_snapshot_t *s) {
  double held[3];
  for (int round = 0; round < 3; round++) {
    vmm_vm_t *cl[10] = {0};
    double t0 = now_us();
    int made = 0;
    for (; made < 10; made++)
      if (vmm_snapshot_clone(s, NULL, &cl[made]) != 0) break;
    held[round] = made == 10 ? (now_us() - t0) / 10 : -1;
    for (int k = 0; k < made; k++) vmm_vm_destroy(cl[k]);
  }
  return median(held, 3);
}

/* Baselines of this run, for the ratio line under each backend. */
static double base_copy_gbs, base_write_gbs, floor_copy_us;

static const char *guest_dir = ".";
static const char *tmpdir = "/tmp";
static int reps = 21;

static void bench_backend(vmm_backend_t b, double *save_gbs, double *load_gbs) {
  char path[1024];
  snprintf(path, sizeof(path), "%s/dirtier.elf", guest_dir);
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = b;
  cfg.ram_size = RAM;
  vmm_vm_t *vm;
  vmm_vcpu_t *v;
  vmm_image_info_t img;
  vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
  if (vmm_vm_create(&cfg, &vm) != 0) return;
  if (vmm_vcpu_create(vm, 0, &v) || vmm_load_file(vm, path, 0, 0, &img) ||
      vmm_vm_add_hypercall_handler(vm, HC_CHECKPOINT, stop_hc, NULL, NULL)) {
    printf("%s: setup failed\n", vmm_backend_name(b));
    vmm_vm_destroy(vm);
    return;
  }
  /* Memory that holds data everywhere (as a booted OS's would), except the guest's pages;
   * written the way a VMM loads data (vmm_vm_write), so no pointer into RAM is held. */
  static uint64_t chunk[(1 << 20) / 8];
  for (uint64_t off = 32ull << 20; off < RAM; off += sizeof(chunk)) {
    for (size_t k = 0; k < sizeof(chunk) / 8; k++) chunk[k] = (off + k * 8) * 2654435761u;
    vmm_vm_write(vm, off, chunk, sizeof(chunk));
  }
  lm.entry = img.entry;
  lm.cpl = 3;
  vmm_vcpu_setup_long_mode(v, &lm);
  vmm_snapshot_t *s;
  double snap_us = 0;
  if (run_to_checkpoint(v) == 0) {
    double t0 = now_us();
    int rc = vmm_vm_snapshot(vm, &s);
    snap_us = rc ? -1 : now_us() - t0;
  }
  if (snap_us <= 0) {
    printf("%s: first checkpoint failed\n", vmm_backend_name(b));
    vmm_vm_destroy(vm);
    return;
  }
  double *t = calloc((size_t)reps, sizeof(double)), *run = calloc((size_t)reps, sizeof(double));
  double sum = 0;
  for (int i = 0; i < reps; i++) {
    double t0 = now_us();
    run_to_checkpoint(v); /* The guest dirties 1 MiB. */
    double t1 = now_us();
    vmm_vm_restore(vm, s);
    t[i] = now_us() - t1;
    run[i] = t1 - t0;
    sum += t[i];
  }
  double rollback = median(t, reps), rerun = median(run, reps), mean = sum / reps;
  free(run);
  for (int i = 0; i < reps; i++) {
    vmm_vm_t *c = NULL;
    double t0 = now_us();
    int rc = vmm_snapshot_clone(s, NULL, &c);
    t[i] = now_us() - t0;
    if (rc) t[i] = -1;
    vmm_vm_destroy(c);
  }
  double clone = median(t, reps);
  /* Ten clones kept at once: each but the first few finds nothing a destroyed VM left for
   * reuse (bt's vCPU memory, pv's idle sandboxes), so this is the cost of a clone from cold.
   * Then the same after vmm_backend_prepare(b, 10): what each clone's vCPU needs is made
   * ahead (outside the timed loop), as a program that keeps a warm pool would. */
  double clone10 = clone_ten(s);
  double ready10 = -1;
  if (vmm_backend_prepare(b, 10) == 0) ready10 = clone_ten(s);
  char file[1024];
  snprintf(file, sizeof(file), "%s/bench-lifecycle-%d.snap", tmpdir, (int)getpid());
  int n = reps < 5 ? reps : 5;
  for (int i = 0; i < n; i++) {
    double t0 = now_us();
    vmm_snapshot_save(s, file, VMM_SNAPSHOT_SAVE_FULL);
    t[i] = now_us() - t0;
  }
  *save_gbs = (double)RAM / (median(t, n) * 1e3);
  for (int i = 0; i < n; i++) {
    vmm_snapshot_t *l = NULL;
    double t0 = now_us();
    vmm_snapshot_load(file, &l);
    t[i] = now_us() - t0;
    vmm_snapshot_release(l);
  }
  *load_gbs = (double)RAM / (median(t, n) * 1e3);
  unlink(file);
  char ready[32] = "        n/a";
  if (ready10 >= 0) snprintf(ready, sizeof(ready), "%11.1f", ready10);
  printf("%-4s %10.1f %14.1f %8.1f %10.1f %10.1f %10.1f %s %10.2f %10.2f\n", vmm_backend_name(b),
         snap_us, rollback, mean, rerun, clone, clone10, ready, *save_gbs, *load_gbs);
  if (floor_copy_us > 0 && base_write_gbs > 0 && base_copy_gbs > 0)
    printf("     ratios: roll back / memcpy of 1 MiB %.2f, save / write+fsync %.2f, "
           "load / memcpy %.2f\n",
           rollback / floor_copy_us, *save_gbs / base_write_gbs, *load_gbs / base_copy_gbs);
  free(t);
  vmm_snapshot_release(s);
  vmm_vm_destroy(vm);
}

/* Raw baselines on the same data size: memcpy, and a file written, fsynced and read back. */
static void baselines(void) {
  char *a = malloc(RAM), *b = malloc(RAM);
  memset(a, 1, RAM);
  memset(b, 2, RAM);
  double t[5];
  for (int i = 0; i < 5; i++) {
    double t0 = now_us();
    memcpy(b, a, RAM);
    t[i] = now_us() - t0;
  }
  double copy = (double)RAM / (median(t, 5) * 1e3);
  char file[1024];
  snprintf(file, sizeof(file), "%s/bench-raw-%d.bin", tmpdir, (int)getpid());
  for (int i = 0; i < 5; i++) {
    double t0 = now_us();
    int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    for (size_t off = 0; off < RAM; off += 1 << 20)
      if (write(fd, a + off, 1 << 20) != 1 << 20) break;
    fsync(fd);
    close(fd);
    t[i] = now_us() - t0;
  }
  double wr = (double)RAM / (median(t, 5) * 1e3);
  for (int i = 0; i < 5; i++) {
    double t0 = now_us();
    int fd = open(file, O_RDONLY);
    for (size_t off = 0; off < RAM; off += 1 << 20)
      if (read(fd, b + off, 1 << 20) != 1 << 20) break;
    close(fd);
    t[i] = now_us() - t0;
  }
  double rd = (double)RAM / (median(t, 5) * 1e3);
  unlink(file);
  printf("baseline: memcpy %.2f GB/s, file write+fsync %.2f GB/s, file read (cached) %.2f GB/s\n",
         copy, wr, rd);
  base_copy_gbs = copy;
  base_write_gbs = wr;
  free(a);
  free(b);
}

/* The floors under a roll back of 1 MiB, measured on this host the way the backends pay them:
 * copying the 256 pages back, and write-protecting them again (the roll backs that do) in one
 * mprotect (bt) or one userfaultfd write-protect of a shared mapping (pv). */
static double uffd_floor_us(void) {
  int fd = memfd_create("bench-uffd", MFD_CLOEXEC);
  int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  uint8_t *m = fd >= 0 && ftruncate(fd, (off_t)RAM) == 0
                   ? mmap(NULL, RAM, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                   : MAP_FAILED;
  double us = -1;
  /* Asynchronous mode here (WP_HUGETLBFS_SHMEM, WP_UNPOPULATED, WP_ASYNC), so that this thread's
   * writes lift the protection the way the VMM lifts it for a sandbox. */
  struct uffdio_api api = {.api = UFFD_API, .features = (1ull << 12) | (1ull << 13) | (1ull << 15)};
  uint64_t base = (uint64_t)(uintptr_t)m;
  struct uffdio_register reg = {.range = {base, RAM}, .mode = UFFDIO_REGISTER_MODE_WP};
  struct uffdio_writeprotect all = {.range = {base, RAM}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
  if (m != MAP_FAILED && uffd >= 0 && ioctl(uffd, UFFDIO_API, &api) == 0 &&
      ioctl(uffd, UFFDIO_REGISTER, &reg) == 0 && ioctl(uffd, UFFDIO_WRITEPROTECT, &all) == 0) {
    double t[5];
    for (int i = 0; i < 5; i++) {
      for (size_t off = 0; off < (1u << 20); off += 4096) m[(16u << 20) + off] = (uint8_t)i;
      struct uffdio_writeprotect wp = {.range = {base + (16u << 20), 1u << 20},
                                       .mode = UFFDIO_WRITEPROTECT_MODE_WP};
      double t0 = now_us();
      int rc = ioctl(uffd, UFFDIO_WRITEPROTECT, &wp);
      t[i] = rc != 0 ? -1 : now_us() - t0;
    }
    us = median(t, 5);
  }
  if (m != MAP_FAILED) munmap(m, RAM);
  if (uffd >= 0) close(uffd);
  if (fd >= 0) close(fd);
  return us;
}

static void floors(void) {
  int fd = memfd_create("bench-floor", MFD_CLOEXEC);
  uint8_t *src = malloc(1u << 20);
  uint8_t *m = fd >= 0 && ftruncate(fd, 1 << 20) == 0
                   ? mmap(NULL, 1u << 20, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                   : MAP_FAILED;
  if (m == MAP_FAILED || src == NULL) return;
  memset(src, 3, 1u << 20);
  double c[9], p[9];
  for (int i = 0; i < 9; i++) {
    mprotect(m, 1u << 20, PROT_READ | PROT_WRITE);
    double t0 = now_us();
    memcpy(m, src, 1u << 20);
    double t1 = now_us();
    mprotect(m, 1u << 20, PROT_READ);
    double t2 = now_us();
    c[i] = t1 - t0;
    p[i] = t2 - t1;
  }
  floor_copy_us = median(c, 9);
  printf("floors for 1 MiB: memcpy %.1f us, write-protecting its pages again: mprotect %.1f us, "
         "userfaultfd %.1f us\n",
         floor_copy_us, median(p, 9), uffd_floor_us());
  munmap(m, 1u << 20);
  close(fd);
  free(src);
}

int main(int argc, char **argv) {
  const char *only = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--guest-dir") && i + 1 < argc) guest_dir = argv[++i];
    else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--dir") && i + 1 < argc) tmpdir = argv[++i];
    else {
      fprintf(stderr, "usage: %s --guest-dir DIR [--reps N] [--dir TMPDIR] [--only kvm,bt,pv]\n",
              argv[0]);
      return 2;
    }
  }
  if (reps < 1 || reps > 1000) return 2;
  printf("128 MiB guest, 1 MiB dirtied between snapshot and roll back; medians of %d runs\n", reps);
  baselines();
  floors();
  printf("%-4s %10s %14s %8s %10s %10s %10s %11s %10s %10s\n", "", "snap 1 us", "roll back us", "mean",
         "re-run us", "clone us", "10 kept us", "10 ready us", "save GB/s", "load GB/s");
  const vmm_backend_t all[] = {VMM_BACKEND_KVM, VMM_BACKEND_BT, VMM_BACKEND_PV};
  for (int i = 0; i < 3; i++) {
    if (only && !strstr(only, vmm_backend_name(all[i]))) continue;
    int rc = vmm_backend_probe(all[i]);
    if (rc) {
      printf("%-4s unavailable: %s\n", vmm_backend_name(all[i]), vmm_strerror(rc));
      continue;
    }
    double s = 0, l = 0;
    bench_backend(all[i], &s, &l);
  }
  return 0;
}
