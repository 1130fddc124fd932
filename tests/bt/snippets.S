/* Instruction-class snippets for test_bt_translate: each runs natively and translated, from
 * the same addresses, and must leave the same registers, flags and memory. Conventions:
 * r15 = data buffer (64 KiB, also holds the stack at its top), r14 = small index, rsp inside
 * the buffer. Snippets fall through at their end label; the harness appends its epilogue. */
	.section .rodata
	.globl	bt_snippets
#define SNIP(name) .globl snip_##name##_start, snip_##name##_end; snip_##name##_start:
#define END(name) snip_##name##_end:

SNIP(alu_rr)
	add	%rbx, %rax
	adc	%rcx, %rdx
	sub	%rsi, %rdi
	sbb	%r8, %r9
	and	%r10, %r11
	or	%r12, %r13
	xor	%rbx, %rcx
	cmp	%rax, %rdx
	test	%rsi, %rdi
END(alu_rr)

SNIP(alu_imm_mem)
	addq	$0x12345, 8(%r15)
	subl	$-7, 16(%r15)
	andw	$0x0ff0, 24(%r15)
	orb	$0x81, 32(%r15)
	xorq	%rax, 40(%r15)
	add	48(%r15), %rbx
	cmpq	$5, 56(%r15)
	adcq	(%r15,%r14,8), %rcx
	inc	%rdx
	decl	64(%r15)
	neg	%rsi
	notq	72(%r15)
END(alu_imm_mem)

SNIP(muldiv)
	mov	%rbx, %rax
	imul	%rcx, %rax
	mul	%rdx
	mov	$1000003, %rcx
	xor	%edx, %edx
	div	%rcx
	imulq	$-77, 8(%r15), %rsi
	movq	$-99999, %rax
	cqo
	movq	$77, %rcx
	idiv	%rcx
END(muldiv)

SNIP(shifts)
	shl	$3, %rax
	shr	%rbx
	sar	$5, %rcx
	rol	$7, %rdx
	ror	$9, %rsi
	mov	$13, %ecx
	shl	%cl, %rdi
	rcl	$1, %r8
	rcr	$3, %r9
	shld	$4, %r10, %r11
	shrdq	%cl, %r12, 8(%r15)
	sarq	%cl, 16(%r15)
	btq	$37, %r13
	btsq	$3, 24(%r15)
	btrq	$63, 32(%r15)
END(shifts)

SNIP(strings)
	cld
	lea	0x100(%r15), %rsi
	lea	0x400(%r15), %rdi
	mov	$77, %ecx
	rep movsb
	mov	$0x1122334455667788, %rax
	mov	$9, %ecx
	rep stosq
	lea	0x100(%r15), %rsi
	lea	0x400(%r15), %rdi
	mov	$50, %ecx
	repe cmpsb
	lea	0x200(%r15), %rdi
	mov	$0x88, %eax
	mov	$200, %ecx
	repne scasb
	lea	0x300(%r15), %rsi
	lodsq
	lodsb
	std
	lea	0x7ff(%r15), %rsi
	lea	0x9ff(%r15), %rdi
	mov	$33, %ecx
	rep movsb
	cld
	movsw
	stosl
END(strings)

SNIP(stack)
	push	%rax
	push	%rbx
	pushq	$-5
	pushq	$0x1234
	push	8(%r15)
	pop	16(%r15)
	pop	%rcx
	pop	%rdx
	pushw	%si
	popw	%di
	push	%rsp
	pop	%r8
	pushfq
	pop	%r9
	and	$-16, %rsp
	sub	$64, %rsp
	mov	%rax, 8(%rsp)
	mov	16(%rsp), %r10
	add	$64, %rsp
	enter	$32, $0
	mov	%rbp, %r11
	leave
	pop	%r12
	pop	%r13
END(stack)

SNIP(riprel)
	mov	1f(%rip), %rax
	lea	1f(%rip), %rbx
	add	2f(%rip), %rcx
	movq	%rdx, 3f(%rip)
	mov	3f(%rip), %rsi
	incl	3f+4(%rip)
	mov	3f(%rip), %rdi
	jmp	4f
1:	.quad	0x0123456789abcdef
2:	.quad	0x1111111111111111
3:	.quad	0
4:
END(riprel)

SNIP(branches)
	xor	%eax, %eax
	mov	$10, %ecx
1:	add	%rcx, %rax
	loop	1b
	cmp	$55, %rax
	jne	9f
	jz	2f
	ud2
2:	lea	3f(%rip), %rdx
	jmp	*%rdx
	ud2
3:	lea	4f(%rip), %rdx
	mov	%rdx, 8(%r15)
	jmp	*8(%r15)
	ud2
4:	call	5f
	jmp	6f
5:	add	$100, %rax
	ret
6:	lea	7f(%rip), %rdx
	call	*%rdx
	mov	%rdx, 16(%r15)
	lea	8f(%rip), %rdx
	mov	%rdx, 16(%r15)
	call	*16(%r15)
	jmp	10f
7:	add	$1000, %rax
	ret
8:	add	$10000, %rax
	ret	$0
9:	mov	$-1, %rax
10:	xor	%ecx, %ecx
	jrcxz	11f
	ud2
11:	mov	$3, %rcx
	lea	12f(%rip), %rdx
	mov	%rdx, 0x98(%r15)
	jmp	*0x80(%r15,%rcx,8)
12:	add	$7, %rbx
14:	sub	$1, %r8
	jnz	15f
	add	$1, %r9
15:	setc	%r10b
	cmovz	%r11, %r12
END(branches)

