/* SPDX-License-Identifier: MIT */
/*
 * kvm-probe: tiny self-test for a real /dev/kvm (meant to run inside the
 * nested TCG/SVM guest started by run-in-qemu.sh, but works on any KVM host).
 *
 *   1. real mode:  mov $0x42,%al; out %al,$0x10; hlt
 *                  -> expect KVM_EXIT_IO(port 0x10, value 0x42), KVM_EXIT_HLT
 *   2. KVM_RUN round trip cost: a real-mode loop of `out` exits, N iterations
 *   3. long mode:  4-level page tables, GDT, CR0/CR4/EFER via KVM_SET_SREGS,
 *                  `out` at CPL0 (value read through paging), then iretq to
 *                  CPL3 (IOPL=3) and `out` again at CPL3.
 *
 * Build:  cc -O2 -static -o kvm-probe kvm-probe.c
 * Usage:  kvm-probe [-n ROUNDTRIP_ITERS] [-q]
 * Exit status: 0 all passed, 1 a check failed, 77 /dev/kvm unavailable.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static int failures;
static double t_origin;

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Print "[time since start] label (duration of this step)". */
static void __attribute__((format(printf, 2, 3)))
STEP(double t0, const char *fmt, ...)
{
	char label[128];
	double t1 = now_ms();
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(label, sizeof(label), fmt, ap);
	va_end(ap);
	printf("[%9.3f ms] %-46s (%.3f ms)\n", t1 - t_origin, label, t1 - t0);
}

static void fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("FAIL: ");
	vprintf(fmt, ap);
	printf("\n");
	va_end(ap);
	fflush(stdout);
	failures++;
}

static const char *exit_name(uint32_t r)
{
	switch (r) {
	case KVM_EXIT_UNKNOWN: return "UNKNOWN";
	case KVM_EXIT_EXCEPTION: return "EXCEPTION";
	case KVM_EXIT_IO: return "IO";
	case KVM_EXIT_HLT: return "HLT";
	case KVM_EXIT_MMIO: return "MMIO";
	case KVM_EXIT_SHUTDOWN: return "SHUTDOWN";
	case KVM_EXIT_FAIL_ENTRY: return "FAIL_ENTRY";
	case KVM_EXIT_INTERNAL_ERROR: return "INTERNAL_ERROR";
	default: return "?";
	}
}

struct vm {
	int vm_fd, vcpu_fd;
	uint8_t *mem;
	size_t mem_size;
	struct kvm_run *run;
};

static int kvm_fd;
static int vcpu_mmap_size;

static int vm_create(struct vm *vm, uint64_t gpa, size_t size)
{
	double t = now_ms();
	memset(vm, 0, sizeof(*vm));
	vm->vm_fd = ioctl(kvm_fd, KVM_CREATE_VM, 0UL);
	if (vm->vm_fd < 0) {
		fail("KVM_CREATE_VM: %s", strerror(errno));
		return -1;
	}
	STEP(t, "KVM_CREATE_VM");

	t = now_ms();
	vm->mem_size = size;
	vm->mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (vm->mem == MAP_FAILED) {
		fail("mmap guest memory: %s", strerror(errno));
		return -1;
	}
	struct kvm_userspace_memory_region region = {
		.slot = 0,
		.guest_phys_addr = gpa,
		.memory_size = size,
		.userspace_addr = (uint64_t)(uintptr_t)vm->mem,
	};
	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &region) < 0) {
		fail("KVM_SET_USER_MEMORY_REGION: %s", strerror(errno));
		return -1;
	}
	STEP(t, "KVM_SET_USER_MEMORY_REGION (%zu KiB @ 0x%llx)", size / 1024,
	     (unsigned long long)gpa);

	t = now_ms();
	vm->vcpu_fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, 0UL);
	if (vm->vcpu_fd < 0) {
		fail("KVM_CREATE_VCPU: %s", strerror(errno));
		return -1;
	}
	vm->run = mmap(NULL, vcpu_mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED,
		       vm->vcpu_fd, 0);
	if (vm->run == MAP_FAILED) {
		fail("mmap kvm_run: %s", strerror(errno));
		return -1;
	}
	STEP(t, "KVM_CREATE_VCPU + mmap kvm_run");
	return 0;
}

