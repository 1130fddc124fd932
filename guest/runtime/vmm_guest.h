/* The freestanding runtime of libvmm's test and example guests. */
#ifndef VMM_GUEST_RUNTIME_H
#define VMM_GUEST_RUNTIME_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <libvmm/guest/abi.h>
#include <libvmm/guest/hypercall.h>

extern struct vmm_boot_info *vmm_boot_info;

void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);

/* Console output through the hypercall page. Formats: %d %i %u %x %X %p %s %c %% with the
 * l and ll modifiers and a zero-padded width, e.g. %016llx. */
void vmm_puts(const char *s);
int vmm_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vmm_vsnprintf(char *buf, size_t cap, const char *fmt, va_list ap);
int vmm_snprintf(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Port I/O and CPU helpers. */
static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" ::"a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) {
  uint8_t v;
  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}
static inline uint32_t inl(uint16_t port) {
  uint32_t v;
  __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}
static inline uint16_t vmm_read_cs(void) {
  uint16_t cs;
  __asm__ volatile("mov %%cs, %0" : "=r"(cs));
  return cs;
}

/* Ends the VM with a status. */
__attribute__((noreturn)) void vmm_rt_exit(int64_t status);

int main(struct vmm_boot_info *bi);

#endif
