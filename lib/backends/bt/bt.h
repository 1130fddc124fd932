/* The bt backend's private declarations: software full virtualization by binary translation.
 * See docs/bt.md for the design; bt_layout.h for the memory layout shared with assembly. */
#ifndef LIBVMM_BT_H
#define LIBVMM_BT_H

#include <signal.h>

#include "../../core/internal.h"
#include "../common/x86emu.h"
#include "bt_layout.h"

/* ---- the control area (mirrors bt_layout.h) ---- */

struct bt_table_entry {
  uint64_t tag;  /* Guest RIP; when empty, a RIP that does not index the entry (see
                  * vmm__bt_tables_init). */
  uint64_t host; /* Host address of the block. */
};
#define BT_TAG_EMPTY (~0ull)

struct bt_ctrl {
  uint64_t gpr[16];
  uint64_t rflags;
  uint64_t rip;
  uint64_t exit_kind;
  uint64_t exit_site;
  uint64_t host_rsp;
  uint64_t entry_rsp;
  uint64_t entry_pc;
  uint64_t jmp_tmp;
  uint64_t kick;
  uint64_t helper_arg;
  uint64_t window;
  uint64_t self;
  uint64_t fn_exit_chain;
  uint64_t fn_exit_indirect;
  uint64_t fn_helper;
  uint8_t vec_avx;
  uint8_t x87_live;
  uint8_t host_avx;
  uint8_t pad0[5];
  uint64_t spill[16];
  uint32_t mxcsr;
  uint32_t mxcsr_host;
  uint64_t shadow_sp;
  uint64_t save_rsp;
  uint8_t pad1[0x200 - 0x198];
  uint8_t vec[16][32];
  uint8_t fxsave[512] __attribute__((aligned(16)));
  struct bt_vcpu *owner; /* C only, past what assembly uses. */
};

/* ---- blocks and the code cache ---- */

/* Host-PC to guest-state map entry: at block offset host_off, the guest is at the instruction
 * rip_off bytes into the block, with the registers in `fixup` to be repaired and its RSP
 * rsp_adj bytes from the host's (pushes and pops whose RSP update is still pending). */
struct bt_map {
  uint32_t host_off;
  uint32_t rip_off;
  uint32_t fixup;
  int32_t rsp_adj;
};
/* fixup bits 0-15: guest register i lives in spill slot i; these: */
#define BT_FIX_RSI_HOST (1u << 16) /* rsi holds a host pointer (window + esi). */
#define BT_FIX_RDI_HOST (1u << 17) /* rdi holds a host pointer (window + edi). */

struct bt_exit_site {
  uint32_t patch_off; /* Cache offset of the rel32 of the branch that leaves the block. */
  uint32_t stub_off;  /* Cache offset of the exit stub the branch targets when unlinked. */
  uint64_t target;    /* Guest RIP the branch goes to. */
  int32_t linked;     /* Block index it is linked to, or -1. */
};

/* Bytes in front of a block that the lookup table names: padding and the indirect entry,
 * `mov spill(rcx),%rcx` (9 bytes), ending where the block starts. */
#define BT_IND_ENTRY 16
#define BT_IND_LOAD 9 /* the indirect entry proper: host_off - BT_IND_LOAD */
/* Exits per block: conditional branches are side exits, so blocks run through them. */
#define BT_MAX_EXITS 8
/* Inline return-cache slots per RET, and the target of an empty slot. */
#define BT_RET_SLOTS 2
#define BT_RET_EMPTY 0x7fffffffull
#define BT_RET_MISS_LEN 48 /* bytes of the slot-filling miss exit */

enum {
  BT_BLK_VALID = 1 << 0,
  BT_BLK_USES_FS = 1 << 1,
  BT_BLK_USES_GS = 1 << 2,
  BT_BLK_SINGLE = 1 << 3, /* One instruction, never chained (single-step, SMC). */
};