static void vm_destroy(struct vm *vm)
{
	if (vm->run && vm->run != MAP_FAILED)
		munmap(vm->run, vcpu_mmap_size);
	if (vm->vcpu_fd > 0)
		close(vm->vcpu_fd);
	if (vm->vm_fd > 0)
		close(vm->vm_fd);
	if (vm->mem && vm->mem != MAP_FAILED)
		munmap(vm->mem, vm->mem_size);
}

static int vcpu_run(struct vm *vm)
{
	int r;
	do
		r = ioctl(vm->vcpu_fd, KVM_RUN, 0UL);
	while (r < 0 && (errno == EINTR || errno == EAGAIN));
	if (r < 0) {
		fail("KVM_RUN: %s", strerror(errno));
		return -1;
	}
	return 0;
}

static void describe_exit(struct vm *vm)
{
	struct kvm_run *run = vm->run;
	printf("    exit: %s (%u)", exit_name(run->exit_reason), run->exit_reason);
	if (run->exit_reason == KVM_EXIT_IO && run->io.size == 1)
		printf(" %s port=0x%x value=0x%02x",
		       run->io.direction == KVM_EXIT_IO_OUT ? "out" : "in",
		       run->io.port, *((uint8_t *)run + run->io.data_offset));
	else if (run->exit_reason == KVM_EXIT_FAIL_ENTRY)
		printf(" hw_reason=0x%llx", (unsigned long long)
		       run->fail_entry.hardware_entry_failure_reason);
	else if (run->exit_reason == KVM_EXIT_INTERNAL_ERROR)
		printf(" suberror=%u", run->internal.suberror);
	struct kvm_regs regs;
	if (ioctl(vm->vcpu_fd, KVM_GET_REGS, &regs) == 0)
		printf(" rip=0x%llx", (unsigned long long)regs.rip);
	printf("\n");
}

/* Returns 0 if the last exit was `out` of one byte `value` to `port`. */
static int expect_out(struct vm *vm, uint16_t port, uint8_t value)
{
	struct kvm_run *run = vm->run;
	if (run->exit_reason != KVM_EXIT_IO ||
	    run->io.direction != KVM_EXIT_IO_OUT || run->io.size != 1 ||
	    run->io.count != 1 || run->io.port != port ||
	    *((uint8_t *)run + run->io.data_offset) != value) {
		describe_exit(vm);
		fail("expected KVM_EXIT_IO out port=0x%x value=0x%02x", port,
		     value);
		return -1;
	}
	return 0;
}

/* ---------------------------------------------------------------- real mode */

static void test_real_mode(long iters)
{
	struct vm vm;
	double t;

	printf("== real mode ==\n");
	if (vm_create(&vm, 0x1000, 0x1000) < 0)
		goto out;

	static const uint8_t code[] = {
		0xb0, 0x42,       /* 0x1000: mov $0x42,%al   */
		0xe6, 0x10,       /* 0x1002: out %al,$0x10   */
		0xf4,             /* 0x1004: hlt             */
		0xe6, 0x11,       /* 0x1005: loop: out %al,$0x11 */
		0xeb, 0xfc,       /* 0x1007: jmp loop        */
	};
	memcpy(vm.mem, code, sizeof(code));

	t = now_ms();
	struct kvm_sregs sregs;
	if (ioctl(vm.vcpu_fd, KVM_GET_SREGS, &sregs) < 0) {
		fail("KVM_GET_SREGS: %s", strerror(errno));
		goto out;
	}
	sregs.cs.base = 0;
	sregs.cs.selector = 0;
	if (ioctl(vm.vcpu_fd, KVM_SET_SREGS, &sregs) < 0) {
		fail("KVM_SET_SREGS: %s", strerror(errno));
		goto out;
	}
	struct kvm_regs regs = { .rip = 0x1000, .rflags = 0x2 };
	if (ioctl(vm.vcpu_fd, KVM_SET_REGS, &regs) < 0) {
		fail("KVM_SET_REGS: %s", strerror(errno));
		goto out;
	}
	STEP(t, "set real-mode regs/sregs");

	t = now_ms();
	if (vcpu_run(&vm) < 0)
		goto out;
	STEP(t, "first KVM_RUN");
	describe_exit(&vm);
	if (expect_out(&vm, 0x10, 0x42) < 0)
		goto out;
	printf("    OK: KVM_EXIT_IO out port 0x10 value 0x42\n");

	t = now_ms();
	if (vcpu_run(&vm) < 0)
		goto out;
	STEP(t, "second KVM_RUN");
	describe_exit(&vm);
	if (vm.run->exit_reason != KVM_EXIT_HLT) {
		fail("expected KVM_EXIT_HLT");
		goto out;
	}
	printf("    OK: KVM_EXIT_HLT\n");

	/* Round trip cost: the vCPU resumes after hlt into the out loop. */
	if (iters > 0) {
		if (vcpu_run(&vm) < 0 || expect_out(&vm, 0x11, 0x42) < 0)
			goto out;
		t = now_ms();
		for (long i = 0; i < iters; i++) {
			if (vcpu_run(&vm) < 0)
				goto out;
			if (vm.run->exit_reason != KVM_EXIT_IO) {
				describe_exit(&vm);
				fail("round trip loop: unexpected exit");
				goto out;
			}
		}
		double dt = now_ms() - t;
		STEP(t, "%ld x KVM_RUN (out exit) round trips", iters);
		printf("    KVM_RUN round trip (out exit): %.2f us each, %.0f exits/s\n",
		       dt * 1e3 / iters, iters / (dt / 1e3));
	}
out:
	vm_destroy(&vm);
}

