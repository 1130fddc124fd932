/* The pv sandbox stub: the only program that runs in a pv sandbox process before the guest.
 *
 * The library starts it with posix_spawn (fresh session, no environment, only the control
 * socket on fd 3). It sends the library a userfaultfd of its address space (for dirty-page
 * tracking) and keeps no copy. It drops what a guest could use: no new privileges, RDTSC
 * faults (where the host honours that), no core files, no fds but the socket, and a seccomp
 * filter that lets through only the five calls it still makes, and only from its one syscall
 * gadget. Then it waits for one message, maps guest RAM at the guest-physical addresses (and
 * keeps the fds of clones' own RAM files under fixed numbers), closes the socket and stops at
 * int3; the tracer loads the guest's registers from there. Only the gadget runs again: the
 * tracer makes mmap calls through it while the guest is stopped (pv_layer.c).
 *
 * Freestanding: no libc; compiled position-independent (RIP-relative addressing, the stub is
 * linked above 4 GiB) but linked at VMM_PV_STUB_BASE by pv_stub.ld. */
#include <stddef.h>
#include <stdint.h>

#include <asm/unistd.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/mman.h>
#include <linux/prctl.h>
#include <linux/resource.h>
#include <linux/seccomp.h>
#include <linux/userfaultfd.h>

#include "pv_proto.h"

/* Every system call of the stub goes through this one `syscall` instruction, at a fixed address
 * (pv_stub.ld checks it): the seccomp filter allows nothing from anywhere else. */
__asm__(".pushsection .text.gadgets,\"ax\",@progbits\n"
        ".globl vmm_pv_gadget_self\n"
        "vmm_pv_gadget_self:\n\tsyscall\n\tret\n"
        ".org 0x20\n"
        ".popsection\n"
        ".pushsection .text.start,\"ax\",@progbits\n"
        ".globl _start\n"
        "_start:\n\txor %ebp, %ebp\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall vmm_pv_stub_main\n"
        "\tud2\n"
        ".popsection\n");

void vmm_pv_stub_main(const long *sp) __attribute__((noreturn, used));
void *memset(void *dst, int c, size_t n);

void *memset(void *dst, int c, size_t n) {
  unsigned char *d = dst;
  while (n--) *d++ = (unsigned char)c;
  return dst;
}

