/* Small position-independent guest programs for test_bt_backend, loaded flat at 1 MiB and run
 * at CPL0 after vmm_vcpu_setup_long_mode(). Each ends with `out %al, $0x80` (an I/O exit no
 * handler takes) unless it is meant to fault or spin. */
	.section .rodata
#define PROG(name) .globl prog_##name##_start, prog_##name##_end; .p2align 4; prog_##name##_start:
#define END(name) prog_##name##_end:
#define DONE out %al, $0x80; hlt

/* Spins until kicked. */
PROG(spin)
1:	jmp	1b
END(spin)

/* Spins with memory traffic until kicked. */
PROG(spin_mem)
	lea	0x800(%rip), %rbx
1:	incq	(%rbx)
	add	$1, %rcx
	jmp	1b
END(spin_mem)

/* Spins through an indirect jump (a table lookup and a block's indirect entry each time round)
 * and a RET (the return cache), with values in rcx and rdx that a kick must not disturb. */
PROG(spin_indirect)
	lea	1f(%rip), %rax
	mov	$0x1234, %ecx
	mov	$0x5678, %edx
1:	lea	2f(%rip), %rbx
	push	%rbx
	ret
2:	jmp	*%rax
END(spin_indirect)

/* Pushes and pops whose RSP update the translation leaves pending, around calls and returns,
 * checking at the top of every round that RSP and the pushed registers are what they were:
 * a kick that restored RSP or a register wrongly sends it to ud2 (an exception exit). */
PROG(spin_stack)
	mov	%rsp, %rbp
	mov	$0x1111, %ebx
	mov	$0x2222, %ecx
	mov	$0x3333, %edx
1:	cmp	%rsp, %rbp
	jne	9f
	cmp	$0x1111, %rbx
	jne	9f
	cmp	$0x2222, %rcx
	jne	9f
	cmp	$0x3333, %rdx
	jne	9f
	push	%rbx
	push	%rcx
	add	$1, %r8
	push	%rdx
	xor	%ebx, %ebx
	xor	%ecx, %ecx
	call	2f
	pop	%rdx
	pop	%rcx
	add	$1, %r9
	pop	%rbx
	jmp	1b
2:	push	%r12
	push	%r13
	mov	$7, %r12d
	pop	%r13
	pop	%r12
	ret
9:	ud2
END(spin_stack)

/* Two pushes whose RSP update is pending when an MMIO read faults: the read is emulated from
 * the guest's state, which must have RSP below both pushes; the pops then read them back. */
PROG(stack_fault)
	mov	$0x11, %eax
	mov	$0x22, %ebx
	mov	$0xd0000000, %ecx
	mov	%rsp, %rbp
	push	%rax
	push	%rbx
	mov	(%rcx), %r10
	pop	%rsi
	pop	%rdi
	mov	%rsp, %r9
	DONE
END(stack_fault)

/* Patches the immediate of an instruction ahead of it in the same block, then a loop body it
 * already ran: the new code must run both times. */
PROG(smc)
	lea	2f(%rip), %rbx
	movb	$5, 1(%rbx)
2:	mov	$1, %eax
	mov	%rax, %r12
	lea	3f(%rip), %rbx
	xor	%ecx, %ecx
3:	add	$1, %rcx
	cmp	$1, %rcx
	jne	4f
	movb	$7, 3b+3(%rip)		/* add $1 -> add $7 */
	jmp	3b
4:	DONE
END(smc)

/* Stops at port 0x81 (the test snapshots there), then runs a body on another page four
 * times, patching its immediate from 1 to 9 after the first: rcx ends at 1 + 3 * 9 = 28. A
 * run after rolling back to the snapshot must execute the restored bytes, not the cached
 * translation of the patched ones (which would give 36). */
PROG(rollback)
	out	%al, $0x81
	xor	%ecx, %ecx
	xor	%edx, %edx
1:	jmp	5f
6:	inc	%edx
	cmp	$1, %edx
	jne	2f
	movb	$9, 5f+1(%rip)
