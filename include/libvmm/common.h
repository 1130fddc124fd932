/**
 * @file common.h
 * @brief Export macro, version macros and the handle types shared by every libvmm header.
 */
#ifndef LIBVMM_COMMON_H
#define LIBVMM_COMMON_H

#include <stddef.h>
#include <stdint.h>

/** @cond INTERNAL */
#ifdef __cplusplus
#define VMM_EXTERN_C_BEGIN extern "C" {
#define VMM_EXTERN_C_END }
#else
#define VMM_EXTERN_C_BEGIN
#define VMM_EXTERN_C_END
#endif
/** @endcond */

/** @brief Marks a declaration as part of the exported ABI. */
#if defined(VMM_BUILDING_LIBRARY)
#define VMM_API __attribute__((visibility("default")))
#else
#define VMM_API
#endif

/** @brief Major version: the ABI is stable within one major version. */
#define VMM_VERSION_MAJOR 0
/** @brief Minor version: grows when functions or appended struct fields are added. */
#define VMM_VERSION_MINOR 1
/** @brief Patch version: fixes only. */
#define VMM_VERSION_PATCH 0
/** @brief The version as one number, `(major << 16) | (minor << 8) | patch`. */
#define VMM_VERSION_HEX \
  ((VMM_VERSION_MAJOR << 16) | (VMM_VERSION_MINOR << 8) | VMM_VERSION_PATCH)

VMM_EXTERN_C_BEGIN

/** @brief A virtual machine: guest RAM, vCPUs, devices, buses. */
typedef struct vmm_vm vmm_vm_t;
/** @brief A virtual CPU, owned by its VM. */
typedef struct vmm_vcpu vmm_vcpu_t;
/** @brief A registered PIO, MMIO or hypercall handler, owned by its VM. */
typedef struct vmm_handler vmm_handler_t;
/** @brief A device model instance (UART, debug console, ...), owned by its VM. */
typedef struct vmm_device vmm_device_t;

/**
 * @brief The library version at run time.
 * @return `VMM_VERSION_HEX` of the library that was loaded, which may be newer than the
 *         headers the caller was built with.
 */
VMM_API unsigned int vmm_version(void);

/**
 * @brief The library version as a string such as "0.1.0".
 * @return A static string; never NULL.
 */
VMM_API const char *vmm_version_string(void);

VMM_EXTERN_C_END

#endif /* LIBVMM_COMMON_H */
