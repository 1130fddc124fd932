/* A hostile pv guest: it tries every way out of the sandbox it knows. Each attempt is meant to
 * end in an exit that the test (tests/pv/test_pv_isolation.c) checks and steps over: r13 holds
 * the address of the attempt, r12 where to go on after it and r14 the stack pointer for that.
 *
 * Command line: "<what> <path> <pid> <addr>" with the path of a file it tries to create, the
 * VMM's process id it tries to signal, and a VMM address it tries to read and write (decimal
 * pid, hexadecimal address). <what> is one of syscall, int80, sysenter, vsyscall, stub, peek. */
#include <stdbool.h>

#include "vmm_guest.h"

#define STUB_GADGET_SELF 0x7e0000001000ull
#define STUB_START 0x7e0000001020ull
/* Where the guest leaves the continuation (RIP, RSP) of its current attempt, for attempts that
 * run code which may overwrite r12 and r14 (the stub's). Free space in the system area. */
#define MAILBOX 0xff000ull

static char path[256];
uint64_t bi_ram_end(void);
static uint64_t vmm_pid, vmm_addr;

static const char *word(const char *s, char *out, size_t cap) {
  while (*s == ' ') s++;
  size_t n = 0;
  while (*s && *s != ' ') {
    if (n + 1 < cap) out[n++] = *s;
    s++;
  }
  out[n] = '\0';
  return s;
}

static uint64_t num(const char *s, unsigned base) {
  uint64_t v = 0;
  for (; *s; s++) {
    unsigned d = *s >= 'a' ? (unsigned)(*s - 'a' + 10) : (unsigned)(*s - '0');
    v = v * base + d;
  }
  return v;
}

/* The registers a system call would read: a file to create, flags, a mode, or a pid and
 * SIGKILL for the calls that signal; mmap-like calls get a fixed address. */
static void args_for(uint64_t nr, bool compat, uint64_t a[6]) {
  a[0] = (uint64_t)(uintptr_t)path;
  a[1] = 0x41; /* O_CREAT | O_WRONLY */
  a[2] = 0644;
  a[3] = 0x22; /* MAP_PRIVATE | MAP_ANONYMOUS */
  a[4] = (uint64_t)-1;
  a[5] = 0;
  bool kill = compat ? (nr == 37 || nr == 238 || nr == 270) : (nr == 62 || nr == 200 || nr == 234);
  if (kill || nr == 424) {
    a[0] = vmm_pid;
    a[1] = nr == 234 || nr == 270 ? vmm_pid : 9;
    a[2] = 9;
  }
  if (!compat && (nr == 9 || nr == 11 || nr == 10)) { /* mmap, munmap, mprotect of the VMM */
    a[0] = vmm_addr & ~0xfffull;
    a[1] = 4096;
    a[2] = 7;
  }
}

static void try_syscalls(void) {
  for (uint64_t nr = 0; nr < 512; nr++) {
    uint64_t a[6];
    args_for(nr, false, a);
    register uint64_t r10 __asm__("r10") = a[3];
    register uint64_t r8 __asm__("r8") = a[4];
    register uint64_t r9 __asm__("r9") = a[5];
    uint64_t rax = nr;
    __asm__ volatile("lea 1f(%%rip), %%r13\n\tlea 2f(%%rip), %%r12\n\tmov %%rsp, %%r14\n"
                     "1:\tsyscall\n2:"
                     : "+a"(rax)
                     : "D"(a[0]), "S"(a[1]), "d"(a[2]), "r"(r10), "r"(r8), "r"(r9)
                     : "r12", "r13", "r14", "rcx", "r11", "memory");
  }
}

static void try_int80(void) {
  for (uint64_t nr = 0; nr < 512; nr++) {
    uint64_t a[6];
    args_for(nr, true, a);
    uint64_t rax = nr;
    register uint64_t a5 __asm__("r8") = a[5];
    __asm__ volatile("push %%rbp\n\tmov %[a5], %%rbp\n\t"
                     "lea 1f(%%rip), %%r13\n\tlea 2f(%%rip), %%r12\n\tmov %%rsp, %%r14\n"
                     "1:\tint $0x80\n2:\tpop %%rbp"
                     : "+a"(rax)
                     : "b"(a[0]), "c"(a[1]), "d"(a[2]), "S"(a[3]), "D"(a[4]), [a5] "r"(a5)
                     : "r12", "r13", "r14", "memory");
  }
}

