/* ELF and flat loaders on good and malformed images. */
#include <elf.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "mock_backend.h"

/* A minimal ELF64 executable: header, two program headers, then segment bytes. */
struct img {
  Elf64_Ehdr eh;
  Elf64_Phdr ph[2];
  uint8_t text[32];
  uint8_t data[16];
};

static void make_image(struct img *im) {
  memset(im, 0, sizeof(*im));
  memcpy(im->eh.e_ident, ELFMAG, SELFMAG);
  im->eh.e_ident[EI_CLASS] = ELFCLASS64;
  im->eh.e_ident[EI_DATA] = ELFDATA2LSB;
  im->eh.e_ident[EI_VERSION] = EV_CURRENT;
  im->eh.e_type = ET_EXEC;
  im->eh.e_machine = EM_X86_64;
  im->eh.e_version = EV_CURRENT;
  im->eh.e_entry = 0x100004;
  im->eh.e_phoff = offsetof(struct img, ph);
  im->eh.e_ehsize = sizeof(Elf64_Ehdr);
  im->eh.e_phentsize = sizeof(Elf64_Phdr);
  im->eh.e_phnum = 2;
  im->ph[0] = (Elf64_Phdr){.p_type = PT_LOAD, .p_offset = offsetof(struct img, text),
                           .p_paddr = 0x100000, .p_vaddr = 0x100000, .p_filesz = 32,
                           .p_memsz = 32, .p_flags = PF_R | PF_X};
  im->ph[1] = (Elf64_Phdr){.p_type = PT_LOAD, .p_offset = offsetof(struct img, data),
                           .p_paddr = 0x101000, .p_vaddr = 0x101000, .p_filesz = 16,
                           .p_memsz = 0x100, .p_flags = PF_R | PF_W};
  for (int i = 0; i < 32; i++) im->text[i] = (uint8_t)(0x90 + i);
  for (int i = 0; i < 16; i++) im->data[i] = (uint8_t)(i + 1);
}

static void test_elf_good_image_loads_segments_and_zeroes_bss(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(2 << 20);
  struct img im;
  make_image(&im);
  /* Dirty the BSS area first to see it cleared. */
  uint8_t junk[0x100];
  memset(junk, 0xee, sizeof(junk));
  vmm_vm_write(vm, 0x101000, junk, sizeof(junk));
  vmm_image_info_t info;
  assert_int_equal(vmm_load_elf(vm, &im, sizeof(im), &info), 0);
  assert_int_equal(info.entry, 0x100004);
  assert_int_equal(info.low, 0x100000);
  assert_int_equal(info.high, 0x101100);
  uint8_t back[0x100];
  assert_int_equal(vmm_vm_read(vm, 0x100000, back, 32), 0);
  assert_memory_equal(back, im.text, 32);
  assert_int_equal(vmm_vm_read(vm, 0x101000, back, 0x100), 0);
  assert_memory_equal(back, im.data, 16);
  for (int i = 16; i < 0x100; i++) assert_int_equal(back[i], 0);
  vmm_vm_destroy(vm);
}

static int log_count;
static char log_text[512];
static void count_log(vmm_log_level_t lvl, const char *msg, void *ud) {
  (void)lvl, (void)ud;
  log_count++;
  snprintf(log_text, sizeof(log_text), "%s", msg);
}

/* Each case damages the image one way and names what the loader must say. */
struct bad_case {
  const char *name;
  void (*damage)(struct img *im);
  int expect;
  const char *message;
};

static void bad_magic(struct img *im) { im->eh.e_ident[1] = 'X'; }
static void bad_class(struct img *im) { im->eh.e_ident[EI_CLASS] = ELFCLASS32; }
static void bad_endian(struct img *im) { im->eh.e_ident[EI_DATA] = ELFDATA2MSB; }
static void bad_machine(struct img *im) { im->eh.e_machine = EM_AARCH64; }
static void bad_type(struct img *im) { im->eh.e_type = ET_REL; }
static void bad_phentsize(struct img *im) { im->eh.e_phentsize = 40; }
static void no_phdrs(struct img *im) { im->eh.e_phnum = 0; }
static void many_phdrs(struct img *im) { im->eh.e_phnum = 60000; }
static void phoff_outside(struct img *im) { im->eh.e_phoff = 0xfffffffffffff000ull; }
static void filesz_gt_memsz(struct img *im) { im->ph[1].p_filesz = 0x200; }
static void data_outside_file(struct img *im) { im->ph[0].p_offset = 0x7fffffffffffffffull; }
static void size_overflow(struct img *im) { im->ph[0].p_filesz = ~0ull; im->ph[0].p_memsz = ~0ull; }
static void wraps(struct img *im) { im->ph[1].p_paddr = ~0ull - 8; }
static void outside_ram(struct img *im) { im->ph[1].p_paddr = 0x40000000; }
static void entry_outside(struct img *im) { im->eh.e_entry = 0x500000; }
static void interp(struct img *im) { im->ph[0].p_type = PT_INTERP; }
static void nothing_loadable(struct img *im) { im->ph[0].p_type = PT_NOTE; im->ph[1].p_type = PT_NULL; }

