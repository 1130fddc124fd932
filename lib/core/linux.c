/* The x86 Linux boot protocol: bzImage setup header, ELF vmlinux, zero page, command line,
 * initrd, e820 map. Nothing read from a kernel image is trusted: every field that leads to an
 * offset, a length or an address is checked before use, and every refusal is logged. */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "linux_internal.h"

#define VMM_LINUX_ELF_MAX_PHDRS 64
/* Protocol 2.12 or later lets the kernel say it has a 64-bit entry at load address + 0x200. */
#define VMM_LINUX_ENTRY64_OFFSET 0x200

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)rd16(p) | (uint32_t)rd16(p + 2) << 16; }
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }
static void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void wr32(uint8_t *p, uint32_t v) { wr16(p, (uint16_t)v); wr16(p + 2, (uint16_t)(v >> 16)); }
static void wr64(uint8_t *p, uint64_t v) { wr32(p, (uint32_t)v); wr32(p + 4, (uint32_t)(v >> 32)); }

static int vmm_bz_fail(const char *why) {
  VMM_LOG_E("linux: bzImage refused: %s", why);
  return VMM_ENOEXEC;
}

int vmm__linux_parse_bzimage(const void *data, size_t size, struct vmm__bzimage *bz,
                             bool *is_bzimage) {
  const uint8_t *d = data;
  memset(bz, 0, sizeof(*bz));
  *is_bzimage = false;
  if (size < 1024) return vmm_bz_fail("shorter than a boot sector and one setup sector");
  if (rd16(d + HDR_BOOT_FLAG) != 0xaa55 || rd32(d + HDR_HEADER) != LINUX_HDRS_MAGIC)
    return vmm_bz_fail("no boot flag 0xaa55 and \"HdrS\" magic");
  *is_bzimage = true;
  bz->image = d;
  bz->image_size = size;
  bz->version = rd16(d + HDR_VERSION);
  if (bz->version < LINUX_MIN_PROTOCOL) {
    VMM_LOG_E("linux: bzImage refused: boot protocol %u.%02u is older than 2.12, the first "
              "that can announce a 64-bit entry point", bz->version >> 8, bz->version & 0xff);
    return VMM_ENOEXEC;
  }
  unsigned sects = d[HDR_SETUP_SECTS] ? d[HDR_SETUP_SECTS] : 4;
  bz->setup_size = (size_t)(sects + 1) * 512;
  if (bz->setup_size >= size) return vmm_bz_fail("setup sectors reach past the end of the file");
  bz->hdr_end = 0x202 + (size_t)d[HDR_JUMP + 1];
  if (bz->hdr_end < HDR_END_2_12) return vmm_bz_fail("setup header shorter than protocol 2.12's");
  if (bz->hdr_end > HDR_END_MAX) bz->hdr_end = HDR_END_MAX;
  if (bz->hdr_end > bz->setup_size) return vmm_bz_fail("setup header runs past the setup sectors");

  bz->loadflags = d[HDR_LOADFLAGS];
  bz->xloadflags = rd16(d + HDR_XLOADFLAGS);
  bz->relocatable = d[HDR_RELOCATABLE];
  bz->initrd_addr_max = rd32(d + HDR_INITRD_ADDR_MAX);
  bz->kernel_alignment = rd32(d + HDR_KERNEL_ALIGNMENT);
  bz->cmdline_size = rd32(d + HDR_CMDLINE_SIZE);
  bz->pref_address = rd64(d + HDR_PREF_ADDRESS);
  bz->init_size = rd32(d + HDR_INIT_SIZE);
  if (!(bz->loadflags & LINUX_LOADED_HIGH))
    return vmm_bz_fail("a zImage (loaded below 1 MiB): only bzImages are supported");
  if (!(bz->xloadflags & LINUX_XLF_KERNEL_64))
    return vmm_bz_fail("no 64-bit entry point (XLF_KERNEL_64 is clear)");
  if (bz->relocatable) {
    uint32_t a = bz->kernel_alignment;
    if (a < 4096 || a > (1u << 30) || (a & (a - 1)))
      return vmm_bz_fail("kernel_alignment is not a power of two between 4 KiB and 1 GiB");
    if (d[HDR_MIN_ALIGNMENT] > 30) return vmm_bz_fail("min_alignment is absurd");
  }
  if (bz->pref_address < VMM_LINUX_LOW_RESERVED_END || bz->pref_address > (1ull << 46) ||
      bz->pref_address % 4096)
    return vmm_bz_fail("pref_address is below 1 MiB, absurdly high or not page-aligned");
  if (bz->cmdline_size == 0) return vmm_bz_fail("cmdline_size is 0");

  bz->pm = d + bz->setup_size;
  bz->pm_size = size - bz->setup_size;
  if (bz->pm_size <= VMM_LINUX_ENTRY64_OFFSET)
    return vmm_bz_fail("protected-mode part too short for the 64-bit entry point");
  if (bz->init_size < bz->pm_size) return vmm_bz_fail("init_size is smaller than the kernel");
  if (bz->init_size > VMM_LINUX_MAX_KERNEL_SIZE) return vmm_bz_fail("init_size is absurd (> 1 GiB)");
  uint32_t poff = rd32(d + HDR_PAYLOAD_OFFSET), plen = rd32(d + HDR_PAYLOAD_LENGTH);
  if (poff > bz->pm_size || plen > bz->pm_size - poff)
    return vmm_bz_fail("payload_offset/payload_length point outside the file");
  if (plen < 5) return vmm_bz_fail("payload shorter than its trailing size");
  bz->payload = bz->pm + poff;
  bz->payload_size = plen;
  bz->comp = vmm__linux_detect_comp(bz->payload, bz->payload_size);
  return 0;
}

