/* The Linux loader: setup-header parser, host decompression, zero page, e820, MP table, the
 * 64-bit entry state and the legacy PC devices, on synthetic good and malformed images. */
#include <elf.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <lz4.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

#include "mock_backend.h"
#include "core/linux_internal.h"

#define RAM (128u << 20)
#define KADDR 0x1000000u

/* ---- synthetic kernels ---- */

struct buf {
  uint8_t *p;
  size_t n;
};

/* An ELF "vmlinux": one PT_LOAD at 16 MiB (text + BSS), entry at its start. */
static struct buf make_elf(uint64_t paddr, size_t text, size_t bss) {
  struct buf b;
  b.n = sizeof(Elf64_Ehdr) + sizeof(Elf64_Phdr) + text;
  b.p = calloc(1, b.n);
  Elf64_Ehdr *eh = (Elf64_Ehdr *)b.p;
  memcpy(eh->e_ident, ELFMAG, SELFMAG);
  eh->e_ident[EI_CLASS] = ELFCLASS64;
  eh->e_ident[EI_DATA] = ELFDATA2LSB;
  eh->e_ident[EI_VERSION] = EV_CURRENT;
  eh->e_type = ET_EXEC;
  eh->e_machine = EM_X86_64;
  eh->e_version = EV_CURRENT;
  eh->e_entry = paddr;
  eh->e_phoff = sizeof(Elf64_Ehdr);
  eh->e_ehsize = sizeof(Elf64_Ehdr);
  eh->e_phentsize = sizeof(Elf64_Phdr);
  eh->e_phnum = 1;
  Elf64_Phdr *ph = (Elf64_Phdr *)(b.p + sizeof(Elf64_Ehdr));
  ph->p_type = PT_LOAD;
  ph->p_offset = sizeof(Elf64_Ehdr) + sizeof(Elf64_Phdr);
  ph->p_vaddr = 0xffffffff80000000ull + paddr;
  ph->p_paddr = paddr;
  ph->p_filesz = text;
  ph->p_memsz = text + bss;
  ph->p_flags = PF_R | PF_X;
  for (size_t i = 0; i < text; i++) b.p[ph->p_offset + i] = (uint8_t)(i * 7 + 1);
  return b;
}