static const struct bad_case bad_cases[] = {
    {"bad magic", bad_magic, VMM_ENOEXEC, "bad magic"},
    {"32-bit", bad_class, VMM_ENOEXEC, "not ELF64"},
    {"big-endian", bad_endian, VMM_ENOEXEC, "little-endian"},
    {"aarch64", bad_machine, VMM_ENOEXEC, "not x86-64"},
    {"relocatable", bad_type, VMM_ENOEXEC, "not an executable"},
    {"phentsize", bad_phentsize, VMM_ENOEXEC, "program header size"},
    {"no phdrs", no_phdrs, VMM_ENOEXEC, "no program headers"},
    {"many phdrs", many_phdrs, VMM_ENOEXEC, "too many"},
    {"phoff", phoff_outside, VMM_ENOEXEC, "outside the file"},
    {"filesz", filesz_gt_memsz, VMM_ENOEXEC, "exceeds memory size"},
    {"offset", data_outside_file, VMM_ENOEXEC, "outside the file"},
    {"overflow", size_overflow, VMM_ENOEXEC, "outside the file"},
    {"wraps", wraps, VMM_ENOEXEC, "wraps"},
    {"outside RAM", outside_ram, VMM_EFAULT, "not inside guest RAM"},
    {"entry", entry_outside, VMM_ENOEXEC, "entry point"},
    {"nothing loadable", nothing_loadable, VMM_ENOEXEC, "no loadable"},
    {"interpreter", interp, VMM_ENOEXEC, "program interpreter"},
};

static void test_elf_malformed_images_are_refused_without_writes(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(2 << 20);
  vmm_log_set_callback(count_log, VMM_LOG_ERROR, NULL);
  for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
    struct img im;
    make_image(&im);
    bad_cases[i].damage(&im);
    log_count = 0;
    log_text[0] = 0;
    uint8_t zero[32] = {0};
    vmm_vm_write(vm, 0x100000, zero, sizeof(zero));
    int rc = vmm_load_elf(vm, &im, sizeof(im), NULL);
    if (rc != bad_cases[i].expect || strstr(log_text, bad_cases[i].message) == NULL)
      fail_msg("case '%s': rc %d, log '%s'", bad_cases[i].name, rc, log_text);
    assert_int_equal(log_count, 1);
    uint8_t back[32];
    vmm_vm_read(vm, 0x100000, back, sizeof(back));
    assert_memory_equal(back, zero, sizeof(zero)); /* Nothing was written. */
  }
  vmm_log_set_callback(NULL, VMM_LOG_ERROR, NULL);
  vmm_vm_destroy(vm);
}

static void test_elf_every_truncation_is_refused(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(2 << 20);
  struct img im;
  make_image(&im);
  for (size_t len = 0; len < sizeof(im); len++) {
    int rc = vmm_load_elf(vm, &im, len, NULL);
    assert_int_equal(rc, VMM_ENOEXEC);
  }
  assert_int_equal(vmm_load_elf(vm, &im, sizeof(im), NULL), 0);
  vmm_vm_destroy(vm);
}

static void test_flat_and_file_loading(void **state) {
  (void)state;
  vmm_vm_t *vm = mock_vm_create(1 << 20);
  const uint8_t code[] = {0xf4, 0xeb, 0xfd};
  vmm_image_info_t info;
  assert_int_equal(vmm_load_flat(vm, 0x8000, code, sizeof(code), &info), 0);
  assert_int_equal(info.entry, 0x8000);
  assert_int_equal(info.high, 0x8003);
  assert_int_equal(vmm_load_flat(vm, (1 << 20) - 1, code, sizeof(code), &info), VMM_EFAULT);

  char path[] = "/tmp/vmm-test-flat-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, code, sizeof(code)), sizeof(code));
  close(fd);
  assert_int_equal(vmm_load_file(vm, path, 1, 0x9000, &info), 0);
  uint8_t back[3];
  vmm_vm_read(vm, 0x9000, back, 3);
  assert_memory_equal(back, code, 3);
  assert_int_equal(vmm_load_file(vm, path, 0, 0, &info), VMM_ENOEXEC); /* Not an ELF. */
  unlink(path);
  assert_int_equal(vmm_load_file(vm, "/nonexistent/image", 0, 0, &info), VMM_EIO);
  assert_int_equal(vmm_load_file(vm, "/tmp", 0, 0, &info), VMM_EIO);
  vmm_vm_destroy(vm);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_elf_good_image_loads_segments_and_zeroes_bss),
      cmocka_unit_test(test_elf_malformed_images_are_refused_without_writes),
      cmocka_unit_test(test_elf_every_truncation_is_refused),
      cmocka_unit_test(test_flat_and_file_loading),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