/* ---- ELF vmlinux ---- */

struct vmm_linux_elf {
  Elf64_Ehdr eh;
  uint64_t low, high, entry; /* Physical. */
};

static int vmm_elf_fail(const char *why) {
  VMM_LOG_E("linux: ELF kernel refused: %s", why);
  return VMM_ENOEXEC;
}

/* Checks the headers and every PT_LOAD segment against the file and guest RAM, and finds the
 * physical entry point (e_entry may be physical, as in vmlinux, or virtual). */
static int vmm_linux_elf_check(vmm_vm_t *vm, const uint8_t *img, size_t size, uint64_t max,
                               struct vmm_linux_elf *e) {
  if (size < sizeof(Elf64_Ehdr)) return vmm_elf_fail("shorter than an ELF header");
  Elf64_Ehdr *eh = &e->eh;
  memcpy(eh, img, sizeof(*eh));
  if (memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0) return vmm_elf_fail("bad magic");
  if (eh->e_ident[EI_CLASS] != ELFCLASS64 || eh->e_ident[EI_DATA] != ELFDATA2LSB ||
      eh->e_machine != EM_X86_64)
    return vmm_elf_fail("not a little-endian ELF64 for x86-64");
  if (eh->e_type != ET_EXEC) return vmm_elf_fail("not an executable (ET_EXEC)");
  if (eh->e_phentsize != sizeof(Elf64_Phdr) || eh->e_phnum == 0 ||
      eh->e_phnum > VMM_LINUX_ELF_MAX_PHDRS)
    return vmm_elf_fail("bad program header size or count");
  if (eh->e_phoff > size || (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr) > size - eh->e_phoff)
    return vmm_elf_fail("program headers outside the file");
  e->low = UINT64_MAX;
  e->high = 0;
  e->entry = 0;
  bool entry_found = false;
  for (unsigned pass = 0; pass < 2; pass++) {
    for (unsigned i = 0; i < eh->e_phnum; i++) {
      Elf64_Phdr ph;
      memcpy(&ph, img + eh->e_phoff + i * sizeof(ph), sizeof(ph));
      if (ph.p_type != PT_LOAD || ph.p_memsz == 0) continue;
      if (pass == 0) {
        if (ph.p_filesz > ph.p_memsz) return vmm_elf_fail("segment file size exceeds memory size");
        if (ph.p_offset > size || ph.p_filesz > size - ph.p_offset)
          return vmm_elf_fail("segment data outside the file");
        if (ph.p_memsz > max || ph.p_paddr > (1ull << 52) || ph.p_paddr + ph.p_memsz < ph.p_paddr)
          return vmm_elf_fail("segment too large or wraps around");
        if (ph.p_paddr < VMM_LINUX_LOW_RESERVED_END)
          return vmm_elf_fail("segment below 1 MiB, where the boot structures live");
        if (vmm__region_find(vm, ph.p_paddr, ph.p_memsz) == NULL) {
          VMM_LOG_E("linux: kernel segment %u at [%#llx, %#llx) is not inside guest RAM", i,
                    (unsigned long long)ph.p_paddr,
                    (unsigned long long)(ph.p_paddr + ph.p_memsz));
          return VMM_EFAULT;
        }
        if (ph.p_paddr < e->low) e->low = ph.p_paddr;
        if (ph.p_paddr + ph.p_memsz > e->high) e->high = ph.p_paddr + ph.p_memsz;
        /* A physical entry point (vmlinux links e_entry to startup_64's physical address). */
        if (!entry_found && eh->e_entry >= ph.p_paddr && eh->e_entry - ph.p_paddr < ph.p_filesz) {
          e->entry = eh->e_entry;
          entry_found = true;
        }
      } else if (!entry_found && eh->e_entry >= ph.p_vaddr &&
                 eh->e_entry - ph.p_vaddr < ph.p_filesz) {
        e->entry = ph.p_paddr + (eh->e_entry - ph.p_vaddr);
        entry_found = true;
      }
    }
  }
  if (e->high == 0) return vmm_elf_fail("no loadable segment");
  if (e->high - e->low > max) return vmm_elf_fail("segments span more than the size limit");
  if (!entry_found) return vmm_elf_fail("entry point is not inside a loaded segment");
  return 0;
}