2:	cmp	$4, %edx
	jne	1b
	DONE
	.skip	4096
5:	mov	$1, %eax
	add	%rax, %rcx
	jmp	6b
END(rollback)

/* Runs a one-byte block at 0x10ffff (inline lookup slot 0xffff), rewrites it so that its
 * entry is dropped, then jumps to RIP ~0, which also indexes slot 0xffff: the dropped entry
 * must not match, and the guest gets a fault instead of the host jumping nowhere. */
PROG(emptyslot)
	mov	$0x10ffff, %ebx
	movb	$0xc3, (%rbx)
	call	*%rbx
	movb	$0xc3, (%rbx)
	mov	$-1, %rax
	jmp	*%rax
END(emptyslot)

/* Loads an x87 state with every exception unmasked and one pending (FCW 0, FSW 0x81) with
 * FXRSTOR, and stores it back with FXSAVE at 0x200200: the host's x87 state must not change,
 * and the guest must not see it. */
PROG(fxrstor)
	mov	$0x200000, %eax
	movw	$0, (%rax)
	movw	$0x0081, 2(%rax)
	fxrstor64 (%rax)
	fxsave64 0x200(%rax)
	DONE
END(fxrstor)

/* Run at CPL3: returns with IRETQ (then, from 1:, with a far RET) to the kernel's code
 * descriptor with RPL 3 (selector 0x0b). The CPU refuses both with #GP(8) (a non-conforming
 * segment needs DPL == RPL); neither may reach the CPL0-only instructions after them. */
PROG(retpriv)
	lea	2f(%rip), %rax
	mov	%rsp, %rbx
	pushq	$0x13
	pushq	%rbx
	pushq	$0x202
	pushq	$0x0b
	pushq	%rax
	iretq
2:	mov	%cr3, %rax
	hlt
	.globl	prog_retpriv_far
prog_retpriv_far:
	lea	3f(%rip), %rax
	pushq	$0x0b
	pushq	%rax
	lretq
3:	mov	%cr3, %rax
	hlt
END(retpriv)

/* Calls hypercall VMM_HC_NOP with every register set; the caller compares all but rax. */
PROG(hcregs)
	mov	$0x11000, %rax
	lea	-128(%rsp), %rsp
	call	*%rax
	lea	128(%rsp), %rsp
	DONE
END(hcregs)

/* Guest pages below 64 KiB, which the low window leaves unmapped: a store, a load, a string
 * copy into and out of them. Results: 0x8000 and 0x9000 hold the patterns, rbx the value read
 * back, and 0x200000 the 64 bytes copied out of 0x9100. */
PROG(lowpage)
	movabs	$0x1122334455667788, %rax
	mov	%rax, 0x8000
	mov	0x8000, %rbx
	lea	0x9100, %rdi
	mov	$64, %ecx
	mov	$0x5a, %al
	rep stosb
	mov	$0x9000, %edx
	movl	$0xcafef00d, (%rdx)
	lea	0x9100, %rsi
	mov	$0x200000, %edi
	mov	$8, %ecx
	rep movsq
	DONE
END(lowpage)

/* Stores at the floor of the low window and higher up in the same 2 MiB guest page. */
PROG(lowfloor)
	mov	%rax, 0x10000
	mov	%rax, 0x1ff000
	DONE
END(lowfloor)

/* Vector state across an exit to C (a NOP hypercall) with YMM upper halves in use and not:
 * ymm3 all ones, ymm5 ones in its low half only (VEX.128 zeroes the rest); then after
 * VZEROUPPER, xmm6 ones by a legacy SSE instruction. Stored at 0x200000 (ymm3), 0x200020
 * (ymm5) and 0x200040 (ymm6). */
PROG(ymm)
	vpcmpeqd %ymm3, %ymm3, %ymm3
	vpcmpeqd %xmm5, %xmm5, %xmm5
	mov	$0x11000, %rax
	call	*%rax
	vmovdqu	%ymm3, 0x200000
	vmovdqu	%ymm5, 0x200020
	vzeroupper
	pcmpeqd	%xmm6, %xmm6
	mov	$0x11000, %rax
	call	*%rax
	vmovdqu	%ymm6, 0x200040
	DONE
