/**
 * @file bus.h
 * @brief Port I/O, MMIO and hypercall handlers.
 *
 * Handlers run on the vCPU thread inside vmm_vcpu_run(). An exit that a handler consumes never
 * reaches the caller of vmm_vcpu_run(). Handlers get offsets into their own window, so one
 * device model can sit at any address.
 */
#ifndef LIBVMM_BUS_H
#define LIBVMM_BUS_H

#include "common.h"

VMM_EXTERN_C_BEGIN

/** @brief What a handler returns besides a negative VMM_E* code. */
enum {
  VMM_HANDLED = 0,   /**< Consumed: the guest continues. */
  /** Not consumed: vmm_vcpu_run() returns the exit to its caller. For string I/O (INS/OUTS),
   *  declining the first element passes the whole string to the caller; declining a later one
   *  ends the string there as an absent device would (later reads see all-ones, later writes
   *  are dropped), so that no element reaches both the handler and the caller. */
  VMM_UNHANDLED = 1,
};

/**
 * @brief A PIO or MMIO access handler.
 * @param[in]     vcpu      The vCPU doing the access.
 * @param[in]     offset    Offset of the access from the start of the registered range.
 * @param[in]     size      1, 2, 4 or 8 bytes.
 * @param[in]     is_write  Non-zero for writes.
 * @param[in,out] data      The value written, or where to store the value read (preset to
 *                          all-ones bits, as an absent device reads).
 * @param[in]     user_data The pointer given at registration.
 * @return VMM_HANDLED, VMM_UNHANDLED, or a negative VMM_E* code, which ends vmm_vcpu_run()
 *         with that code (use it only for host-side failures, never for guest mistakes).
 * @note It may call vmm_vcpu_request_exit() and the read-only vCPU functions; it must not
 *       register or remove handlers, or destroy the VM.
 */
typedef int (*vmm_io_fn)(vmm_vcpu_t *vcpu, uint64_t offset, uint32_t size, int is_write,
                         uint64_t *data, void *user_data);

/**
 * @brief A hypercall handler.
 * @param[in]  vcpu      The calling vCPU.
 * @param[in]  nr        The hypercall number.
 * @param[in]  args      rdi, rsi, rdx, r10, r8, r9.
 * @param[out] result    The value the guest gets in rax.
 * @param[in]  user_data The pointer given at registration.
 * @return VMM_HANDLED, VMM_UNHANDLED or a negative VMM_E* code, as for vmm_io_fn.
 */
typedef int (*vmm_hypercall_fn)(vmm_vcpu_t *vcpu, uint64_t nr, const uint64_t args[6],
                                uint64_t *result, void *user_data);

/**
 * @brief Registers a port I/O handler for ports `[port, port + len)`.
 * @return 0; VMM_EINVAL for a NULL function, zero length or a range past port 0xffff;
 *         VMM_EEXIST when it overlaps another PIO handler; VMM_ENOMEM.
 */
VMM_API int vmm_vm_add_pio_handler(vmm_vm_t *vm, uint32_t port, uint32_t len, vmm_io_fn fn,
                                   void *user_data, vmm_handler_t **out);

/**
 * @brief Registers an MMIO handler for guest-physical `[gpa, gpa + len)`.
 * @return 0; VMM_EINVAL for a NULL function, zero length or wrap-around; VMM_EEXIST when it
 *         overlaps another MMIO handler or a RAM region; VMM_ENOMEM.
 */
VMM_API int vmm_vm_add_mmio_handler(vmm_vm_t *vm, uint64_t gpa, uint64_t len, vmm_io_fn fn,
                                    void *user_data, vmm_handler_t **out);

/**
 * @brief Registers a handler for hypercall @p nr. It takes precedence over the built-in
 *        handlers of VMM_HC_NOP, VMM_HC_EXIT, VMM_HC_CONSOLE_WRITE and VMM_HC_BACKEND.
 * @return 0; VMM_EINVAL for a NULL function or @p nr >= VMM_HC_COUNT; VMM_EEXIST when @p nr
 *         already has a registered handler; VMM_ENOMEM.
 */
VMM_API int vmm_vm_add_hypercall_handler(vmm_vm_t *vm, uint64_t nr, vmm_hypercall_fn fn,
                                         void *user_data, vmm_handler_t **out);

/**
 * @brief Removes a handler.
 * @return 0; VMM_EINVAL for NULL; VMM_ENOENT if @p handler is not registered on @p vm.
 * @note Safe while vCPUs run on other threads: it waits until no vCPU is inside the handler.
 */
VMM_API int vmm_vm_remove_handler(vmm_vm_t *vm, vmm_handler_t *handler);

VMM_EXTERN_C_END

#endif /* LIBVMM_BUS_H */
