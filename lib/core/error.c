/* Status codes, logging and the version. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>

#include "internal.h"

#define VMM__STR(x) #x
#define VMM__XSTR(x) VMM__STR(x)

unsigned int vmm_version(void) { return VMM_VERSION_HEX; }

const char *vmm_version_string(void) {
  return VMM__XSTR(VMM_VERSION_MAJOR) "." VMM__XSTR(VMM_VERSION_MINOR) "." VMM__XSTR(
      VMM_VERSION_PATCH);
}

const char *vmm_strerror(int err) {
  switch (err) {
    case 0: return "success";
#define VMM__ERR_STR(name, value, msg) \
  case VMM_##name: return msg;
    VMM_ERRNO_MAP(VMM__ERR_STR)
#undef VMM__ERR_STR
    default: return "unknown error";
  }
}

const char *vmm_err_name(int err) {
  switch (err) {
    case 0: return "OK";
#define VMM__ERR_NAME(name, value, msg) \
  case VMM_##name: return #name;
    VMM_ERRNO_MAP(VMM__ERR_NAME)
#undef VMM__ERR_NAME
    default: return "UNKNOWN";
  }
}

int vmm__from_errno(int err) {
  switch (err) {
    case 0: return 0;
    case ENOMEM: return VMM_ENOMEM;
    case EINVAL: return VMM_EINVAL;
    case ENOENT: return VMM_ENOENT;
    case EEXIST: return VMM_EEXIST;
    case EFAULT: return VMM_EFAULT;
    case EBUSY: return VMM_EBUSY;
    case EAGAIN: return VMM_EAGAIN;
    case EINTR: return VMM_EINTR;
    case ETIMEDOUT: return VMM_ETIMEDOUT;
    case EPERM:
    case EACCES: return VMM_EPERM;
    case ENOSYS:
    case ENOTTY:
    case EOPNOTSUPP: return VMM_ENOSYS;
    case ENODEV:
    case ENXIO: return VMM_ENODEV;
    case ERANGE:
    case E2BIG: return VMM_ERANGE;
    case ECHILD:
    case ESRCH: return VMM_ECHILD;
    case EMFILE:
    case ENFILE:
    case ENOSPC: return VMM_ELIMIT;
    default: return VMM_EIO;
  }
}

/* The sink is read without a lock on the hot path; a torn read between function and user
 * data is prevented by publishing both through one pointer to an immutable record. */
struct vmm_log_sink {
  vmm_log_fn fn;
  void *user_data;
  vmm_log_level_t max_level;
};

static struct vmm_log_sink vmm_log_sinks[2];
static _Atomic(struct vmm_log_sink *) vmm_log_current;
static pthread_mutex_t vmm_log_lock = PTHREAD_MUTEX_INITIALIZER;
static int vmm_log_next;

void vmm_log_set_callback(vmm_log_fn fn, vmm_log_level_t max_level, void *user_data) {
  pthread_mutex_lock(&vmm_log_lock);
  struct vmm_log_sink *s = &vmm_log_sinks[vmm_log_next];
  vmm_log_next ^= 1;
  s->fn = fn;
  s->user_data = user_data;
  s->max_level = max_level;
  atomic_store(&vmm_log_current, fn ? s : NULL);
  pthread_mutex_unlock(&vmm_log_lock);
}

bool vmm__log_enabled(vmm_log_level_t level) {
  struct vmm_log_sink *s = atomic_load(&vmm_log_current);
  return s != NULL && level <= s->max_level;
}

void vmm__log(vmm_log_level_t level, const char *fmt, ...) {
  struct vmm_log_sink *s = atomic_load(&vmm_log_current);
  if (s == NULL || level > s->max_level) return;
  vmm_log_fn fn = s->fn;
  void *ud = s->user_data;
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  fn(level, buf, ud);
}

void vmm__exit_internal(vmm_exit_t *exit, int code, const char *fmt, ...) {
  exit->reason = VMM_EXIT_INTERNAL_ERROR;
  exit->internal.code = code;
  exit->internal.suberror = 0;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(exit->internal.message, sizeof(exit->internal.message), fmt, ap);
  va_end(ap);
  VMM_LOG_W("internal error exit: %s", exit->internal.message);
}

const char *vmm_exit_reason_name(uint32_t reason) {
  static const char *const names[] = {
      "NONE",      "IO",     "MMIO",   "HLT",            "SHUTDOWN",  "HYPERCALL",
      "EXCEPTION", "DEBUG",  "KICKED", "INTERNAL_ERROR", "GUEST_EXIT",
  };
  return reason < VMM_ARRAY_SIZE(names) ? names[reason] : "UNKNOWN";
}
