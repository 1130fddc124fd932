/* bench_host: what the host itself charges for the mechanisms the backends are built on, so
 * that backend figures can be read against them. Medians of several rounds:
 *   - a system call (getppid);
 *   - a first write to a fresh page: anonymous memory, and a memfd mapped shared (guest RAM);
 *   - a first write to a memfd page that exists but is new to this mapping (a second view of
 *     guest RAM: a pv sandbox, a bt window);
 *   - a write to a page already mapped (the same pages again);
 *   - a signal delivered to the thread and returned from (bt's faults and kicks);
 *   - memcpy of 1 MiB between pages already mapped (what a roll back of 1 MiB copies).
 * usage: bench_host [--rounds N] */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"

#define PAGES 512
#define PAGE 4096

static void touch(volatile char *p) {
  for (int i = 0; i < PAGES; i++) p[(size_t)i * PAGE] = 1;
}

static volatile sig_atomic_t got;
static void on_usr1(int sig) { (void)sig; got++; }

int main(int argc, char **argv) {
  int rounds = 9;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) rounds = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: %s [--rounds N]\n", argv[0]);
      return 2;
    }
  }
  if (rounds < 1 || rounds > 1000) rounds = 9;
  double *t[7];
  for (int k = 0; k < 7; k++) t[k] = calloc((size_t)rounds, sizeof(double));
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_usr1;
  sigaction(SIGUSR1, &sa, NULL);
  size_t len = (size_t)PAGES * PAGE;
  char *src = malloc(1 << 20), *dst = malloc(1 << 20);
  if (!src || !dst) return 1;
  memset(src, 1, 1 << 20);
  memset(dst, 2, 1 << 20);
  for (int r = 0; r < rounds; r++) {
    double a = now_us();
    for (int i = 0; i < 1000; i++) syscall(SYS_getppid);
    t[0][r] = (now_us() - a) / 1000;

    char *anon = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int fd = memfd_create("bench-host", MFD_CLOEXEC);
    if (anon == MAP_FAILED || fd < 0 || ftruncate(fd, (off_t)len) != 0) return 1;
    char *m1 = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    char *m2 = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m1 == MAP_FAILED || m2 == MAP_FAILED) return 1;
    a = now_us();
    touch(anon);
    t[1][r] = (now_us() - a) / PAGES;
    a = now_us();
    touch(m1);
    t[2][r] = (now_us() - a) / PAGES;
    a = now_us();
    touch(m2);
    t[3][r] = (now_us() - a) / PAGES;
    a = now_us();
    touch(m2);
    t[4][r] = (now_us() - a) / PAGES;
    munmap(anon, len);
    munmap(m1, len);
    munmap(m2, len);
    close(fd);

    a = now_us();
    for (int i = 0; i < 200; i++) raise(SIGUSR1);
    t[5][r] = (now_us() - a) / 200;
    a = now_us();
    memcpy(dst, src, 1 << 20);
    t[6][r] = now_us() - a;
    __asm__ volatile("" ::"r"(dst) : "memory");
  }
  static const char *names[7] = {
      "system call (getppid)",
      "first write, anonymous page",
      "first write, memfd page (allocates)",
      "first write, memfd page already allocated",
      "write, page already mapped",
      "signal to self, delivered and returned",
      "memcpy of 1 MiB, pages mapped",
  };
  printf("| host mechanism (median of %d rounds) | us |\n| --- | ---: |\n", rounds);
  for (int k = 0; k < 7; k++) printf("| %s | %.2f |\n", names[k], median(t[k], rounds));
  if (got == 0) return 1;
  return 0;
}