struct bt_block {
  uint64_t rip;
  uint64_t rip_end;   /* First byte after the last guest instruction. */
  uint64_t pa[2];     /* Guest-physical pages holding the code (pa[1] == pa[0] if one). */
  uint32_t host_off;  /* Cache offset of the first host instruction. */
  uint32_t host_len;
  uint32_t map_first;
  uint32_t map_count;
  int32_t hash_next;
  uint16_t ninsn;
  uint8_t mode;
  uint8_t flags;
  uint8_t nexits;
  struct bt_exit_site exits[BT_MAX_EXITS];
};

/* A helper call site: what the translated code asks C to emulate. */
enum bt_helper_kind {
  BT_H_UD = 1,       /* Raise #UD. */
  BT_H_GP0,          /* Raise #GP(0). */
  BT_H_UNSUPPORTED,  /* An instruction bt cannot run: internal error. */
  BT_H_HYPERCALL,
  BT_H_IO,
  BT_H_CPUID,
  BT_H_RDTSC,
  BT_H_RDTSCP,
  BT_H_RDPID,
  BT_H_RDPMC,
  BT_H_HLT,
  BT_H_CLI,
  BT_H_STI,
  BT_H_PUSHF,
  BT_H_POPF,
  BT_H_MOVCR,
  BT_H_MOVDR,
  BT_H_RDMSR,
  BT_H_WRMSR,
  BT_H_DESC_TABLE,   /* LGDT, LIDT, SGDT, SIDT, LLDT, LTR, SLDT, STR, SMSW, LMSW, CLTS. */
  BT_H_INVLPG,
  BT_H_CACHE_NOP,    /* WBINVD, INVD, WBNOINVD: privileged no-ops. */
  BT_H_SWAPGS,
  BT_H_XCR,          /* XGETBV, XSETBV. */
  BT_H_XSAVE,        /* XSAVE, XSAVEOPT, XRSTOR (and 64-bit forms). */
  BT_H_SEG,          /* MOV to/from Sreg, PUSH/POP FS/GS, LSS/LFS/LGS. */
  BT_H_FSGSBASE,     /* RDFSBASE and friends. */
  BT_H_IRET,
  BT_H_INT,          /* INT n, INT3, INT1, INTO. */
  BT_H_SYSCALL,
  BT_H_SYSRET,
  BT_H_FAR,          /* Far JMP/CALL/RET. */
  BT_H_ENTER,
  BT_H_BTMEM,        /* BT/BTS/BTR/BTC with a register bit offset into memory. */
  BT_H_MONITOR,      /* MONITOR/MWAIT: treated as NOP/HLT-free no-ops. */
  BT_H_SINGLE_STEP,  /* After one instruction in single-step mode. */
  BT_H_KICK_CHECK,
};

struct bt_desc {
  uint64_t rip;
  uint32_t kind;
  uint8_t len;
  uint8_t bytes[15];
};

/* ---- VM and vCPU ---- */

struct bt_cpuid_entry {
  uint32_t leaf, subleaf;
  uint32_t regs[4];
  bool has_subleaf;
};

struct bt_region {
  uint64_t *code;   /* One bit per page: some vCPU translated code from it. */
  uint64_t *dirty;  /* One bit per page, while dirty logging is on. */
  uint64_t *pt;     /* One bit per page: some vCPU's page walk read a table from it. */
  bool logging;
};

struct bt_vm {
  struct bt_cpuid_entry *cpuid;
  size_t ncpuid;
  uint64_t host_xcr0;
  bool host_avx;
  /* vCPUs hold it for reading while they run guest code or handle its faults; dirty logging
   * takes it for writing (writers first) to change mappings of every vCPU at once. */
  pthread_rwlock_t run_lock;
  atomic_uint mem_gen;   /* Bumped when the memory map or write-protection policy changes. */
  atomic_uint code_gen;  /* Bumped when another vCPU must drop translations (SMC). */
  uint64_t hc_gpa;       /* Where the hypercall page was last filled for (0: nowhere). */
};