static int vmm_linux_elf_copy(vmm_vm_t *vm, const uint8_t *img, const struct vmm_linux_elf *e) {
  for (unsigned i = 0; i < e->eh.e_phnum; i++) {
    Elf64_Phdr ph;
    memcpy(&ph, img + e->eh.e_phoff + i * sizeof(ph), sizeof(ph));
    if (ph.p_type != PT_LOAD || ph.p_memsz == 0) continue;
    uint8_t *dst = vmm__gpa_wptr(vm, ph.p_paddr, ph.p_memsz);
    if (dst == NULL) return VMM_ENOMEM; /* RAM was checked: only owning a clone's page fails */
    memcpy(dst, img + ph.p_offset, ph.p_filesz);
    memset(dst + ph.p_filesz, 0, ph.p_memsz - ph.p_filesz);
  }
  return 0;
}

/* ---- e820 ---- */

static size_t vmm_e820_add(struct vmm__e820 *out, size_t n, size_t cap, uint64_t addr,
                           uint64_t end, uint32_t type) {
  if (end <= addr) return n;
  if (n > 0 && out[n - 1].type == type && out[n - 1].addr + out[n - 1].size == addr) {
    out[n - 1].size += end - addr;
    return n;
  }
  if (n < cap) out[n] = (struct vmm__e820){.addr = addr, .size = end - addr, .type = type};
  return n + 1;
}