SNIP(atomics)
	lock addq	$5, 8(%r15)
	mov	$3, %rax
	lock xaddq	%rax, 16(%r15)
	mov	24(%r15), %rax
	mov	$77, %rbx
	lock cmpxchgq	%rbx, 24(%r15)
	mov	$1, %rax
	lock cmpxchgq	%rcx, 32(%r15)
	xchg	%rdx, 40(%r15)
	lock btsq	$9, 48(%r15)
	mov	$70, %rsi
	lock btsq	%rsi, 56(%r15)
	mov	$-3, %rsi
	btcq	%rsi, 128(%r15)
	btq	%rsi, 120(%r15)
	mov	64(%r15), %rax
	mov	72(%r15), %rdx
	mov	$1, %rbx
	mov	$2, %rcx
	lock cmpxchg16b	64(%r15)
	lock incl	96(%r15)
	lock decw	100(%r15)
END(atomics)

SNIP(sse)
	movdqu	0x100(%r15), %xmm0
	movdqu	0x110(%r15), %xmm1
	paddd	%xmm1, %xmm0
	pxor	0x120(%r15), %xmm0
	movdqu	%xmm0, 0x200(%r15)
	movss	0x130(%r15), %xmm2
	addss	0x134(%r15), %xmm2
	movss	%xmm2, 0x210(%r15)
	cvtsi2sdq	8(%r15), %xmm3
	movsd	%xmm3, 0x218(%r15)
	pshufb	0x140(%r15), %xmm1
	movdqa	%xmm1, 0x220(%r15)
	movq	%xmm1, %rax
	pcmpeqb	0x150(%r15), %xmm1
	pmovmskb	%xmm1, %ebx
	ucomiss	0x160(%r15), %xmm2
	seta	%cl
END(sse)

SNIP(avx)
	vmovdqu	0x100(%r15), %ymm0
	vpaddd	0x120(%r15), %ymm0, %ymm1
	vmovdqu	%ymm1, 0x300(%r15)
	vbroadcastss	0x140(%r15), %ymm2
	vmulps	0x160(%r15), %ymm2, %ymm3
	vmovups	%ymm3, 0x320(%r15)
	vpshufb	0x180(%r15), %xmm0, %xmm4
	vmovdqu	%xmm4, 0x340(%r15)
	andn	%rax, %rbx, %rcx
	shlx	%rdx, %rsi, %rdi
	vzeroupper
END(avx)

/* AVX2 gathers: dword and qword elements, vector indices (some negative), a partial mask, a
 * base register and none (absolute 0x10000100: BTH_DATA + 0x100). */
SNIP(gather)
	movl	$1, 0x400(%r15)
	movl	$7, 0x404(%r15)
	movl	$-3, 0x408(%r15)
	movl	$100, 0x40c(%r15)
	movl	$0, 0x410(%r15)
	movl	$31, 0x414(%r15)
	movl	$5, 0x418(%r15)
	movl	$-8, 0x41c(%r15)
	vmovdqu	0x400(%r15), %ymm1
	vpcmpeqd	%ymm2, %ymm2, %ymm2
	vpxor	%ymm0, %ymm0, %ymm0
	vpgatherdd	%ymm2, 0x100(%r15,%ymm1,4), %ymm0
	vmovdqu	%ymm0, 0x440(%r15)
	vmovdqu	%ymm2, 0x460(%r15)
	vpcmpeqq	%ymm3, %ymm3, %ymm3
	vpsrlq	$63, %ymm3, %ymm3
	vpsllq	$63, %ymm3, %ymm3
	vpblendd	$0x0c, 0x440(%r15), %ymm3, %ymm3
	vmovdqu	0x480(%r15), %ymm4
	vgatherdpd	%ymm3, 0x200(%r15,%xmm1,8), %ymm4
	vmovupd	%ymm4, 0x4a0(%r15)
	vmovdqu	%ymm3, 0x4c0(%r15)
	vpmovsxdq	0x400(%r15), %ymm5
	vpcmpeqd	%ymm6, %ymm6, %ymm6
	vpxor	%xmm7, %xmm7, %xmm7
	lea	0x300(%r15), %rax
	vpgatherqd	%xmm6, (%rax,%ymm5,2), %xmm7
	vmovdqu	%xmm7, 0x4e0(%r15)
	/* No base register: an absolute displacement (the data area, see bt_harness.h) plus the
	 * vector index. */
	vpcmpeqd	%ymm2, %ymm2, %ymm2
	vpxor	%ymm0, %ymm0, %ymm0
	vpgatherdd	%ymm2, 0x10000100(,%ymm1,4), %ymm0
	vmovdqu	%ymm0, 0x500(%r15)
	vzeroupper
END(gather)

SNIP(fsgs)
	mov	%fs:8, %rax
	mov	%rax, %fs:16
	addq	$3, %fs:24
	mov	%fs:(%r14), %rbx
	mov	%gs:32, %rcx
	mov	%rcx, %gs:40(%r14,%r14,1)
END(fsgs)

SNIP(misc)
	lea	0x100(%r15), %rbx
	mov	$5, %eax
	xlat
	.byte	0x2e			/* a null segment prefix: the window still applies */
	xlat
	bswap	%rax
	movzbl	3(%r15), %ebx
	movsbq	5(%r15), %rcx
	movslq	12(%r15), %rdx
	popcnt	16(%r15), %rsi
	lzcnt	%rax, %rdi
	tzcnt	24(%r15), %r8
	cmovl	32(%r15), %r9
	sete	40(%r15)
	lahf
	sahf
	cwde
	cdq
	crc32q	48(%r15), %r10
	movbe	56(%r15), %r11
	nop
	nopw	0x0(%rax,%rax,1)
END(misc)

	.section .note.GNU-stack, "", @progbits
