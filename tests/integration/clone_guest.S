/* Guest code for test_clones, loaded flat at 1 MiB and run at CPL0 (bt, kvm) or CPL3 (pv)
 * after vmm_vcpu_setup_long_mode(). It ends with `out %al, $0x80` (an I/O exit no handler
 * takes). */
	.section .rodata
#define PROG(name) .globl prog_##name##_start, prog_##name##_end; .p2align 4; prog_##name##_start:
#define END(name) prog_##name##_end:
#define DONE out %al, $0x80; hlt

/* Two vCPUs of a clone pass a message through pages the clone still shares with its snapshot.
 * The consumer (entry prog_mp_consumer) first reads the flag (0x200000) and the data
 * (0x201000), so that both are mapped from the shared base, then announces itself at 0x202000
 * and spins on the flag; the producer waits for the announcement, writes 42 to the data, then
 * the flag. Each vCPU must see the other's writes to pages it had mapped from the base:
 * otherwise one of them spins forever. The consumer ends with rbx = 42. */
PROG(mp)
1:	pause
	mov	0x202000, %rax
	test	%rax, %rax
	jz	1b
	movq	$42, 0x201000
	movq	$1, 0x200000
	DONE
	.globl	prog_mp_consumer
prog_mp_consumer:
	mov	0x200000, %rax
	mov	0x201000, %rbx
	movq	$1, 0x202000
2:	pause
	mov	0x200000, %rax
	test	%rax, %rax
	jz	2b
	mov	0x201000, %rbx
	DONE
END(mp)

/* Loops on `out %al, $0x10` (a port the test's handler takes) until kicked. */
PROG(ioloop)
1:	out	%al, $0x10
	jmp	1b
END(ioloop)

/* Writes 0x1234 to the read-only region at 16 MiB, then ends. */
PROG(romw)
	movq	$0x1234, 0x1000000
	DONE
END(romw)

	.section .note.GNU-stack, "", @progbits