size_t vmm__linux_e820(const vmm_vm_t *vm, struct vmm__e820 *out, size_t cap) {
  size_t n = 0;
  const uint64_t rs = VMM_LINUX_MPTABLE_GPA, re = VMM_LINUX_LOW_RESERVED_END;
  for (size_t i = 0; i < vm->nregions; i++) {
    const struct vmm_region *r = vm->regions[i];
    uint64_t a = r->gpa, b = r->gpa + r->size;
    uint32_t t = (r->flags & VMM_MEM_READONLY) ? LINUX_E820_RESERVED : LINUX_E820_RAM;
    /* The legacy BIOS window below 1 MiB (MP table) is reserved wherever RAM covers it. */
    uint64_t ra = a > rs ? a : rs, rb = b < re ? b : re;
    if (ra < rb) {
      n = vmm_e820_add(out, n, cap, a, ra, t);
      n = vmm_e820_add(out, n, cap, ra, rb, LINUX_E820_RESERVED);
      n = vmm_e820_add(out, n, cap, rb, b, t);
    } else {
      n = vmm_e820_add(out, n, cap, a, b, t);
    }
  }
  return n < cap ? n : cap;
}

/* ---- the loader ---- */

struct vmm_linux_load {
  vmm_linux_config_t cfg;
  uint64_t max;
  uint8_t *kernel_buf, *initrd_buf, *unpacked;
  const uint8_t *kernel, *initrd;
  size_t kernel_size, initrd_size, unpacked_size;
};

static uint64_t vmm_ram_total(const vmm_vm_t *vm) {
  uint64_t t = 0;
  for (size_t i = 0; i < vm->nregions; i++) t += vm->regions[i]->size;
  return t;
}

/* Highest page-aligned place for the initrd: above the kernel and 1 MiB, ending at or below
 * limit (initrd_addr_max + 1), inside one writable RAM region. */
static int vmm_linux_place_initrd(const vmm_vm_t *vm, uint64_t size, uint64_t floor,
                                  uint64_t limit, uint64_t *gpa) {
  for (size_t i = vm->nregions; i-- > 0;) {
    const struct vmm_region *r = vm->regions[i];
    if (r->flags & VMM_MEM_READONLY) continue;
    uint64_t lo = r->gpa > floor ? r->gpa : floor;
    uint64_t hi = r->gpa + r->size < limit ? r->gpa + r->size : limit;
    if (hi <= lo || hi - lo < size) continue;
    uint64_t at = (hi - size) & ~(VMM_PAGE_SIZE - 1);
    if (at < lo) continue;
    *gpa = at;
    return 0;
  }
  VMM_LOG_E("linux: the initrd (%llu bytes) does not fit in RAM between the kernel's end %#llx "
            "and initrd_addr_max %#llx", (unsigned long long)size, (unsigned long long)floor,
            (unsigned long long)(limit - 1));
  return VMM_EFAULT;
}

static int vmm_linux_inputs(struct vmm_linux_load *l, vmm_vm_t *vm) {
  int rc;
  if (l->cfg.kernel != NULL) {
    if (l->cfg.kernel_size > l->max) {
      VMM_LOG_E("linux: kernel of %zu bytes is larger than the limit of %llu", l->cfg.kernel_size,
                (unsigned long long)l->max);
      return VMM_ELIMIT;
    }
    l->kernel = l->cfg.kernel;
    l->kernel_size = l->cfg.kernel_size;
  } else {
    rc = vmm__read_file(l->cfg.kernel_path, l->max, &l->kernel_buf, &l->kernel_size);
    if (rc) return rc;
    l->kernel = l->kernel_buf;
  }
  uint64_t ram = vmm_ram_total(vm);
  if (l->cfg.initrd != NULL) {
    if (l->cfg.initrd_size > ram) {
      VMM_LOG_E("linux: initrd of %zu bytes is larger than guest RAM", l->cfg.initrd_size);
      return VMM_ELIMIT;
    }
    l->initrd = l->cfg.initrd;
    l->initrd_size = l->cfg.initrd_size;
  } else if (l->cfg.initrd_path != NULL) {
    rc = vmm__read_file(l->cfg.initrd_path, ram, &l->initrd_buf, &l->initrd_size);
    if (rc) return rc;
    l->initrd = l->initrd_buf;
  }
  return 0;
}

