/* `vmm` command: snapshots the guest asks for, `vmm restore` and `vmm snapshot info`. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vmm_tool.h"

/* The guest asked for a snapshot: finish the hypercall (result 0) and stop the run so that the
 * snapshot is taken at the instruction after it. */
static int vmm_on_snapshot_hc(vmm_vcpu_t *vcpu, uint64_t nr, const uint64_t args[6],
                              uint64_t *result, void *user_data) {
  (void)nr, (void)args;
  struct vmm_session *ses = user_data;
  *result = 0;
  atomic_store(&ses->snapshot_requested, 1);
  vmm_vcpu_kick(vcpu);
  return VMM_HANDLED;
}

int vmm_session_enable_snapshots(struct vmm_session *ses) {
  if (ses->save_path == NULL) return 0;
  return vmm_vm_add_hypercall_handler(ses->vm, VMM_HC_SNAPSHOT, vmm_on_snapshot_hc, ses, NULL);
}

int vmm_session_save(struct vmm_session *ses) {
  vmm_snapshot_t *s = NULL;
  int rc = vmm_vm_snapshot(ses->vm, &s);
  if (rc == 0) rc = vmm_snapshot_save(s, ses->save_path, VMM_SNAPSHOT_SAVE_FULL);
  vmm_snapshot_release(s);
  if (rc != 0) {
    fprintf(stderr, "vmm: cannot save a snapshot to %s: %s\n", ses->save_path, vmm_strerror(rc));
    return rc;
  }
  ses->saves++;
  if (ses->verbose) fprintf(stderr, "vmm: snapshot %u saved to %s\n", ses->saves, ses->save_path);
  return 0;
}

int vmm_cmd_restore(int argc, char **argv) {
  static const struct option longopts[] = {{"backend", required_argument, NULL, 'b'},
                                           {"timeout", required_argument, NULL, 't'},
                                           {"save", required_argument, NULL, 'S'},
                                           {"verbose", no_argument, NULL, 'v'},
                                           {NULL, 0, NULL, 0}};
  vmm_backend_t backend = VMM_BACKEND_AUTO;
  double timeout = 0;
  const char *save = NULL;
  int verbose = 0, c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "b:t:S:v", longopts, NULL)) != -1) {
    switch (c) {
      case 'b':
        if (vmm_backend_parse(optarg, &backend) != 0) return vmm_usage_error("unknown backend", optarg);
        break;
      case 't': {
        char *end;
        timeout = strtod(optarg, &end);
        if (*end || !(timeout > 0) || timeout > 1e9) return vmm_usage_error("bad timeout", optarg);
        break;
      }
      case 'S': save = optarg; break;
      case 'v': verbose++; break;
      default: return vmm_usage_error("bad option", NULL);
    }
  }
  if (optind != argc - 1) return vmm_usage_error("restore needs exactly one snapshot FILE", NULL);
  vmm_log_set_callback(vmm_log_stderr, verbose ? VMM_LOG_INFO : VMM_LOG_WARN, NULL);

  vmm_snapshot_t *snap = NULL;
  int rc = vmm_snapshot_load(argv[optind], &snap);
  if (rc != 0) {
    fprintf(stderr, "vmm: cannot load snapshot %s: %s\n", argv[optind], vmm_strerror(rc));
    return VMM_TOOL_USAGE;
  }
  vmm_snapshot_info_t info = VMM_SNAPSHOT_INFO_INIT;
  vmm_snapshot_info(snap, &info);
  /* A Linux VM (`vmm run --kernel`) comes back with its interrupt controllers and PC bits. */
  int linux_mode = (info.flags & VMM_SNAPSHOT_INFO_IRQCHIP) != 0;
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = backend;
  cfg.max_vcpus = info.vcpus ? info.vcpus : 1;
  if (linux_mode) cfg.flags |= VMM_VM_IRQCHIP;
  vmm_vm_t *vm = NULL;
  int status = VMM_TOOL_USAGE;
  if ((rc = vmm_vm_create(&cfg, &vm)) != 0) {
    fprintf(stderr, "vmm: cannot create a VM on backend %s: %s\n", vmm_backend_name(backend),
            vmm_strerror(rc));
    vmm_snapshot_release(snap);
    return VMM_TOOL_USAGE;
  }
  vmm_ram_region_t regions[64];
  size_t n = 0;
  vmm_snapshot_ram_regions(snap, regions, 64, &n);
  for (size_t i = 0; rc == 0 && i < n && i < 64; i++)
    rc = vmm_vm_map_ram(vm, regions[i].gpa, regions[i].size, regions[i].flags, NULL);
  vmm_device_t *uart = NULL;
  if (rc == 0) rc = vmm_standard_devices(vm, linux_mode, &uart);
  for (uint32_t i = 0; rc == 0 && i < info.vcpus; i++) {
    vmm_vcpu_t *v;
    rc = vmm_vcpu_create(vm, i, &v);
  }
  struct vmm_session ses = {.vm = vm, .vcpu = vmm_vm_vcpu(vm, 0), .save_path = save,
                            .linux_mode = linux_mode, .verbose = verbose, .nvcpus = info.vcpus};
  if (rc == 0) rc = vmm_session_enable_snapshots(&ses);
  if (rc == 0) rc = vmm_vm_restore(vm, snap);
  if (rc != 0) {
    fprintf(stderr, "vmm: cannot restore %s on backend %s: %s\n", argv[optind],
            vmm_backend_name(vmm_vm_backend(vm)), vmm_strerror(rc));
    goto out;
  }
  if (verbose)
    fprintf(stderr, "vmm: restored a %s snapshot on %s\n", vmm_backend_name((vmm_backend_t)info.backend),
            vmm_backend_name(vmm_vm_backend(vm)));
  struct vmm_runner runner;
  memset(&runner, 0, sizeof(runner));
  runner.vcpu = ses.vcpu;
  runner.uart = uart;
  runner.ses = &ses;
  uv_thread_t tid;
  if (vmm_runner_start(&runner, timeout, linux_mode, &tid) != 0) goto out;
  status = vmm_run_loop(&ses, &runner);
  vmm_runner_stop(&runner, &tid);
