/* See bt_harness.h. */
#define _GNU_SOURCE
#include "bt_harness.h"

#include <asm/prctl.h>
#include <errno.h>
#include <sys/wait.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <libvmm/vmm.h>

/* ---- native ---- */

struct bth_cpu bth_nat_in, bth_nat_out;
uint64_t bth_nat_host_rsp, bth_nat_code, bth_nat_fs_old, bth_nat_fs_new, bth_nat_gs_new;
void bth_nat_enter(void);
void bth_nat_exit(void);

/* FS and GS bases are switched with raw arch_prctl calls around the code, where nothing
 * touches the C library's thread pointer. */
__asm__(".text\n"
        ".globl bth_nat_enter\n"
        "bth_nat_enter:\n"
        "  push %rbx\n push %rbp\n push %r12\n push %r13\n push %r14\n push %r15\n"
        "  mov %rsp, bth_nat_host_rsp(%rip)\n"
        "  mov $158, %eax\n mov $0x1002, %edi\n mov bth_nat_fs_new(%rip), %rsi\n syscall\n"
        "  mov $158, %eax\n mov $0x1001, %edi\n mov bth_nat_gs_new(%rip), %rsi\n syscall\n"
        "  push bth_nat_in+128(%rip)\n popfq\n"
        "  mov bth_nat_in+0(%rip), %rax\n mov bth_nat_in+8(%rip), %rcx\n"
        "  mov bth_nat_in+16(%rip), %rdx\n mov bth_nat_in+24(%rip), %rbx\n"
        "  mov bth_nat_in+40(%rip), %rbp\n mov bth_nat_in+48(%rip), %rsi\n"
        "  mov bth_nat_in+56(%rip), %rdi\n mov bth_nat_in+64(%rip), %r8\n"
        "  mov bth_nat_in+72(%rip), %r9\n mov bth_nat_in+80(%rip), %r10\n"
        "  mov bth_nat_in+88(%rip), %r11\n mov bth_nat_in+96(%rip), %r12\n"
        "  mov bth_nat_in+104(%rip), %r13\n mov bth_nat_in+112(%rip), %r14\n"
        "  mov bth_nat_in+120(%rip), %r15\n mov bth_nat_in+32(%rip), %rsp\n"
        "  jmp *bth_nat_code(%rip)\n"
        ".globl bth_nat_exit\n"
        "bth_nat_exit:\n"
        "  mov %rax, bth_nat_out+0(%rip)\n mov %rcx, bth_nat_out+8(%rip)\n"
        "  mov %rdx, bth_nat_out+16(%rip)\n mov %rbx, bth_nat_out+24(%rip)\n"
        "  mov %rsp, bth_nat_out+32(%rip)\n mov %rbp, bth_nat_out+40(%rip)\n"
        "  mov %rsi, bth_nat_out+48(%rip)\n mov %rdi, bth_nat_out+56(%rip)\n"
        "  mov %r8, bth_nat_out+64(%rip)\n mov %r9, bth_nat_out+72(%rip)\n"
        "  mov %r10, bth_nat_out+80(%rip)\n mov %r11, bth_nat_out+88(%rip)\n"
        "  mov %r12, bth_nat_out+96(%rip)\n mov %r13, bth_nat_out+104(%rip)\n"
        "  mov %r14, bth_nat_out+112(%rip)\n mov %r15, bth_nat_out+120(%rip)\n"
        "  mov bth_nat_host_rsp(%rip), %rsp\n"
        "  pushfq\n pop bth_nat_out+128(%rip)\n cld\n"
        "  mov $158, %eax\n mov $0x1002, %edi\n mov bth_nat_fs_old(%rip), %rsi\n syscall\n"
        "  pop %r15\n pop %r14\n pop %r13\n pop %r12\n pop %rbp\n pop %rbx\n ret\n");

/* cmocka installs its own crash handlers around each test without chaining: the backend's
 * handlers are put back before every run. */
static const int bth_sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP};
static struct sigaction bth_saved[5];

void bth_restore_handlers(void) {
  for (int i = 0; i < 5; i++) sigaction(bth_sigs[i], &bth_saved[i], NULL);
}
static vmm_vm_t *bth_vm;
static vmm_vcpu_t *bth_vcpu;
static uint8_t *bth_gdata, *bth_gcode;
/* Native results come back from the child through this shared page run. */
static struct bth_result *bth_shared;