END(ymm)

/* A straight line for single-stepping: five instructions, then the exit. */
PROG(steps)
	mov	$1, %eax
	add	$2, %eax
	imul	$3, %eax, %eax
	push	%rax
	pop	%rbx
	DONE
END(steps)

/* Sandbox attempts: rdi holds a host address (a canary buffer), rsi a large value. Each
 * attempt is entered separately by the test (its offset from the start is in the table at
 * the end); it either completes with the exit or faults. */
PROG(sandbox)
a0:	mov	%rax, (%rdi)
	DONE
a1:	movabs	%rax, 0x7fffdeadbeef0000
	DONE
a2:	mov	%rax, 0x7ffffff8(%rdi,%rsi,8)
	DONE
a3:	mov	%rax, -8(%rdi)
	mov	-0x80000000(%rdi), %rbx
	DONE
a4:	mov	%rdi, %rsp
	push	%rax
	push	%rax
	pop	%rbx
	call	1f
1:	DONE
a5:	mov	$0xc0000100, %ecx		/* FS base = the host address */
	mov	%rdi, %rax
	mov	%rdi, %rdx
	shr	$32, %rdx
	wrmsr
	movq	$0x1234, %fs:0
	mov	%fs:8, %rbx
	DONE
a6:	mov	$256, %ecx
	mov	$0x5a5a5a5a, %eax
	rep stosb
	DONE
a7:	mov	$0xfffff000, %edi		/* runs into the guard above the window */
	mov	$0x100000000, %rcx
	rep stosb
	DONE
a8:	std					/* and below it */
	mov	$16, %edi
	mov	$100000, %ecx
	rep stosb
	cld
	DONE
a9:	mov	%rdi, %rbx
	xlat
	DONE
a10:	mov	%rsi, %rax
	bts	%rax, (%rdi)
	DONE
a11:	jmp	*%rdi
a12:	mov	%rdi, %rsi
	lea	0x2000(%rip), %rdi
	mov	$64, %ecx
	rep movsb
	DONE
a13:	lock cmpxchg16b (%rdi)
	DONE
a14:	mov	(%rdi), %rax			/* a read: must not see the canary */
	DONE
a15:	mov	%rdi, %rsp
	ret
a16:	vpxor	%ymm1, %ymm1, %ymm1		/* a gather based at the host address */
	vpcmpeqd	%ymm2, %ymm2, %ymm2
	vpxor	%ymm0, %ymm0, %ymm0
	vpgatherdd	%ymm2, (%rdi,%ymm1,1), %ymm0
	vmovq	%xmm0, %rax
	DONE
a17:	mov	$-0x400000, %rax		/* a base-less gather reaching below the window */
	vmovq	%rax, %xmm1
	vpbroadcastq	%xmm1, %ymm1
	vpcmpeqd	%ymm2, %ymm2, %ymm2
	vpxor	%ymm0, %ymm0, %ymm0
	vpgatherqq	%ymm2, 0(,%ymm1,1), %ymm0
	vmovq	%xmm0, %rax
	DONE
	.p2align 3
	.globl	prog_sandbox_table
prog_sandbox_table:
	.quad	a0 - prog_sandbox_start, a1 - prog_sandbox_start, a2 - prog_sandbox_start
	.quad	a3 - prog_sandbox_start, a4 - prog_sandbox_start, a5 - prog_sandbox_start
	.quad	a6 - prog_sandbox_start, a7 - prog_sandbox_start, a8 - prog_sandbox_start
	.quad	a9 - prog_sandbox_start, a10 - prog_sandbox_start, a11 - prog_sandbox_start
	.quad	a12 - prog_sandbox_start, a13 - prog_sandbox_start, a14 - prog_sandbox_start
	.quad	a15 - prog_sandbox_start, a16 - prog_sandbox_start, a17 - prog_sandbox_start
	.quad	-1
END(sandbox)

	.section .note.GNU-stack, "", @progbits