static void put32le(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

/* Compresses as the kernel's build does, then appends the 4-byte decompressed size. */
static struct buf compress_as(uint32_t comp, const struct buf *in) {
  struct buf o;
  size_t cap = in->n * 2 + 1024;
  o.p = malloc(cap + 4);
  o.n = 0;
  if (comp == VMM_LINUX_COMP_GZIP) {
    z_stream z;
    memset(&z, 0, sizeof(z));
    assert_int_equal(deflateInit2(&z, 9, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
    z.next_in = in->p;
    z.avail_in = (uInt)in->n;
    z.next_out = o.p;
    z.avail_out = (uInt)cap;
    assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
    o.n = z.total_out;
    deflateEnd(&z);
  } else if (comp == VMM_LINUX_COMP_XZ) {
    lzma_filter f[3];
    lzma_options_lzma opt;
    lzma_lzma_preset(&opt, 6);
    f[0] = (lzma_filter){.id = LZMA_FILTER_X86, .options = NULL};
    f[1] = (lzma_filter){.id = LZMA_FILTER_LZMA2, .options = &opt};
    f[2] = (lzma_filter){.id = LZMA_VLI_UNKNOWN, .options = NULL};
    assert_int_equal(lzma_stream_buffer_encode(f, LZMA_CHECK_CRC32, NULL, in->p, in->n, o.p, &o.n, cap),
                     LZMA_OK);
  } else if (comp == VMM_LINUX_COMP_ZSTD) {
    /* As the zstd command does by default: with a content checksum. */
    ZSTD_CCtx *c = ZSTD_createCCtx();
    ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, 19);
    ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1);
    o.n = ZSTD_compress2(c, o.p, cap, in->p, in->n);
    ZSTD_freeCCtx(c);
    assert_false(ZSTD_isError(o.n));
  } else if (comp == VMM_LINUX_COMP_LZ4) {
    put32le(o.p, 0x184c2102u);
    int c = LZ4_compress_default((const char *)in->p, (char *)o.p + 8, (int)in->n, (int)cap - 8);
    assert_true(c > 0);
    put32le(o.p + 4, (uint32_t)c);
    o.n = 8 + (size_t)c;
  }
  put32le(o.p + o.n, (uint32_t)in->n);
  o.n += 4;
  return o;
}

/* A bzImage: boot sector + one setup sector, then 0x200 bytes of "startup code", then the
 * payload. Offsets follow the boot protocol. */
static struct buf make_bzimage(const struct buf *payload) {
  struct buf b;
  size_t setup = 1024, head = 0x200;
  b.n = setup + head + payload->n;
  b.p = calloc(1, b.n);
  uint8_t *d = b.p;
  d[HDR_SETUP_SECTS] = 1;
  d[HDR_BOOT_FLAG] = 0x55;
  d[HDR_BOOT_FLAG + 1] = 0xaa;
  d[HDR_JUMP] = 0xeb;
  d[HDR_JUMP + 1] = 0x6a; /* Header ends at 0x26c (protocol 2.15). */
  memcpy(d + HDR_HEADER, "HdrS", 4);
  d[HDR_VERSION] = 0x0f;
  d[HDR_VERSION + 1] = 0x02;
  d[HDR_LOADFLAGS] = LINUX_LOADED_HIGH;
  put32le(d + HDR_INITRD_ADDR_MAX, 0x7fffffff);
  put32le(d + HDR_KERNEL_ALIGNMENT, 0x200000);
  d[HDR_RELOCATABLE] = 1;
  d[HDR_MIN_ALIGNMENT] = 21;
  d[HDR_XLOADFLAGS] = 0x7f;
  put32le(d + HDR_CMDLINE_SIZE, 2047);
  put32le(d + HDR_PAYLOAD_OFFSET, (uint32_t)head);
  put32le(d + HDR_PAYLOAD_LENGTH, (uint32_t)payload->n);
  put32le(d + HDR_PREF_ADDRESS, KADDR);
  put32le(d + HDR_INIT_SIZE, 0x400000);
  memset(d + setup, 0x90, head);
  memcpy(d + setup + head, payload->p, payload->n);
  return b;
}

static struct buf make_kernel(uint32_t comp) {
  struct buf elf = make_elf(KADDR, 8192, 4096);
  struct buf z = compress_as(comp, &elf);
  struct buf bz = make_bzimage(&z);
  free(elf.p);
  free(z.p);
  return bz;
}

static int load(vmm_vm_t *vm, const struct buf *k, uint32_t flags, const char *cmdline,
                const void *initrd, size_t initrd_size, vmm_linux_info_t *info) {
  vmm_linux_config_t c = VMM_LINUX_CONFIG_INIT;
  c.kernel = k->p;
  c.kernel_size = k->n;
  c.flags = flags;
  c.cmdline = cmdline;
  c.initrd = initrd;
  c.initrd_size = initrd_size;
  *info = (vmm_linux_info_t)VMM_LINUX_INFO_INIT;
  return vmm_linux_load(vm, &c, info);
}

static uint32_t rd32(vmm_vm_t *vm, uint64_t gpa) {
  uint32_t v = 0;
  assert_int_equal(vmm_vm_read(vm, gpa, &v, 4), 0);
  return v;
}

/* ---- good images ---- */

static void check_loaded_elf(vmm_vm_t *vm) {
  struct buf elf = make_elf(KADDR, 8192, 4096);
  uint8_t got[8192 + 4096];
  assert_int_equal(vmm_vm_read(vm, KADDR, got, sizeof(got)), 0);
  assert_memory_equal(got, elf.p + sizeof(Elf64_Ehdr) + sizeof(Elf64_Phdr), 8192);
  for (size_t i = 8192; i < sizeof(got); i++) assert_int_equal(got[i], 0);
  free(elf.p);
}

static void test_bzimage_each_compression_decompresses_on_host(void **state) {
  (void)state;
  static const uint32_t comps[] = {VMM_LINUX_COMP_GZIP, VMM_LINUX_COMP_XZ, VMM_LINUX_COMP_ZSTD,
                                   VMM_LINUX_COMP_LZ4};
  for (size_t i = 0; i < 4; i++) {
    vmm_vm_t *vm = mock_vm_create(RAM);
    struct buf k = make_kernel(comps[i]);
    vmm_linux_info_t info;
    assert_int_equal(load(vm, &k, 0, "console=ttyS0", NULL, 0, &info), 0);
    assert_int_equal(info.image, VMM_LINUX_IMAGE_BZIMAGE);
    assert_int_equal(info.compression, comps[i]);
    assert_int_equal(info.host_decompressed, 1);
    assert_int_equal(info.protocol, 0x20f);
    assert_int_equal(info.entry, KADDR);
    assert_int_equal(info.kernel_start, KADDR);
    assert_int_equal(info.kernel_end, KADDR + 0x400000);
    check_loaded_elf(vm);
    free(k.p);
    vmm_vm_destroy(vm);
  }
}

static void test_zero_page_has_header_cmdline_initrd_and_e820(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(RAM);
  struct buf k = make_kernel(VMM_LINUX_COMP_GZIP);
  uint8_t initrd[10000];
  memset(initrd, 0x5a, sizeof(initrd));
  vmm_linux_info_t info;
  assert_int_equal(load(vm, &k, 0, "console=ttyS0 quiet", initrd, sizeof(initrd), &info), 0);
  uint64_t bp = info.boot_params;
  assert_int_equal(bp, VMM_LINUX_BOOT_PARAMS_GPA);
  assert_int_equal(rd32(vm, bp + HDR_HEADER), LINUX_HDRS_MAGIC);
  uint8_t b[4096];
  assert_int_equal(vmm_vm_read(vm, bp, b, sizeof(b)), 0);
  assert_int_equal(b[HDR_TYPE_OF_LOADER], 0xff);
  assert_int_equal(b[HDR_SETUP_SECTS], 1); /* Copied from the image. */
  assert_int_equal(rd32(vm, bp + HDR_CMD_LINE_PTR), VMM_LINUX_CMDLINE_GPA);
  char cl[32];
  assert_int_equal(vmm_vm_read(vm, VMM_LINUX_CMDLINE_GPA, cl, 20), 0);
  assert_string_equal(cl, "console=ttyS0 quiet");
  /* The initrd sits page-aligned at the top of RAM. */
  assert_int_equal(info.initrd_start, (RAM - sizeof(initrd)) & ~4095u);
  assert_int_equal(rd32(vm, bp + HDR_RAMDISK_IMAGE), info.initrd_start);
  assert_int_equal(rd32(vm, bp + HDR_RAMDISK_SIZE), sizeof(initrd));
  uint8_t back[16];
  vmm_vm_read(vm, info.initrd_start, back, 16);
  assert_int_equal(back[0], 0x5a);
  /* e820: low RAM, the reserved BIOS window, the rest. */
  assert_int_equal(b[BP_E820_ENTRIES], 3);
  assert_int_equal(info.e820_entries, 3);
  struct vmm__e820 want[3] = {{0, 0x9fc00, 1}, {0x9fc00, 0x60400, 2}, {0x100000, RAM - 0x100000, 1}};
  for (int i = 0; i < 3; i++) {
    uint64_t a, s;
    uint32_t t;
    memcpy(&a, b + BP_E820_TABLE + i * 20, 8);
    memcpy(&s, b + BP_E820_TABLE + i * 20 + 8, 8);
    memcpy(&t, b + BP_E820_TABLE + i * 20 + 16, 4);
    assert_int_equal(a, want[i].addr);
    assert_int_equal(s, want[i].size);
    assert_int_equal(t, want[i].type);
  }
  free(k.p);
  vmm_vm_destroy(vm);
}

static void test_e820_follows_ram_regions_and_readonly_is_reserved(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(64 << 20);
  assert_int_equal(vmm_vm_map_ram(vm, 1ull << 32, 32 << 20, 0, NULL), 0);
  assert_int_equal(vmm_vm_map_ram(vm, 0xfe000000, 1 << 20, VMM_MEM_READONLY, NULL), 0);
  struct vmm__e820 m[8];
  size_t n = vmm__linux_e820(vm, m, 8);
  assert_int_equal(n, 5);
  assert_int_equal(m[2].addr, 0x100000);
  assert_int_equal(m[2].size, (64 << 20) - 0x100000);
  assert_int_equal(m[3].addr, 0xfe000000);
  assert_int_equal(m[3].type, LINUX_E820_RESERVED);
  assert_int_equal(m[4].addr, 1ull << 32);
  assert_int_equal(m[4].size, 32 << 20);
  assert_int_equal(m[4].type, LINUX_E820_RAM);
  assert_int_equal(vmm__linux_e820(vm, m, 2), 2); /* Bounded by the capacity. */
  vmm_vm_destroy(vm);
}

static void test_in_kernel_decompression_loads_bzimage_at_pref_address(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(RAM);
  struct buf k = make_kernel(VMM_LINUX_COMP_XZ);
  vmm_linux_info_t info;
  assert_int_equal(load(vm, &k, VMM_LINUX_IN_KERNEL_DECOMPRESS, NULL, NULL, 0, &info), 0);
  assert_int_equal(info.host_decompressed, 0);
  assert_int_equal(info.entry, KADDR + 0x200);
  assert_int_equal(info.kernel_end, KADDR + 0x400000);
  uint8_t pm[16];
  vmm_vm_read(vm, KADDR, pm, 16);
  assert_memory_equal(pm, k.p + 1024, 16);
  assert_int_equal(rd32(vm, info.boot_params + HDR_CODE32_START), KADDR);
  free(k.p);
  vmm_vm_destroy(vm);
}

static void test_formats_without_host_decompressor_fall_back_to_the_kernel(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(RAM);
  struct buf fake = {malloc(64), 64};
  memcpy(fake.p, "BZh91AY&SY", 10);
  memset(fake.p + 10, 0, 54);
  struct buf k = make_bzimage(&fake);
  vmm_linux_info_t info;
  assert_int_equal(load(vm, &k, 0, NULL, NULL, 0, &info), 0);
  assert_int_equal(info.compression, VMM_LINUX_COMP_BZIP2);
  assert_int_equal(info.host_decompressed, 0);
  assert_int_equal(info.entry, KADDR + 0x200);
  free(fake.p);
  free(k.p);
  vmm_vm_destroy(vm);
}

static void test_elf_vmlinux_loads_with_synthesized_header(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(RAM);
  struct buf elf = make_elf(KADDR, 8192, 4096);
  vmm_linux_info_t info;
  assert_int_equal(load(vm, &elf, 0, "x", NULL, 0, &info), 0);
  assert_int_equal(info.image, VMM_LINUX_IMAGE_ELF);
  assert_int_equal(info.entry, KADDR);
  assert_int_equal(info.kernel_end, KADDR + 8192 + 4096);
  assert_int_equal(rd32(vm, info.boot_params + HDR_HEADER), LINUX_HDRS_MAGIC);
  check_loaded_elf(vm);
  /* A virtual e_entry is translated through the segment. */
  ((Elf64_Ehdr *)elf.p)->e_entry = 0xffffffff80000000ull + KADDR + 16;
  assert_int_equal(load(vm, &elf, 0, NULL, NULL, 0, &info), 0);
  assert_int_equal(info.entry, KADDR + 16);
  free(elf.p);
  vmm_vm_destroy(vm);
}

static void test_mptable_checksums_and_describes_cpus(void **state) {
  (void)state;
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.ram_size = RAM;
  cfg.max_vcpus = 4;
  vmm_vm_t *vm = NULL;
  assert_int_equal(vmm__vm_create_with_ops(&cfg, &mock_backend_ops, &vm), 0);
  struct buf k = make_kernel(VMM_LINUX_COMP_GZIP);
  vmm_linux_info_t info;
  assert_int_equal(load(vm, &k, 0, NULL, NULL, 0, &info), 0);
  uint8_t fps[16];
  vmm_vm_read(vm, VMM_LINUX_MPTABLE_GPA, fps, 16);
  assert_memory_equal(fps, "_MP_", 4);
  uint8_t sum = 0;
  for (int i = 0; i < 16; i++) sum = (uint8_t)(sum + fps[i]);
  assert_int_equal(sum, 0);
  uint32_t table;
  memcpy(&table, fps + 4, 4);
  uint8_t hdr[1024];
  vmm_vm_read(vm, table, hdr, 44);
  assert_memory_equal(hdr, "PCMP", 4);
  uint16_t len, count;
  memcpy(&len, hdr + 4, 2);
  memcpy(&count, hdr + 34, 2);
  assert_int_equal(len, vmm__mptable_size(4) - 16);
  assert_int_equal(count, 4 + 2 + 16 + 2);
  vmm_vm_read(vm, table, hdr, len);
  sum = 0;
  for (int i = 0; i < len; i++) sum = (uint8_t)(sum + hdr[i]);
  assert_int_equal(sum, 0);
  assert_int_equal(hdr[44], 0);      /* Processor entry. */
  assert_int_equal(hdr[44 + 3], 3);  /* Enabled, bootstrap. */
  assert_int_equal(hdr[64 + 3], 1);  /* Enabled. */
  free(k.p);
  vmm_vm_destroy(vm);
}

static void test_setup_linux_gives_the_64bit_boot_state(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(RAM);
  vmm_vcpu_t *vcpu;
  assert_int_equal(vmm_vcpu_create(vm, 0, &vcpu), 0);
  struct buf k = make_kernel(VMM_LINUX_COMP_ZSTD);
  vmm_linux_info_t info;
  assert_int_equal(load(vm, &k, 0, NULL, NULL, 0, &info), 0);
  assert_int_equal(vmm_vcpu_setup_linux(vcpu, &info), 0);
  vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
  assert_int_equal(vmm_vcpu_get_state(vcpu, &st), 0);
  assert_int_equal(st.regs.rip, KADDR);
  assert_int_equal(st.regs.rsi, VMM_LINUX_BOOT_PARAMS_GPA);
  assert_int_equal(st.regs.rflags & VMM_RFLAGS_IF, 0);
  assert_int_equal(st.cs.selector, 0x10);
  assert_int_equal(st.cs.l, 1);
  assert_int_equal(st.ds.selector, 0x18);
  assert_int_equal(st.ss.selector, 0x18);
  assert_true(st.cr0 & VMM_CR0_PG && st.cr0 & VMM_CR0_PE);
  assert_true(st.cr4 & VMM_CR4_PAE);
  assert_true(st.efer & VMM_EFER_LMA);
  assert_int_equal(st.cr3, VMM_LINUX_PML4_GPA);
  /* GDT entries 2 and 3 decode to the segments loaded; 2 MiB identity pages. */
  uint64_t d;
  vmm_vm_read(vm, VMM_LINUX_GDT_GPA + 0x10, &d, 8);
  vmm_segment_t seg;
  vmm__segment_from_desc(d, 0, 0x10, &seg);
  assert_int_equal(seg.l, 1);
  assert_int_equal(seg.type, 0xb);
  uint64_t pde;
  vmm_vm_read(vm, VMM_LINUX_PML4_GPA + 2 * 4096 + 8 * 8, &pde, 8);
  assert_int_equal(pde, (8ull << 21) | 0x83);
  free(k.p);
  vmm_vm_destroy(vm);
}

/* ---- malformed images and bad arguments ---- */

static void expect(uint32_t comp, void (*mangle)(struct buf *), int want) {
  vmm_vm_t *vm = mock_vm_create(RAM);
  struct buf k = make_kernel(comp);
  mangle(&k);
  vmm_linux_info_t info;
  int rc = load(vm, &k, 0, NULL, NULL, 0, &info);
  if (rc != want) fprintf(stderr, "comp %u: got %d, want %d\n", comp, rc, want);
  assert_int_equal(rc, want);
  free(k.p);
  vmm_vm_destroy(vm);
}

static void m_truncate_small(struct buf *k) { k->n = 600; }
static void m_truncate_file(struct buf *k) { k->n -= 100; }
/* Cuts 100 bytes out of the end of the compressed stream, keeping its trailing size. */
static void m_truncate_stream(struct buf *k) {
  memmove(k->p + k->n - 104, k->p + k->n - 4, 4);
  k->n -= 100;
  uint32_t len;
  memcpy(&len, k->p + HDR_PAYLOAD_LENGTH, 4);
  put32le(k->p + HDR_PAYLOAD_LENGTH, len - 100);
}
static void m_bad_magic(struct buf *k) { k->p[HDR_HEADER] = 'X'; }
static void m_old_protocol(struct buf *k) { k->p[HDR_VERSION] = 0x0b; }
static void m_setup_past_end(struct buf *k) { k->p[HDR_SETUP_SECTS] = 200; }
static void m_short_header(struct buf *k) { k->p[HDR_JUMP + 1] = 0x10; }
static void m_zimage(struct buf *k) { k->p[HDR_LOADFLAGS] = 0; }
static void m_no_64bit(struct buf *k) { k->p[HDR_XLOADFLAGS] = 0x02; }
static void m_bad_align(struct buf *k) { put32le(k->p + HDR_KERNEL_ALIGNMENT, 0x3000); }
static void m_payload_outside(struct buf *k) { put32le(k->p + HDR_PAYLOAD_OFFSET, 0xfffffff0); }
static void m_payload_len_outside(struct buf *k) { put32le(k->p + HDR_PAYLOAD_LENGTH, 0x7fffffff); }
static void m_init_size_absurd(struct buf *k) { put32le(k->p + HDR_INIT_SIZE, 0xf0000000); }
static void m_init_size_small(struct buf *k) { put32le(k->p + HDR_INIT_SIZE, 16); }
static void m_pref_low(struct buf *k) { put32le(k->p + HDR_PREF_ADDRESS, 0x1000); }
static void m_corrupt_payload(struct buf *k) {
  for (size_t i = 1024 + 0x200 + 40; i < 1024 + 0x200 + 80; i++) k->p[i] ^= 0x5a;
}
static void m_declared_huge(struct buf *k) { put32le(k->p + k->n - 4, 0xfffffff0); }
static void m_declared_small(struct buf *k) { put32le(k->p + k->n - 4, 100); }
static void m_declared_large(struct buf *k) {
  uint32_t v;
  memcpy(&v, k->p + k->n - 4, 4);
  put32le(k->p + k->n - 4, v + 10);
}

static void test_malformed_bzimages_are_refused(void **state) {
  (void)state;
  expect(VMM_LINUX_COMP_GZIP, m_truncate_small, VMM_ENOEXEC);
  expect(VMM_LINUX_COMP_GZIP, m_bad_magic, VMM_ENOEXEC);
  expect(VMM_LINUX_COMP_GZIP, m_old_protocol, VMM_ENOEXEC);
  expect(VMM_LINUX_COMP_GZIP, m_setup_past_end, VMM_ENOEXEC);
  expect(VMM_LINUX_COMP_GZIP, m_short_header, VMM_ENOEXEC);
  expect(VMM_LINUX_COMP_GZIP, m_zimage, VMM_ENOEXEC);
  expect(VMM_LINUX_COMP_GZIP, m_no_64bit, VMM_ENOEXEC);
  expect(VMM_LINUX_COMP_GZIP, m_bad_align, VMM_ENOEXEC);
  expect(VMM_LINUX_COMP_GZIP, m_payload_outside, VMM_ENOEXEC);
  expect(VMM_LINUX_COMP_GZIP, m_payload_len_outside, VMM_ENOEXEC);
  expect(VMM_LINUX_COMP_GZIP, m_init_size_absurd, VMM_ENOEXEC);
  expect(VMM_LINUX_COMP_GZIP, m_init_size_small, VMM_ENOEXEC);
  expect(VMM_LINUX_COMP_GZIP, m_pref_low, VMM_ENOEXEC);
}

static void test_corrupt_payloads_are_refused(void **state) {
  (void)state;
  static const uint32_t comps[] = {VMM_LINUX_COMP_GZIP, VMM_LINUX_COMP_XZ, VMM_LINUX_COMP_ZSTD,
                                   VMM_LINUX_COMP_LZ4};
  for (size_t i = 0; i < 4; i++) {
    expect(comps[i], m_corrupt_payload, VMM_ECORRUPT);
    expect(comps[i], m_declared_small, VMM_ECORRUPT);
    expect(comps[i], m_declared_large, VMM_ECORRUPT);
    expect(comps[i], m_declared_huge, VMM_ELIMIT); /* Refused before allocating. */
  }
  /* A file cut short leaves payload_length pointing outside it; a stream cut short fails. */
  expect(VMM_LINUX_COMP_XZ, m_truncate_file, VMM_ENOEXEC);
  for (size_t i = 0; i < 4; i++) expect(comps[i], m_truncate_stream, VMM_ECORRUPT);
}

static void test_decompressor_bounds(void **state) {
  (void)state;
  uint8_t *out;
  size_t n;
  uint8_t tiny[4] = {1, 0, 0, 0};
  assert_int_equal(vmm__linux_decompress(VMM_LINUX_COMP_GZIP, tiny, 4, 1 << 20, &out, &n), VMM_ECORRUPT);
  assert_null(out);
  assert_int_equal(vmm__linux_decompress(VMM_LINUX_COMP_BZIP2, tiny, 4, 1 << 20, &out, &n), VMM_ENOSYS);
  struct buf elf = make_elf(KADDR, 4096, 0);
  struct buf z = compress_as(VMM_LINUX_COMP_ZSTD, &elf);
  assert_int_equal(vmm__linux_decompress(VMM_LINUX_COMP_ZSTD, z.p, z.n, 1000, &out, &n), VMM_ELIMIT);
  assert_int_equal(vmm__linux_decompress(VMM_LINUX_COMP_ZSTD, z.p, z.n, 1 << 20, &out, &n), 0);
  assert_int_equal(n, elf.n);
  assert_memory_equal(out, elf.p, n);
  free(out);
  free(elf.p);
  free(z.p);
}

static void test_payload_that_is_not_elf_is_refused(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(RAM);
  struct buf junk = {calloc(1, 5000), 5000};
  struct buf z = compress_as(VMM_LINUX_COMP_GZIP, &junk);
  struct buf k = make_bzimage(&z);
  vmm_linux_info_t info;
  assert_int_equal(load(vm, &k, 0, NULL, NULL, 0, &info), VMM_ENOEXEC);
  free(junk.p);
  free(z.p);
  free(k.p);
  vmm_vm_destroy(vm);
}

static void test_bad_elf_kernels_are_refused(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(RAM);
  vmm_linux_info_t info;
  struct buf e = make_elf(0x80000, 4096, 0); /* Below 1 MiB. */
  assert_int_equal(load(vm, &e, 0, NULL, NULL, 0, &info), VMM_ENOEXEC);
  free(e.p);
  e = make_elf(RAM - 4096, 8192, 0); /* Past the end of RAM. */
  assert_int_equal(load(vm, &e, 0, NULL, NULL, 0, &info), VMM_EFAULT);
  free(e.p);
  e = make_elf(KADDR, 4096, 0);
  ((Elf64_Phdr *)(e.p + sizeof(Elf64_Ehdr)))->p_offset = 1ull << 40; /* Data outside. */
  assert_int_equal(load(vm, &e, 0, NULL, NULL, 0, &info), VMM_ENOEXEC);
  free(e.p);
  e = make_elf(KADDR, 4096, 0);
  ((Elf64_Ehdr *)e.p)->e_entry = 0x12345; /* Entry outside every segment. */
  assert_int_equal(load(vm, &e, 0, NULL, NULL, 0, &info), VMM_ENOEXEC);
  ((Elf64_Ehdr *)e.p)->e_phnum = 1000;
  assert_int_equal(load(vm, &e, 0, NULL, NULL, 0, &info), VMM_ENOEXEC);
  e.n = 10; /* Neither bzImage nor a whole ELF header. */
  assert_int_equal(load(vm, &e, 0, NULL, NULL, 0, &info), VMM_ENOEXEC);
  free(e.p);
  vmm_vm_destroy(vm);
}

static void test_limits_and_arguments(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(RAM);
  struct buf k = make_kernel(VMM_LINUX_COMP_GZIP);
  vmm_linux_info_t info = VMM_LINUX_INFO_INIT;
  vmm_linux_config_t c = VMM_LINUX_CONFIG_INIT;
  assert_int_equal(vmm_linux_load(NULL, &c, &info), VMM_EINVAL);
  assert_int_equal(vmm_linux_load(vm, NULL, &info), VMM_EINVAL);
  assert_int_equal(vmm_linux_load(vm, &c, NULL), VMM_EINVAL);
  assert_int_equal(vmm_linux_load(vm, &c, &info), VMM_EINVAL); /* No kernel. */
  c.kernel = k.p;
  c.kernel_size = k.n;
  c.flags = 0x80;
  assert_int_equal(vmm_linux_load(vm, &c, &info), VMM_EINVAL);
  c.flags = 0;
  c.struct_size = 8;
  assert_int_equal(vmm_linux_load(vm, &c, &info), VMM_EINVAL);
  c.struct_size = sizeof(c);
  info.struct_size = 4;
  assert_int_equal(vmm_linux_load(vm, &c, &info), VMM_EINVAL);
  info.struct_size = sizeof(info);
  c.max_kernel_size = 1000; /* The image itself is larger. */
  assert_int_equal(vmm_linux_load(vm, &c, &info), VMM_ELIMIT);
  c.max_kernel_size = 0;
  char *longcl = malloc(3000);
  memset(longcl, 'a', 2999);
  longcl[2999] = 0;
  assert_int_equal(load(vm, &k, 0, longcl, NULL, 0, &info), VMM_ELIMIT);
  free(longcl);
  static uint8_t big[RAM / 2];
  assert_int_equal(load(vm, &k, 0, NULL, big, RAM - (1 << 20), &info), VMM_EFAULT);
  assert_int_equal(load(vm, &k, 0, NULL, big, RAM + 1, &info), VMM_ELIMIT);
  c.kernel = NULL;
  c.kernel_path = "/nonexistent/vmlinuz";
  assert_int_equal(vmm_linux_load(vm, &c, &info), VMM_EIO);
  c.kernel_path = "/";
  assert_int_equal(vmm_linux_load(vm, &c, &info), VMM_EIO);
  vmm_vm_destroy(vm);

  /* RAM that does not start at 0, or too little for the kernel. */
  vm = mock_vm_create(0);
  vmm_vm_map_ram(vm, 1 << 20, RAM, 0, NULL);
  assert_int_equal(load(vm, &k, 0, NULL, NULL, 0, &info), VMM_EFAULT);
  vmm_vm_destroy(vm);
  vm = mock_vm_create(8 << 20);
  assert_int_equal(load(vm, &k, 0, NULL, NULL, 0, &info), VMM_EFAULT);
  assert_int_equal(load(vm, &k, VMM_LINUX_IN_KERNEL_DECOMPRESS, NULL, NULL, 0, &info), VMM_EFAULT);
  vmm_vm_destroy(vm);
  free(k.p);
}

static void test_kernel_and_initrd_from_files(void **state) {
  (void)state;
  char kpath[] = "/tmp/test_linux_kXXXXXX", ipath[] = "/tmp/test_linux_iXXXXXX";
  int kfd = mkstemp(kpath), ifd = mkstemp(ipath);
  struct buf k = make_kernel(VMM_LINUX_COMP_LZ4);
  assert_int_equal(write(kfd, k.p, k.n), (ssize_t)k.n);
  assert_int_equal(write(ifd, "initrd!", 7), 7);
  close(kfd);
  close(ifd);
  vmm_vm_t *vm = mock_vm_create(RAM);
  vmm_linux_config_t c = VMM_LINUX_CONFIG_INIT;
  c.kernel_path = kpath;
  c.initrd_path = ipath;
  vmm_linux_info_t info = VMM_LINUX_INFO_INIT;
  assert_int_equal(vmm_linux_load(vm, &c, &info), 0);
  assert_int_equal(info.initrd_size, 7);
  c.initrd_path = "/nonexistent";
  assert_int_equal(vmm_linux_load(vm, &c, &info), VMM_EIO);
  unlink(kpath);
  unlink(ipath);
  free(k.p);
  vmm_vm_destroy(vm);
}

static void test_setup_linux_errors(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(RAM);
  vmm_vcpu_t *vcpu;
  assert_int_equal(vmm_vcpu_create(vm, 0, &vcpu), 0);
  vmm_linux_info_t info = VMM_LINUX_INFO_INIT;
  assert_int_equal(vmm_vcpu_setup_linux(NULL, &info), VMM_EINVAL);
  assert_int_equal(vmm_vcpu_setup_linux(vcpu, NULL), VMM_EINVAL);
  info.boot_params = VMM_LINUX_BOOT_PARAMS_GPA;
  info.entry = 1ull << 40; /* Not RAM. */
  assert_int_equal(vmm_vcpu_setup_linux(vcpu, &info), VMM_EFAULT);
  info.struct_size = 4;
  assert_int_equal(vmm_vcpu_setup_linux(vcpu, &info), VMM_EINVAL);
  vmm_vm_destroy(vm);
}

/* ---- platform ---- */

static vmm_exit_t io_exit(uint16_t port, int is_write, uint64_t data) {
  vmm_exit_t e = mock_io_exit(port, 1, is_write, data);
  return e;
}

static void test_pc_devices_reset_clock_and_errors(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(RAM);
  vmm_vcpu_t *vcpu;
  assert_int_equal(vmm_vcpu_create(vm, 0, &vcpu), 0);
  vmm_device_t *dev;
  assert_int_equal(vmm_linux_pc_create(NULL, &dev), VMM_EINVAL);
  assert_int_equal(vmm_linux_pc_create(vm, &dev), 0);
  assert_string_equal(vmm_device_type(dev), "linux-pc");
  assert_int_equal(vmm_linux_pc_create(vm, NULL), VMM_EEXIST);
  vmm_exit_t e = io_exit(0x70, 1, 0x0b);
  mock_push_exit(vcpu, &e);
  e = io_exit(0x71, 0, 0);
  mock_push_exit(vcpu, &e);
  e = io_exit(0x64, 1, 0xfe);
  mock_push_exit(vcpu, &e);
  vmm_exit_t out;
  memset(&out, 0, sizeof(out));
  assert_int_equal(vmm_vcpu_run(vcpu, &out), 0);
  assert_int_equal(out.reason, VMM_EXIT_GUEST_EXIT);
  assert_int_equal(out.guest_exit.status, VMM_LINUX_RESET_STATUS);
  /* Register B read back as 24-hour BCD. */
  struct mock_vcpu *m = mock_vcpu_of(vcpu);
  int found = 0;
  for (size_t i = 0; i < m->ncompleted; i++)
    if (m->completed[i].reason == VMM_EXIT_IO && m->completed[i].io.port == 0x71) {
      assert_int_equal(m->completed[i].io.data, 0x02);
      found = 1;
    }
  assert_true(found);
  vmm_device_destroy(dev);
  assert_int_equal(vmm_linux_pc_create(vm, NULL), 0); /* Ports free again. */
  vmm_vm_destroy(vm);
}

static void test_irqchip_flag_is_refused_without_interrupt_controllers(void **state) {
  (void)state;
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.flags = VMM_VM_IRQCHIP;
  vmm_vm_t *vm = (vmm_vm_t *)1;
  assert_int_equal(vmm__vm_create_with_ops(&cfg, &mock_backend_ops, &vm), VMM_ENOSYS);
  assert_null(vm);
  cfg.flags = 1u << 7;
  assert_int_equal(vmm__vm_create_with_ops(&cfg, &mock_backend_ops, &vm), VMM_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bzimage_each_compression_decompresses_on_host),
      cmocka_unit_test(test_zero_page_has_header_cmdline_initrd_and_e820),
      cmocka_unit_test(test_e820_follows_ram_regions_and_readonly_is_reserved),
      cmocka_unit_test(test_in_kernel_decompression_loads_bzimage_at_pref_address),
      cmocka_unit_test(test_formats_without_host_decompressor_fall_back_to_the_kernel),
      cmocka_unit_test(test_elf_vmlinux_loads_with_synthesized_header),
      cmocka_unit_test(test_mptable_checksums_and_describes_cpus),
      cmocka_unit_test(test_setup_linux_gives_the_64bit_boot_state),
      cmocka_unit_test(test_malformed_bzimages_are_refused),
      cmocka_unit_test(test_corrupt_payloads_are_refused),
      cmocka_unit_test(test_decompressor_bounds),
      cmocka_unit_test(test_payload_that_is_not_elf_is_refused),
      cmocka_unit_test(test_bad_elf_kernels_are_refused),
      cmocka_unit_test(test_limits_and_arguments),
      cmocka_unit_test(test_kernel_and_initrd_from_files),
      cmocka_unit_test(test_setup_linux_errors),
      cmocka_unit_test(test_pc_devices_reset_clock_and_errors),
      cmocka_unit_test(test_irqchip_flag_is_refused_without_interrupt_controllers),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
