/* Guest of the pv backend's functional tests (tests/pv/test_pv.c). The command line selects
 * a scenario and may carry a hexadecimal address. Hypercall VMM_HC_USER_BASE + 6 is left
 * unhandled by the host: the run returns there so the test can look at the vCPU. */
#include "vmm_guest.h"

#define HC_STOP (VMM_HC_USER_BASE + 6)

uint64_t regs_entry;

static uint64_t hexarg(const char *s) {
  while (*s && *s != ' ') s++;
  while (*s == ' ') s++;
  uint64_t v = 0;
  for (;; s++) {
    unsigned d;
    if (*s >= '0' && *s <= '9') d = (unsigned)(*s - '0');
    else if (*s >= 'a' && *s <= 'f') d = (unsigned)(*s - 'a' + 10);
    else break;
    v = v * 16 + d;
  }
  return v;
}

/* The second hexadecimal argument. */
static uint64_t hexarg2(const char *s) {
  while (*s && *s != ' ') s++;
  while (*s == ' ') s++;
  return hexarg(s);
}

static int starts(const char *s, const char *w) {
  while (*w)
    if (*s++ != *w++) return 0;
  return *s == '\0' || *s == ' ';
}

static uint64_t load64(uint64_t a) {
  uint64_t v;
  __asm__ volatile("mov (%1), %0" : "=r"(v) : "r"(a) : "memory");
  return v;
}

static void store64(uint64_t a, uint64_t v) {
  __asm__ volatile("mov %1, (%0)" ::"r"(a), "r"(v) : "memory");
}

static uint64_t rdmsr(uint32_t i) {
  uint32_t lo, hi;
  __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(i));
  return ((uint64_t)hi << 32) | lo;
}

static void wrmsr(uint32_t i, uint64_t v) {
  __asm__ volatile("wrmsr" ::"c"(i), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)));
}

static uint64_t rdtsc(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}

