/* The `vmm` command: runs a guest image in a VM on any backend. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libvmm/vmm.h>
#include <uv.h>

#include "vmm_tool.h"

static const char *const vmm_usage_text =
    "usage: vmm run [options] IMAGE\n"
    "       vmm run [options] --kernel BZIMAGE|VMLINUX [--initrd FILE] [--cmdline TEXT]\n"
    "       vmm restore [--backend NAME] [--timeout SECS] [--save FILE] FILE\n"
    "       vmm snapshot info FILE\n"
    "       vmm version\n"
    "       vmm --help\n"
    "\n"
    "Runs IMAGE (an ELF64 executable, or a raw binary with --flat) in 64-bit long mode with\n"
    "identity-mapped RAM. Ports 0xe9 and 0x3f8 print to stdout, stdin feeds the serial port,\n"
    "port 0xf4 ends the VM with status (v << 1) | 1, the exit hypercall with its code, and\n"
    "HLT with interrupts off with status 0.\n"
    "\n"
    "With --kernel it boots Linux instead (the x86 boot protocol, 64-bit entry): the VM gets\n"
    "the backend's interrupt controllers and timer, COM1 on IRQ 4 (stdout/stdin), an i8042\n"
    "whose reset ends the run with status 0, and a clock. A bzImage's payload is decompressed\n"
    "on the host unless --guest-decompress. Without ACPI, Linux powers off by halting with\n"
    "interrupts off; that too ends the run with status 0. E.g.\n"
    "  vmm run --kernel vmlinuz --initrd initrd.cpio --cmdline 'console=ttyS0 panic=-1'\n"
    "\n"
    "options of run:\n"
    "  -b, --backend NAME   auto (default), kvm, bt or pv\n"
    "  -m, --mem SIZE       guest RAM, e.g. 64M or 1G (default 64M, 512M with --kernel)\n"
    "  -c, --cpl N          0 (default) or 3: start in user mode with IOPL 3\n"
    "  -t, --timeout SECS   stop the guest after SECS seconds (status 124)\n"
    "  -f, --flat ADDR      IMAGE is a raw binary loaded and entered at ADDR\n"
    "  -a, --cmdline TEXT   command line passed to the guest in its boot info, or Linux's\n"
    "  -k, --kernel FILE    boot this Linux kernel (bzImage or ELF vmlinux); no IMAGE\n"
    "  -i, --initrd FILE    initramfs for --kernel\n"
    "  -g, --guest-decompress  let a bzImage decompress itself in the guest\n"
    "  -S, --save FILE      when the guest makes the snapshot hypercall (VMM_HC_SNAPSHOT),\n"
    "                       or vmm gets SIGUSR1 (any guest, Linux too), save a snapshot\n"
    "                       to FILE (atomically; later ones replace it)\n"
    "  -X, --stop-after-save  end the run (status 0) after the first save\n"
    "  -s, --stats          print the vCPU counters to stderr at the end\n"
    "  -v, --verbose        log library messages to stderr (twice: debug)\n"
    "\n"
    "exit status: the guest's status (0-255), or 121 guest exception, 122 guest shutdown\n"
    "(triple fault), 123 internal error, 124 timeout, 125 bad usage, image or backend.\n"
    "With --kernel: 0 when Linux reboots or powers off, 122 triple fault.\n"
    "\n"
    "vmm restore loads a snapshot file (and its parents), creates a VM with the same RAM and\n"
    "the same devices as vmm run, and continues the guest where it was, on any backend (a\n"
    "Linux VM's snapshot: on kvm, with its interrupt controllers and timer).\n"
    "vmm snapshot info prints what a snapshot file holds.\n";

struct vmm_run_opts {
  vmm_backend_t backend;
  uint64_t mem;
  unsigned cpl;
  double timeout;
  int flat;
  uint64_t flat_addr;
  const char *cmdline;
  const char *kernel;
  const char *initrd;
  int guest_decompress;
  const char *save;
  int stop_after_save;
  int mem_set;
  int stats;
  int verbose;
  const char *image;
};


void vmm_log_stderr(vmm_log_level_t level, const char *msg, void *ud) {
  (void)ud;
  static const char *const names[] = {"error", "warning", "info", "debug"};
  fprintf(stderr, "libvmm %s: %s\n", names[level], msg);
}

void vmm_write_stdout(const char *data, size_t len, void *ud) {
  (void)ud;
  while (len) {
    ssize_t n = write(STDOUT_FILENO, data, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return; /* A closed stdout loses guest output; the guest keeps running. */
    data += n;
    len -= (size_t)n;
  }
}