/* Window page state, one byte per 4 KiB page of guest linear space. */
enum {
  BT_PG_MAPPED = 1 << 0,
  BT_PG_WRITE = 1 << 1,   /* Mapped writable. */
  BT_PG_SUPER = 1 << 2,   /* Supervisor-only page mapped while at CPL0. */
  BT_PG_CODE = 1 << 3,    /* Write-protected because of translations. */
};

enum bt_pending { BT_PEND_NONE, BT_PEND_IO, BT_PEND_MMIO, BT_PEND_HC };

struct bt_stats {
  uint64_t blocks, insns, flushes, chains, indirect_misses, helpers, faults, demand_maps;
  uint64_t mmio, smc, kicks, window_flushes, fast_exits[VMM_STAT_NREASONS];
  uint64_t translate_ns;
};

struct bt_vcpu {
  vmm_vcpu_t *vcpu;
  struct bt_vm *bvm;
  uint8_t *res;
  size_t res_size;
  /* Host address of guest linear 0: the low window (host address 0, see bt_mem.c) or gsbase.
   * An integer, as the low window is at address 0. */
  uintptr_t window;
  uintptr_t gsbase;     /* The GS base: the 4 GiB slot after the control area. */
  bool low;             /* window is the low window: guest accesses carry no GS override. */
  bool reused;          /* The memory below came from the pool (bt_pool.c). */
  struct bt_ctrl *ctrl;
  uint8_t *pstate;      /* BT_PG_* per window page. */
  uint32_t *mapped_list; /* Page numbers with a non-zero pstate, for cheap flushes. */
  size_t nmapped, mapped_cap;
  /* Pages mapped writable while their region logs dirty pages: reading the log write-protects
   * just these instead of emptying the window. */
  uint32_t *wlist;
  size_t nwlist, wlist_cap;
  bool wlist_overflow;
  bool has_super_pages;
  /* Window pages mapped from a clone's shared base file, with their guest-physical address:
   * when the clone comes to own one of those pages, the mappings of it go. */
  struct bt_base_map { uint32_t lpage; uint64_t pa; } *blist;
  size_t nblist, blist_cap;
  bool in_run_lock; /* This thread holds bvm->run_lock for reading (guest code may run). */

  int cache_fd;
  uint8_t *cache_rw, *cache_rx;
  size_t cache_size, cache_used;
  struct bt_block *blocks;
  uint32_t nblocks, blocks_cap;
  int32_t *hash; /* Buckets of block index + 1 (0: empty); chained through hash_next. */
  uint32_t hash_size;
  struct bt_map *maps;
  uint32_t nmaps, maps_cap;
  struct bt_desc *descs;
  uint32_t ndescs, descs_cap;

  vmm_cpu_state_t sys;  /* Everything but GPRs, RIP, arithmetic flags and vector state. */
  uint64_t vflags;      /* RFLAGS bits kept outside the host flags (IF, IOPL, TF, AC, ...). */
  uint32_t xcr0_seen_gen;
  unsigned mem_gen, code_gen;

  enum bt_pending pending;
  struct vmm_emu_insn pend_insn;
  struct vmm_emu_access pend_acc;
  vmm_exit_t out;       /* Exit a helper produced for the caller. */
  bool have_out;

  struct { int sig, trapno, code; uint64_t err, addr; bool nomap; } fault;
  uint64_t last_fault_rip, last_fault_la;
  unsigned fault_repeat;
  bool state_changed;
  int run_error;        /* A handler's negative code: vcpu_run returns it. */
  bool flush_needed;    /* Code cache must be dropped at the next dispatcher entry. */
  bool window_flush_needed;
  bool single_step;
  bool use_rsb;
  bool indirect_slots;   /* Inline return-cache slots at indirect calls and jumps too. */         /* Returns through the shadow stack (host CALL/RET) instead of the table. */
  bool smc_single;      /* Translate the next block as one instruction (after SMC). */
  volatile int stepping;
  atomic_int tid;
  atomic_bool kicked;
  stack_t altstack;
  struct bt_stats stats;
};

