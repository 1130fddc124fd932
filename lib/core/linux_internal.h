/* Internal pieces of the Linux loader, shared by its files and reachable from unit tests and
 * the fuzz target. Not installed. */
#ifndef LIBVMM_CORE_LINUX_INTERNAL_H
#define LIBVMM_CORE_LINUX_INTERNAL_H

#include "internal.h"

/* Offsets in struct boot_params (the zero page) and its setup_header, from the kernel's
 * Documentation/arch/x86/zero-page.rst and boot.rst. */
enum {
  BP_EXT_RAMDISK_IMAGE = 0x0c0,
  BP_EXT_RAMDISK_SIZE = 0x0c4,
  BP_EXT_CMD_LINE_PTR = 0x0c8,
  BP_E820_ENTRIES = 0x1e8,
  BP_SENTINEL = 0x1ef,
  BP_HDR = 0x1f1,
  HDR_SETUP_SECTS = 0x1f1,
  HDR_VID_MODE = 0x1fa,
  HDR_BOOT_FLAG = 0x1fe,
  HDR_JUMP = 0x200,
  HDR_HEADER = 0x202,
  HDR_VERSION = 0x206,
  HDR_TYPE_OF_LOADER = 0x210,
  HDR_LOADFLAGS = 0x211,
  HDR_CODE32_START = 0x214,
  HDR_RAMDISK_IMAGE = 0x218,
  HDR_RAMDISK_SIZE = 0x21c,
  HDR_CMD_LINE_PTR = 0x228,
  HDR_INITRD_ADDR_MAX = 0x22c,
  HDR_KERNEL_ALIGNMENT = 0x230,
  HDR_RELOCATABLE = 0x234,
  HDR_MIN_ALIGNMENT = 0x235,
  HDR_XLOADFLAGS = 0x236,
  HDR_CMDLINE_SIZE = 0x238,
  HDR_PAYLOAD_OFFSET = 0x248,
  HDR_PAYLOAD_LENGTH = 0x24c,
  HDR_PREF_ADDRESS = 0x258,
  HDR_INIT_SIZE = 0x260,
  HDR_END_2_12 = 0x268, /* End of the header of protocol 2.12 (kernel_info_offset is 2.15). */
  HDR_END_MAX = 0x290,  /* Where boot_params' next field starts: no header may go past it. */
  BP_E820_TABLE = 0x2d0,
  BP_E820_MAX = 128,
  BP_SIZE = 4096,
};

#define LINUX_LOADED_HIGH 0x01
#define LINUX_XLF_KERNEL_64 0x01
#define LINUX_E820_RAM 1
#define LINUX_E820_RESERVED 2
#define LINUX_HDRS_MAGIC 0x53726448u /* "HdrS" */
#define LINUX_MIN_PROTOCOL 0x020c    /* 2.12: xloadflags, so the 64-bit entry can be checked. */
#define LINUX_DEFAULT_CMDLINE_SIZE 2047u

/* A bzImage's setup header, checked: every offset and length here lies inside the image. */
struct vmm__bzimage {
  uint16_t version;
  uint8_t loadflags;
  uint8_t relocatable;
  uint16_t xloadflags;
  size_t setup_size;          /* Real-mode part: (setup_sects + 1) * 512 bytes. */
  size_t hdr_end;             /* End of the setup header (0x202 + the jump's byte). */
  uint32_t initrd_addr_max;
  uint32_t kernel_alignment;
  uint32_t cmdline_size;
  uint32_t init_size;
  uint64_t pref_address;
  const uint8_t *image;       /* The whole file. */
  size_t image_size;
  const uint8_t *pm;          /* Protected-mode part: what follows the setup sectors. */
  size_t pm_size;
  const uint8_t *payload;     /* Compressed payload, its trailing 4-byte size included. */
  size_t payload_size;
  uint32_t comp;              /* vmm_linux_comp_t from the payload's magic. */
};

/* Parses and checks a bzImage. 0, or VMM_ENOEXEC with the reason logged (not a bzImage at all
 * is reported as VMM_ENOEXEC too; *is_bzimage says whether the magic matched). */
int vmm__linux_parse_bzimage(const void *data, size_t size, struct vmm__bzimage *bz,
                             bool *is_bzimage);

/* The vmm_linux_comp_t of a payload, from its first bytes. */
uint32_t vmm__linux_detect_comp(const uint8_t *p, size_t n);
const char *vmm__linux_comp_name(uint32_t comp);
/* Whether this build can decompress comp on the host. */
bool vmm__linux_can_decompress(uint32_t comp);

/* Decompresses a kernel payload whose last 4 bytes are the little-endian decompressed size.
 * The result must be exactly that size and at most max bytes. *out is malloc'ed. 0;
 * VMM_ECORRUPT for bad data; VMM_ELIMIT past max; VMM_ENOSYS for formats not built in;
 * VMM_ENOMEM. */
int vmm__linux_decompress(uint32_t comp, const uint8_t *in, size_t in_size, uint64_t max,
                          uint8_t **out, size_t *out_size);

/* One e820 entry as the zero page stores it. */
struct vmm__e820 {
  uint64_t addr;
  uint64_t size;
  uint32_t type;
};

/* The VM's e820 map (see linux.h). Returns the number of entries (at most cap). */
size_t vmm__linux_e820(const vmm_vm_t *vm, struct vmm__e820 *out, size_t cap);

/* Writes an MP floating pointer at gpa and the table after it, for ncpus processors. 0, or
 * VMM_EFAULT when the range is not RAM. */
int vmm__mptable_write(vmm_vm_t *vm, uint64_t gpa, uint32_t ncpus);
/* Bytes the MP structures take for ncpus processors. */
size_t vmm__mptable_size(uint32_t ncpus);


#endif /* LIBVMM_CORE_LINUX_INTERNAL_H */
