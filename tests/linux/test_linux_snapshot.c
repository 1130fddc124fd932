/* A snapshot of a running Linux VM on kvm (VMM_VM_IRQCHIP: in-kernel PIC, I/O APIC, PIT and
 * local APIC). Boots Debian's kernel with the busybox initramfs to its shell, snapshots it there,
 * then, each in a fresh VM: restores the snapshot, restores it again from a file, and clones it;
 * types a command into each one's UART and checks the shell's answer and the power off. The
 * shell only answers if interrupts (UART on IRQ 4 through the I/O APIC) and timers came back.
 *   test_linux_snapshot KERNEL INITRD
 * Exit 0 pass, 1 fail, 77 skip (no /dev/kvm, no kernel or initramfs). Runs in the nested
 * harness on hosts without /dev/kvm (tests/nested/run-suite.sh). */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libvmm/snapshot.h>
#include <libvmm/vmm.h>

#define RAM (256ull << 20)

static int failures;

struct con {
  pthread_mutex_t lock;
  char buf[1 << 17];
  size_t len;
};

static void con_out(const char *data, size_t len, void *user_data) {
  struct con *c = user_data;
  pthread_mutex_lock(&c->lock);
  if (c->len + len >= sizeof(c->buf)) len = sizeof(c->buf) - 1 - c->len;
  memcpy(c->buf + c->len, data, len);
  c->len += len;
  c->buf[c->len] = 0;
  pthread_mutex_unlock(&c->lock);
}