/* ---------------------------------------------------------------- long mode */

#define LM_MEM_SIZE   0x200000ULL /* 2 MiB at GPA 0, identity mapped */
#define LM_PML4       0x1000
#define LM_PDPT       0x2000
#define LM_PD         0x3000
#define LM_GDT        0x4000
#define LM_TSS        0x5000
#define LM_CODE       0x8000
#define LM_USER_CODE  0x9000
#define LM_DATA       0xa000
#define LM_KSTACK     0x10000
#define LM_USTACK     0x20000

#define SEL_KCODE 0x08
#define SEL_KDATA 0x10
#define SEL_UDATA 0x18
#define SEL_UCODE 0x20
#define SEL_TSS   0x28

#define CR0_PE (1ULL << 0)
#define CR0_MP (1ULL << 1)
#define CR0_ET (1ULL << 4)
#define CR0_NE (1ULL << 5)
#define CR0_WP (1ULL << 16)
#define CR0_AM (1ULL << 18)
#define CR0_PG (1ULL << 31)
#define CR4_PAE (1ULL << 5)
#define CR4_OSFXSR (1ULL << 9)
#define CR4_OSXMMEXCPT (1ULL << 10)
#define EFER_SCE (1ULL << 0)
#define EFER_LME (1ULL << 8)
#define EFER_LMA (1ULL << 10)
#define EFER_NXE (1ULL << 11)

#define PTE_P  (1ULL << 0)
#define PTE_RW (1ULL << 1)
#define PTE_US (1ULL << 2)
#define PTE_PS (1ULL << 7)

static void seg(struct kvm_segment *s, uint16_t sel, uint8_t type, uint8_t dpl,
		uint8_t l, uint8_t db, uint8_t s_flag)
{
	memset(s, 0, sizeof(*s));
	s->base = 0;
	s->limit = 0xffffffff;
	s->selector = sel;
	s->type = type;
	s->present = 1;
	s->dpl = dpl;
	s->db = db;
	s->s = s_flag;
	s->l = l;
	s->g = 1;
}

static int set_cpuid(struct vm *vm)
{
	int n = 128;
	struct kvm_cpuid2 *cpuid;
	for (;;) {
		cpuid = calloc(1, sizeof(*cpuid) + n * sizeof(cpuid->entries[0]));
		cpuid->nent = n;
		if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, cpuid) == 0)
			break;
		free(cpuid);
		if (errno != E2BIG) {
			fail("KVM_GET_SUPPORTED_CPUID: %s", strerror(errno));
			return -1;
		}
		n *= 2;
	}
	int lm = 0;
	for (unsigned i = 0; i < cpuid->nent; i++)
		if (cpuid->entries[i].function == 0x80000001)
			lm = !!(cpuid->entries[i].edx & (1u << 29));
	if (ioctl(vm->vcpu_fd, KVM_SET_CPUID2, cpuid) < 0) {
		fail("KVM_SET_CPUID2: %s", strerror(errno));
		free(cpuid);
		return -1;
	}
	printf("    KVM_GET_SUPPORTED_CPUID: %u entries, LM=%d\n", cpuid->nent, lm);
	free(cpuid);
	return 0;
}