bool bth_init(void) {
  /* The VM first: its vCPU may take the low window (bt_mem.c), where the native copies of
   * code and data have to live too; they are mapped in a child process per run. */
  vmm_vm_config_t cfg = VMM_VM_CONFIG_INIT;
  cfg.backend = VMM_BACKEND_BT;
  cfg.ram_size = 16u << 20;
  if (vmm_vm_create(&cfg, &bth_vm) || vmm_vcpu_create(bth_vm, 0, &bth_vcpu)) return false;
  for (int i = 0; i < 5; i++) sigaction(bth_sigs[i], NULL, &bth_saved[i]);
  if (vmm_vm_map_ram(bth_vm, BTH_DATA, BTH_DATA_SIZE, 0, (void **)&bth_gdata) ||
      vmm_vm_map_ram(bth_vm, BTH_CODE, BTH_CODE_SIZE, 0, (void **)&bth_gcode))
    return false;
  void *sh = mmap(NULL, sizeof(struct bth_result), PROT_READ | PROT_WRITE,
                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (sh == MAP_FAILED) return false;
  bth_shared = sh;
  return true;
}

void bth_fini(void) {
  vmm_vm_destroy(bth_vm);
  bth_vm = NULL;
  if (bth_shared) munmap(bth_shared, sizeof(struct bth_result));
  bth_shared = NULL;
}

bool bth_low_window(void) {
  vmm_stat_t st[64];
  size_t n = 0;
  if (vmm_vcpu_stats(bth_vcpu, st, 64, &n) != 0) return false;
  for (size_t i = 0; i < n && i < 64; i++)
    if (strcmp(st[i].name, "bt.low_window") == 0) return st[i].value != 0;
  return false;
}

void bth_initial(uint64_t seed, struct bth_cpu *cpu, uint8_t *data) {
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  for (int i = 0; i < 16; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    cpu->gpr[i] = (i % 3 == 0) ? (x & 0xffff) : x;
  }
  cpu->gpr[4] = BTH_DATA + 0x8000;
  cpu->gpr[14] = 3;
  cpu->gpr[15] = BTH_DATA;
  x ^= x << 13, x ^= x >> 7, x ^= x << 17;
  cpu->rflags = 0x2 | (x & 0x8d5);
  for (size_t i = 0; i < BTH_DATA_SIZE; i += 8) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    memcpy(data + i, &x, 8);
  }
}

/* In a child process, which may map over whatever the parent has at those addresses (the low
 * window). Native epilogue: jmp *[BTH_CODE + 0xfff8], which holds bth_nat_exit. */