static inline struct bt_vm *bt_vm(const vmm_vm_t *vm) { return vm->backend_data; }
static inline struct bt_vcpu *bt_vcpu(const vmm_vcpu_t *v) { return v->backend_data; }
static inline unsigned bt_cpl(const struct bt_vcpu *v) { return v->sys.cs.dpl; }
static inline uint8_t bt_mode(const struct bt_vcpu *v) {
  return (uint8_t)(bt_cpl(v) | (v->single_step ? 4 : 0));
}

#define BT_RFLAGS_ARITH 0x8d5ull      /* CF PF AF ZF SF OF */
#define BT_RFLAGS_HOST (BT_RFLAGS_ARITH | 0x400ull) /* plus DF: what lives in host flags */
#define BT_RFLAGS_TF (1ull << 8)
#define BT_RFLAGS_IF (1ull << 9)
#define BT_RFLAGS_IOPL (3ull << 12)
#define BT_RFLAGS_NT (1ull << 14)
#define BT_RFLAGS_RF (1ull << 16)
#define BT_RFLAGS_AC (1ull << 18)
#define BT_RFLAGS_ID (1ull << 21)

static inline uint64_t bt_get_rflags(const struct bt_vcpu *v) {
  return (v->ctrl->rflags & BT_RFLAGS_HOST) | v->vflags | 2;
}
static inline void bt_set_rflags(struct bt_vcpu *v, uint64_t f) {
  v->ctrl->rflags = f & BT_RFLAGS_HOST;
  v->vflags = f & ~BT_RFLAGS_HOST & 0x3f7fd7ull & ~2ull;
}

/* ---- assembly (bt_entry.S) ---- */
int vmm__bt_asm_enter(void);
void vmm__bt_asm_exit_chain(void);
void vmm__bt_asm_exit_indirect(void);
void vmm__bt_asm_helper(void);
void vmm__bt_asm_fault_landing(void);
void vmm__bt_asm_kicked_at_entry(void);
void vmm__bt_asm_shadow_underflow(void);
extern const char vmm__bt_asm_enter_window[], vmm__bt_asm_enter_window_end[];
extern const char vmm__bt_asm_text_start[], vmm__bt_asm_text_end[];

/* ---- bt_mem.c ---- */
int vmm__bt_mem_init(struct bt_vcpu *v);
void vmm__bt_tables_init(struct bt_ctrl *c);
void vmm__bt_window_revoke_writes(struct bt_vcpu *v);
void vmm__bt_mem_fini(struct bt_vcpu *v);
/* Where the window goes: the low window if this vCPU can have it, else the GS slot. Unplacing
 * empties the window and gives the low window back. */
void vmm__bt_mem_place(struct bt_vcpu *v);
void vmm__bt_mem_unplace(struct bt_vcpu *v);
void vmm__bt_window_flush(struct bt_vcpu *v);
/* The low window leaves no room for guest pages below BT_LOW_FLOOR: a vCPU that touches one
 * moves to its GS window (translations and mappings dropped). */
#define BT_LOW_FLOOR 0x10000ull
void vmm__bt_low_window_leave(struct bt_vcpu *v);
void vmm__bt_window_unmap_page(struct bt_vcpu *v, uint64_t la);
/* Unmaps the window pages mapped from the base file for guest-physical [pa, pa+len). */
void vmm__bt_window_drop_base(struct bt_vcpu *v, uint64_t pa, uint64_t len);
/* Page walk. acc: bit 0 write, bit 1 user, bit 2 fetch. Returns 0 with pa and the page's
 * effective rights (bit 0 writable, bit 1 user, bit 2 executable) and size; or a #PF error
 * code (>0) when the access faults; or a negative VMM_E* code. */