out:
  vmm_vm_destroy(vm);
  vmm_snapshot_release(snap);
  return status;
}

static int vmm_snapshot_info_cmd(const char *path) {
  vmm_log_set_callback(vmm_log_stderr, VMM_LOG_WARN, NULL);
  vmm_snapshot_t *s = NULL;
  int rc = vmm_snapshot_load(path, &s);
  if (rc != 0) {
    fprintf(stderr, "vmm: cannot load snapshot %s: %s\n", path, vmm_strerror(rc));
    return VMM_TOOL_USAGE;
  }
  vmm_snapshot_info_t info = VMM_SNAPSHOT_INFO_INIT;
  vmm_snapshot_info(s, &info);
  printf("file:        %s\n", path);
  printf("name:        %s\n", vmm_snapshot_name(s)[0] ? vmm_snapshot_name(s) : "(none)");
  printf("content:     ");
  for (int i = 0; i < 16; i++) printf("%02x", info.content_hash[i]);
  printf("\ntaken on:    %s\n", vmm_backend_name((vmm_backend_t)info.backend));
  printf("vcpus:       %u\n", info.vcpus);
  printf("platform:    %s\n", (info.flags & VMM_SNAPSHOT_INFO_IRQCHIP)
                                   ? "in-kernel interrupt controllers and timer (a Linux VM)"
                                   : "none");
  printf("ram:         %" PRIu64 " MiB in", info.ram_bytes >> 20);
  vmm_ram_region_t r[64];
  size_t n = 0;
  vmm_snapshot_ram_regions(s, r, 64, &n);
  for (size_t i = 0; i < n && i < 64; i++)
    printf(" [%#" PRIx64 ", %#" PRIx64 ")", r[i].gpa, r[i].gpa + r[i].size);
  printf("\npages:       %" PRIu64 " stored in this file\n", info.own_pages);
  printf("parents:     %u", info.depth);
  for (vmm_snapshot_t *p = vmm_snapshot_parent(s); p; p = vmm_snapshot_parent(p))
    printf(" <- %s", vmm_snapshot_name(p)[0] ? vmm_snapshot_name(p) : "(unnamed)");
  printf("\n");
  for (uint32_t i = 0; i < info.vcpus; i++) {
    vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
    if (vmm_snapshot_cpu_state(s, i, &st) == 0)
      printf("vcpu %u:      rip=%#" PRIx64 " rsp=%#" PRIx64 " cs=%#x cpl=%u cr3=%#" PRIx64 "%s\n", i,
             st.regs.rip, st.regs.rsp, st.cs.selector, st.cs.dpl, st.cr3, st.halted ? " halted" : "");
  }
  vmm_snapshot_release(s);
  return 0;
}

int vmm_cmd_snapshot(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "info") == 0) return vmm_snapshot_info_cmd(argv[2]);
  return vmm_usage_error("usage: vmm snapshot info FILE", NULL);
}
