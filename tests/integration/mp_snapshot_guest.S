/* Guest code for mk_mp_snapshot, loaded flat at 1 MiB and run at CPL3 (IOPL 3) on two vCPUs.
 * vCPU 1 announces itself (1 at 0x200000), asks for a snapshot (VMM_HC_SNAPSHOT through the
 * hypercall page, on its own stack), then writes 2 there and spins until the VMM stops it.
 * vCPU 0 waits for the 2, writes "mp ok" to the debug console and ends through the debug-exit
 * port with status (0x15 << 1) | 1 = 43. A VMM that runs vCPU 0 alone never sees the VM end; a
 * snapshot taken at the hypercall, restored, ends the same way. */
	.section .rodata
	.globl	mp_guest_start, mp_guest_ap, mp_guest_end
	.p2align 4
mp_guest_start:
1:	pause
	mov	0x200000, %rax
	cmp	$2, %rax
	jne	1b
	mov	$0xe9, %dx
	mov	$'m', %al
	out	%al, %dx
	mov	$'p', %al
	out	%al, %dx
	mov	$' ', %al
	out	%al, %dx
	mov	$'o', %al
	out	%al, %dx
	mov	$'k', %al
	out	%al, %dx
	mov	$'\n', %al
	out	%al, %dx
	mov	$0x15, %al
	out	%al, $0xf4
2:	jmp	2b
mp_guest_ap:
	mov	$0xf00000, %rsp
	movq	$1, 0x200000
	mov	$(0x11000 + 4 * 32), %rax	/* VMM_HYPERCALL_PAGE_GPA + VMM_HC_SNAPSHOT entry */
	call	*%rax
	movq	$2, 0x200000
3:	pause
	jmp	3b
mp_guest_end:

	.section .note.GNU-stack, "", @progbits