#define BT_WALK_PF 0x40000000 /* vmm__bt_walk: OR-ed into a #PF error code */
#define BT_PF(err) ((int)((uint32_t)(err) | BT_WALK_PF))
#define BT_WALK_NONCANON (-1000) /* vmm__bt_walk: non-canonical address (#GP) */
struct vmm__bt_walk {
  uint64_t pa;
  uint64_t page_size;
  uint64_t pte_addr; /* Guest-physical address of the leaf entry. */
  unsigned rights;
  bool dirty;
};
int vmm__bt_walk(struct bt_vcpu *v, uint64_t la, unsigned acc, bool set_ad, struct vmm__bt_walk *w);
/* Maps the page holding la into the window for the access; see bt_mem.c. */
enum bt_map_result { BT_MAP_OK, BT_MAP_PF, BT_MAP_MMIO, BT_MAP_RO_WRITE, BT_MAP_SMC, BT_MAP_ERR };
enum bt_map_result vmm__bt_map_page(struct bt_vcpu *v, uint64_t la, unsigned acc, uint32_t *pf_err,
                               uint64_t *pa_out);
/* Guest memory by linear address from C: acc as for vmm__bt_walk. On a fault returns what vmm__bt_walk
 * returned (BT_PF(err) or BT_WALK_NONCANON) and the address in *fault_la; VMM_EFAULT when the
 * page is not RAM. */
int vmm__bt_lin_read(struct bt_vcpu *v, uint64_t la, void *buf, size_t len, unsigned acc,
                uint64_t *fault_la);
int vmm__bt_lin_write(struct bt_vcpu *v, uint64_t la, const void *buf, size_t len, unsigned acc,
                 uint64_t *fault_la);
/* Host pointer to the guest bytes at pa (within one page), or NULL. */
void *vmm__bt_phys_ptr(struct bt_vcpu *v, uint64_t pa, size_t len);
bool vmm__bt_page_is_code(struct bt_vcpu *v, uint64_t pa);
/* Bookkeeping for a guest write done from C: dirty log and translated code on the page. */
int vmm__bt_note_guest_write(struct bt_vcpu *v, uint64_t pa, uint64_t len);
void vmm__bt_mark_code_page(struct bt_vcpu *v, uint64_t la, uint64_t pa);
void vmm__bt_clear_code_page(struct bt_vcpu *v, uint64_t pa);
struct vmm_region *vmm__bt_region_of(struct bt_vcpu *v, uint64_t pa);

/* ---- bt_cache.c ---- */
int vmm__bt_cache_init(struct bt_vcpu *v);
void vmm__bt_cache_fini(struct bt_vcpu *v);
size_t vmm__bt_cache_size_wanted(void);
void vmm__bt_tables_clear(struct bt_vcpu *v);

/* ---- the pool of vCPU memory (bt_pool.c) ---- */
bool vmm__bt_pool_take(struct bt_vcpu *v);
bool vmm__bt_pool_put(struct bt_vcpu *v);
/* vmm_backend_prepare(): keeps count sets, making the missing ones now. */
int vmm__bt_pool_prepare(unsigned count);
void vmm__bt_cache_flush(struct bt_vcpu *v);
void vmm__bt_shadow_reset(struct bt_vcpu *v);
int32_t vmm__bt_block_lookup(struct bt_vcpu *v, uint64_t rip, uint8_t mode);
void vmm__bt_block_insert(struct bt_vcpu *v, int32_t idx);
void vmm__bt_block_link(struct bt_vcpu *v, uint32_t patch_off, int32_t target);
void vmm__bt_invalidate_page(struct bt_vcpu *v, uint64_t pa);
void vmm__bt_invalidate_la_page(struct bt_vcpu *v, uint64_t la);
void vmm__bt_invalidate_flags(struct bt_vcpu *v, uint8_t flags);
void vmm__bt_unlink_all(struct bt_vcpu *v);
/* Fills a free slot of the return cache at `site` (cache offset) with block `target`. */
void vmm__bt_ret_cache_fill(struct bt_vcpu *v, uint32_t site, int32_t target);
struct bt_block *vmm__bt_block_at_host(struct bt_vcpu *v, uintptr_t pc);
const struct bt_map *vmm__bt_map_at(struct bt_vcpu *v, const struct bt_block *b, uintptr_t pc);
uint32_t vmm__bt_desc_add(struct bt_vcpu *v, const struct bt_desc *d);

