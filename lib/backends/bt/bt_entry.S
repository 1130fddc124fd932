/* Transitions between the dispatcher (C, host stack) and translated code (guest registers in
 * host registers, guest RSP in RSP, GS base = window). Every control-area access is
 * %gs:BT_G(field). */
#include "bt_layout.h"

#define G(f) %gs:BT_G(f)

/* Guest vector state to the control area, then the host MXCSR for C code. Flags are free. */
.macro VEC_SAVE
	cmpb	$0, G(BT_C_VEC_AVX)
	je	1f
	vmovdqu	%ymm0, G(BT_C_VEC + 0 * 32)
	vmovdqu	%ymm1, G(BT_C_VEC + 1 * 32)
	vmovdqu	%ymm2, G(BT_C_VEC + 2 * 32)
	vmovdqu	%ymm3, G(BT_C_VEC + 3 * 32)
	vmovdqu	%ymm4, G(BT_C_VEC + 4 * 32)
	vmovdqu	%ymm5, G(BT_C_VEC + 5 * 32)
	vmovdqu	%ymm6, G(BT_C_VEC + 6 * 32)
	vmovdqu	%ymm7, G(BT_C_VEC + 7 * 32)
	vmovdqu	%ymm8, G(BT_C_VEC + 8 * 32)
	vmovdqu	%ymm9, G(BT_C_VEC + 9 * 32)
	vmovdqu	%ymm10, G(BT_C_VEC + 10 * 32)
	vmovdqu	%ymm11, G(BT_C_VEC + 11 * 32)
	vmovdqu	%ymm12, G(BT_C_VEC + 12 * 32)
	vmovdqu	%ymm13, G(BT_C_VEC + 13 * 32)
	vmovdqu	%ymm14, G(BT_C_VEC + 14 * 32)
	vmovdqu	%ymm15, G(BT_C_VEC + 15 * 32)
	jmp	2f
1:
	movdqu	%xmm0, G(BT_C_VEC + 0 * 32)
	movdqu	%xmm1, G(BT_C_VEC + 1 * 32)
	movdqu	%xmm2, G(BT_C_VEC + 2 * 32)
	movdqu	%xmm3, G(BT_C_VEC + 3 * 32)
	movdqu	%xmm4, G(BT_C_VEC + 4 * 32)
	movdqu	%xmm5, G(BT_C_VEC + 5 * 32)
	movdqu	%xmm6, G(BT_C_VEC + 6 * 32)
	movdqu	%xmm7, G(BT_C_VEC + 7 * 32)
	movdqu	%xmm8, G(BT_C_VEC + 8 * 32)
	movdqu	%xmm9, G(BT_C_VEC + 9 * 32)
	movdqu	%xmm10, G(BT_C_VEC + 10 * 32)
	movdqu	%xmm11, G(BT_C_VEC + 11 * 32)
	movdqu	%xmm12, G(BT_C_VEC + 12 * 32)
	movdqu	%xmm13, G(BT_C_VEC + 13 * 32)
	movdqu	%xmm14, G(BT_C_VEC + 14 * 32)
	movdqu	%xmm15, G(BT_C_VEC + 15 * 32)
2:
	stmxcsr	G(BT_C_MXCSR)
	cmpb	$0, G(BT_C_X87_LIVE)
	je	3f
	fxsave64 G(BT_C_FXSAVE)
	fninit
3:
	ldmxcsr	G(BT_C_MXCSR_HOST)
.endm

/* The inverse; flags are free. */
.macro VEC_RESTORE
	cmpb	$0, G(BT_C_X87_LIVE)
	je	3f
	fxrstor64 G(BT_C_FXSAVE)
3:
	ldmxcsr	G(BT_C_MXCSR)
	cmpb	$0, G(BT_C_VEC_AVX)
	je	1f
	vmovdqu	G(BT_C_VEC + 0 * 32), %ymm0
	vmovdqu	G(BT_C_VEC + 1 * 32), %ymm1
	vmovdqu	G(BT_C_VEC + 2 * 32), %ymm2
	vmovdqu	G(BT_C_VEC + 3 * 32), %ymm3
	vmovdqu	G(BT_C_VEC + 4 * 32), %ymm4
	vmovdqu	G(BT_C_VEC + 5 * 32), %ymm5
	vmovdqu	G(BT_C_VEC + 6 * 32), %ymm6
	vmovdqu	G(BT_C_VEC + 7 * 32), %ymm7
	vmovdqu	G(BT_C_VEC + 8 * 32), %ymm8
	vmovdqu	G(BT_C_VEC + 9 * 32), %ymm9
	vmovdqu	G(BT_C_VEC + 10 * 32), %ymm10
	vmovdqu	G(BT_C_VEC + 11 * 32), %ymm11
	vmovdqu	G(BT_C_VEC + 12 * 32), %ymm12
	vmovdqu	G(BT_C_VEC + 13 * 32), %ymm13
	vmovdqu	G(BT_C_VEC + 14 * 32), %ymm14
	vmovdqu	G(BT_C_VEC + 15 * 32), %ymm15
	jmp	2f
