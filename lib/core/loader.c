/* Image loaders: raw binaries and ELF64 executables. Nothing read from an image is trusted:
 * every offset, size and address is checked against the file and against guest RAM before
 * use. */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define VMM_ELF_MAX_PHDRS 256

int vmm_load_flat(vmm_vm_t *vm, uint64_t gpa, const void *data, size_t size,
                  vmm_image_info_t *info) {
  if (vm == NULL || (data == NULL && size)) return VMM_EINVAL;
  int rc = vmm_vm_write(vm, gpa, data, size);
  if (rc) return rc;
  if (info) {
    info->entry = gpa;
    info->low = gpa;
    info->high = gpa + size;
  }
  return 0;
}

static int vmm_elf_fail(const char *why) {
  VMM_LOG_E("ELF image refused: %s", why);
  return VMM_ENOEXEC;
}

int vmm_load_elf(vmm_vm_t *vm, const void *data, size_t size, vmm_image_info_t *info) {
  if (vm == NULL || data == NULL) return VMM_EINVAL;
  const uint8_t *img = data;
  if (size < sizeof(Elf64_Ehdr)) return vmm_elf_fail("shorter than an ELF header");
  Elf64_Ehdr eh;
  memcpy(&eh, img, sizeof(eh));
  if (memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) return vmm_elf_fail("bad magic");
  if (eh.e_ident[EI_CLASS] != ELFCLASS64) return vmm_elf_fail("not ELF64");
  if (eh.e_ident[EI_DATA] != ELFDATA2LSB) return vmm_elf_fail("not little-endian");
  if (eh.e_ident[EI_VERSION] != EV_CURRENT) return vmm_elf_fail("unknown ELF version");
  if (eh.e_machine != EM_X86_64) return vmm_elf_fail("not x86-64");
  if (eh.e_type != ET_EXEC && eh.e_type != ET_DYN) return vmm_elf_fail("not an executable");
  if (eh.e_phentsize != sizeof(Elf64_Phdr)) return vmm_elf_fail("bad program header size");
  if (eh.e_phnum == 0) return vmm_elf_fail("no program headers");
  if (eh.e_phnum > VMM_ELF_MAX_PHDRS) return vmm_elf_fail("too many program headers");
  if (eh.e_phoff > size || (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr) > size - eh.e_phoff)
    return vmm_elf_fail("program headers outside the file");

  /* Check every segment before writing any, so a bad image leaves guest RAM untouched. */
  for (unsigned i = 0; i < eh.e_phnum; i++) {
    Elf64_Phdr ph;
    memcpy(&ph, img + eh.e_phoff + i * sizeof(ph), sizeof(ph));
    if (ph.p_type == PT_INTERP)
      return vmm_elf_fail("asks for a program interpreter: a Linux program, not a guest image");
  }
  uint64_t low = UINT64_MAX, high = 0;
  size_t nload = 0;
  for (unsigned i = 0; i < eh.e_phnum; i++) {
    Elf64_Phdr ph;
    memcpy(&ph, img + eh.e_phoff + i * sizeof(ph), sizeof(ph));
    if (ph.p_type != PT_LOAD || ph.p_memsz == 0) continue;
    if (ph.p_filesz > ph.p_memsz) return vmm_elf_fail("segment file size exceeds memory size");
    if (ph.p_offset > size || ph.p_filesz > size - ph.p_offset)
      return vmm_elf_fail("segment data outside the file");
    if (ph.p_paddr + ph.p_memsz < ph.p_paddr) return vmm_elf_fail("segment wraps around");
    if (vmm__region_find(vm, ph.p_paddr, ph.p_memsz) == NULL) {
      VMM_LOG_E("ELF segment %u at %#llx+%#llx is not inside guest RAM", i,
                (unsigned long long)ph.p_paddr, (unsigned long long)ph.p_memsz);
      return VMM_EFAULT;
    }
    if (ph.p_paddr < low) low = ph.p_paddr;
    if (ph.p_paddr + ph.p_memsz > high) high = ph.p_paddr + ph.p_memsz;
    nload++;
  }
  if (nload == 0) return vmm_elf_fail("no loadable segments");
  /* The entry is a virtual address; segments load at their physical ones (they differ for
   * higher-half kernels such as vmlinux). */
  uint64_t entry = UINT64_MAX;
  for (unsigned i = 0; i < eh.e_phnum && entry == UINT64_MAX; i++) {
    Elf64_Phdr ph;
    memcpy(&ph, img + eh.e_phoff + i * sizeof(ph), sizeof(ph));
    if (ph.p_type == PT_LOAD && eh.e_entry >= ph.p_vaddr && eh.e_entry - ph.p_vaddr < ph.p_memsz)
      entry = ph.p_paddr + (eh.e_entry - ph.p_vaddr);
  }
  if (entry == UINT64_MAX) return vmm_elf_fail("entry point outside the loaded segments");

  for (unsigned i = 0; i < eh.e_phnum; i++) {
    Elf64_Phdr ph;
    memcpy(&ph, img + eh.e_phoff + i * sizeof(ph), sizeof(ph));
    if (ph.p_type != PT_LOAD || ph.p_memsz == 0) continue;
    uint8_t *dst = vmm__gpa_wptr(vm, ph.p_paddr, ph.p_memsz);
    if (dst == NULL) return VMM_ENOMEM; /* checked RAM above: only owning a clone's page fails */
    memcpy(dst, img + ph.p_offset, ph.p_filesz);
    memset(dst + ph.p_filesz, 0, ph.p_memsz - ph.p_filesz);
    vmm__host_wrote(vm, ph.p_paddr, ph.p_memsz);
  }
  if (info) {
    info->entry = entry;
    info->low = low;
    info->high = high;
  }
  return 0;
}

