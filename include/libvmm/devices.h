/**
 * @file devices.h
 * @brief Device models that come with the library.
 *
 * Every device belongs to the VM it was created on and is destroyed with it; it may be removed
 * earlier with vmm_device_destroy(). Devices work on every backend: they only see accesses that
 * the core dispatches to them.
 */
#ifndef LIBVMM_DEVICES_H
#define LIBVMM_DEVICES_H

#include "common.h"
#include "vm.h"

VMM_EXTERN_C_BEGIN

/**
 * @brief Removes a device from its VM and frees it.
 * @param[in] dev The device, or NULL.
 * @note No vCPU of the VM may be running.
 */
VMM_API void vmm_device_destroy(vmm_device_t *dev);

/** @brief The device's type name, such as "uart16550". */
VMM_API const char *vmm_device_type(const vmm_device_t *dev);

/**
 * @brief The VM's devices in creation order: how a program finds the devices of a clone
 *        (vmm_snapshot_clone() re-creates them), e.g. its UART to type into.
 * @param[in] vm    The VM.
 * @param[in] index 0 for the first device created.
 * @return The device, or NULL past the last one (or for a NULL VM).
 */
VMM_API vmm_device_t *vmm_vm_device(vmm_vm_t *vm, size_t index);

/**
 * @brief A 16550A UART configuration. Initialize with VMM_UART_CONFIG_INIT.
 */
typedef struct vmm_uart_config {
  uint32_t struct_size;    /**< sizeof(vmm_uart_config_t) as the caller knows it. */
  uint32_t port;           /**< Base I/O port; 0 means 0x3f8 (COM1). */
  int32_t irq;             /**< Interrupt line raised through vmm_vm_set_irq(); -1 for none. */
  int32_t out_fd;          /**< If >= 0 and no callback: transmitted bytes are written here. */
  vmm_console_fn out_fn;   /**< Receives transmitted bytes; runs on the vCPU thread. */
  void *out_user_data;     /**< Passed to out_fn. */
  uint32_t rx_capacity;    /**< Host-to-guest buffer in bytes; 0 means 4096. */
  uint32_t reserved;       /**< Zero. */
} vmm_uart_config_t;

/** @brief Initializer for vmm_uart_config_t: COM1, IRQ 4, output discarded. */
#define VMM_UART_CONFIG_INIT \
  { .struct_size = sizeof(vmm_uart_config_t), .port = 0x3f8, .irq = 4, .out_fd = -1 }

/**
 * @brief Creates a 16550A UART (THR/RBR, IER, IIR/FCR, LCR with DLAB, MCR with loopback, LSR,
 *        MSR, scratch) on eight ports.
 * @return 0; VMM_EINVAL for a bad config; VMM_EEXIST when the ports are taken; VMM_ENOMEM.
 * @note Output that the sink cannot take is dropped, never buffered without bound. A write to
 *       out_fd blocks the vCPU while the fd blocks (make it non-blocking to drop instead);
 *       a reader that went away (EPIPE) does not raise SIGPIPE in the host process. out_fn
 *       runs with the device locked: it must not call vmm_uart_input() on the same UART.
 */
VMM_API int vmm_uart_create(vmm_vm_t *vm, const vmm_uart_config_t *config, vmm_device_t **out);

/**
 * @brief Queues bytes for the guest to read. Thread-safe.
 * @param[in]  uart     A device made by vmm_uart_create().
 * @param[in]  data     Bytes to queue.
 * @param[in]  len      Number of bytes.
 * @param[out] accepted Bytes queued; fewer than @p len when the receive buffer is full.
 * @return 0; VMM_EINVAL for NULL or a device that is not a UART.
 */
VMM_API int vmm_uart_input(vmm_device_t *uart, const void *data, size_t len, size_t *accepted);

/**
 * @brief Creates a debug console (the Bochs/QEMU port 0xe9 convention): each byte written goes
 *        to @p fn; reads return 0xe9 so a guest can detect it.
 * @param[in]  vm        The VM; it owns the device.
 * @param[in]  port      Port; 0 means VMM_DEBUGCON_PORT.
 * @param[in]  fn        Receives the bytes; may be NULL to discard them.
 * @param[in]  user_data Passed to @p fn.
 * @param[out] out       The device; may be NULL.
 * @return 0; VMM_EINVAL; VMM_EEXIST when the port is taken; VMM_ENOMEM.
 */
VMM_API int vmm_debugcon_create(vmm_vm_t *vm, uint32_t port, vmm_console_fn fn, void *user_data,
                                vmm_device_t **out);

/**
 * @brief Creates an exit device with QEMU's isa-debug-exit convention: a write of `v` ends the
 *        run with VMM_EXIT_GUEST_EXIT and status `(v << 1) | 1`.
 * @param[in]  vm   The VM; it owns the device.
 * @param[in]  port Port; 0 means VMM_DEBUG_EXIT_PORT.
 * @param[out] out  The device; may be NULL.
 * @return 0; VMM_EINVAL; VMM_EEXIST when the port is taken; VMM_ENOMEM.
 */
VMM_API int vmm_debug_exit_create(vmm_vm_t *vm, uint32_t port, vmm_device_t **out);

VMM_EXTERN_C_END

#endif /* LIBVMM_DEVICES_H */
