/* Guest entry: rdi = struct vmm_boot_info *, rsi = VMM_BOOT_MAGIC (when started by
 * vmm_vcpu_setup_long_mode). Finds the hypercall page, clears BSS, calls main(boot_info) and
 * ends the VM with main's return value. */
#include <libvmm/guest/abi.h>

	.section .text.start, "ax"
	.globl _start
	.type _start, @function
_start:
	xor	%r12d, %r12d
	movabs	$VMM_BOOT_MAGIC, %rax
	cmp	%rax, %rsi
	jne	1f
	mov	%rdi, %r12
	mov	16(%rdi), %rax		/* boot_info->hypercall_page */
	mov	%rax, vmm_hypercall_page(%rip)
1:
	lea	__bss_start(%rip), %rdi
	lea	__bss_end(%rip), %rcx
	sub	%rdi, %rcx
	xor	%eax, %eax
	cld
	rep stosb
	/* The ABI wants rsp % 16 == 0 before the call; keep the VMM's alignment. */
	and	$-16, %rsp
	mov	%r12, vmm_boot_info(%rip)
	mov	%r12, %rdi
	call	main
	mov	%rax, %rdi
	call	vmm_rt_exit
2:	jmp	2b
	.size _start, . - _start

	.data
	.balign 8
	.globl vmm_hypercall_page
vmm_hypercall_page:
	.quad	VMM_HYPERCALL_PAGE_GPA
	.globl vmm_boot_info
vmm_boot_info:
	.quad	0

	.section .note.GNU-stack, "", @progbits
