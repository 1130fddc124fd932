/**
 * @file vcpu.h
 * @brief Virtual CPUs: create, run, kick, read and write state.
 */
#ifndef LIBVMM_VCPU_H
#define LIBVMM_VCPU_H

#include "common.h"
#include "cpu.h"
#include "exit.h"

VMM_EXTERN_C_BEGIN

/**
 * @brief Creates vCPU number @p index of a VM. It starts in the x86 reset state; use the
 *        loader helpers (loader.h) or vmm_vcpu_set_state() to give it something to run.
 * @param[in]  vm    The VM; it owns the vCPU.
 * @param[in]  index 0 to max_vcpus - 1.
 * @param[out] out   The vCPU, or NULL on failure.
 * @return 0; VMM_EINVAL for NULL pointers; VMM_ERANGE for an index past max_vcpus;
 *         VMM_EEXIST when that index exists; VMM_ENOMEM; VMM_EBACKEND (logged).
 */
VMM_API int vmm_vcpu_create(vmm_vm_t *vm, uint32_t index, vmm_vcpu_t **out);

/**
 * @brief The vCPU of a VM with a given index (for example the vCPUs of a clone).
 * @return The vCPU, or NULL when @p vm is NULL or has no vCPU with that index.
 */
VMM_API vmm_vcpu_t *vmm_vm_vcpu(vmm_vm_t *vm, uint32_t index);

/** @brief The VM a vCPU belongs to. */
VMM_API vmm_vm_t *vmm_vcpu_vm(const vmm_vcpu_t *vcpu);

/** @brief The index a vCPU was created with. */
VMM_API uint32_t vmm_vcpu_index(const vmm_vcpu_t *vcpu);

/**
 * @brief Runs the guest on the calling thread until an exit that no handler consumed.
 * @param[in]     vcpu The vCPU. Only one thread may run a given vCPU at a time.
 * @param[in,out] exit Filled with the exit. For an IO/MMIO read or a hypercall returned by the
 *                     previous call, the data or result in this struct completes that
 *                     instruction first (see vmm_exit_t).
 * @return 0 with `exit` filled (including VMM_EXIT_INTERNAL_ERROR, which describes a guest
 *         state the backend cannot continue from); VMM_EINVAL for NULL; VMM_EBUSY when another
 *         thread is running this vCPU; VMM_ECHILD when the `pv` sandbox process died;
 *         a negative code returned by a handler.
 */
VMM_API int vmm_vcpu_run(vmm_vcpu_t *vcpu, vmm_exit_t *exit);

/**
 * @brief Makes the current vmm_vcpu_run() of @p vcpu, or the next one if none is under way,
 *        return VMM_EXIT_KICKED soon, even if the guest spins in a loop.
 * @return 0; VMM_EINVAL for NULL.
 * @note Safe from any thread and from signal handlers. Kicks do not queue: several kicks
 *       before the vCPU notices them give one VMM_EXIT_KICKED.
 */
VMM_API int vmm_vcpu_kick(vmm_vcpu_t *vcpu);

/**
 * @brief From inside a handler: end the current vmm_vcpu_run() with VMM_EXIT_GUEST_EXIT and
 *        @p status once the handler returns (the access counts as consumed).
 */
VMM_API void vmm_vcpu_request_exit(vmm_vcpu_t *vcpu, int64_t status);

/**
 * @brief Reads the general registers, RIP and RFLAGS (cheaper than the full state).
 * @return 0; VMM_EINVAL for NULL; VMM_EBUSY while the vCPU runs; VMM_EBACKEND.
 */
VMM_API int vmm_vcpu_get_regs(vmm_vcpu_t *vcpu, vmm_regs_t *regs);

/**
 * @brief Writes the general registers, RIP and RFLAGS.
 * @return 0; VMM_EINVAL for NULL; VMM_EBUSY while the vCPU runs; VMM_EBACKEND.
 */
VMM_API int vmm_vcpu_set_regs(vmm_vcpu_t *vcpu, const vmm_regs_t *regs);

/**
 * @brief Reads the full CPU state.
 * @param[in]     vcpu  The vCPU, stopped.
 * @param[in,out] state `struct_size` must be set (VMM_CPU_STATE_INIT).
 * @return 0; VMM_EINVAL for NULL or a struct_size smaller than the first version;
 *         VMM_EBUSY while the vCPU runs; VMM_EBACKEND.
 */
VMM_API int vmm_vcpu_get_state(vmm_vcpu_t *vcpu, vmm_cpu_state_t *state);

/**
 * @brief Writes the full CPU state. Any outstanding IO/MMIO exit is dropped.
 * @return 0; VMM_EINVAL for NULL, a bad struct_size or a state the backend refuses (logged,
 *         e.g. long mode without paging); VMM_ENOSYS for a mode the backend cannot run;
 *         VMM_EBUSY while the vCPU runs; VMM_EBACKEND.
 */
VMM_API int vmm_vcpu_set_state(vmm_vcpu_t *vcpu, const vmm_cpu_state_t *state);

/**
 * @brief Turns single-stepping on or off: with it on, every guest instruction ends the run
 *        with VMM_EXIT_DEBUG.
 * @return 0; VMM_ENOSYS when the backend cannot single-step.
 */
VMM_API int vmm_vcpu_set_single_step(vmm_vcpu_t *vcpu, int enable);

/** @brief A named counter, as reported by vmm_vcpu_stats(). */
typedef struct vmm_stat {
  char name[48];   /**< Dotted name such as "exits.IO"; NUL-terminated. */
  uint64_t value;  /**< Count since the vCPU was created. */
} vmm_stat_t;

/**
 * @brief Reads the vCPU's counters (exits by reason, and backend counters such as blocks
 *        translated or sandbox stops).
 * @param[in]  vcpu  The vCPU.
 * @param[out] out   Array of @p cap entries; may be NULL when @p cap is 0.
 * @param[in]  cap   Capacity of @p out.
 * @param[out] count Number of counters available (which may exceed @p cap).
 * @return 0; VMM_EINVAL for NULL @p vcpu or @p count.
 */
VMM_API int vmm_vcpu_stats(vmm_vcpu_t *vcpu, vmm_stat_t *out, size_t cap, size_t *count);

VMM_EXTERN_C_END

#endif /* LIBVMM_VCPU_H */