static void try_sysenter(void) {
  for (uint64_t nr = 0; nr < 8; nr++) {
    uint64_t rax = nr == 0 ? 5 : nr == 1 ? 8 : nr == 2 ? 2 : nr == 3 ? 37 : nr + 100;
    /* The kernel takes a sysenter caller's stack pointer from rbp. */
    __asm__ volatile("push %%rbp\n\tmov %%rsp, %%rbp\n\t"
                     "lea 1f(%%rip), %%r13\n\tlea 2f(%%rip), %%r12\n\tmov %%rsp, %%r14\n"
                     "1:\tsysenter\n2:\tpop %%rbp"
                     : "+a"(rax)
                     : "c"(0x41), "d"(0644)
                     : "r12", "r13", "r14", "memory");
  }
}

static void try_vsyscall(void) {
  static const uint64_t entries[] = {0xffffffffff600000ull, 0xffffffffff600400ull,
                                     0xffffffffff600800ull, 0xffffffffff600c00ull};
  static uint64_t out[4];
  for (unsigned i = 0; i < 4; i++) {
    __asm__ volatile("mov %[e], %%r13\n\tlea 2f(%%rip), %%r12\n\tmov %%rsp, %%r14\n\t"
                     "call *%%r13\n2:"
                     :
                     : [e] "r"(entries[i]), "D"(out), "S"(out + 2), "a"(201)
                     : "r12", "r13", "r14", "rcx", "rdx", "r8", "r9", "r10", "r11", "memory");
  }
}

uint64_t stub_target;

static void try_stub(void) {
  static const uint64_t targets[] = {STUB_GADGET_SELF, STUB_START};
  for (unsigned i = 0; i < 2; i++) {
    /* mkdir(path) through the stub's own syscall instructions. */
    stub_target = targets[i];
    __asm__ volatile("mov stub_target(%%rip), %%r13\n\tlea 2f(%%rip), %%r12\n\t"
                     "mov %%rsp, %%r14\n\tmov %%r12, %c[mb]\n\tmov %%r14, %c[mb]+8\n\t"
                     "mov %%rbp, %c[mb]+16\n\tcall *%%r13\n2:"
                     :
                     : [mb] "i"(MAILBOX), "a"(83), "D"(path), "S"(0755)
                     : "rbx", "r12", "r13", "r14", "r15", "rcx", "rdx", "r8", "r9", "r10", "r11",
                       "memory");
  }
}

static void try_peek(void) {
  /* Past RAM, kernel space, non-canonical, the VMM's own memory: read, then write. */
  const uint64_t addrs[] = {bi_ram_end(), 0xffff888000000000ull, 0x8000000000000000ull,
                            vmm_addr};
  for (unsigned i = 0; i < 4; i++) {
    __asm__ volatile("lea 1f(%%rip), %%r13\n\tlea 2f(%%rip), %%r12\n\tmov %%rsp, %%r14\n"
                     "1:\tmov (%0), %%rax\n2:"
                     ::"r"(addrs[i]) : "rax", "r12", "r13", "r14", "memory");
    __asm__ volatile("lea 1f(%%rip), %%r13\n\tlea 2f(%%rip), %%r12\n\tmov %%rsp, %%r14\n"
                     "1:\tmovq $0x666, (%0)\n2:"
                     ::"r"(addrs[i]) : "r12", "r13", "r14", "memory");
  }
}

uint64_t bi_ram_end(void) { return vmm_boot_info->ram_size; }

int main(struct vmm_boot_info *bi) {
  char what[32], pid[32], addr[32];
  const char *s = (const char *)(uintptr_t)bi->cmdline;
  s = word(s, what, sizeof(what));
  s = word(s, path, sizeof(path));
  s = word(s, pid, sizeof(pid));
  word(s, addr, sizeof(addr));
  vmm_pid = num(pid, 10);
  vmm_addr = num(addr, 16);
  if (strcmp(what, "syscall") == 0) try_syscalls();
  else if (strcmp(what, "int80") == 0) try_int80();
  else if (strcmp(what, "sysenter") == 0) try_sysenter();
  else if (strcmp(what, "vsyscall") == 0) try_vsyscall();
  else if (strcmp(what, "stub") == 0) try_stub();
  else if (strcmp(what, "peek") == 0) try_peek();
  else return 2;
  vmm_puts("survived\n");
  return 0;
}