static bool con_has(struct con *c, const char *what) {
  pthread_mutex_lock(&c->lock);
  bool has = strstr(c->buf, what) != NULL;
  pthread_mutex_unlock(&c->lock);
  return has;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

struct machine {
  vmm_vm_t *vm;
  vmm_vcpu_t *vcpu;
  vmm_device_t *uart;
  struct con con;
};

/* The VM boot-linux makes: RAM at 0, COM1 on IRQ 4, the PC bits, one vCPU. */
static int make_machine(struct machine *m) {
  memset(m, 0, sizeof(*m));
  pthread_mutex_init(&m->con.lock, NULL);
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = VMM_BACKEND_KVM;
  cfg.flags = VMM_VM_IRQCHIP;
  int rc = vmm_vm_create(&cfg, &m->vm);
  if (rc) return rc;
  vmm_uart_config_t u = VMM_UART_CONFIG_INIT;
  u.out_fn = con_out;
  u.out_user_data = &m->con;
  if ((rc = vmm_vm_map_ram(m->vm, 0, RAM, 0, NULL)) == 0 &&
      (rc = vmm_uart_create(m->vm, &u, &m->uart)) == 0 && (rc = vmm_linux_pc_create(m->vm, NULL)) == 0)
    rc = vmm_vcpu_create(m->vm, 0, &m->vcpu);
  return rc;
}

static atomic_bool kicker_stop;

static void *kicker(void *arg) {
  vmm_vcpu_t *v = arg;
  while (!atomic_load(&kicker_stop)) {
    usleep(200000);
    vmm_vcpu_kick(v);
  }
  return NULL;
}

enum end { END_SEEN, END_POWEROFF, END_TIMEOUT, END_ERROR };

/* Runs until the console shows `want` (NULL: until power off), Linux powers off, or the time is
 * up. A kicker thread stops the vCPU every 200 ms so that this loop can look. */
static enum end run_until(struct machine *m, const char *want, double seconds) {
  atomic_store(&kicker_stop, false);
  pthread_t t;
  pthread_create(&t, NULL, kicker, m->vcpu);
  double end = now() + seconds;
  enum end how = END_TIMEOUT;
  vmm_exit_t ex;
  for (;;) {
    memset(&ex, 0, sizeof(ex));
    int rc = vmm_vcpu_run(m->vcpu, &ex);
    if (rc) {
      printf("  run failed: %s\n", vmm_strerror(rc));
      how = END_ERROR;
      break;
    }
    if (ex.reason == VMM_EXIT_IO || ex.reason == VMM_EXIT_MMIO) continue;
    if (ex.reason == VMM_EXIT_GUEST_EXIT) {
      how = END_POWEROFF;
      break;
    }
    if (ex.reason != VMM_EXIT_KICKED) {
      printf("  guest stopped: %s\n", vmm_exit_reason_name(ex.reason));
      how = END_ERROR;
      break;
    }
    if (want && con_has(&m->con, want)) {
      how = END_SEEN;
      break;
    }
    vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
    if (vmm_vcpu_get_state(m->vcpu, &st) == 0 && st.halted && !(st.regs.rflags & VMM_RFLAGS_IF)) {
      how = END_POWEROFF;
      break;
    }
    if (now() > end) break;
  }
  atomic_store(&kicker_stop, true);
  pthread_join(t, NULL);
  return how;
}

static void check(bool ok, const char *what, struct machine *m) {
  if (ok) {
    printf("PASS %s\n", what);
    return;
  }
  printf("FAIL %s; console tail:\n", what);
  pthread_mutex_lock(&m->con.lock);
  const char *tail = m->con.len > 600 ? m->con.buf + m->con.len - 600 : m->con.buf;
  printf("%s\n", tail);
  pthread_mutex_unlock(&m->con.lock);
  failures++;
}

/* Types a command into the restored VM and checks the shell's answer, then its power off. */
static void answer_and_off(struct machine *m, const char *name, const char *cmd, const char *want) {
  size_t acc = 0;
  int rc = vmm_uart_input(m->uart, cmd, strlen(cmd), &acc);
  char what[160];
  snprintf(what, sizeof(what), "%s: the shell answers (%s)", name, want);
  check(rc == 0 && acc == strlen(cmd) && run_until(m, want, 120) == END_SEEN, what, m);
  rc = vmm_uart_input(m->uart, "exit\n", 5, &acc);
  snprintf(what, sizeof(what), "%s: powers off after exit", name);
  check(rc == 0 && run_until(m, NULL, 120) == END_POWEROFF, what, m);
}

static void log_line(vmm_log_level_t level, const char *msg, void *user_data) {
  (void)level, (void)user_data;
  printf("  libvmm: %s\n", msg);
}

int main(int argc, char **argv) {
  vmm_log_set_callback(log_line, VMM_LOG_WARN, NULL);
  if (argc != 3) {
    fprintf(stderr, "usage: %s KERNEL INITRD\n", argv[0]);
    return 2;
  }
  if (access(argv[1], R_OK) != 0 || access(argv[2], R_OK) != 0) {
    printf("SKIP Linux snapshot: no kernel or initramfs (tests/linux/prepare.sh)\n");
    return 77;
  }
  if (vmm_backend_probe(VMM_BACKEND_KVM) != 0) {
    printf("SKIP Linux snapshot: no kvm here (ctest -L nested runs it)\n");
    return 77;
  }
  /* On kvm_pvm hosts guest CPL0 code is emulated slowly and without SSE: Linux does not reach
   * its shell there (docs/linux-boot.md; boot-test.sh checks only the banner on them). */
  if (access("/sys/module/kvm_pvm", F_OK) == 0 && access("/sys/module/kvm_intel", F_OK) != 0 &&
      access("/sys/module/kvm_amd", F_OK) != 0) {
    printf("SKIP Linux snapshot: kvm_pvm host, where Linux does not reach its shell\n");
    return 77;
  }
  static struct machine a, b, c;
  int rc = make_machine(&a);
  if (rc) {
    printf("FAIL setting up the VM: %s\n", vmm_strerror(rc));
    return 1;
  }
  const char *append = getenv("LIBVMM_LINUX_APPEND");
  char cmdline[512];
  snprintf(cmdline, sizeof(cmdline), "console=ttyS0 panic=-1%s%s", append ? " " : "",
           append ? append : "");
  vmm_linux_config_t lc = VMM_LINUX_CONFIG_INIT;
  lc.kernel_path = argv[1];
  lc.initrd_path = argv[2];
  lc.cmdline = cmdline;
  vmm_linux_info_t info = VMM_LINUX_INFO_INIT;
  if ((rc = vmm_linux_load(a.vm, &lc, &info)) != 0 || (rc = vmm_vcpu_setup_linux(a.vcpu, &info)) != 0) {
    printf("FAIL loading the kernel: %s\n", vmm_strerror(rc));
    return 1;
  }
  double t0 = now();
  bool up = run_until(&a, "@@LIBVMM-SHELL@@", 300) == END_SEEN;
  check(up, "boot to the shell", &a);
  if (!up) return 1;
  run_until(&a, "never printed", 1.0); /* let the shell settle at its prompt */
  printf("  shell after %.1f s\n", now() - t0);

  vmm_snapshot_t *s = NULL;
  rc = vmm_vm_snapshot(a.vm, &s);
  check(rc == 0, "snapshot of the running Linux VM", &a);
  if (rc) return 1;
  char file[] = "/tmp/libvmm-linux-snap-XXXXXX";
  int fd = mkstemp(file);
  if (fd >= 0) close(fd);
  rc = fd >= 0 ? vmm_snapshot_save(s, file, VMM_SNAPSHOT_SAVE_FULL) : -1;
  check(rc == 0, "snapshot saved to a file", &a);

  /* 1. Restored into a fresh VM. */
  if (make_machine(&b) == 0) {
    rc = vmm_vm_restore(b.vm, s);
    check(rc == 0, "restore into a fresh VM", &b);
    if (rc == 0) answer_and_off(&b, "restored", "echo SNAP-$((6 * 7))\n", "SNAP-42");
    vmm_vm_destroy(b.vm);
  }
  /* 2. From the file, into another fresh VM. */
  vmm_snapshot_t *l = NULL;
  if (make_machine(&c) == 0) {
    rc = vmm_snapshot_load(file, &l);
    if (rc == 0) rc = vmm_vm_restore(c.vm, l);
    check(rc == 0, "load and restore into a fresh VM", &c);
    if (rc == 0) answer_and_off(&c, "loaded", "echo FILE-$((7 * 6))\n", "FILE-42");
    vmm_vm_destroy(c.vm);
  }
  /* 3. A clone (memory shared copy-on-write with the snapshot). Its devices are re-created: its
   * UART is found with vmm_vm_device() and prints through the original's console sink. */
  struct machine d;
  memset(&d, 0, sizeof(d));
  rc = vmm_snapshot_clone(s, NULL, &d.vm);
  if (rc) printf("  clone: %s\n", vmm_strerror(rc));
  check(rc == 0, "clone of the Linux VM", &a);
  if (rc == 0) {
    d.vcpu = vmm_vm_vcpu(d.vm, 0);
    for (size_t i = 0; vmm_vm_device(d.vm, i); i++)
      if (strcmp(vmm_device_type(vmm_vm_device(d.vm, i)), "uart16550") == 0)
        d.uart = vmm_vm_device(d.vm, i);
    /* Its output lands in the original's buffer: watch that one. */
    pthread_mutex_init(&d.con.lock, NULL);
    size_t acc = 0;
    const char *cmd = "echo CLONE-$((6 * 7))\n";
    rc = d.uart ? vmm_uart_input(d.uart, cmd, strlen(cmd), &acc) : -1;
    bool seen = false;
    for (int i = 0; rc == 0 && i < 600 && !seen; i++) {
      run_until(&d, "never printed", 0.2);
      seen = con_has(&a.con, "CLONE-42");
    }
    check(seen, "clone: the shell answers (CLONE-42)", &a);
    vmm_vm_destroy(d.vm);
  }
  /* 4. The original goes on too. */
  answer_and_off(&a, "original", "echo ORIG-$((6 * 7))\n", "ORIG-42");
  vmm_snapshot_release(l);
  vmm_snapshot_release(s);
  vmm_vm_destroy(a.vm);
  unlink(file);
  printf("Linux snapshot: %d failure(s)\n", failures);
  return failures ? 1 : 0;
}
