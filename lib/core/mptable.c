/* The Intel MultiProcessor Specification 1.4 table: how Linux finds the vCPUs' local APICs,
 * the I/O APIC and the ISA interrupt wiring when there is neither ACPI nor a BIOS. Without it
 * Linux runs on the 8259 PIC alone and cannot start other vCPUs. The wiring mirrors KVM's
 * default routing: ISA IRQ n reaches I/O APIC pin n (and PIC input n). */
#include <string.h>

#include "linux_internal.h"

#define MP_IOAPIC_ADDR 0xfec00000u
#define MP_LAPIC_ADDR 0xfee00000u
#define MP_FPS_SIZE 16
#define MP_HDR_SIZE 44
#define MP_CPU_SIZE 20
#define MP_ENTRY_SIZE 8
#define MP_ISA_IRQS 16

size_t vmm__mptable_size(uint32_t ncpus) {
  return MP_FPS_SIZE + MP_HDR_SIZE + (size_t)ncpus * MP_CPU_SIZE +
         (1 /* bus */ + 1 /* I/O APIC */ + MP_ISA_IRQS + 2 /* LINT0, LINT1 */) * MP_ENTRY_SIZE;
}

static uint8_t mp_checksum(const uint8_t *p, size_t n) {
  uint8_t sum = 0;
  for (size_t i = 0; i < n; i++) sum = (uint8_t)(sum + p[i]);
  return (uint8_t)-sum;
}

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

/* An 8-byte interrupt assignment entry (type 3 I/O, 4 local). */
static uint8_t *mp_irq(uint8_t *p, uint8_t type, uint8_t kind, uint8_t src_irq, uint8_t dst_apic,
                       uint8_t dst_pin) {
  p[0] = type;
  p[1] = kind; /* 0 INT, 1 NMI, 3 ExtINT */
  put16(p + 2, 0); /* Polarity and trigger conform to the bus (ISA: edge, active high). */
  p[4] = 0;        /* Source bus: ISA, id 0. */
  p[5] = src_irq;
  p[6] = dst_apic;
  p[7] = dst_pin;
  return p + MP_ENTRY_SIZE;
}

int vmm__mptable_write(vmm_vm_t *vm, uint64_t gpa, uint32_t ncpus) {
  size_t size = vmm__mptable_size(ncpus);
  uint8_t *base = vmm__gpa_wptr(vm, gpa, size);
  if (base == NULL || ncpus == 0 || ncpus > 254) return VMM_EFAULT;
  memset(base, 0, size);
  uint8_t *fps = base, *hdr = base + MP_FPS_SIZE, *p = hdr + MP_HDR_SIZE;
  uint8_t ioapic_id = (uint8_t)ncpus;

  for (uint32_t i = 0; i < ncpus; i++) {
    p[0] = 0;                       /* Processor. */
    p[1] = (uint8_t)i;              /* Local APIC id, as KVM numbers vCPUs. */
    p[2] = 0x14;                    /* Local APIC version: integrated. */
    p[3] = 1 | (i == 0 ? 2 : 0);    /* Enabled; the first is the bootstrap processor. */
    put32(p + 4, 0x600);            /* Signature: family 6. */
    put32(p + 8, (1u << 0) | (1u << 9)); /* Features: FPU, APIC. */
    p += MP_CPU_SIZE;
  }
  p[0] = 1; /* Bus 0: ISA. */
  p[1] = 0;
  memcpy(p + 2, "ISA   ", 6);
  p += MP_ENTRY_SIZE;
  p[0] = 2; /* I/O APIC. */
  p[1] = ioapic_id;
  p[2] = 0x11;
  p[3] = 1; /* Enabled. */
  put32(p + 4, MP_IOAPIC_ADDR);
  p += MP_ENTRY_SIZE;
  for (uint8_t irq = 0; irq < MP_ISA_IRQS; irq++) p = mp_irq(p, 3, 0, irq, ioapic_id, irq);
  p = mp_irq(p, 4, 3, 0, 0xff, 0); /* ExtINT (the PIC) on every LINT0 (virtual wire). */
  p = mp_irq(p, 4, 1, 0, 0xff, 1); /* NMI on every LINT1. */

  size_t table = (size_t)(p - hdr);
  memcpy(hdr, "PCMP", 4);
  put16(hdr + 4, (uint16_t)table);
  hdr[6] = 4; /* Spec 1.4. */
  memcpy(hdr + 8, "LIBVMM  ", 8);
  memcpy(hdr + 16, "LIBVMM 0.1  ", 12);
  put16(hdr + 34, (uint16_t)(ncpus + 1 + 1 + MP_ISA_IRQS + 2));
  put32(hdr + 36, MP_LAPIC_ADDR);
  hdr[7] = mp_checksum(hdr, table);

  memcpy(fps, "_MP_", 4);
  put32(fps + 4, (uint32_t)(gpa + MP_FPS_SIZE));
  fps[8] = 1; /* Length in 16-byte units. */
  fps[9] = 4;
  /* Feature bytes 0: the table above is the configuration; no IMCR (virtual-wire mode). */
  fps[10] = mp_checksum(fps, MP_FPS_SIZE);
  return 0;
}
