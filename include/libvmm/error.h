/**
 * @file error.h
 * @brief Status codes and logging.
 *
 * Every function that can fail returns an `int`: 0 on success, one of the negative `VMM_E*`
 * codes below on failure. The values are libvmm's own and the same on every host; they are not
 * errno values. One table generates the enum, vmm_strerror() and vmm_err_name(), and the
 * bindings read the same table.
 */
#ifndef LIBVMM_ERROR_H
#define LIBVMM_ERROR_H

#include "common.h"

VMM_EXTERN_C_BEGIN

/**
 * @brief The status table: `XX(name, value, message)`.
 */
#define VMM_ERRNO_MAP(XX)                                                        \
  XX(EINVAL, -1, "invalid argument")                                             \
  XX(ENOMEM, -2, "out of memory")                                                \
  XX(ENOSYS, -3, "operation not supported by this backend")                      \
  XX(ENODEV, -4, "backend not available on this host")                           \
  XX(EEXIST, -5, "range overlaps an existing one")                               \
  XX(ENOENT, -6, "no such object")                                               \
  XX(EFAULT, -7, "guest physical range not backed by RAM")                       \
  XX(ERANGE, -8, "value out of range")                                           \
  XX(EIO, -9, "host I/O error")                                                  \
  XX(ENOEXEC, -10, "malformed or unsupported image")                             \
  XX(EBUSY, -11, "object is busy")                                               \
  XX(EAGAIN, -12, "resource temporarily unavailable")                            \
  XX(ETIMEDOUT, -13, "timed out")                                                \
  XX(EPERM, -14, "operation not permitted")                                      \
  XX(ECHILD, -15, "sandbox process died")                                        \
  XX(EINTR, -16, "interrupted")                                                  \
  XX(ECORRUPT, -17, "corrupt data")                                              \
  XX(EVERSION, -18, "unsupported format version")                                \
  XX(ESTATE, -19, "invalid state for this operation")                            \
  XX(EBACKEND, -20, "backend failure")                                           \
  XX(ELIMIT, -21, "limit exceeded")

/** @brief Status codes. 0 is success. */
typedef enum {
  VMM_OK = 0,
/** @cond INTERNAL */
#define VMM__ERR_ENUM(name, value, msg) VMM_##name = value,
/** @endcond */
  VMM_ERRNO_MAP(VMM__ERR_ENUM)
#undef VMM__ERR_ENUM
} vmm_errno_t;

/**
 * @brief A human-readable message for a status code.
 * @param[in] err A status code.
 * @return A static string; "success" for 0 and "unknown error" for codes not in the table.
 */
VMM_API const char *vmm_strerror(int err);

/**
 * @brief The symbolic name of a status code, such as "EINVAL".
 * @param[in] err A status code.
 * @return A static string; "OK" for 0 and "UNKNOWN" for codes not in the table.
 */
VMM_API const char *vmm_err_name(int err);

/** @brief Log levels, most severe first. */
typedef enum {
  VMM_LOG_ERROR = 0,
  VMM_LOG_WARN = 1,
  VMM_LOG_INFO = 2,
  VMM_LOG_DEBUG = 3,
} vmm_log_level_t;

/**
 * @brief A log sink.
 * @param[in] level     Severity of the message.
 * @param[in] message   One line without a trailing newline; valid only during the call.
 * @param[in] user_data The pointer given to vmm_log_set_callback().
 * @note Called on whatever thread logs, possibly several at once; it must be thread-safe and
 *       must not call back into libvmm.
 */
typedef void (*vmm_log_fn)(vmm_log_level_t level, const char *message, void *user_data);

/**
 * @brief Sets the process-wide log sink. The library never prints on its own.
 * @param[in] fn        The sink, or NULL to discard all messages (the default).
 * @param[in] max_level Messages less severe than this are not formatted at all.
 * @param[in] user_data Passed to every call of @p fn.
 * @note Thread-safe. A message being delivered while the sink is replaced may still go to
 *       the previous sink.
 */
VMM_API void vmm_log_set_callback(vmm_log_fn fn, vmm_log_level_t max_level, void *user_data);

VMM_EXTERN_C_END

#endif /* LIBVMM_ERROR_H */
