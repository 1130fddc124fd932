/* Differential harness for the bt tests: runs a piece of x86-64 code natively (on a worker
 * child process, with every register, RFLAGS and the FS/GS bases loaded from a table) and as a bt
 * guest at the same addresses, and compares registers, arithmetic flags and memory. */
#ifndef BT_HARNESS_H
#define BT_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BTH_DATA 0x10000000ull  /* 64 KiB of data; the stack grows down from its top half */
#define BTH_DATA_SIZE 0x10000ull
#define BTH_CODE 0x10100000ull  /* 64 KiB of code */
#define BTH_CODE_SIZE 0x10000ull
#define BTH_FS_BASE (BTH_DATA + 0x1000)
#define BTH_GS_BASE (BTH_DATA + 0x2000)

struct bth_cpu {
  uint64_t gpr[16]; /* hardware order: rax rcx rdx rbx rsp rbp rsi rdi r8..r15 */
  uint64_t rflags;
};

struct bth_result {
  struct bth_cpu cpu;
  uint8_t data[BTH_DATA_SIZE];
};

/* Sets up the fixed address ranges; false when they cannot be had (the test is skipped). */
bool bth_init(void);
void bth_fini(void);
/* Whether the harness's vCPU runs in the low window (bt_mem.c) rather than its GS window. */
bool bth_low_window(void);
/* Puts back the signal handlers the backend installed (after a test framework took them). */
void bth_restore_handlers(void);
/* Initial registers and memory from a seed: r15 = data, r14 = 3, rsp = data + 0x8000. */
void bth_initial(uint64_t seed, struct bth_cpu *cpu, uint8_t *data);
/* Runs code natively / on bt. Returns 0, or -1 (with a message in err) on a harness failure. */
int bth_run_native(const uint8_t *code, size_t len, const struct bth_cpu *in,
                   const uint8_t *data, struct bth_result *out);
int bth_run_bt(const uint8_t *code, size_t len, const struct bth_cpu *in, const uint8_t *data,
               struct bth_result *out, char *err, size_t errlen);
/* Compares; returns 0 when equal, else writes the first difference into msg. */
int bth_compare(const struct bth_result *a, const struct bth_result *b, char *msg, size_t len);

#endif