static void test_long_mode(void)
{
	struct vm vm;
	double t;

	printf("== long mode ==\n");
	if (vm_create(&vm, 0, LM_MEM_SIZE) < 0)
		goto out;

	t = now_ms();
	if (set_cpuid(&vm) < 0)
		goto out;
	STEP(t, "KVM_SET_CPUID2");

	t = now_ms();
	uint8_t *m = vm.mem;
	/* Page tables: identity map the first 2 MiB with one large page, user
	 * accessible so that the CPL3 part can run from the same mapping. */
	uint64_t *pml4 = (uint64_t *)(m + LM_PML4);
	uint64_t *pdpt = (uint64_t *)(m + LM_PDPT);
	uint64_t *pd = (uint64_t *)(m + LM_PD);
	pml4[0] = LM_PDPT | PTE_P | PTE_RW | PTE_US;
	pdpt[0] = LM_PD | PTE_P | PTE_RW | PTE_US;
	pd[0] = 0 | PTE_P | PTE_RW | PTE_US | PTE_PS;

	/* GDT (needed in memory for iretq to CPL3). */
	uint64_t *gdt = (uint64_t *)(m + LM_GDT);
	gdt[0] = 0;
	gdt[SEL_KCODE / 8] = 0x00af9a000000ffffULL; /* 64-bit code, DPL0 */
	gdt[SEL_KDATA / 8] = 0x00cf92000000ffffULL; /* data, DPL0 */
	gdt[SEL_UDATA / 8] = 0x00cff2000000ffffULL; /* data, DPL3 */
	gdt[SEL_UCODE / 8] = 0x00affa000000ffffULL; /* 64-bit code, DPL3 */
	/* 64-bit TSS descriptor (16 bytes), busy. */
	uint64_t tss_base = LM_TSS, tss_limit = 0x67;
	gdt[SEL_TSS / 8] = (tss_limit & 0xffff) | ((tss_base & 0xffffff) << 16) |
			   (0x8bULL << 40) | (((tss_base >> 24) & 0xff) << 56);
	gdt[SEL_TSS / 8 + 1] = tss_base >> 32;

	*(uint64_t *)(m + LM_DATA) = 0x64; /* value to read through paging */

	/* CPL0 code at LM_CODE. */
	static const uint8_t kcode[] = {
		/* mov LM_DATA(abs),%al  -> a0 moffs64 */
		0xa0, 0x00, 0xa0, 0, 0, 0, 0, 0, 0,
		0xe6, 0x20,                   /* out %al,$0x20 (expect 0x64) */
		/* iretq frame: ss, rsp, rflags, cs, rip */
		0x6a, SEL_UDATA | 3,          /* push $0x1b */
		0x68, 0x00, 0x00, 0x02, 0x00, /* push $LM_USTACK */
		0x68, 0x02, 0x30, 0x00, 0x00, /* push $0x3002 (IOPL=3) */
		0x6a, SEL_UCODE | 3,          /* push $0x23 */
		0x68, 0x00, 0x90, 0x00, 0x00, /* push $LM_USER_CODE */
		0x48, 0xcf,                   /* iretq */
	};
	memcpy(m + LM_CODE, kcode, sizeof(kcode));
	/* CPL3 code at LM_USER_CODE. */
	static const uint8_t ucode[] = {
		0xb0, 0x33,  /* mov $0x33,%al */
		0xe6, 0x21,  /* out %al,$0x21 */
		0xeb, 0xfe,  /* jmp . (host never resumes) */
	};
	memcpy(m + LM_USER_CODE, ucode, sizeof(ucode));

	struct kvm_sregs sregs;
	if (ioctl(vm.vcpu_fd, KVM_GET_SREGS, &sregs) < 0) {
		fail("KVM_GET_SREGS: %s", strerror(errno));
		goto out;
	}
	seg(&sregs.cs, SEL_KCODE, 0xb, 0, 1, 0, 1);
	seg(&sregs.ds, SEL_KDATA, 0x3, 0, 0, 1, 1);
	sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
	memset(&sregs.tr, 0, sizeof(sregs.tr));
	sregs.tr.base = LM_TSS;
	sregs.tr.limit = 0x67;
	sregs.tr.selector = SEL_TSS;
	sregs.tr.type = 0xb; /* 64-bit busy TSS */
	sregs.tr.present = 1;
	memset(&sregs.ldt, 0, sizeof(sregs.ldt));
	sregs.ldt.type = 0x2;
	sregs.ldt.unusable = 1;
	sregs.gdt.base = LM_GDT;
	sregs.gdt.limit = 8 * 7 - 1;
	sregs.idt.base = 0;
	sregs.idt.limit = 0;
	sregs.cr3 = LM_PML4;
	sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
	sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG;
	sregs.efer = EFER_LME | EFER_LMA | EFER_SCE | EFER_NXE;
	if (ioctl(vm.vcpu_fd, KVM_SET_SREGS, &sregs) < 0) {
		fail("KVM_SET_SREGS (long mode): %s", strerror(errno));
		goto out;
	}
	struct kvm_regs regs = {
		.rip = LM_CODE,
		.rsp = LM_KSTACK,
		.rflags = 0x2,
	};
	if (ioctl(vm.vcpu_fd, KVM_SET_REGS, &regs) < 0) {
		fail("KVM_SET_REGS: %s", strerror(errno));
		goto out;
	}
	STEP(t, "page tables, GDT, KVM_SET_SREGS/REGS");

	t = now_ms();
	if (vcpu_run(&vm) < 0)
		goto out;
	STEP(t, "KVM_RUN to CPL0 out");
	describe_exit(&vm);
	if (expect_out(&vm, 0x20, 0x64) < 0)
		goto out;
	if (ioctl(vm.vcpu_fd, KVM_GET_SREGS, &sregs) < 0) {
		fail("KVM_GET_SREGS: %s", strerror(errno));
		goto out;
	}
	if (!(sregs.efer & EFER_LMA) || !sregs.cs.l || (sregs.cs.selector & 3)) {
		fail("not in 64-bit CPL0: efer=0x%llx cs.l=%d cs=0x%x",
		     (unsigned long long)sregs.efer, sregs.cs.l, sregs.cs.selector);
		goto out;
	}
	printf("    OK: long mode CPL0 out port 0x20 value 0x64 (efer=0x%llx cs=0x%x)\n",
	       (unsigned long long)sregs.efer, sregs.cs.selector);

	t = now_ms();
	if (vcpu_run(&vm) < 0)
		goto out;
	STEP(t, "KVM_RUN (iretq) to CPL3 out");
	describe_exit(&vm);
	if (expect_out(&vm, 0x21, 0x33) < 0)
		goto out;
	if (ioctl(vm.vcpu_fd, KVM_GET_SREGS, &sregs) < 0) {
		fail("KVM_GET_SREGS: %s", strerror(errno));
		goto out;
	}
	if ((sregs.cs.selector & 3) != 3 || sregs.ss.dpl != 3 || !sregs.cs.l) {
		fail("not at 64-bit CPL3: cs=0x%x ss.dpl=%d cs.l=%d",
		     sregs.cs.selector, sregs.ss.dpl, sregs.cs.l);
		goto out;
	}
	printf("    OK: long mode CPL3 out port 0x21 value 0x33 (cs=0x%x ss=0x%x)\n",
	       sregs.cs.selector, sregs.ss.selector);
out:
	vm_destroy(&vm);
}