/* ---- vmm__bt_translate.c ---- */
/* Translates a block at rip for the current mode. Returns the block index, or a negative
 * value: -1 - the #PF error code for a fetch fault (cr2 in *fault_la), or VMM_E* < -0x10000. */
int32_t vmm__bt_translate(struct bt_vcpu *v, uint64_t rip, uint64_t *fault_la, uint32_t *pf_err);
const ZydisDecoder *vmm__bt_decoder(void);

/* ---- bt_helpers.c ---- */
int vmm__bt_helper_entry(struct bt_ctrl *ctrl);
/* Raises an exception at the current guest state (rip = faulting instruction). Returns 0 when
 * the guest continues (delivered through the IDT), 1 when an exit for the caller was made. */
int vmm__bt_raise(struct bt_vcpu *v, unsigned vector, bool has_err, uint32_t err, uint64_t cr2);
void vmm__bt_cpuid(struct bt_vcpu *v, uint32_t leaf, uint32_t sub, uint32_t out[4]);
void vmm__bt_emu_cpu_get(struct bt_vcpu *v, struct vmm_emu_cpu *c);
void vmm__bt_emu_cpu_put(struct bt_vcpu *v, const struct vmm_emu_cpu *c);
struct vmm_emu_mem vmm__bt_emu_mem(struct bt_vcpu *v);
void vmm__bt_mode_changed(struct bt_vcpu *v);
int vmm__bt_complete_pending(struct bt_vcpu *v, const vmm_exit_t *exit);
int vmm__bt_do_mmio(struct bt_vcpu *v, uint64_t la, bool *to_caller);

/* ---- bt_signal.c ---- */
int vmm__bt_signals_init(void);
int vmm__bt_thread_enter(struct bt_vcpu *v, sigset_t *saved);
void vmm__bt_thread_leave(struct bt_vcpu *v, const sigset_t *saved);
/* The calling thread stops pointing its GS base at v's window (a non-zero GS base makes
 * every ptrace stop of this thread slower on hosts without FSGSBASE). */
void vmm__bt_thread_forget(struct bt_vcpu *v);
void vmm__bt_kick_signal(struct bt_vcpu *v);
struct bt_vcpu *vmm__bt_current(void);

/* ---- bt_vm.c / bt_vcpu.c ---- */
int vmm__bt_vcpu_init(vmm_vcpu_t *vcpu);
void vmm__bt_vcpu_fini(vmm_vcpu_t *vcpu);
int vmm__bt_vcpu_run(vmm_vcpu_t *vcpu, vmm_exit_t *exit);
int vmm__bt_flush_pending(vmm_vcpu_t *vcpu, const vmm_exit_t *exit);
void vmm__bt_vcpu_kick(vmm_vcpu_t *vcpu);
int vmm__bt_get_regs(vmm_vcpu_t *vcpu, vmm_regs_t *regs);
int vmm__bt_set_regs(vmm_vcpu_t *vcpu, const vmm_regs_t *regs);
int vmm__bt_get_state(vmm_vcpu_t *vcpu, vmm_cpu_state_t *st);
int vmm__bt_set_state(vmm_vcpu_t *vcpu, const vmm_cpu_state_t *st);
int vmm__bt_set_single_step(vmm_vcpu_t *vcpu, bool enable);
size_t vmm__bt_vcpu_stats(vmm_vcpu_t *vcpu, vmm_stat_t *out, size_t cap);
void vmm__bt_fast_exit_count(struct bt_vcpu *v, uint32_t reason);

#endif /* LIBVMM_BT_H */
