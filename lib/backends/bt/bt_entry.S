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
	/* ldmxcsr is slow; most guests keep the default MXCSR. RAX is free here. */
	mov	G(BT_C_MXCSR), %eax
	cmp	G(BT_C_MXCSR_HOST), %eax
	je	4f
	ldmxcsr	G(BT_C_MXCSR_HOST)
4:
.endm

/* The inverse; flags and RAX are free, MXCSR holds the host value. */
.macro VEC_RESTORE
	cmpb	$0, G(BT_C_X87_LIVE)
	je	3f
	fxrstor64 G(BT_C_FXSAVE)
	ldmxcsr	G(BT_C_MXCSR)
	jmp	4f
3:
	mov	G(BT_C_MXCSR), %eax
	cmp	G(BT_C_MXCSR_HOST), %eax
	je	4f
	ldmxcsr	G(BT_C_MXCSR)
4:
	/* With every upper half zero, the registers go back as XMM after VZEROUPPER: YMM loads
	 * would leave the upper state in use, and SSE code then runs two to three times slower
	 * on common cores (false dependencies on the upper halves), which native code that
	 * never touched AVX does not pay. */
	cmpb	$0, G(BT_C_VEC_AVX)
	je	5f
	mov	G(BT_C_VEC + 0 * 32 + 16), %rax
	or	G(BT_C_VEC + 0 * 32 + 24), %rax
	or	G(BT_C_VEC + 1 * 32 + 16), %rax
	or	G(BT_C_VEC + 1 * 32 + 24), %rax
	or	G(BT_C_VEC + 2 * 32 + 16), %rax
	or	G(BT_C_VEC + 2 * 32 + 24), %rax
	or	G(BT_C_VEC + 3 * 32 + 16), %rax
	or	G(BT_C_VEC + 3 * 32 + 24), %rax
	or	G(BT_C_VEC + 4 * 32 + 16), %rax
	or	G(BT_C_VEC + 4 * 32 + 24), %rax
	or	G(BT_C_VEC + 5 * 32 + 16), %rax
	or	G(BT_C_VEC + 5 * 32 + 24), %rax
	or	G(BT_C_VEC + 6 * 32 + 16), %rax
	or	G(BT_C_VEC + 6 * 32 + 24), %rax
	or	G(BT_C_VEC + 7 * 32 + 16), %rax
	or	G(BT_C_VEC + 7 * 32 + 24), %rax
	or	G(BT_C_VEC + 8 * 32 + 16), %rax
	or	G(BT_C_VEC + 8 * 32 + 24), %rax
	or	G(BT_C_VEC + 9 * 32 + 16), %rax
	or	G(BT_C_VEC + 9 * 32 + 24), %rax
	or	G(BT_C_VEC + 10 * 32 + 16), %rax
	or	G(BT_C_VEC + 10 * 32 + 24), %rax
	or	G(BT_C_VEC + 11 * 32 + 16), %rax
	or	G(BT_C_VEC + 11 * 32 + 24), %rax
	or	G(BT_C_VEC + 12 * 32 + 16), %rax
	or	G(BT_C_VEC + 12 * 32 + 24), %rax
	or	G(BT_C_VEC + 13 * 32 + 16), %rax
	or	G(BT_C_VEC + 13 * 32 + 24), %rax
	or	G(BT_C_VEC + 14 * 32 + 16), %rax
	or	G(BT_C_VEC + 14 * 32 + 24), %rax
	or	G(BT_C_VEC + 15 * 32 + 16), %rax
	or	G(BT_C_VEC + 15 * 32 + 24), %rax
	jz	5f
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
5:
	cmpb	$0, G(BT_C_HOST_AVX)
	je	1f
	vzeroupper	/* the host's C code may have left the upper state in use, too */
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
	.globl	vmm__bt_asm_text_start
	.hidden	vmm__bt_asm_text_start
vmm__bt_asm_text_start:

/* int vmm__bt_asm_enter(void): runs translated code at BT_C_ENTRY_PC until an exit; returns the
 * exit kind. The guest state is in the control area before and after. */
	.globl	vmm__bt_asm_enter
	.hidden	vmm__bt_asm_enter
	.type	vmm__bt_asm_enter, @function
	.p2align 4
vmm__bt_asm_enter:
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
	 * signal landing here is redirected to vmm__bt_asm_kicked_at_entry. */
	.globl	vmm__bt_asm_enter_window
	.hidden	vmm__bt_asm_enter_window
vmm__bt_asm_enter_window:
	cmpq	$0, G(BT_C_KICK)
	jne	vmm__bt_asm_kicked_at_entry
	push	G(BT_C_RFLAGS)
	popfq
	LOAD_GPRS_NO_RSP
	mov	G(BT_C_GPR + 4 * 8), %rsp
	jmp	*G(BT_C_ENTRY_PC)
	.globl	vmm__bt_asm_enter_window_end
	.hidden	vmm__bt_asm_enter_window_end
vmm__bt_asm_enter_window_end:
	.size	vmm__bt_asm_enter, . - vmm__bt_asm_enter

/* Nothing ran: the control area still holds the state. */
	.globl	vmm__bt_asm_kicked_at_entry
	.hidden	vmm__bt_asm_kicked_at_entry
	.p2align 4
vmm__bt_asm_kicked_at_entry:
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
	.globl	vmm__bt_asm_exit_chain
	.hidden	vmm__bt_asm_exit_chain
	.p2align 4
vmm__bt_asm_exit_chain:
	movl	$BT_EXIT_CHAIN, G(BT_C_EXIT_KIND)
	jmp	bt_asm_exit_common

	.globl	vmm__bt_asm_exit_indirect
	.hidden	vmm__bt_asm_exit_indirect
	.p2align 4
vmm__bt_asm_exit_indirect:
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
	.globl	vmm__bt_asm_helper
	.hidden	vmm__bt_asm_helper
	.p2align 4
vmm__bt_asm_helper:
	pushfq
	pop	G(BT_C_RFLAGS)
	SAVE_GPRS_NO_RSP
	cld
	VEC_SAVE
	sub	$8, %rsp
	mov	G(BT_C_SELF), %rdi
	call	vmm__bt_helper_entry
	add	$8, %rsp
	test	%eax, %eax
	jnz	bt_asm_helper_exit
	VEC_RESTORE
	push	G(BT_C_RFLAGS)
	popfq
	LOAD_GPRS_NO_RSP
	ret
bt_asm_helper_exit:
	mov	G(BT_C_ENTRY_RSP), %rsp
	jmp	bt_asm_return

/* The signal handler saved the guest registers into the control area and resumed here on
 * the host stack; the vector registers still hold guest values. */
	.globl	vmm__bt_asm_fault_landing
	.hidden	vmm__bt_asm_fault_landing
	.p2align 4
vmm__bt_asm_fault_landing:
	cld
	VEC_SAVE
	mov	G(BT_C_EXIT_KIND), %eax
	jmp	bt_asm_return

/* A guest RET popped the return cache's sentinel: nothing is cached above this frame. Keep
 * the sentinel and let the dispatcher find the target (rdx; rcx and rdx spilled). */
	.globl	vmm__bt_asm_shadow_underflow
	.hidden	vmm__bt_asm_shadow_underflow
	.p2align 4
vmm__bt_asm_shadow_underflow:
	lea	-8(%rsp), %rsp
	mov	%rsp, G(BT_C_SHADOW_SP)
	mov	G(BT_C_SAVE_RSP), %rsp
	mov	%rdx, G(BT_C_RIP)
	mov	G(BT_C_SPILL + 1 * 8), %rcx
	mov	G(BT_C_SPILL + 2 * 8), %rdx
	jmp	vmm__bt_asm_exit_indirect

	.globl	vmm__bt_asm_text_end
	.hidden	vmm__bt_asm_text_end
vmm__bt_asm_text_end:

	.section .note.GNU-stack, "", @progbits