int vmm__read_file(const char *path, uint64_t max, uint8_t **out, size_t *out_size) {
  *out = NULL;
  *out_size = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    VMM_LOG_E("cannot open %s: %s", path, strerror(errno));
    return VMM_EIO;
  }
  struct stat st;
  int rc = 0;
  uint8_t *buf = NULL;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    VMM_LOG_E("%s is not a regular file", path);
    rc = VMM_EIO;
    goto out;
  }
  if ((uint64_t)st.st_size > max) {
    VMM_LOG_E("%s (%lld bytes) is larger than the limit of %llu bytes", path,
              (long long)st.st_size, (unsigned long long)max);
    rc = VMM_ELIMIT;
    goto out;
  }
  buf = malloc(st.st_size ? (size_t)st.st_size : 1);
  if (buf == NULL) {
    rc = VMM_ENOMEM;
    goto out;
  }
  size_t done = 0;
  while (done < (size_t)st.st_size) {
    ssize_t n = read(fd, buf + done, (size_t)st.st_size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      VMM_LOG_E("cannot read %s", path);
      rc = VMM_EIO;
      goto out;
    }
    done += (size_t)n;
  }
  *out = buf;
  *out_size = done;
  buf = NULL;
out:
  free(buf);
  close(fd);
  return rc;
}


int vmm_load_file(vmm_vm_t *vm, const char *path, int flat, uint64_t flat_gpa,
                  vmm_image_info_t *info) {
  if (vm == NULL || path == NULL) return VMM_EINVAL;
  /* An image larger than all of guest RAM cannot fit: refuse it before reading it. */
  uint64_t ram = 0;
  for (size_t i = 0; i < vm->nregions; i++) ram += vm->regions[i]->size;
  uint8_t *buf;
  size_t size;
  int rc = vmm__read_file(path, ram, &buf, &size);
  if (rc) return rc;
  rc = flat ? vmm_load_flat(vm, flat_gpa, buf, size, info) : vmm_load_elf(vm, buf, size, info);
  free(buf);
  return rc;
}
