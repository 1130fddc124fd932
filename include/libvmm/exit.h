/**
 * @file exit.h
 * @brief Why vmm_vcpu_run() returned.
 */
#ifndef LIBVMM_EXIT_H
#define LIBVMM_EXIT_H

#include "common.h"

VMM_EXTERN_C_BEGIN

/** @brief Exit reasons. */
typedef enum {
  VMM_EXIT_NONE = 0,
  /** Port I/O that no handler consumed: see vmm_exit_t::io. */
  VMM_EXIT_IO = 1,
  /** A guest access to a physical address that is neither RAM nor a handled MMIO range, or a
   *  write to read-only memory: see vmm_exit_t::mmio. */
  VMM_EXIT_MMIO = 2,
  /** HLT with interrupts disabled, or with nothing left that could wake the vCPU. */
  VMM_EXIT_HLT = 3,
  /** Triple fault or another condition that resets a real machine. */
  VMM_EXIT_SHUTDOWN = 4,
  /** A hypercall that no handler consumed: see vmm_exit_t::hypercall. */
  VMM_EXIT_HYPERCALL = 5,
  /** A guest exception that the guest does not handle itself: see vmm_exit_t::exception. */
  VMM_EXIT_EXCEPTION = 6,
  /** A debug event (single step, breakpoint) requested through the API. */
  VMM_EXIT_DEBUG = 7,
  /** vmm_vcpu_kick() was called. */
  VMM_EXIT_KICKED = 8,
  /** The backend could not continue: see vmm_exit_t::internal. */
  VMM_EXIT_INTERNAL_ERROR = 9,
  /** The guest asked to end (exit hypercall, debug-exit device): see vmm_exit_t::guest_exit. */
  VMM_EXIT_GUEST_EXIT = 10,
} vmm_exit_reason_t;

/**
 * @brief An exit. Filled by vmm_vcpu_run().
 *
 * For an `IO` or `MMIO` read, the value the guest reads is taken from `io.data` (or
 * `mmio.data`, or `io.buf` for string I/O) of the struct passed to the next vmm_vcpu_run();
 * the library preloads it with all-ones bits, as an absent device on a real bus reads.
 * While such an exit is outstanding the instruction has not completed: the instruction
 * pointer read through the API may point at it or past it depending on the backend. The next
 * vmm_vcpu_run(), or any snapshot, completes it.
 */
typedef struct vmm_exit {
  uint32_t reason;   /**< A vmm_exit_reason_t. */
  uint32_t reserved; /**< Zero. */
  union {
    struct {
      uint16_t port;
      uint8_t size;      /**< 1, 2 or 4 bytes per element. */
      uint8_t is_write;
      uint32_t count;    /**< Number of elements: more than 1 for string I/O (INS/OUTS). */
      uint64_t data;     /**< The element when `count` is 1. */
      void *buf;         /**< When `count` > 1: `count * size` bytes, valid until the next run. */
    } io;
    struct {
      uint64_t gpa;
      uint8_t size;      /**< 1, 2, 4 or 8. */
      uint8_t is_write;
      uint8_t reserved[6];
      uint64_t data;
    } mmio;
    struct {
      uint64_t nr;
      uint64_t args[6];  /**< rdi, rsi, rdx, r10, r8, r9. */
      uint64_t result;   /**< Returned to the guest in rax on the next run; preset to
                          *   (uint64_t)VMM_ENOSYS. */
    } hypercall;
    struct {
      uint8_t vector;          /**< 0 (divide error) to 31 for exceptions; a software
                                *   interrupt (INT n) reports n. */
      uint8_t has_error_code;
      uint8_t reserved[2];
      uint32_t error_code;
      uint64_t rip;            /**< Address of the faulting instruction (after it, for traps
                                *   such as INT3). */
      uint64_t cr2;            /**< Faulting linear address of a page fault (vector 14). */
    } exception;
    struct {
      uint64_t rip;
      uint64_t dr6;
    } debug;
    struct {
      int64_t status;
    } guest_exit;
    struct {
      int32_t code;            /**< A VMM_E* status when the cause is a library error. */
      uint32_t suberror;       /**< Backend-specific detail (e.g. KVM's suberror). */
      uint64_t data[4];
      char message[96];        /**< Human-readable cause; NUL-terminated. */
    } internal;
    uint8_t padding[256];
  };
} vmm_exit_t;

/**
 * @brief Name of an exit reason, such as "HLT".
 * @param[in] reason A vmm_exit_reason_t value.
 * @return A static string; "UNKNOWN" for values outside the enum.
 */
VMM_API const char *vmm_exit_reason_name(uint32_t reason);

VMM_EXTERN_C_END

#endif /* LIBVMM_EXIT_H */
