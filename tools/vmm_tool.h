/* Shared parts of the `vmm` command. */
#ifndef VMM_TOOL_H
#define VMM_TOOL_H

#include <stdatomic.h>

#include <libvmm/vmm.h>
#include <uv.h>

/* Exit statuses of `vmm run` besides the guest's own. */
enum {
  VMM_TOOL_EXCEPTION = 121,
  VMM_TOOL_SHUTDOWN = 122,
  VMM_TOOL_INTERNAL = 123,
  VMM_TOOL_TIMEOUT = 124,
  VMM_TOOL_USAGE = 125,
};

struct vmm_runner {
  vmm_vcpu_t *vcpu;
  vmm_device_t *uart;
  struct vmm_session *ses; /* With a save path: SIGUSR1 asks for a snapshot. */
  uv_signal_t usr1;
  uv_loop_t loop;
  uv_timer_t timer;
  uv_timer_t halt_probe;
  uv_async_t stop;
  union {
    uv_tty_t tty;
    uv_pipe_t pipe;
  } in;
  int have_in;
  /* Input the UART had no room for yet: reading stdin stops until the guest takes it. */
  uv_timer_t feed;
  const char *pend;
  size_t pend_len;
  atomic_int timed_out;
};

/* What a run loop needs besides the vCPU: where to save snapshots the guest asks for. */
struct vmm_session {
  vmm_vm_t *vm;
  vmm_vcpu_t *vcpu;
  const char *save_path;   /* NULL: the snapshot hypercall is refused. */
  int stop_after_save;
  int linux_mode;
  int verbose;
  atomic_int snapshot_requested;
  unsigned saves;
  unsigned nvcpus;         /* 0 means 1. vCPU 0 is `vcpu`; the others run on threads. */
  atomic_int ending_claim; /* Set once, by the vCPU that ends the VM. */
  atomic_int ending;       /* The VM is ending with end_status: every vCPU stops. */
  int end_status;
  /* Several vCPUs: a snapshot parks all but the saving one (vmm.c, vmm_save_all_stopped). */
  uv_mutex_t pause_lock;
  uv_cond_t pause_cv;
  int pausing, parked, running;
};

void vmm_log_stderr(vmm_log_level_t level, const char *msg, void *ud);
void vmm_write_stdout(const char *data, size_t len, void *ud);
int vmm_parse_size(const char *s, uint64_t *out);
int vmm_usage_error(const char *msg, const char *arg);
int vmm_runner_start(struct vmm_runner *r, double timeout, int linux_mode, uv_thread_t *tid);
void vmm_runner_stop(struct vmm_runner *r, uv_thread_t *tid);
int vmm_run_loop(struct vmm_session *ses, struct vmm_runner *runner);
void vmm_print_stats(vmm_vcpu_t *vcpu);
/* The devices every `vmm` VM has, in this order (snapshots match devices by order). */
int vmm_standard_devices(vmm_vm_t *vm, int linux_mode, vmm_device_t **uart);
/* Registers the snapshot hypercall (VMM_HC_SNAPSHOT) for a session. */
int vmm_session_enable_snapshots(struct vmm_session *ses);
/* Takes a snapshot of the session's VM and saves it; prints what went wrong. */
int vmm_session_save(struct vmm_session *ses);
int vmm_cmd_restore(int argc, char **argv);
int vmm_cmd_snapshot(int argc, char **argv);

#endif