static int vmm_linux_do_load(struct vmm_linux_load *l, vmm_vm_t *vm, vmm_linux_info_t *info) {
  int rc = vmm_linux_inputs(l, vm);
  if (rc) return rc;
  struct vmm_region *low = vmm__region_find(vm, 0, VMM_LINUX_LOW_RESERVED_END);
  if (low == NULL || (low->flags & VMM_MEM_READONLY)) {
    VMM_LOG_E("linux: guest RAM must cover [0, 1 MiB) for the boot structures");
    return VMM_EFAULT;
  }

  uint8_t bp[BP_SIZE];
  memset(bp, 0, sizeof(bp));
  struct vmm__bzimage bz;
  memset(&bz, 0, sizeof(bz));
  bool is_bz = false;
  uint32_t cmdline_size = LINUX_DEFAULT_CMDLINE_SIZE;
  uint64_t initrd_max = 0x7fffffff;
  uint64_t kstart = 0, kend = 0, entry = 0;
  const uint8_t *elf = NULL;
  size_t elf_size = 0;

  bool elf_magic = l->kernel_size >= SELFMAG && memcmp(l->kernel, ELFMAG, SELFMAG) == 0;
  if (elf_magic) {
    elf = l->kernel;
    elf_size = l->kernel_size;
    info->image = VMM_LINUX_IMAGE_ELF;
    /* A setup header for a kernel that brought none: the fields the kernel reads. */
    wr16(bp + HDR_BOOT_FLAG, 0xaa55);
    wr32(bp + HDR_HEADER, LINUX_HDRS_MAGIC);
    wr16(bp + HDR_VERSION, 0x020f);
    bp[HDR_LOADFLAGS] = LINUX_LOADED_HIGH;
    wr32(bp + HDR_KERNEL_ALIGNMENT, 0x200000);
    wr32(bp + HDR_INITRD_ADDR_MAX, (uint32_t)initrd_max);
    wr32(bp + HDR_CMDLINE_SIZE, cmdline_size);
  } else {
    rc = vmm__linux_parse_bzimage(l->kernel, l->kernel_size, &bz, &is_bz);
    if (rc) {
      if (!is_bz) VMM_LOG_E("linux: the kernel is neither a bzImage nor an ELF vmlinux");
      return rc;
    }
    info->image = VMM_LINUX_IMAGE_BZIMAGE;
    info->protocol = bz.version;
    info->compression = bz.comp;
    memcpy(bp + BP_HDR, l->kernel + BP_HDR, bz.hdr_end - BP_HDR);
    cmdline_size = bz.cmdline_size;
    initrd_max = bz.initrd_addr_max;
    bool host = !(l->cfg.flags & VMM_LINUX_IN_KERNEL_DECOMPRESS);
    if (host && !vmm__linux_can_decompress(bz.comp)) {
      VMM_LOG_I("linux: no host decompressor for a %s payload: the kernel decompresses itself",
                vmm__linux_comp_name(bz.comp));
      host = false;
    }
    if (host) {
      rc = vmm__linux_decompress(bz.comp, bz.payload, bz.payload_size, l->max, &l->unpacked,
                                 &l->unpacked_size);
      if (rc) return rc;
      if (l->unpacked_size < SELFMAG || memcmp(l->unpacked, ELFMAG, SELFMAG) != 0) {
        VMM_LOG_E("linux: the decompressed payload is not an ELF vmlinux");
        return VMM_ENOEXEC;
      }
      elf = l->unpacked;
      elf_size = l->unpacked_size;
      info->host_decompressed = 1;
      info->decompressed_size = l->unpacked_size;
    } else {
      /* The protected-mode part goes to the preferred address (aligned as the kernel asks if
       * it is relocatable) and needs init_size bytes there; it is entered 0x200 past it. */
      kstart = bz.pref_address;
      if (bz.relocatable) kstart = (kstart + bz.kernel_alignment - 1) & ~(uint64_t)(bz.kernel_alignment - 1);
      kend = kstart + bz.init_size;
      if (vmm__region_find(vm, kstart, bz.init_size) == NULL) {
        VMM_LOG_E("linux: the kernel needs RAM at [%#llx, %#llx) (init_size) to decompress itself",
                  (unsigned long long)kstart, (unsigned long long)kend);
        return VMM_EFAULT;
      }
      entry = kstart + VMM_LINUX_ENTRY64_OFFSET;
      wr32(bp + HDR_CODE32_START, (uint32_t)kstart);
    }
  }

  struct vmm_linux_elf e;
  if (elf != NULL) {
    rc = vmm_linux_elf_check(vm, elf, elf_size, l->max, &e);
    if (rc) return rc;
    kstart = e.low;
    kend = e.high;
    /* What the kernel needs beyond its image (page tables, brk) is inside init_size. */
    if (is_bz && kstart + bz.init_size > kend) kend = kstart + bz.init_size;
    entry = e.entry;
  }

  size_t cmdlen = l->cfg.cmdline ? strlen(l->cfg.cmdline) : 0;
  if (cmdlen > cmdline_size || cmdlen >= VMM_LINUX_CMDLINE_MAX) {
    VMM_LOG_E("linux: command line of %zu bytes is longer than the kernel's limit of %u", cmdlen,
              cmdline_size);
    return VMM_ELIMIT;
  }
  uint64_t initrd_gpa = 0;
  if (l->initrd_size) {
    uint64_t limit = initrd_max + 1;
    uint64_t floor = kend > VMM_LINUX_LOW_RESERVED_END ? kend : VMM_LINUX_LOW_RESERVED_END;
    rc = vmm_linux_place_initrd(vm, l->initrd_size, (floor + VMM_PAGE_SIZE - 1) & ~(VMM_PAGE_SIZE - 1),
                                limit, &initrd_gpa);
    if (rc) return rc;
  }
  uint32_t ncpus = vm->max_vcpus ? vm->max_vcpus : 1;
  if (VMM_LINUX_MPTABLE_GPA + vmm__mptable_size(ncpus) > VMM_LINUX_LOW_RESERVED_END) {
    VMM_LOG_E("linux: an MP table for %u vCPUs does not fit below 1 MiB", ncpus);
    return VMM_ELIMIT;
  }

  /* Everything is checked: write guest RAM. */
  rc = elf != NULL ? vmm_linux_elf_copy(vm, elf, &e) : vmm_vm_write(vm, kstart, bz.pm, bz.pm_size);
  if (rc == 0 && l->initrd_size) rc = vmm_vm_write(vm, initrd_gpa, l->initrd, l->initrd_size);
  if (rc) return rc;
  char *cl = vmm__gpa_wptr(vm, VMM_LINUX_CMDLINE_GPA, cmdlen + 1);
  if (cl == NULL) return VMM_ENOMEM;
  if (cmdlen) memcpy(cl, l->cfg.cmdline, cmdlen);
  cl[cmdlen] = '\0';
  rc = vmm__mptable_write(vm, VMM_LINUX_MPTABLE_GPA, ncpus);
  if (rc) return rc;

  wr16(bp + HDR_VID_MODE, 0xffff); /* "normal": no mode change. */
  bp[HDR_TYPE_OF_LOADER] = 0xff;   /* A loader without an assigned id. */
  wr32(bp + HDR_CMD_LINE_PTR, (uint32_t)VMM_LINUX_CMDLINE_GPA);
  wr32(bp + BP_EXT_CMD_LINE_PTR, 0);
  wr32(bp + HDR_RAMDISK_IMAGE, (uint32_t)initrd_gpa);
  wr32(bp + BP_EXT_RAMDISK_IMAGE, (uint32_t)(initrd_gpa >> 32));
  wr32(bp + HDR_RAMDISK_SIZE, (uint32_t)l->initrd_size);
  wr32(bp + BP_EXT_RAMDISK_SIZE, (uint32_t)((uint64_t)l->initrd_size >> 32));
  struct vmm__e820 map[BP_E820_MAX];
  size_t n = vmm__linux_e820(vm, map, BP_E820_MAX);
  bp[BP_E820_ENTRIES] = (uint8_t)n;
  for (size_t i = 0; i < n; i++) {
    uint8_t *p = bp + BP_E820_TABLE + i * 20;
    wr64(p, map[i].addr);
    wr64(p + 8, map[i].size);
    wr32(p + 16, map[i].type);
  }
  rc = vmm_vm_write(vm, VMM_LINUX_BOOT_PARAMS_GPA, bp, sizeof(bp));
  if (rc) return rc;

  info->e820_entries = (uint32_t)n;
  info->entry = entry;
  info->boot_params = VMM_LINUX_BOOT_PARAMS_GPA;
  info->cmdline = VMM_LINUX_CMDLINE_GPA;
  info->kernel_start = kstart;
  info->kernel_end = kend;
  info->initrd_start = initrd_gpa;
  info->initrd_size = l->initrd_size;
  VMM_LOG_I("linux: %s kernel at [%#llx, %#llx), entry %#llx%s%s, initrd %zu bytes at %#llx",
            info->image == VMM_LINUX_IMAGE_ELF ? "ELF" : "bzImage", (unsigned long long)kstart,
            (unsigned long long)kend, (unsigned long long)entry,
            info->host_decompressed ? ", decompressed on the host from " : "",
            info->host_decompressed ? vmm__linux_comp_name(info->compression) : "", l->initrd_size,
            (unsigned long long)initrd_gpa);
  return 0;
}