int bth_run_native(const uint8_t *code, size_t len, const struct bth_cpu *in,
                   const uint8_t *data, struct bth_result *out) {
  if (len + 8 > BTH_CODE_SIZE - 16) return -1;
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    uint8_t *d = mmap((void *)BTH_DATA, BTH_DATA_SIZE, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    uint8_t *c = mmap((void *)BTH_CODE, BTH_CODE_SIZE, PROT_READ | PROT_WRITE | PROT_EXEC,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (d != (void *)BTH_DATA || c != (void *)BTH_CODE) _exit(2);
    memcpy(c, code, len);
    static const uint8_t epi[] = {0xff, 0x24, 0x25};
    memcpy(c + len, epi, 3);
    uint32_t slot = (uint32_t)(BTH_CODE + BTH_CODE_SIZE - 8);
    memcpy(c + len + 3, &slot, 4);
    uint64_t ex = (uint64_t)(uintptr_t)bth_nat_exit;
    memcpy(c + BTH_CODE_SIZE - 8, &ex, 8);
    memcpy(d, data, BTH_DATA_SIZE);
    bth_nat_in = *in;
    bth_nat_code = BTH_CODE;
    syscall(SYS_arch_prctl, ARCH_GET_FS, &bth_nat_fs_old);
    bth_nat_fs_new = BTH_FS_BASE;
    bth_nat_gs_new = BTH_GS_BASE;
    bth_nat_enter();
    bth_shared->cpu = bth_nat_out;
    memcpy(bth_shared->data, d, BTH_DATA_SIZE);
    _exit(0);
  }
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return -1;
  *out = *bth_shared;
  return 0;
}

/* bt epilogue: out %al, $0x80 - an I/O exit nobody handles. */
int bth_run_bt(const uint8_t *code, size_t len, const struct bth_cpu *in, const uint8_t *data,
               struct bth_result *out, char *err, size_t errlen) {
  bth_restore_handlers();
  memset(bth_gcode, 0xcc, BTH_CODE_SIZE);
  memcpy(bth_gcode, code, len);
  bth_gcode[len] = 0xe6;
  bth_gcode[len + 1] = 0x80;
  bth_gcode[len + 2] = 0xf4;
  memcpy(bth_gdata, data, BTH_DATA_SIZE);
  vmm_long_mode_config_t lm = VMM_LONG_MODE_CONFIG_INIT;
  lm.entry = BTH_CODE;
  int rc = vmm_vcpu_setup_long_mode(bth_vcpu, &lm);
  vmm_cpu_state_t st = VMM_CPU_STATE_INIT;
  if (rc || (rc = vmm_vcpu_get_state(bth_vcpu, &st))) {
    snprintf(err, errlen, "setup: %s", vmm_strerror(rc));
    return -1;
  }
  const uint64_t *g = in->gpr;
  st.regs = (vmm_regs_t){.rax = g[0], .rcx = g[1], .rdx = g[2], .rbx = g[3], .rsp = g[4],
                         .rbp = g[5], .rsi = g[6], .rdi = g[7], .r8 = g[8], .r9 = g[9],
                         .r10 = g[10], .r11 = g[11], .r12 = g[12], .r13 = g[13], .r14 = g[14],
                         .r15 = g[15], .rip = BTH_CODE, .rflags = in->rflags | 0x200};
  st.fs.base = BTH_FS_BASE;
  st.gs.base = BTH_GS_BASE;
  if ((rc = vmm_vcpu_set_state(bth_vcpu, &st))) {
    snprintf(err, errlen, "set_state: %s", vmm_strerror(rc));
    return -1;
  }
  vmm_exit_t ex;
  memset(&ex, 0, sizeof(ex));
  rc = vmm_vcpu_run(bth_vcpu, &ex);
  if (rc || ex.reason != VMM_EXIT_IO || ex.io.port != 0x80) {
    snprintf(err, errlen, "run: rc %d exit %s vector %u rip %#llx %s", rc,
             vmm_exit_reason_name(ex.reason), ex.exception.vector,
             (unsigned long long)ex.exception.rip,
             ex.reason == VMM_EXIT_INTERNAL_ERROR ? ex.internal.message : "");
    return -1;
  }
  vmm_regs_t r;
  vmm_vcpu_get_regs(bth_vcpu, &r);
  uint64_t *o = out->cpu.gpr;
  o[0] = r.rax, o[1] = r.rcx, o[2] = r.rdx, o[3] = r.rbx, o[4] = r.rsp, o[5] = r.rbp;
  o[6] = r.rsi, o[7] = r.rdi, o[8] = r.r8, o[9] = r.r9, o[10] = r.r10, o[11] = r.r11;
  o[12] = r.r12, o[13] = r.r13, o[14] = r.r14, o[15] = r.r15;
  out->cpu.rflags = r.rflags;
  memcpy(out->data, bth_gdata, BTH_DATA_SIZE);
  return 0;
}

int bth_compare(const struct bth_result *a, const struct bth_result *b, char *msg, size_t len) {
  static const char *const names[16] = {"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                                        "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};
  for (int i = 0; i < 16; i++) {
    if (a->cpu.gpr[i] != b->cpu.gpr[i]) {
      snprintf(msg, len, "%s: native %#llx, bt %#llx", names[i],
               (unsigned long long)a->cpu.gpr[i], (unsigned long long)b->cpu.gpr[i]);
      return 1;
    }
  }
  const uint64_t mask = 0xcd5; /* CF PF AF ZF SF DF OF */
  if ((a->cpu.rflags & mask) != (b->cpu.rflags & mask)) {
    snprintf(msg, len, "rflags: native %#llx, bt %#llx", (unsigned long long)a->cpu.rflags,
             (unsigned long long)b->cpu.rflags);
    return 1;
  }
  for (size_t i = 0; i < BTH_DATA_SIZE; i++) {
    if (a->data[i] != b->data[i]) {
      snprintf(msg, len, "memory at %#llx: native %02x, bt %02x",
               (unsigned long long)(BTH_DATA + i), a->data[i], b->data[i]);
      return 1;
    }
  }
  return 0;
}
