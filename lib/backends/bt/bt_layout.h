/* Layout of the per-vCPU control area of the bt backend, shared by C and assembly.
 *
 * Every vCPU owns one reservation of host address space:
 *
 *   [ control area | guard | window: 4 GiB of guest linear space | guard ]
 *                           ^ GS base, 4 GiB aligned
 *
 * Translated code reaches guest memory only as %gs:(32-bit address), which cannot leave the
 * window, and reaches the control area as %gs:(negative 32-bit displacement), which the guest
 * cannot form. The guards catch the few accesses that run off either end of the window (the
 * last bytes of a wide access, string instructions stepping past the edge). */
#ifndef LIBVMM_BT_LAYOUT_H
#define LIBVMM_BT_LAYOUT_H

#define BT_WINDOW_SIZE 0x100000000
#define BT_WINDOW_PAGES (BT_WINDOW_SIZE / 4096) /* entries of the page-state array */
#define BT_GUARD_SIZE 0x10000
#define BT_CTRL_SIZE 0x400000
/* Displacement from GS base (the window) to the start of the control area. */
#define BT_CTRL_GS (-(BT_CTRL_SIZE + BT_GUARD_SIZE))
/* A field of the control area as a GS-relative displacement. */
#define BT_G(off) (BT_CTRL_GS + (off))

/* Guest registers in hardware encoding order (rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8..). */
#define BT_C_GPR 0x000
#define BT_C_RFLAGS 0x080     /* Host RFLAGS image: only arithmetic flags and DF matter. */
#define BT_C_RIP 0x088        /* Guest RIP at an exit. */
#define BT_C_EXIT_KIND 0x090  /* Why translated code returned to the dispatcher. */
#define BT_C_EXIT_SITE 0x098  /* Code-cache offset of the branch to patch (chain exits). */
#define BT_C_HOST_RSP 0x0a0   /* Host stack for helper calls. */
#define BT_C_ENTRY_RSP 0x0a8  /* Host stack of vmm__bt_asm_enter, to return to the dispatcher. */
#define BT_C_ENTRY_PC 0x0b0   /* Where vmm__bt_asm_enter jumps into the code cache. */
/* 0x0b8: free. */
#define BT_C_KICK 0x0c0       /* Non-zero: a kick is pending. */
#define BT_C_HELPER_ARG 0x0c8 /* Helper descriptor index for vmm__bt_asm_helper. */
#define BT_C_WINDOW 0x0d0     /* Host address of the window (the GS base). */
#define BT_C_SELF 0x0d8       /* Host address of the control area. */
#define BT_C_FN_EXIT_CHAIN 0x0e0
#define BT_C_FN_EXIT_INDIRECT 0x0e8
#define BT_C_FN_HELPER 0x0f0
#define BT_C_VEC_AVX 0x0f8    /* Byte: 1 when the guest may use AVX (save YMM, not XMM). */
#define BT_C_X87_LIVE 0x0f9   /* Byte: 1 when the guest x87/MMX state must be saved. */
#define BT_C_HOST_AVX 0x0fa   /* Byte: 1 when the host has AVX (VZEROUPPER may be used). */
#define BT_C_SPILL 0x100      /* One spill slot per guest register, for rewrite sequences. */
#define BT_C_MXCSR 0x180      /* Guest MXCSR. */
#define BT_C_MXCSR_HOST 0x184 /* Host MXCSR, restored before running C code. */
#define BT_C_SHADOW_SP 0x188  /* Return cache: host stack pointer of the shadow stack. */
#define BT_C_SAVE_RSP 0x190   /* Guest RSP while RSP points into the shadow stack. */
#define BT_C_VEC 0x200        /* Guest XMM/YMM 0-15, 32 bytes each. */
#define BT_C_FXSAVE 0x400     /* Guest x87 state (FXSAVE image) when BT_C_X87_LIVE. */
#define BT_C_TABLE0 0x100000  /* Inline lookup table for CPL0 code: 64K x {tag, host}. */
#define BT_C_TABLE3 0x200000  /* Inline lookup table for CPL3 code. */
#define BT_TABLE_BITS 16
#define BT_TABLE_BYTES ((1 << BT_TABLE_BITS) * 16)
/* Return cache: a stack of host return addresses used with real CALL/RET, so that returns are
 * predicted by the host's return-stack buffer. A guard page sits below it. */
#define BT_C_SHADOW_GUARD 0x300000
#define BT_C_SHADOW_LO 0x301000
#define BT_C_SHADOW_TOP 0x311000

/* Exit kinds (BT_C_EXIT_KIND and the return value of vmm__bt_asm_enter). */
#define BT_EXIT_NONE 0
#define BT_EXIT_CHAIN 1    /* A direct branch to a block that is not linked yet. */
#define BT_EXIT_INDIRECT 2 /* An indirect branch missed the inline table. */
#define BT_EXIT_HELPER 3   /* A helper asked the dispatcher to take over. */
#define BT_EXIT_FAULT 4    /* A host fault inside translated code (signal handler). */
#define BT_EXIT_KICK 5     /* A kick stopped translated code. */

#endif /* LIBVMM_BT_LAYOUT_H */
