/* Guest code for mk_mp_snapshot, loaded flat at 1 MiB and run at CPL3 (IOPL 3) on two vCPUs.
 * vCPU 0 waits for vCPU 1's flag at 0x200000, writes "mp ok" to the debug console and ends
 * through the debug-exit port with status (0x15 << 1) | 1 = 43; vCPU 1 sets the flag and spins
 * until the VMM stops it. A VMM that runs vCPU 0 alone never sees the VM end. */
	.section .rodata
	.globl	mp_guest_start, mp_guest_ap, mp_guest_end
	.p2align 4
mp_guest_start:
1:	pause
	mov	0x200000, %rax
	test	%rax, %rax
	jz	1b
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
	movq	$1, 0x200000
3:	pause
	jmp	3b
mp_guest_end:

	.section .note.GNU-stack, "", @progbits
