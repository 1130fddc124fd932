/* The demo guest: says where it runs, then draws the Mandelbrot set with fixed-point
 * arithmetic (no FPU, so it runs the same at CPL0 and CPL3 and on every backend). */
#include "vmm_guest.h"

static const char *backend_name(uint64_t id) {
  switch (id) {
    case 1: return "kvm (hardware-assisted)";
    case 2: return "bt (binary translation)";
    case 3: return "pv (para-virtual, sandboxed direct execution)";
    default: return "unknown";
  }
}

int main(struct vmm_boot_info *bi) {
  uint64_t backend = vmm_hypercall0(VMM_HC_BACKEND);
  vmm_printf("libvmm demo guest: backend %s, cpl %u, %lu MiB of RAM\n\n", backend_name(backend),
             (unsigned)(vmm_read_cs() & 3), (unsigned long)(bi ? bi->ram_size >> 20 : 0));
  const char *shades = " .:-=+*#%@";
  const int64_t one = 1 << 12; /* 20.12 fixed point */
  char line[81];
  for (int y = 0; y < 24; y++) {
    for (int x = 0; x < 78; x++) {
      int64_t cr = -2 * one + x * (3 * one) / 78;
      int64_t ci = -one + y * (2 * one) / 24;
      int64_t zr = 0, zi = 0;
      int i = 0;
      while (i < 60 && zr * zr + zi * zi < 4 * one * one) {
        int64_t t = (zr * zr - zi * zi) / one + cr;
        zi = 2 * zr * zi / one + ci;
        zr = t;
        i++;
      }
      line[x] = i >= 60 ? '@' : shades[i % 9];
    }
    line[78] = '\n';
    line[79] = 0;
    vmm_puts(line);
  }
  vmm_puts("\nbye\n");
  return 0;
}