/* The first published layout of each struct. */
#define VMM_LINUX_CONFIG_MIN_SIZE (offsetof(vmm_linux_config_t, max_kernel_size) + sizeof(uint64_t))
#define VMM_LINUX_INFO_MIN_SIZE (offsetof(vmm_linux_info_t, decompressed_size) + sizeof(uint64_t))

int vmm_linux_load(vmm_vm_t *vm, const vmm_linux_config_t *config, vmm_linux_info_t *info) {
  if (vm == NULL || config == NULL || info == NULL) return VMM_EINVAL;
  if (config->struct_size < VMM_LINUX_CONFIG_MIN_SIZE || info->struct_size < VMM_LINUX_INFO_MIN_SIZE)
    return VMM_EINVAL;
  if (atomic_load(&vm->running)) return VMM_EBUSY;
  struct vmm_linux_load l;
  memset(&l, 0, sizeof(l));
  l.cfg = (vmm_linux_config_t)VMM_LINUX_CONFIG_INIT;
  memcpy(&l.cfg, config, config->struct_size < sizeof(l.cfg) ? config->struct_size : sizeof(l.cfg));
  if (l.cfg.flags & ~(uint32_t)VMM_LINUX_IN_KERNEL_DECOMPRESS) return VMM_EINVAL;
  if (l.cfg.kernel == NULL && l.cfg.kernel_path == NULL) return VMM_EINVAL;
  l.max = l.cfg.max_kernel_size && l.cfg.max_kernel_size < VMM_LINUX_MAX_KERNEL_SIZE
              ? l.cfg.max_kernel_size
              : VMM_LINUX_MAX_KERNEL_SIZE;

  vmm_linux_info_t out;
  memset(&out, 0, sizeof(out));
  int rc = vmm_linux_do_load(&l, vm, &out);
  free(l.kernel_buf);
  free(l.initrd_buf);
  free(l.unpacked);
  if (rc) return rc;
  uint32_t size = info->struct_size;
  out.struct_size = size;
  memcpy(info, &out, size < sizeof(out) ? size : sizeof(out));
  return 0;
}