int main(int argc, char **argv)
{
	long iters = 10000;
	int opt;
	setvbuf(stdout, NULL, _IOLBF, 0);
	while ((opt = getopt(argc, argv, "n:")) != -1) {
		switch (opt) {
		case 'n':
			iters = strtol(optarg, NULL, 0);
			break;
		default:
			fprintf(stderr, "usage: %s [-n ROUNDTRIP_ITERS]\n", argv[0]);
			return 2;
		}
	}
	t_origin = now_ms();

	double t = now_ms();
	kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm_fd < 0) {
		printf("SKIP: open /dev/kvm: %s\n", strerror(errno));
		return 77;
	}
	int api = ioctl(kvm_fd, KVM_GET_API_VERSION, 0UL);
	vcpu_mmap_size = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0UL);
	STEP(t, "open /dev/kvm");
	printf("    KVM_GET_API_VERSION=%d KVM_GET_VCPU_MMAP_SIZE=%d\n", api,
	       vcpu_mmap_size);
	if (api != KVM_API_VERSION || vcpu_mmap_size <= 0) {
		fail("unexpected KVM API version / mmap size");
		return 1;
	}

	test_real_mode(iters);
	test_long_mode();

	printf("kvm-probe: %s (%d failure%s), total %.3f ms\n",
	       failures ? "FAILED" : "PASSED", failures,
	       failures == 1 ? "" : "s", now_ms() - t_origin);
	return failures ? 1 : 0;
}