int vmm_parse_size(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno || end == s) return -1;
  uint64_t mul = 1;
  switch (*end) {
    case 'k': case 'K': mul = 1ull << 10; end++; break;
    case 'm': case 'M': mul = 1ull << 20; end++; break;
    case 'g': case 'G': mul = 1ull << 30; end++; break;
    default: break;
  }
  if (*end == 'i' || *end == 'B') end++;
  if (*end == 'B') end++;
  if (*end != '\0' || v > UINT64_MAX / mul) return -1;
  *out = v * mul;
  return 0;
}

/* ---- the host side of the run: libuv loop on its own thread ---- */

static void vmm_on_timeout(uv_timer_t *t) {
  struct vmm_runner *r = t->data;
  atomic_store(&r->timed_out, 1);
  vmm_vcpu_kick(r->vcpu);
}

/* Linux without ACPI "powers off" by halting with interrupts disabled, which an in-kernel
 * irqchip never reports: look at the vCPU now and then. */
static void vmm_on_halt_probe(uv_timer_t *t) {
  struct vmm_runner *r = t->data;
  vmm_vcpu_kick(r->vcpu);
}

/* SIGUSR1 with --save: a snapshot at the vCPU's next stop, for guests that cannot make the
 * snapshot hypercall (Linux). */
static void vmm_on_usr1(uv_signal_t *s, int signum) {
  (void)signum;
  struct vmm_runner *r = s->data;
  atomic_store(&r->ses->snapshot_requested, 1);
  vmm_vcpu_kick(r->vcpu);
}

static void vmm_on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)h;
  static char storage[4096];
  (void)hint;
  *buf = uv_buf_init(storage, sizeof(storage));
}

static void vmm_on_stdin(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);

/* Offers the UART what it had no room for; once it took everything, stdin is read again. The
 * buffer stays valid meanwhile: nothing is read into it while input is pending. */
static void vmm_feed(uv_timer_t *t) {
  struct vmm_runner *r = t->data;
  size_t accepted = 0;
  vmm_uart_input(r->uart, r->pend, r->pend_len, &accepted);
  r->pend += accepted;
  r->pend_len -= accepted;
  if (r->pend_len) return;
  uv_timer_stop(t);
  uv_read_start((uv_stream_t *)&r->in, vmm_on_alloc, vmm_on_stdin);
}

static void vmm_on_stdin(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  struct vmm_runner *r = s->data;
  if (n < 0) {
    uv_read_stop(s);
    return;
  }
  size_t accepted = 0;
  vmm_uart_input(r->uart, buf->base, (size_t)n, &accepted);
  if (accepted < (size_t)n) {
    /* The guest reads slower than input comes: hold the rest instead of dropping it. */
    uv_read_stop(s);
    r->pend = buf->base + accepted;
    r->pend_len = (size_t)n - accepted;
    uv_timer_start(&r->feed, vmm_feed, 1, 1);
  }
}

