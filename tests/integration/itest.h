/* Shared by the integration tests: their command line. */
#ifndef LIBVMM_TEST_ITEST_H
#define LIBVMM_TEST_ITEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libvmm/vmm.h>

/* --guest-dir DIR, --backend NAME (repeatable; kvm, bt and pv when none is given) and, where
 * clones is not NULL, --clones N. Returns 0, or 2 after a usage message. */
static inline int itest_args(int argc, char **argv, const char **guest_dir, vmm_backend_t want[3],
                             int *nwant, int *clones) {
  static const vmm_backend_t all[3] = {VMM_BACKEND_KVM, VMM_BACKEND_BT, VMM_BACKEND_PV};
  memcpy(want, all, sizeof(all));
  *nwant = 3;
  int custom = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--guest-dir") == 0 && i + 1 < argc) {
      *guest_dir = argv[++i];
    } else if (clones && strcmp(argv[i], "--clones") == 0 && i + 1 < argc) {
      *clones = atoi(argv[++i]);
    } else if (strcmp(argv[i], "--backend") == 0 && i + 1 < argc) {
      if (!custom) *nwant = 0, custom = 1;
      if (*nwant == 3 || vmm_backend_parse(argv[++i], &want[*nwant]) != 0) return 2;
      (*nwant)++;
    } else {
      fprintf(stderr, "usage: %s --guest-dir DIR [--backend NAME]...%s\n", argv[0],
              clones ? " [--clones N]" : "");
      return 2;
    }
  }
  return 0;
}

#endif