int main(struct vmm_boot_info *bi) {
  const char *cmd = (const char *)(uintptr_t)bi->cmdline;
  uint64_t arg = hexarg(cmd);
  if (starts(cmd, "spin")) {
    vmm_puts("spinning\n");
    for (;;) __asm__ volatile("" ::: "memory");
  }
  if (starts(cmd, "spinhc")) {
    for (;;) vmm_hypercall0(VMM_HC_NOP);
  }
  if (starts(cmd, "mem")) {
    /* Read, then increment, a 64-bit word at `arg` (RAM, low RAM, ROM or new RAM). */
    uint64_t v = load64(arg);
    store64(arg, v + 1);
    vmm_printf("mem %lx=%lx\n", arg, v);
    return 0;
  }
  if (starts(cmd, "stopmem")) {
    /* Stop first so that the host can change the memory map, then access `arg`. */
    vmm_hypercall0(HC_STOP);
    uint64_t v = load64(arg);
    store64(arg, v + 1);
    vmm_printf("mem %lx=%lx\n", arg, v);
    return 0;
  }
  if (starts(cmd, "dirty")) {
    /* Write the page at the first address, stop, write the second, stop. */
    uint64_t a = arg, b = hexarg2(cmd);
    store64(a, 0xd1);
    vmm_hypercall0(HC_STOP);
    store64(b, 0xd2);
    vmm_hypercall0(HC_STOP);
    return 0;
  }
  if (starts(cmd, "echo")) {
    /* `arg` hypercalls to an echo handler the host registers (result 3 * x + 1). */
    uint64_t sum = 0;
    for (uint64_t i = 0; i < arg; i++) sum += vmm_hypercall1(VMM_HC_USER_BASE + 7, i);
    vmm_printf("sum=%lu\n", sum);
    return 0;
  }
  if (starts(cmd, "strio")) {
    /* rep outsb of a string to port 0x520, rep insb of 8 bytes from port 0x521. */
    static const char msg[] = "string I/O";
    static char in[9];
    uint64_t n = sizeof(msg) - 1;
    const char *src = msg;
    __asm__ volatile("cld\n\trep outsb" : "+S"(src), "+c"(n) : "d"(0x520) : "memory");
    char *dst = in;
    n = 8;
    __asm__ volatile("cld\n\trep insb" : "+D"(dst), "+c"(n) : "d"(0x521) : "memory");
    vmm_printf("in=%s\n", in);
    return 0;
  }
  if (starts(cmd, "regs")) {
    /* Known values everywhere, then an unhandled hypercall; its result lands in rbp. */
    regs_entry = vmm_hypercall_page + HC_STOP * VMM_HC_ENTRY_SIZE;
    __asm__ volatile(
        "push %%rbp\n\t"
        "mov $0x1111, %%rbx\n\tmov $0x2222, %%rcx\n\tmov $0x3333, %%rdx\n\t"
        "mov $0x4444, %%rsi\n\tmov $0x5555, %%rdi\n\tmov $0x8888, %%r8\n\t"
        "mov $0x9999, %%r9\n\tmov $0xaaaa, %%r10\n\tmov $0xbbbb, %%r11\n\t"
        "mov $0xcccc, %%r12\n\tmov $0xdddd, %%r13\n\tmov $0xeeee, %%r14\n\t"
        "mov $0xffff, %%r15\n\tsub $128, %%rsp\n\tcall *regs_entry(%%rip)\n\t"
        "add $128, %%rsp\n\tmov %%rax, %%rbp\n\t"
        "mov $0x484c54, %%eax\n\tcli\n\thlt\n\tpop %%rbp"
        :
        :
        : "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13",
          "r14", "r15", "memory");
    return 1;
  }
  if (starts(cmd, "fpu")) {
    /* xmm0 := pattern; stop; the host reads it and puts another pattern in xmm1. */
    uint64_t pat = 0x0123456789abcdefull, got;
    __asm__ volatile("movq %0, %%xmm0" ::"r"(pat) : "xmm0");
    vmm_hypercall0(HC_STOP);
    __asm__ volatile("movq %%xmm1, %0" : "=r"(got)::"xmm1");
    vmm_printf("xmm1=%016lx\n", got);
    return 0;
  }
  if (starts(cmd, "msr")) {
    wrmsr(0xc0000102, 0x7eedface0000ull);
    uint64_t k = rdmsr(0xc0000102);
    static uint64_t tls[2] = {0, 0x7e57ab1e};
    wrmsr(0xc0000100, (uint64_t)(uintptr_t)tls);
    uint64_t fsval;
    __asm__ volatile("mov %%fs:8, %0" : "=r"(fsval));
    uint64_t t1 = rdtsc(), t2 = rdtsc();
    __asm__ volatile("cli; sti; cli" ::: "memory");
    vmm_printf("kgs=%lx fs=%lx tsc=%s\n", k, fsval, t2 > t1 ? "up" : "stuck");
    /* An MSR nobody has: #GP, reported as an exception exit. */
    __asm__ volatile("lea 1f(%%rip), %%rbx\n1:\trdmsr" ::"c"(0x4d5), "a"(0), "d"(0) : "rbx");
    return 1;
  }
  if (starts(cmd, "romins")) {
    /* rep insb of 8 bytes from port 0x521 into read-only RAM at arg: it must stay as it was. */
    char *dst = (char *)(uintptr_t)arg;
    uint64_t n = 8;
    __asm__ volatile("cld\n\trep insb" : "+D"(dst), "+c"(n) : "d"(0x521) : "memory");
    vmm_printf("rom=%016lx\n", load64(arg));
    return 0;
  }
  if (starts(cmd, "romslot")) {
    /* RSP in read-only RAM, then straight to the `syscall` of the VMM_HC_NOP entry (entry +
     * 12): the result must not be stored into the read-only slot. Whatever runs after that
     * (the entry returns through the read-only stack) ends in an exception. */
    uint64_t target = vmm_hypercall_page + VMM_HC_NOP * VMM_HC_ENTRY_SIZE + 12;
    __asm__ volatile("mov %0, %%rsp\n\tmov %1, %%eax\n\tjmp *%2" ::"r"(arg + 0x100),
                     "i"(VMM_HC_NOP), "r"(target)
                     : "rax", "memory");
    return 1;
  }
  if (starts(cmd, "fsbase")) {
    /* An FS base in the upper half, which no process can have: #GP at the WRMSR (rbx). */
    __asm__ volatile("lea 1f(%%rip), %%rbx\n1:\twrmsr" ::"c"(0xc0000100), "a"(0),
                     "d"(0xffff8000u)
                     : "rbx");
    return 1;
  }
  if (starts(cmd, "syscall")) {
    /* A syscall outside the hypercall page is #UD; rbx holds its address. */
    __asm__ volatile("lea 1f(%%rip), %%rbx\n1:\tsyscall" ::"a"(39) : "rbx", "rcx", "r11");
    return 1;
  }
  if (starts(cmd, "int3")) {
    __asm__ volatile("lea 1f(%%rip), %%rbx\n\tint3\n1:" ::: "rbx");
    return 1;
  }
  if (starts(cmd, "far")) {
    /* Beyond the identity map of every backend: a page fault. */
    __asm__ volatile("lea 1f(%%rip), %%rbx\n1:\tmov (%0), %%rax" ::"r"(arg) : "rax", "rbx");
    return 1;
  }
  return 2;
}
