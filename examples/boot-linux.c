/* boot-linux: a complete Linux-booting VMM on libvmm's public API.
 *
 *   boot-linux [-m MiB] [-i INITRD] [-c CMDLINE] [-g] [-t SECONDS] KERNEL
 *
 * Boots a bzImage (or an ELF vmlinux) with the x86 boot protocol's 64-bit entry on a backend
 * with interrupt controllers and a timer (kvm), with COM1 on IRQ 4 as the console on stdout.
 * RAM up to 3 GiB sits at 0, the rest above 4 GiB. -g lets the kernel decompress itself.
 * Exits 0 when Linux reboots or powers off, 124 on timeout, 1 on errors. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libvmm/vmm.h>

static atomic_int timed_out, stopping;

struct watchdog {
  vmm_vcpu_t *vcpu;
  double timeout;
};

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void to_stdout(const char *data, size_t len, void *user_data) {
  (void)user_data;
  fwrite(data, 1, len, stdout);
  fflush(stdout);
}

static void log_to_stderr(vmm_log_level_t level, const char *msg, void *user_data) {
  (void)user_data;
  fprintf(stderr, "[libvmm %d] %s\n", (int)level, msg);
}

/* Once a second, stop the vCPU so that the main loop can see whether Linux halted for good
 * (without ACPI, that is how it powers off) or the time is up. */
static void *watchdog(void *arg) {
  struct watchdog *w = arg;
  double end = now() + w->timeout;
  while (!atomic_load(&stopping)) {
    usleep(250000);
    if (w->timeout > 0 && now() >= end) atomic_store(&timed_out, 1);
    vmm_vcpu_kick(w->vcpu);
  }
  return NULL;
}

static int run(vmm_vcpu_t *vcpu) {
  vmm_exit_t exit;
  memset(&exit, 0, sizeof(exit));
  for (;;) {
    int rc = vmm_vcpu_run(vcpu, &exit);
    if (rc != 0) {
      fprintf(stderr, "run failed: %s\n", vmm_strerror(rc));
      return 1;
    }
    switch (exit.reason) {
      case VMM_EXIT_IO:
      case VMM_EXIT_MMIO:
        continue; /* Ports and addresses nobody claimed: reads see all-ones. */
      case VMM_EXIT_GUEST_EXIT:
        if (exit.guest_exit.status == VMM_LINUX_RESET_STATUS) {
          fprintf(stderr, "boot-linux: the guest reset the machine\n");
          return 0;
        }
        return (int)(exit.guest_exit.status & 0xff);
      case VMM_EXIT_KICKED: {
        if (atomic_load(&timed_out)) {
          fprintf(stderr, "boot-linux: timeout\n");
          return 124;
        }
        vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
        if (vmm_vcpu_get_state(vcpu, &st) == 0 && st.halted && !(st.regs.rflags & VMM_RFLAGS_IF)) {
          fprintf(stderr, "boot-linux: the guest halted with interrupts off (power off)\n");
          return 0;
        }
        continue;
      }
      case VMM_EXIT_INTERNAL_ERROR:
        fprintf(stderr, "internal error: %s\n", exit.internal.message);
        return 1;
      default:
        fprintf(stderr, "guest stopped: %s\n", vmm_exit_reason_name(exit.reason));
        return 1;
    }
  }
}

static int usage(const char *argv0) {
  fprintf(stderr, "usage: %s [-m MiB] [-i INITRD] [-c CMDLINE] [-g] [-t SECONDS] KERNEL\n", argv0);
  return 1;
}

int main(int argc, char **argv) {
  unsigned long mib = 512;
  const char *initrd = NULL, *cmdline = "console=ttyS0 panic=-1";
  int guest_decompress = 0;
  double timeout = 0;
  int opt;
  while ((opt = getopt(argc, argv, "m:i:c:gt:")) != -1) {
    switch (opt) {
      case 'm': mib = strtoul(optarg, NULL, 0); break;
      case 'i': initrd = optarg; break;
      case 'c': cmdline = optarg; break;
      case 'g': guest_decompress = 1; break;
      case 't': timeout = strtod(optarg, NULL); break;
      default: return usage(argv[0]);
    }
  }
  if (optind != argc - 1 || mib < 64) return usage(argv[0]);
  vmm_log_set_callback(log_to_stderr, VMM_LOG_WARN, NULL);

  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = VMM_BACKEND_KVM;
  cfg.flags = VMM_VM_IRQCHIP; /* Linux needs interrupt controllers and a timer. */
  vmm_vm_t *vm = NULL;
  int rc = vmm_vm_create(&cfg, &vm);
  if (rc != 0) {
    fprintf(stderr, "cannot create a VM with an irqchip: %s\n", vmm_strerror(rc));
    return rc == VMM_ENODEV ? 77 : 1;
  }
  /* Below 4 GiB the top GiB is left for devices, as on a PC. */
  uint64_t ram = (uint64_t)mib << 20, low = ram < (3ull << 30) ? ram : (3ull << 30);
  vmm_uart_config_t uart = VMM_UART_CONFIG_INIT; /* COM1, IRQ 4. */
  uart.out_fn = to_stdout;
  vmm_vcpu_t *vcpu = NULL;
  int status = 1;
  if ((rc = vmm_vm_map_ram(vm, 0, low, 0, NULL)) != 0 ||
      (ram > low && (rc = vmm_vm_map_ram(vm, 4ull << 30, ram - low, 0, NULL)) != 0) ||
      (rc = vmm_uart_create(vm, &uart, NULL)) != 0 ||
      (rc = vmm_linux_pc_create(vm, NULL)) != 0 ||
      (rc = vmm_vcpu_create(vm, 0, &vcpu)) != 0) {
    fprintf(stderr, "cannot set up the VM: %s\n", vmm_strerror(rc));
    goto out;
  }

  double t0 = now();
  vmm_linux_config_t lc = VMM_LINUX_CONFIG_INIT;
  lc.kernel_path = argv[optind];
  lc.initrd_path = initrd;
  lc.cmdline = cmdline;
  if (guest_decompress) lc.flags |= VMM_LINUX_IN_KERNEL_DECOMPRESS;
  vmm_linux_info_t info = VMM_LINUX_INFO_INIT;
  if ((rc = vmm_linux_load(vm, &lc, &info)) != 0 || (rc = vmm_vcpu_setup_linux(vcpu, &info)) != 0) {
    fprintf(stderr, "cannot load %s: %s\n", argv[optind], vmm_strerror(rc));
    goto out;
  }
  fprintf(stderr, "boot-linux: %s loaded in %.2f s (%s), entry %#llx, %llu MiB RAM\n",
          info.image == VMM_LINUX_IMAGE_ELF ? "ELF vmlinux" : "bzImage", now() - t0,
          info.host_decompressed ? "payload decompressed on the host" : "as it is",
          (unsigned long long)info.entry, (unsigned long long)mib);

  struct watchdog w = {vcpu, timeout};
  pthread_t tid;
  if (pthread_create(&tid, NULL, watchdog, &w) != 0) goto out;
  double t1 = now();
  status = run(vcpu);
  atomic_store(&stopping, 1);
  pthread_join(tid, NULL);
  fprintf(stderr, "boot-linux: ran %.2f s, status %d\n", now() - t1, status);
out:
  vmm_vm_destroy(vm);
  return status;
}
