/* The contract between the pv backend and its sandbox stub (pv_stub.c): where the stub lives,
 * the syscall gadget the seccomp filter allows, and the one message that maps guest RAM.
 * Included by the library and by the freestanding stub. */
#ifndef LIBVMM_PV_PROTO_H
#define LIBVMM_PV_PROTO_H

#include <stdint.h>

/* The stub is linked here, far above any guest RAM the backend accepts (VMM_PV_RAM_LIMIT)
 * and below the stack, vDSO and vsyscall page the kernel adds. */
#define VMM_PV_STUB_BASE 0x7e0000000000ull
/* Start of the stub's text: `syscall; ret`, through which the stub makes all its calls; the
 * seccomp filter accepts system calls from this address only. */
#define VMM_PV_GADGET_SELF (VMM_PV_STUB_BASE + 0x1000)
/* Guest RAM must end below this address in the sandbox. */
#define VMM_PV_RAM_LIMIT 0x400000000000ull

/* The stub's argv[1] (only the first letter counts). */
#define VMM_PV_STUB_ARG_TSC "trap-rdtsc"
#define VMM_PV_STUB_ARG_NOTSC "native-rdtsc"
#define VMM_PV_STUB_ARG_TSC_TEST "probe-rdtsc"

/* The control socket is fd 3 in the stub until it starts the guest. */
#define VMM_PV_STUB_FD 3
#define VMM_PV_MAX_MAPS 64
#define VMM_PV_MSG_MAGIC 0x4d56504bu /* "KPVM" */

struct vmm_pv_map {
  uint64_t addr;   /* Where to map in the sandbox (the guest-physical address). */
  uint64_t len;
  uint64_t offset; /* Into the memfd. */
  uint32_t prot;   /* PROT_* */
  uint32_t flags;  /* VMM_PV_MAP_* */
};

/* The entry maps nothing: the stub keeps its fd open as number `addr` (from
 * VMM_PV_KEEP_FD_BASE on), for the tracer's later mmap calls made through the gadget (a
 * clone's own pages, mapped over the shared base as the clone writes them). */
#define VMM_PV_MAP_KEEP_FD 1u
#define VMM_PV_KEEP_FD_BASE 100

/* One message: map `count` regions (their memfds ride along as SCM_RIGHTS, in order), close
 * everything and stop at int3 for the tracer to load the guest's registers. */
struct vmm_pv_msg {
  uint32_t magic;
  uint32_t count;
  struct vmm_pv_map maps[VMM_PV_MAX_MAPS];
};

/* The stub's first message, sent as soon as it starts: a userfaultfd of its address space
 * (attached as SCM_RIGHTS when `has_uffd`), which the library uses for dirty-page tracking
 * (write-protect, asynchronous mode) and the stub does not keep. */
#define VMM_PV_HELLO_MAGIC 0x4f4c4548u /* "HELO" */
struct vmm_pv_hello {
  uint32_t magic;
  uint32_t has_uffd;
};

/* Exit statuses of a stub that could not get ready (the library logs them). */
enum {
  VMM_PV_STUB_EXIT_EOF = 0,      /* The library closed the socket: nothing to do. */
  VMM_PV_STUB_EXIT_SETUP = 120,  /* prctl/rlimit/seccomp refused. */
  VMM_PV_STUB_EXIT_MSG = 121,    /* Malformed message or missing fds. */
  VMM_PV_STUB_EXIT_MAP = 122,    /* mmap of guest RAM failed. */
  VMM_PV_STUB_EXIT_RESUMED = 123 /* Resumed past the final int3 without guest registers. */
};

#endif /* LIBVMM_PV_PROTO_H */
