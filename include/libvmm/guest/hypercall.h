/**
 * @file hypercall.h
 * @brief The guest's whole view of the hypercall ABI.
 *
 * The VMM fills a hypercall page with one entry per hypercall, each using the cheapest trap of
 * the backend the guest runs on. The guest never hard-codes the trapping instruction: it calls
 * `page + nr * VMM_HC_ENTRY_SIZE` with the number in `rax` and up to six arguments in
 * `rdi, rsi, rdx, r10, r8, r9`; the result comes back in `rax`. Every other register is
 * preserved, and the
 * entry may use 32 bytes of stack below `rsp`.
 *
 * Include from freestanding guest code; define `vmm_hypercall_page` once (crt0 of the guest
 * runtime sets it from struct vmm_boot_info).
 */
#ifndef LIBVMM_GUEST_HYPERCALL_H
#define LIBVMM_GUEST_HYPERCALL_H

#include <stdint.h>

#include "abi.h"

/** Guest address of the hypercall page; set at start-up from the boot info. */
extern uintptr_t vmm_hypercall_page;

/**
 * @brief Calls hypercall @p nr with six arguments.
 * @param nr Hypercall number (VMM_HC_* or a number the host program registered).
 * @param a0 First argument (rdi). @param a1 Second (rsi). @param a2 Third (rdx).
 * @param a3 Fourth (r10). @param a4 Fifth (r8). @param a5 Sixth (r9).
 * @return The handler's result (rax); (uint64_t)VMM_ENOSYS when nobody handles @p nr.
 */
static inline uint64_t vmm_hypercall6(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2,
                                      uint64_t a3, uint64_t a4, uint64_t a5) {
  register uint64_t r10 __asm__("r10") = a3;
  register uint64_t r8 __asm__("r8") = a4;
  register uint64_t r9 __asm__("r9") = a5;
  uint64_t ret = nr;
  uintptr_t entry = vmm_hypercall_page + nr * VMM_HC_ENTRY_SIZE;
  /* The red zone below rsp may hold live data of the caller; step over it before the call. */
  __asm__ volatile("sub $128, %%rsp\n\t"
                   "call *%[entry]\n\t"
                   "add $128, %%rsp"
                   : "+a"(ret)
                   : [entry] "r"(entry), "D"(a0), "S"(a1), "d"(a2), "r"(r10), "r"(r8), "r"(r9)
                   : "memory", "cc");
  return ret;
}

/** @brief Hypercall without arguments. @param nr Number. @return Result. */
static inline uint64_t vmm_hypercall0(uint64_t nr) { return vmm_hypercall6(nr, 0, 0, 0, 0, 0, 0); }
/** @brief Hypercall with one argument. @param nr Number. @param a0 Argument. @return Result. */
static inline uint64_t vmm_hypercall1(uint64_t nr, uint64_t a0) {
  return vmm_hypercall6(nr, a0, 0, 0, 0, 0, 0);
}
/** @brief Hypercall with two arguments. @param nr Number. @param a0 First. @param a1 Second. @return Result. */
static inline uint64_t vmm_hypercall2(uint64_t nr, uint64_t a0, uint64_t a1) {
  return vmm_hypercall6(nr, a0, a1, 0, 0, 0, 0);
}
/** @brief Hypercall with three arguments. @param nr Number. @param a0 First. @param a1 Second. @param a2 Third. @return Result. */
static inline uint64_t vmm_hypercall3(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2) {
  return vmm_hypercall6(nr, a0, a1, a2, 0, 0, 0);
}

/** Writes @p len bytes at @p buf (identity-mapped guest memory) to the VM console. */
static inline int64_t vmm_console_write(const void *buf, uint64_t len) {
  return (int64_t)vmm_hypercall2(VMM_HC_CONSOLE_WRITE, (uint64_t)(uintptr_t)buf, len);
}

/** Ends the VM with @p status; does not return. */
static inline __attribute__((noreturn)) void vmm_exit(int64_t status) {
  for (;;) vmm_hypercall1(VMM_HC_EXIT, (uint64_t)status);
}

#endif /* LIBVMM_GUEST_HYPERCALL_H */