static long sys6(long nr, long a, long b, long c, long d, long e, long f) {
  register long r10 __asm__("r10") = d;
  register long r8 __asm__("r8") = e;
  register long r9 __asm__("r9") = f;
  long ret;
  __asm__ volatile("call vmm_pv_gadget_self"
                   : "=a"(ret)
                   : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory", "cc");
  return ret;
}

static long sys3(long nr, long a, long b, long c) { return sys6(nr, a, b, c, 0, 0, 0); }

static __attribute__((noreturn)) void die(int code) {
  for (;;) sys3(__NR_exit_group, code, 0, 0);
}

/* The parts of struct msghdr / cmsghdr we need (x86-64 layout). */
struct pv_iovec {
  void *base;
  size_t len;
};
struct pv_msghdr {
  void *name;
  int namelen;
  struct pv_iovec *iov;
  size_t iovlen;
  void *control;
  size_t controllen;
  unsigned flags;
};
struct pv_cmsghdr {
  size_t len;
  int level;
  int type;
};
#define PV_SOL_SOCKET 1
#define PV_SCM_RIGHTS 1
#define PV_MSG_CMSG_CLOEXEC 0x40000000

#define LD_ABS(off) BPF_STMT(BPF_LD | BPF_W | BPF_ABS, (off))
#define JEQ(k, jt, jf) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (k), (jt), (jf))
#define RET(v) BPF_STMT(BPF_RET | BPF_K, (v))
/* Jump distance from instruction `from` to `to`. */
#define D(from, to) ((to) - (from) - 1)

static void install_filter(void) {
  enum { TRAP = 15, ALLOW = 16 };
  const uint64_t self_ip = VMM_PV_GADGET_SELF + 2;
  struct sock_filter f[] = {
      /* 0 */ LD_ABS(offsetof(struct seccomp_data, arch)),
      /* 1 */ JEQ(AUDIT_ARCH_X86_64, 0, D(1, TRAP)),
      /* 2 */ LD_ABS(offsetof(struct seccomp_data, nr)),
      /* 3 */ BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, D(3, TRAP), 0),
      /* 4 */ BPF_STMT(BPF_MISC | BPF_TAX, 0),
      /* 5 */ LD_ABS(offsetof(struct seccomp_data, instruction_pointer) + 4),
      /* 6 */ JEQ((uint32_t)(self_ip >> 32), 0, D(6, TRAP)),
      /* 7 */ LD_ABS(offsetof(struct seccomp_data, instruction_pointer)),
      /* 8 */ JEQ((uint32_t)self_ip, 0, D(8, TRAP)),
      /* 9 */ BPF_STMT(BPF_MISC | BPF_TXA, 0),
      /* 10 */ JEQ(__NR_recvmsg, D(10, ALLOW), 0),
      /* 11 */ JEQ(__NR_mmap, D(11, ALLOW), 0),
      /* 12 */ JEQ(__NR_close, D(12, ALLOW), 0),
      /* 13 */ JEQ(__NR_dup3, D(13, ALLOW), 0),
      /* 14 */ JEQ(__NR_exit_group, D(14, ALLOW), D(14, TRAP)),
      /* 15 */ RET(SECCOMP_RET_TRAP),
      /* 16 */ RET(SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {.len = sizeof(f) / sizeof(f[0]), .filter = f};
  if (sys3(__NR_seccomp, SECCOMP_SET_MODE_FILTER, 0, (long)&prog) != 0) die(VMM_PV_STUB_EXIT_SETUP);
}

/* Hands a userfaultfd of this address space to the library, which write-protects guest RAM
 * through it to track dirty pages; no copy stays here. */
static void send_hello(void) {
  struct vmm_pv_hello hello = {VMM_PV_HELLO_MAGIC, 0};
  long uffd = sys3(__NR_userfaultfd, 02000000 /* O_CLOEXEC */ | UFFD_USER_MODE_ONLY, 0, 0);
  union {
    struct pv_cmsghdr h;
    unsigned char buf[sizeof(struct pv_cmsghdr) + 8];
  } c;
  struct pv_iovec iov = {&hello, sizeof(hello)};
  struct pv_msghdr mh;
  memset(&mh, 0, sizeof(mh));
  mh.iov = &iov;
  mh.iovlen = 1;
  if (uffd >= 0) {
    hello.has_uffd = 1;
    memset(&c, 0, sizeof(c));
    c.h.len = sizeof(struct pv_cmsghdr) + sizeof(int);
    c.h.level = PV_SOL_SOCKET;
    c.h.type = PV_SCM_RIGHTS;
    int fd = (int)uffd;
    unsigned char *d = c.buf + sizeof(struct pv_cmsghdr);
    for (unsigned i = 0; i < sizeof(int); i++) d[i] = ((unsigned char *)&fd)[i];
    mh.control = &c;
    mh.controllen = sizeof(struct pv_cmsghdr) + 8;
  }
  if (sys3(__NR_sendmsg, VMM_PV_STUB_FD, (long)&mh, 0x4000 /* MSG_NOSIGNAL */) < 0)
    die(VMM_PV_STUB_EXIT_EOF);
  if (uffd >= 0) sys3(__NR_close, uffd, 0, 0);
}

static struct vmm_pv_msg msg;
static union {
  struct pv_cmsghdr h;
  unsigned char buf[sizeof(struct pv_cmsghdr) + VMM_PV_MAX_MAPS * sizeof(int) + 16];
} ctl;

/* argv[1]: VMM_PV_STUB_ARG_TSC to make RDTSC fault, VMM_PV_STUB_ARG_NOTSC not to, or
 * VMM_PV_STUB_ARG_TSC_TEST to find out whether the host honours that (the stub then dies of
 * SIGSEGV if it does, and exits with 0 if RDTSC still runs). */
void vmm_pv_stub_main(const long *sp) {
  const char *mode = sp[0] > 1 ? (const char *)sp[2] : VMM_PV_STUB_ARG_TSC;
  if (mode[0] == VMM_PV_STUB_ARG_TSC_TEST[0]) {
    sys3(__NR_prctl, PR_SET_TSC, PR_TSC_SIGSEGV, 0);
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    die(0);
  }
  /* The library already made a new session and closed fds 4 and up; drop 0-2 as well. */
  sys3(__NR_close_range, 0, 2, 0);
  sys3(__NR_close_range, VMM_PV_STUB_FD + 1, ~0u, 0);
  if (sys3(__NR_prctl, PR_SET_NO_NEW_PRIVS, 1, 0) != 0) die(VMM_PV_STUB_EXIT_SETUP);
  if (mode[0] == VMM_PV_STUB_ARG_TSC[0] &&
      sys3(__NR_prctl, PR_SET_TSC, PR_TSC_SIGSEGV, 0) != 0)
    die(VMM_PV_STUB_EXIT_SETUP);
  struct rlimit no_core = {0, 0};
  if (sys3(__NR_setrlimit, RLIMIT_CORE, (long)&no_core, 0) != 0) die(VMM_PV_STUB_EXIT_SETUP);
  /* The guest runs on this process's memory map: it must not grow the stack mapping into
   * host memory beyond its RAM (the stub itself needs a few KiB of stack). */
  struct rlimit small_stack = {256 << 10, 256 << 10};
  if (sys3(__NR_setrlimit, RLIMIT_STACK, (long)&small_stack, 0) != 0) die(VMM_PV_STUB_EXIT_SETUP);
  send_hello();
  install_filter();

  struct pv_iovec iov = {&msg, sizeof(msg)};
  struct pv_msghdr mh;
  memset(&mh, 0, sizeof(mh));
  mh.iov = &iov;
  mh.iovlen = 1;
  mh.control = &ctl;
  mh.controllen = sizeof(ctl);
  long n = sys3(__NR_recvmsg, VMM_PV_STUB_FD, (long)&mh, PV_MSG_CMSG_CLOEXEC);
  if (n == 0) die(VMM_PV_STUB_EXIT_EOF);
  if (n < (long)offsetof(struct vmm_pv_msg, maps) || msg.magic != VMM_PV_MSG_MAGIC ||
      msg.count > VMM_PV_MAX_MAPS ||
      (size_t)n < offsetof(struct vmm_pv_msg, maps) + msg.count * sizeof(struct vmm_pv_map))
    die(VMM_PV_STUB_EXIT_MSG);
  const int *fds = (const int *)(ctl.buf + sizeof(struct pv_cmsghdr));
  if (msg.count) {
    if (mh.controllen < sizeof(struct pv_cmsghdr) || ctl.h.level != PV_SOL_SOCKET ||
        ctl.h.type != PV_SCM_RIGHTS ||
        ctl.h.len != sizeof(struct pv_cmsghdr) + msg.count * sizeof(int))
      die(VMM_PV_STUB_EXIT_MSG);
  }
  for (uint32_t i = 0; i < msg.count; i++) {
    const struct vmm_pv_map *m = &msg.maps[i];
    if (m->flags & VMM_PV_MAP_KEEP_FD) {
      if (m->addr < VMM_PV_KEEP_FD_BASE || m->addr >= VMM_PV_KEEP_FD_BASE + VMM_PV_MAX_MAPS ||
          sys3(__NR_dup3, fds[i], (long)m->addr, 02000000 /* O_CLOEXEC */) != (long)m->addr)
        die(VMM_PV_STUB_EXIT_MSG);
    } else {
      long r = sys6(__NR_mmap, (long)m->addr, (long)m->len, m->prot,
                    MAP_SHARED | MAP_FIXED_NOREPLACE, fds[i], (long)m->offset);
      if (r != (long)m->addr) die(VMM_PV_STUB_EXIT_MAP);
    }
    sys3(__NR_close, fds[i], 0, 0);
  }
  sys3(__NR_close, VMM_PV_STUB_FD, 0, 0);
  /* Hand over to the tracer, which replaces every register. */
  __asm__ volatile("int3" ::: "memory");
  die(VMM_PV_STUB_EXIT_RESUMED);
}
