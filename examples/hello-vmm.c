/* hello-vmm: a complete VMM on libvmm's public API.
 *
 *   hello-vmm [-b auto|kvm|bt|pv] [-m MiB] [-3] IMAGE.elf
 *
 * Creates a VM with RAM at 0, a 16550 UART on COM1 and a debug console on port 0xe9 (both
 * printing to stdout), loads an ELF64 guest, starts it in 64-bit long mode (kernel mode, or
 * user mode with -3) and runs it until it exits, halts or faults. Serves as the project's
 * demo: `make demo` runs the demo guest with it on the best backend this host has. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libvmm/vmm.h>

static void to_stdout(const char *data, size_t len, void *user_data) {
  (void)user_data;
  fwrite(data, 1, len, stdout);
  fflush(stdout);
}

static void log_to_stderr(vmm_log_level_t level, const char *msg, void *user_data) {
  (void)user_data;
  fprintf(stderr, "[libvmm %d] %s\n", (int)level, msg);
}

static int usage(const char *argv0) {
  fprintf(stderr, "usage: %s [-b auto|kvm|bt|pv] [-m MiB] [-3] IMAGE.elf\n", argv0);
  return 2;
}

/* Runs until the guest is done; returns the process exit status. */
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
      case VMM_EXIT_GUEST_EXIT:
        return (int)(exit.guest_exit.status & 0xff);
      case VMM_EXIT_HLT:
        return 0;
      case VMM_EXIT_IO:
      case VMM_EXIT_MMIO:
        /* Nothing at that address: reads return all-ones (preset by the library). */
        continue;
      case VMM_EXIT_EXCEPTION:
        fprintf(stderr, "guest exception %u at %#llx\n", exit.exception.vector,
                (unsigned long long)exit.exception.rip);
        return 1;
      case VMM_EXIT_INTERNAL_ERROR:
        fprintf(stderr, "internal error: %s\n", exit.internal.message);
        return 1;
      default:
        fprintf(stderr, "guest stopped: %s\n", vmm_exit_reason_name(exit.reason));
        return 1;
    }
  }
}

int main(int argc, char **argv) {
  vmm_backend_t backend = VMM_BACKEND_AUTO;
  unsigned long mib = 64;
  unsigned cpl = 0;
  int opt;
  while ((opt = getopt(argc, argv, "b:m:3")) != -1) {
    switch (opt) {
      case 'b':
        if (vmm_backend_parse(optarg, &backend) != 0) return usage(argv[0]);
        break;
      case 'm': mib = strtoul(optarg, NULL, 0); break;
      case '3': cpl = 3; break;
      default: return usage(argv[0]);
    }
  }
  if (optind != argc - 1 || mib < 2) return usage(argv[0]);
  vmm_log_set_callback(log_to_stderr, VMM_LOG_WARN, NULL);

  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = backend;
  cfg.ram_size = (uint64_t)mib << 20;
  vmm_vm_t *vm = NULL;
  int rc = vmm_vm_create(&cfg, &vm);
  if (rc != 0) {
    fprintf(stderr, "cannot create a VM (%s): %s\n", vmm_backend_name(backend), vmm_strerror(rc));
    return 1;
  }
  fprintf(stderr, "hello-vmm: %lu MiB VM on backend %s\n", mib,
          vmm_backend_name(vmm_vm_backend(vm)));

  vmm_uart_config_t uart = VMM_UART_CONFIG_INIT;
  uart.out_fn = to_stdout;
  vmm_vcpu_t *vcpu = NULL;
  vmm_image_info_t image;
  int status = 1;
  if ((rc = vmm_vm_set_console(vm, to_stdout, NULL)) != 0 ||
      (rc = vmm_uart_create(vm, &uart, NULL)) != 0 ||
      (rc = vmm_debugcon_create(vm, 0, to_stdout, NULL, NULL)) != 0 ||
      (rc = vmm_vcpu_create(vm, 0, &vcpu)) != 0) {
    fprintf(stderr, "cannot set up the VM: %s\n", vmm_strerror(rc));
    goto out;
  }
  if ((rc = vmm_load_file(vm, argv[optind], 0, 0, &image)) != 0) {
    fprintf(stderr, "cannot load %s: %s\n", argv[optind], vmm_strerror(rc));
    goto out;
  }
  vmm_long_mode_config_t boot = VMM_LONG_MODE_CONFIG_INIT;
  boot.cpl = cpl;
  boot.entry = image.entry;
  boot.image_low = image.low;
  boot.image_high = image.high;
  if ((rc = vmm_vcpu_setup_long_mode(vcpu, &boot)) != 0) {
    fprintf(stderr, "cannot start the vCPU: %s\n", vmm_strerror(rc));
    goto out;
  }
  status = run(vcpu);
out:
  vmm_vm_destroy(vm);
  return status;
}