1:
	movdqu	G(BT_C_VEC + 0 * 32), %xmm0
	movdqu	G(BT_C_VEC + 1 * 32), %xmm1
	movdqu	G(BT_C_VEC + 2 * 32), %xmm2
	movdqu	G(BT_C_VEC + 3 * 32), %xmm3
	movdqu	G(BT_C_VEC + 4 * 32), %xmm4
	movdqu	G(BT_C_VEC + 5 * 32), %xmm5
	movdqu	G(BT_C_VEC + 6 * 32), %xmm6
	movdqu	G(BT_C_VEC + 7 * 32), %xmm7
	movdqu	G(BT_C_VEC + 8 * 32), %xmm8
	movdqu	G(BT_C_VEC + 9 * 32), %xmm9
	movdqu	G(BT_C_VEC + 10 * 32), %xmm10
	movdqu	G(BT_C_VEC + 11 * 32), %xmm11
	movdqu	G(BT_C_VEC + 12 * 32), %xmm12
	movdqu	G(BT_C_VEC + 13 * 32), %xmm13
	movdqu	G(BT_C_VEC + 14 * 32), %xmm14
	movdqu	G(BT_C_VEC + 15 * 32), %xmm15
2:
.endm

.macro SAVE_GPRS_NO_RSP
	mov	%rax, G(BT_C_GPR + 0 * 8)
	mov	%rcx, G(BT_C_GPR + 1 * 8)
	mov	%rdx, G(BT_C_GPR + 2 * 8)
	mov	%rbx, G(BT_C_GPR + 3 * 8)
	mov	%rbp, G(BT_C_GPR + 5 * 8)
	mov	%rsi, G(BT_C_GPR + 6 * 8)
	mov	%rdi, G(BT_C_GPR + 7 * 8)
	mov	%r8, G(BT_C_GPR + 8 * 8)
	mov	%r9, G(BT_C_GPR + 9 * 8)
	mov	%r10, G(BT_C_GPR + 10 * 8)
	mov	%r11, G(BT_C_GPR + 11 * 8)
	mov	%r12, G(BT_C_GPR + 12 * 8)
	mov	%r13, G(BT_C_GPR + 13 * 8)
	mov	%r14, G(BT_C_GPR + 14 * 8)
	mov	%r15, G(BT_C_GPR + 15 * 8)
.endm

.macro LOAD_GPRS_NO_RSP
	mov	G(BT_C_GPR + 0 * 8), %rax
	mov	G(BT_C_GPR + 1 * 8), %rcx
	mov	G(BT_C_GPR + 2 * 8), %rdx
	mov	G(BT_C_GPR + 3 * 8), %rbx
	mov	G(BT_C_GPR + 5 * 8), %rbp
	mov	G(BT_C_GPR + 6 * 8), %rsi
	mov	G(BT_C_GPR + 7 * 8), %rdi
	mov	G(BT_C_GPR + 8 * 8), %r8
	mov	G(BT_C_GPR + 9 * 8), %r9
	mov	G(BT_C_GPR + 10 * 8), %r10
	mov	G(BT_C_GPR + 11 * 8), %r11
	mov	G(BT_C_GPR + 12 * 8), %r12
	mov	G(BT_C_GPR + 13 * 8), %r13
	mov	G(BT_C_GPR + 14 * 8), %r14
	mov	G(BT_C_GPR + 15 * 8), %r15
.endm

	.text
	.globl	bt_asm_text_start
	.hidden	bt_asm_text_start
bt_asm_text_start:

/* int bt_asm_enter(void): runs translated code at BT_C_ENTRY_PC until an exit; returns the
 * exit kind. The guest state is in the control area before and after. */
	.globl	bt_asm_enter
	.hidden	bt_asm_enter
	.type	bt_asm_enter, @function
	.p2align 4