static void vmm_close_cb(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void vmm_on_stop(uv_async_t *a) { uv_walk(a->loop, vmm_close_cb, NULL); }

static void vmm_loop_thread(void *arg) {
  struct vmm_runner *r = arg;
  uv_run(&r->loop, UV_RUN_DEFAULT);
}

int vmm_runner_start(struct vmm_runner *r, double timeout, int linux_mode,
                            uv_thread_t *tid) {
  if (uv_loop_init(&r->loop) != 0) return -1;
  uv_async_init(&r->loop, &r->stop, vmm_on_stop);
  r->stop.data = r;
  if (timeout > 0) {
    uv_timer_init(&r->loop, &r->timer);
    r->timer.data = r;
    uv_timer_start(&r->timer, vmm_on_timeout, (uint64_t)(timeout * 1000.0), 0);
  }
  if (linux_mode) {
    uv_timer_init(&r->loop, &r->halt_probe);
    r->halt_probe.data = r;
    uv_timer_start(&r->halt_probe, vmm_on_halt_probe, 1000, 1000);
  }
  if (r->ses && r->ses->save_path && uv_signal_init(&r->loop, &r->usr1) == 0) {
    r->usr1.data = r;
    uv_signal_start(&r->usr1, vmm_on_usr1, SIGUSR1);
  }
  uv_handle_type t = uv_guess_handle(STDIN_FILENO);
  if (t == UV_TTY && uv_tty_init(&r->loop, &r->in.tty, STDIN_FILENO, 1) == 0) {
    r->have_in = 1;
  } else if (t == UV_NAMED_PIPE && uv_pipe_init(&r->loop, &r->in.pipe, 0) == 0) {
    if (uv_pipe_open(&r->in.pipe, STDIN_FILENO) == 0) r->have_in = 1;
  }
  if (r->have_in) {
    uv_stream_t *s = (uv_stream_t *)&r->in;
    s->data = r;
    uv_timer_init(&r->loop, &r->feed);
    r->feed.data = r;
    uv_read_start(s, vmm_on_alloc, vmm_on_stdin);
  }
  return uv_thread_create(tid, vmm_loop_thread, r);
}

void vmm_runner_stop(struct vmm_runner *r, uv_thread_t *tid) {
  uv_async_send(&r->stop);
  uv_thread_join(tid);
  uv_loop_close(&r->loop);
}

/* ---- vmm run ---- */

static const char *vmm_vector_name(unsigned v) {
  static const char *const names[] = {"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM",
                                      "#DF", "#MF", "#TS", "#NP", "#SS", "#GP", "#PF", "#15",
                                      "#MF", "#AC", "#MC", "#XM", "#VE", "#CP"};
  return v < sizeof(names) / sizeof(names[0]) ? names[v] : "#?";
}

/* An AP (a vCPU other than 0) that halted: it stops, the VM goes on. */
#define VMM_TOOL_AP_STOPPED (-1)

/* With several vCPUs, a snapshot needs all of them out of vmm_vcpu_run(): the vCPU that saves
 * sets `pausing`, kicks the others and waits until every vCPU still running is parked here. */
static void vmm_park_if_pausing(struct vmm_session *ses) {
  uv_mutex_lock(&ses->pause_lock);
  if (ses->pausing) {
    ses->parked++;
    uv_cond_broadcast(&ses->pause_cv);
    while (ses->pausing) uv_cond_wait(&ses->pause_cv, &ses->pause_lock);
    ses->parked--;
  }
  uv_mutex_unlock(&ses->pause_lock);
}

static int vmm_save_all_stopped(struct vmm_session *ses, vmm_vcpu_t *self) {
  if (ses->nvcpus <= 1) return vmm_session_save(ses);
  uv_mutex_lock(&ses->pause_lock);
  int busy = ses->pausing;
  ses->pausing = 1;
  uv_mutex_unlock(&ses->pause_lock);
  if (busy) {
    /* Another vCPU is saving (a second request came meanwhile): this one parks like the
     * rest, and that snapshot answers both requests. */
    vmm_park_if_pausing(ses);
    return 0;
  }
  for (unsigned i = 0; i < ses->nvcpus; i++) {
    vmm_vcpu_t *v = vmm_vm_vcpu(ses->vm, i);
    if (v != self) vmm_vcpu_kick(v);
  }
  uv_mutex_lock(&ses->pause_lock);
  while (ses->parked < ses->running - 1) uv_cond_wait(&ses->pause_cv, &ses->pause_lock);
  uv_mutex_unlock(&ses->pause_lock);
  int rc = vmm_session_save(ses);
  uv_mutex_lock(&ses->pause_lock);
  ses->pausing = 0;
  uv_cond_broadcast(&ses->pause_cv);
  uv_mutex_unlock(&ses->pause_lock);
  return rc;
}

/* A vCPU's loop has ended: a saver waiting for it to park stops waiting. */
static void vmm_vcpu_gone(struct vmm_session *ses) {
  if (ses->nvcpus <= 1) return;
  uv_mutex_lock(&ses->pause_lock);
  ses->running--;
  uv_cond_broadcast(&ses->pause_cv);
  uv_mutex_unlock(&ses->pause_lock);
}

/* Runs one vCPU until it ends the VM (its exit status) or, for an AP, until it halts or the
 * VM ends. */
static int vmm_run_vcpu(struct vmm_session *ses, struct vmm_runner *runner, vmm_vcpu_t *vcpu,
                        unsigned index) {
  int linux_mode = ses->linux_mode, verbose = ses->verbose;
  vmm_exit_t exit;
  memset(&exit, 0, sizeof(exit));
  unsigned warned_io = 0, warned_mmio = 0, warned_hc = 0;
  char who[32] = "";
  if (index) snprintf(who, sizeof(who), "vCPU %u: ", index);
  for (;;) {
    if (atomic_load(&ses->ending)) return index ? VMM_TOOL_AP_STOPPED : ses->end_status;
    if (ses->nvcpus > 1) vmm_park_if_pausing(ses);
    int rc = vmm_vcpu_run(vcpu, &exit);
    if (rc != 0) {
      fprintf(stderr, "vmm: %srun failed: %s\n", who, vmm_strerror(rc));
      return VMM_TOOL_INTERNAL;
    }
    switch (exit.reason) {
      case VMM_EXIT_GUEST_EXIT:
        if (linux_mode && exit.guest_exit.status == VMM_LINUX_RESET_STATUS) {
          if (verbose) fprintf(stderr, "vmm: guest reset (reboot or poweroff)\n");
          return 0;
        }
        return (int)(exit.guest_exit.status & 0xff);
      case VMM_EXIT_HLT: return index ? VMM_TOOL_AP_STOPPED : 0;
      case VMM_EXIT_KICKED:
        if (atomic_load(&ses->ending)) break; /* Checked at the top of the loop. */
        if (atomic_load(&runner->timed_out)) {
          fprintf(stderr, "vmm: timeout: guest still running, stopped\n");
          return VMM_TOOL_TIMEOUT;
        }
        if (atomic_exchange(&ses->snapshot_requested, 0)) {
          if (vmm_save_all_stopped(ses, vcpu) != 0) return VMM_TOOL_INTERNAL;
          if (ses->stop_after_save) return 0;
          break;
        }
        if (linux_mode) {
          vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
          if (vmm_vcpu_get_state(vcpu, &st) == 0 && st.halted && !(st.regs.rflags & VMM_RFLAGS_IF)) {
            if (verbose) fprintf(stderr, "vmm: guest halted with interrupts off (powered off)\n");
            return 0;
          }
        }
        break;
      case VMM_EXIT_IO:
        /* No device there: reads see all-ones, writes vanish, as on a PC bus. Linux probes
         * many such ports, so in that mode only -v reports them. */
        if ((!linux_mode || verbose) && warned_io++ < 8)
          fprintf(stderr, "vmm: %sguest %s unclaimed port %#x\n", who,
                  exit.io.is_write ? "wrote" : "read", exit.io.port);
        break;
      case VMM_EXIT_MMIO:
        if ((!linux_mode || verbose) && warned_mmio++ < 8)
          fprintf(stderr, "vmm: %sguest %s unclaimed physical address %#" PRIx64 "\n", who,
                  exit.mmio.is_write ? "wrote" : "read", exit.mmio.gpa);
        break;
      case VMM_EXIT_HYPERCALL:
        if (warned_hc++ < 8)
          fprintf(stderr, "vmm: %sunknown hypercall %" PRIu64 "\n", who, exit.hypercall.nr);
        break;
      case VMM_EXIT_EXCEPTION:
        fprintf(stderr, "vmm: %sguest exception %s (vector %u) at rip=%#" PRIx64, who,
                vmm_vector_name(exit.exception.vector), exit.exception.vector, exit.exception.rip);
        if (exit.exception.has_error_code) fprintf(stderr, " error code %#x", exit.exception.error_code);
        if (exit.exception.vector == 14) fprintf(stderr, " address %#" PRIx64, exit.exception.cr2);
        fprintf(stderr, "\n");
        return VMM_TOOL_EXCEPTION;
      case VMM_EXIT_SHUTDOWN:
        fprintf(stderr, "vmm: %sguest shut down (triple fault)\n", who);
        return VMM_TOOL_SHUTDOWN;
      case VMM_EXIT_INTERNAL_ERROR:
        fprintf(stderr, "vmm: %sinternal error: %s\n", who, exit.internal.message);
        return VMM_TOOL_INTERNAL;
      case VMM_EXIT_DEBUG: break;
      default:
        fprintf(stderr, "vmm: %sunexpected exit %s\n", who, vmm_exit_reason_name(exit.reason));
        return VMM_TOOL_INTERNAL;
    }
  }
}

struct vmm_ap {
  struct vmm_session *ses;
  struct vmm_runner *runner;
  unsigned index;
  uv_thread_t tid;
};

/* The first vCPU to end the VM sets its status; vCPU 0 is told, and returns it. */
static void vmm_session_end(struct vmm_session *ses, int status) {
  int expect = 0;
  if (!atomic_compare_exchange_strong(&ses->ending_claim, &expect, 1)) return;
  ses->end_status = status;
  atomic_store(&ses->ending, 1);
  vmm_vcpu_kick(ses->vcpu);
}

static void vmm_ap_main(void *arg) {
  struct vmm_ap *ap = arg;
  vmm_vcpu_t *v = vmm_vm_vcpu(ap->ses->vm, ap->index);
  int st = vmm_run_vcpu(ap->ses, ap->runner, v, ap->index);
  vmm_vcpu_gone(ap->ses);
  if (st != VMM_TOOL_AP_STOPPED) vmm_session_end(ap->ses, st);
}

int vmm_run_loop(struct vmm_session *ses, struct vmm_runner *runner) {
  unsigned n = ses->nvcpus ? ses->nvcpus : 1, started = 1;
  if (n == 1) return vmm_run_vcpu(ses, runner, ses->vcpu, 0);
  struct vmm_ap *aps = calloc(n, sizeof(*aps));
  if (aps == NULL || uv_mutex_init(&ses->pause_lock) != 0) {
    free(aps);
    return VMM_TOOL_INTERNAL;
  }
  if (uv_cond_init(&ses->pause_cv) != 0) {
    uv_mutex_destroy(&ses->pause_lock);
    free(aps);
    return VMM_TOOL_INTERNAL;
  }
  ses->running = 1;
  /* vCPUs 1..n-1 on threads of their own; vCPU 0 here, where SIGUSR1 and the timeout kick. */
  for (; started < n; started++) {
    aps[started] = (struct vmm_ap){.ses = ses, .runner = runner, .index = started};
    uv_mutex_lock(&ses->pause_lock);
    ses->running++;
    uv_mutex_unlock(&ses->pause_lock);
    if (uv_thread_create(&aps[started].tid, vmm_ap_main, &aps[started]) != 0) {
      vmm_vcpu_gone(ses);
      fprintf(stderr, "vmm: cannot start a thread for vCPU %u\n", started);
      vmm_session_end(ses, VMM_TOOL_INTERNAL);
      break;
    }
  }
  int status = vmm_run_vcpu(ses, runner, ses->vcpu, 0);
  vmm_vcpu_gone(ses);
  vmm_session_end(ses, status);
  /* The others stop at their next exit; a kick makes that now (a kick that comes before a run
   * is kept for it, and the loop looks at `ending` before every run). */
  for (unsigned i = 1; i < started; i++) vmm_vcpu_kick(vmm_vm_vcpu(ses->vm, i));
  for (unsigned i = 1; i < started; i++) uv_thread_join(&aps[i].tid);
  /* Read after the joins: a vCPU that claimed the end has written its status by then. */
  status = ses->end_status;
  uv_cond_destroy(&ses->pause_cv);
  uv_mutex_destroy(&ses->pause_lock);
  free(aps);
  return status;
}

void vmm_print_stats(vmm_vcpu_t *vcpu) {
  vmm_stat_t stats[64];
  size_t n = 0;
  if (vmm_vcpu_stats(vcpu, stats, 64, &n) != 0) return;
  for (size_t i = 0; i < n && i < 64; i++)
    fprintf(stderr, "%-32s %" PRIu64 "\n", stats[i].name, stats[i].value);
}

static int vmm_map_guest_ram(vmm_vm_t *vm, uint64_t mem) {
  /* RAM above 3 GiB moves above 4 GiB, leaving the usual 32-bit hole for devices. */
  const uint64_t low_max = 3ull << 30;
  uint64_t low = mem < low_max ? mem : low_max;
  int rc = vmm_vm_map_ram(vm, 0, low, 0, NULL);
  if (rc == 0 && mem > low) rc = vmm_vm_map_ram(vm, 4ull << 30, mem - low, 0, NULL);
  return rc;
}

int vmm_standard_devices(vmm_vm_t *vm, int linux_mode, vmm_device_t **uart) {
  vmm_uart_config_t ucfg = VMM_UART_CONFIG_INIT;
  ucfg.out_fn = vmm_write_stdout;
  int rc = vmm_vm_set_console(vm, vmm_write_stdout, NULL);
  if (rc == 0) rc = vmm_debugcon_create(vm, 0, vmm_write_stdout, NULL, NULL);
  if (rc == 0) rc = vmm_uart_create(vm, &ucfg, uart);
  if (rc == 0) rc = vmm_debug_exit_create(vm, 0, NULL);
  if (rc == 0 && linux_mode) rc = vmm_linux_pc_create(vm, NULL);
  return rc;
}

/* Puts the guest in place: an ELF or flat image in long mode, or a Linux kernel. */
static int vmm_prepare_guest(vmm_vm_t *vm, vmm_vcpu_t *vcpu, const struct vmm_run_opts *o) {
  int rc;
  if (o->kernel) {
    vmm_linux_config_t lc = VMM_LINUX_CONFIG_INIT;
    lc.kernel_path = o->kernel;
    lc.initrd_path = o->initrd;
    lc.cmdline = o->cmdline;
    if (o->guest_decompress) lc.flags |= VMM_LINUX_IN_KERNEL_DECOMPRESS;
    vmm_linux_info_t li = VMM_LINUX_INFO_INIT;
    if ((rc = vmm_linux_load(vm, &lc, &li)) != 0) {
      fprintf(stderr, "vmm: cannot load kernel %s: %s\n", o->kernel, vmm_strerror(rc));
      return rc;
    }
    if ((rc = vmm_vcpu_setup_linux(vcpu, &li)) != 0)
      fprintf(stderr, "vmm: cannot prepare the vCPU: %s\n", vmm_strerror(rc));
    return rc;
  }
  vmm_image_info_t info;
  rc = vmm_load_file(vm, o->image, o->flat, o->flat_addr, &info);
  if (rc != 0) {
    fprintf(stderr, "vmm: cannot load %s: %s\n", o->image, vmm_strerror(rc));
    return rc;
  }
  vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
  lm.cpl = o->cpl;
  lm.entry = info.entry;
  lm.cmdline = o->cmdline;
  lm.image_low = info.low;
  lm.image_high = info.high;
  rc = vmm_vcpu_setup_long_mode(vcpu, &lm);
  if (rc != 0) fprintf(stderr, "vmm: cannot prepare the vCPU: %s\n", vmm_strerror(rc));
  return rc;
}

static int vmm_cmd_run(const struct vmm_run_opts *o) {
  if (o->verbose) vmm_log_set_callback(vmm_log_stderr, o->verbose > 1 ? VMM_LOG_DEBUG : VMM_LOG_INFO, NULL);
  else vmm_log_set_callback(vmm_log_stderr, VMM_LOG_WARN, NULL);

  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = o->backend;
  /* Linux needs interrupts and a timer; only backends that have them can boot it. */
  if (o->kernel) cfg.flags |= VMM_VM_IRQCHIP;
  vmm_vm_t *vm = NULL;
  int rc = vmm_vm_create(&cfg, &vm);
  if (rc != 0) {
    fprintf(stderr, "vmm: cannot create a VM on backend %s: %s\n", vmm_backend_name(o->backend),
            vmm_strerror(rc));
    return VMM_TOOL_USAGE;
  }
  int status = VMM_TOOL_USAGE;
  vmm_vcpu_t *vcpu = NULL;
  vmm_device_t *uart = NULL;
  uint64_t mem = o->mem_set || !o->kernel ? o->mem : 512ull << 20;
  struct vmm_session ses = {.vm = vm, .save_path = o->save, .stop_after_save = o->stop_after_save,
                            .linux_mode = o->kernel != NULL, .verbose = o->verbose};
  rc = vmm_map_guest_ram(vm, mem);
  if (rc == 0) rc = vmm_standard_devices(vm, o->kernel != NULL, &uart);
  if (rc == 0) rc = vmm_vcpu_create(vm, 0, &vcpu);
  ses.vcpu = vcpu;
  if (rc == 0) rc = vmm_session_enable_snapshots(&ses);
  if (rc != 0) {
    fprintf(stderr, "vmm: cannot set up the VM: %s\n", vmm_strerror(rc));
    goto out;
  }
  if (vmm_prepare_guest(vm, vcpu, o) != 0) goto out;

  struct vmm_runner runner;
  memset(&runner, 0, sizeof(runner));
  runner.vcpu = vcpu;
  runner.uart = uart;
  runner.ses = &ses;
  uv_thread_t tid;
  if (vmm_runner_start(&runner, o->timeout, o->kernel != NULL, &tid) != 0) {
    fprintf(stderr, "vmm: cannot start the host event loop\n");
    goto out;
  }
  status = vmm_run_loop(&ses, &runner);
  vmm_runner_stop(&runner, &tid);
  if (o->stats) vmm_print_stats(vcpu);
out:
  vmm_vm_destroy(vm);
  return status;
}

static int vmm_cmd_version(void) {
  printf("vmm %s (libvmm %s)\n", vmm_version_string(), vmm_version_string());
  static const vmm_backend_t all[] = {VMM_BACKEND_KVM, VMM_BACKEND_BT, VMM_BACKEND_PV};
  for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
    int rc = vmm_backend_probe(all[i]);
    const char *why = rc == VMM_ENOSYS ? "not built in" : vmm_strerror(rc);
    printf("  backend %-3s %s%s\n", vmm_backend_name(all[i]), rc == 0 ? "available" : "unavailable: ",
           rc == 0 ? "" : why);
  }
  return 0;
}

int vmm_usage_error(const char *msg, const char *arg) {
  fprintf(stderr, "vmm: %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
  fprintf(stderr, "try 'vmm --help'\n");
  return VMM_TOOL_USAGE;
}

static int vmm_main_run(int argc, char **argv) {
  static const struct option longopts[] = {
      {"backend", required_argument, NULL, 'b'}, {"mem", required_argument, NULL, 'm'},
      {"cpl", required_argument, NULL, 'c'},     {"timeout", required_argument, NULL, 't'},
      {"flat", required_argument, NULL, 'f'},    {"cmdline", required_argument, NULL, 'a'},
      {"stats", no_argument, NULL, 's'},         {"verbose", no_argument, NULL, 'v'},
      {"kernel", required_argument, NULL, 'k'},  {"initrd", required_argument, NULL, 'i'},
      {"guest-decompress", no_argument, NULL, 'g'},
      {"save", required_argument, NULL, 'S'},    {"stop-after-save", no_argument, NULL, 'X'},
      {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
  struct vmm_run_opts o = {.backend = VMM_BACKEND_AUTO, .mem = 64ull << 20};
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "b:m:c:t:f:a:k:i:gS:Xsvh", longopts, NULL)) != -1) {
    switch (c) {
      case 'b':
        if (vmm_backend_parse(optarg, &o.backend) != 0) return vmm_usage_error("unknown backend", optarg);
        break;
      case 'm':
        if (vmm_parse_size(optarg, &o.mem) != 0 || o.mem < (2ull << 20) || o.mem % 4096)
          return vmm_usage_error("bad memory size (at least 2M, a multiple of 4K)", optarg);
        o.mem_set = 1;
        break;
      case 'c':
        if (strcmp(optarg, "0") != 0 && strcmp(optarg, "3") != 0)
          return vmm_usage_error("--cpl takes 0 or 3", optarg);
        o.cpl = (unsigned)atoi(optarg);
        break;
      case 't': {
        char *end;
        o.timeout = strtod(optarg, &end);
        if (*end || !(o.timeout > 0) || !isfinite(o.timeout) || o.timeout > 1e9)
          return vmm_usage_error("bad timeout", optarg);
        break;
      }
      case 'f':
        if (vmm_parse_size(optarg, &o.flat_addr) != 0) return vmm_usage_error("bad address", optarg);
        o.flat = 1;
        break;
      case 'a': o.cmdline = optarg; break;
      case 'k': o.kernel = optarg; break;
      case 'i': o.initrd = optarg; break;
      case 'g': o.guest_decompress = 1; break;
      case 'S': o.save = optarg; break;
      case 'X': o.stop_after_save = 1; break;
      case 's': o.stats = 1; break;
      case 'v': o.verbose++; break;
      case 'h': fputs(vmm_usage_text, stdout); return 0;
      default: return vmm_usage_error("bad option", NULL);
    }
  }
  if (o.kernel) {
    if (optind != argc) return vmm_usage_error("--kernel takes no IMAGE", argv[optind]);
    if (o.flat || o.cpl) return vmm_usage_error("--flat and --cpl do not apply to --kernel", NULL);
    return vmm_cmd_run(&o);
  }
  if (o.stop_after_save && !o.save) return vmm_usage_error("--stop-after-save needs --save", NULL);
  if (o.initrd || o.guest_decompress)
    return vmm_usage_error("--initrd and --guest-decompress need --kernel", NULL);
  if (optind != argc - 1) return vmm_usage_error("run needs exactly one IMAGE", NULL);
  o.image = argv[optind];
  return vmm_cmd_run(&o);
}

int main(int argc, char **argv) {
  /* A closed stdout loses guest output; it must not end the run. */
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2) return vmm_usage_error("missing command", NULL);
  const char *cmd = argv[1];
  if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
    fputs(vmm_usage_text, stdout);
    return 0;
  }
  if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) return vmm_cmd_version();
  if (strcmp(cmd, "run") == 0) return vmm_main_run(argc - 1, argv + 1);
  if (strcmp(cmd, "restore") == 0) return vmm_cmd_restore(argc - 1, argv + 1);
  if (strcmp(cmd, "snapshot") == 0) return vmm_cmd_snapshot(argc - 1, argv + 1);
  return vmm_usage_error("unknown command", cmd);
}