bt_asm_enter:
	push	%rbp
	push	%rbx
	push	%r12
	push	%r13
	push	%r14
	push	%r15
	sub	$8, %rsp
	mov	%rsp, G(BT_C_ENTRY_RSP)
	mov	%rsp, G(BT_C_HOST_RSP)
	stmxcsr	G(BT_C_MXCSR_HOST)
	VEC_RESTORE
	/* From the kick test to the jump the vCPU is at the block's first instruction; a kick
	 * signal landing here is redirected to bt_asm_kicked_at_entry. */
	.globl	bt_asm_enter_window
	.hidden	bt_asm_enter_window
bt_asm_enter_window:
	cmpq	$0, G(BT_C_KICK)
	jne	bt_asm_kicked_at_entry
	push	G(BT_C_RFLAGS)
	popfq
	LOAD_GPRS_NO_RSP
	mov	G(BT_C_GPR + 4 * 8), %rsp
	jmp	*G(BT_C_ENTRY_PC)
	.globl	bt_asm_enter_window_end
	.hidden	bt_asm_enter_window_end
bt_asm_enter_window_end:
	.size	bt_asm_enter, . - bt_asm_enter

/* Nothing ran: the control area still holds the state. */
	.globl	bt_asm_kicked_at_entry
	.hidden	bt_asm_kicked_at_entry
	.p2align 4
bt_asm_kicked_at_entry:
	mov	G(BT_C_ENTRY_RSP), %rsp
	cld
	VEC_SAVE
	mov	$BT_EXIT_KICK, %eax
	jmp	bt_asm_return

/* Shared tail: rsp = BT_C_ENTRY_RSP, eax = exit kind. */
	.p2align 4
bt_asm_return:
	add	$8, %rsp
	pop	%r15
	pop	%r14
	pop	%r13
	pop	%r12
	pop	%rbx
	pop	%rbp
	ret

/* Exit stubs jump here with BT_C_RIP and BT_C_EXIT_SITE set and the guest state live. */
	.globl	bt_asm_exit_chain
	.hidden	bt_asm_exit_chain
	.p2align 4
bt_asm_exit_chain:
	movl	$BT_EXIT_CHAIN, G(BT_C_EXIT_KIND)
	jmp	bt_asm_exit_common

	.globl	bt_asm_exit_indirect
	.hidden	bt_asm_exit_indirect
	.p2align 4
bt_asm_exit_indirect:
	movl	$BT_EXIT_INDIRECT, G(BT_C_EXIT_KIND)
bt_asm_exit_common:
	mov	%rsp, G(BT_C_GPR + 4 * 8)
	mov	G(BT_C_ENTRY_RSP), %rsp
	pushfq
	pop	G(BT_C_RFLAGS)
	SAVE_GPRS_NO_RSP
	cld
	VEC_SAVE
	mov	G(BT_C_EXIT_KIND), %eax
	jmp	bt_asm_return

/* Helper call: the block stored the guest RSP, switched to BT_C_HOST_RSP, set
 * BT_C_HELPER_ARG and called here. Returning continues the block, which reloads RSP. */
	.globl	bt_asm_helper
	.hidden	bt_asm_helper
	.p2align 4
bt_asm_helper:
	pushfq
	pop	G(BT_C_RFLAGS)
	SAVE_GPRS_NO_RSP
	cld
	VEC_SAVE
	sub	$8, %rsp
	mov	G(BT_C_SELF), %rdi
	call	bt_helper_entry
	add	$8, %rsp
	test	%eax, %eax
	jnz	1f
	VEC_RESTORE
	push	G(BT_C_RFLAGS)
	popfq
	LOAD_GPRS_NO_RSP
	ret
1:
	mov	G(BT_C_ENTRY_RSP), %rsp
	jmp	bt_asm_return

/* The signal handler saved the guest registers into the control area and resumed here on
 * the host stack; the vector registers still hold guest values. */
	.globl	bt_asm_fault_landing
	.hidden	bt_asm_fault_landing
	.p2align 4
bt_asm_fault_landing:
	cld
	VEC_SAVE
	mov	G(BT_C_EXIT_KIND), %eax
	jmp	bt_asm_return

	.globl	bt_asm_text_end
	.hidden	bt_asm_text_end
bt_asm_text_end:

	.section .note.GNU-stack, "", @progbits
