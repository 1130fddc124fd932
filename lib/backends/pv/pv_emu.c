/* pv backend: trap and emulate. Privileged instructions, port I/O, MMIO accesses and guest
 * exceptions reach the tracer as signal stops of the sandbox. The shared Zydis decoder
 * (../common/x86emu.h) says what the instruction was; port and MMIO accesses go through the
 * core's bus dispatch like on every backend, the rest is emulated here or reported as the
 * exception the guest would get on kvm and bt. */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/ptrace.h>

#include "pv.h"

#define VMM_PV_SI_KERNEL 0x80
#define VMM_PV_CR4_TSD (1ull << 2)

void vmm__pv_exception(vmm_exit_t *exit, unsigned vector, bool has_err, uint32_t err,
                       uint64_t rip, uint64_t cr2) {
  memset(exit, 0, sizeof(*exit));
  exit->reason = VMM_EXIT_EXCEPTION;
  exit->exception.vector = (uint8_t)vector;
  exit->exception.has_error_code = has_err;
  exit->exception.error_code = err;
  exit->exception.rip = rip;
  exit->exception.cr2 = cr2;
}

static int vmm_pv_mem_read(void *ctx, uint64_t la, void *buf, size_t len) {
  return vmm_vm_read(ctx, la, buf, len);
}

/* Writes by emulated guest instructions (INS, and MOVs to RAM the sandbox cannot map): read-
 * only RAM keeps its contents, as ROM does (vmm_vm_write is the host's and writes anything). */
static int vmm_pv_mem_write(void *ctx, uint64_t la, const void *buf, size_t len) {
  vmm_vm_t *vm = ctx;
  if (len == 0) return 0;
  const struct vmm_region *a = vmm__region_find(vm, la, 1), *b = vmm__region_find(vm, la + len - 1, 1);
  if ((a && (a->flags & VMM_MEM_READONLY)) || (b && (b->flags & VMM_MEM_READONLY))) return 0;
  return vmm_vm_write(vm, la, buf, len);
}

static void vmm_pv_regs_to_emu(const vmm_regs_t *r, uint64_t fs, uint64_t gs,
                               struct vmm_emu_cpu *c) {
  c->gpr[VMM_RAX] = r->rax;
  c->gpr[VMM_RCX] = r->rcx;
  c->gpr[VMM_RDX] = r->rdx;
  c->gpr[VMM_RBX] = r->rbx;
  c->gpr[VMM_RSP] = r->rsp;
  c->gpr[VMM_RBP] = r->rbp;
  c->gpr[VMM_RSI] = r->rsi;
  c->gpr[VMM_RDI] = r->rdi;
  c->gpr[VMM_R8] = r->r8;
  c->gpr[VMM_R9] = r->r9;
  c->gpr[VMM_R10] = r->r10;
  c->gpr[VMM_R11] = r->r11;
  c->gpr[VMM_R12] = r->r12;
  c->gpr[VMM_R13] = r->r13;
  c->gpr[VMM_R14] = r->r14;
  c->gpr[VMM_R15] = r->r15;
  c->rip = r->rip;
  c->rflags = r->rflags;
  c->fs_base = fs;
  c->gs_base = gs;
}

static void vmm_pv_emu_to_regs(const struct vmm_emu_cpu *c, vmm_regs_t *r) {
  r->rax = c->gpr[VMM_RAX];
  r->rcx = c->gpr[VMM_RCX];
  r->rdx = c->gpr[VMM_RDX];
  r->rbx = c->gpr[VMM_RBX];
  r->rsp = c->gpr[VMM_RSP];
  r->rbp = c->gpr[VMM_RBP];
  r->rsi = c->gpr[VMM_RSI];
  r->rdi = c->gpr[VMM_RDI];
  r->r8 = c->gpr[VMM_R8];
  r->r9 = c->gpr[VMM_R9];
  r->r10 = c->gpr[VMM_R10];
  r->r11 = c->gpr[VMM_R11];
  r->r12 = c->gpr[VMM_R12];
  r->r13 = c->gpr[VMM_R13];
  r->r14 = c->gpr[VMM_R14];
  r->r15 = c->gpr[VMM_R15];
  r->rip = c->rip;
}

static int vmm_pv_finish(vmm_vcpu_t *vcpu, vmm_regs_t *regs, uint64_t fs, uint64_t gs,
                         uint64_t value) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  struct vmm_emu_cpu cpu;
  struct vmm_emu_mem mem = {vmm_pv_mem_read, vmm_pv_mem_write, vcpu->vm};
  vmm_pv_regs_to_emu(regs, fs, gs, &cpu);
  int rc = vmm__emu_finish(&cpu, &mem, &pv->insn, &pv->acc, value);
  if (rc) return rc;
  vmm_pv_emu_to_regs(&cpu, regs);
  return 0;
}

int vmm__pv_emu_complete(vmm_vcpu_t *vcpu, vmm_regs_t *regs, const vmm_exit_t *exit) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  uint64_t value = ~0ull;
  if (!pv->acc.is_write) {
    if (exit->reason == VMM_EXIT_IO) value = exit->io.data;
    else if (exit->reason == VMM_EXIT_MMIO) value = exit->mmio.data;
  }
  int rc = vmm_pv_finish(vcpu, regs, pv->st.fs.base, pv->st.gs.base, value);
  if (rc) VMM_LOG_W("pv: completing the access at %#llx failed: %s",
                    (unsigned long long)pv->insn.rip, vmm_strerror(rc));
  return 0;
}

/* The live registers as vmm_regs_t, and back. */
static void vmm_pv_live_regs(struct vmm_pv_vcpu *pv, vmm_regs_t *r) {
  vmm__pv_ur_to_regs(&pv->ur, pv->vflags, r);
}

static void vmm_pv_set_live_regs(struct vmm_pv_vcpu *pv, const vmm_regs_t *r) {
  uint64_t fs = pv->ur.fs_base, gs = pv->ur.gs_base;
  vmm__pv_regs_to_ur(r, &pv->ur);
  pv->ur.fs_base = fs;
  pv->ur.gs_base = gs;
  pv->ur_dirty = true;
}

static int vmm_pv_siginfo(struct vmm_pv_vcpu *pv, siginfo_t *si) {
  if (ptrace(PTRACE_GETSIGINFO, pv->pid, 0, si) != 0)
    return vmm__pv_ptrace_failed(pv, "PTRACE_GETSIGINFO");
  return 0;
}

/* An IO or MMIO access: out to the core's dispatch, completed at once when a handler took
 * it; otherwise the exit leaves the run with the instruction pending. */
static int vmm_pv_access_exit(vmm_vcpu_t *vcpu, vmm_exit_t *exit, bool io) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  const struct vmm_emu_access *acc = &pv->acc;
  uint64_t ones = acc->size >= 8 ? ~0ull : (1ull << (acc->size * 8)) - 1;
  memset(exit, 0, sizeof(*exit));
  if (io) {
    exit->reason = VMM_EXIT_IO;
    exit->io.port = (uint16_t)acc->addr;
    exit->io.size = acc->size;
    exit->io.is_write = acc->is_write;
    exit->io.count = 1;
    exit->io.data = acc->is_write ? acc->value : ones;
  } else {
    exit->reason = VMM_EXIT_MMIO;
    exit->mmio.gpa = acc->addr;
    exit->mmio.size = acc->size;
    exit->mmio.is_write = acc->is_write;
    exit->mmio.data = acc->is_write ? acc->value : ones;
  }
  pv->pend = VMM_PV_PEND_EMU;
  pv->stat_emulated++;
  int rc = vmm__dispatch(vcpu, exit);
  if (rc < 0) return rc;
  if (rc == 1 && !vcpu->exit_requested) {
    vmm_regs_t r;
    vmm_pv_live_regs(pv, &r);
    pv->pend = VMM_PV_PEND_NONE;
    rc = vmm__pv_emu_complete(vcpu, &r, exit);
    if (rc) return rc;
    vmm_pv_set_live_regs(pv, &r);
    return 0;
  }
  vcpu->predispatched = true;
  return 1;
}

/* Linear addresses the identity map of vmm_vcpu_setup_long_mode covers: on kvm and bt an
 * access there that is not RAM is MMIO, beyond it a page fault. */
static uint64_t vmm_pv_idmap_span(vmm_vm_t *vm) {
  uint64_t end = vm->nregions ? vm->regions[vm->nregions - 1]->gpa +
                                    vm->regions[vm->nregions - 1]->size
                              : 0;
  if (end < (4ull << 30)) end = 4ull << 30;
  uint64_t gib = (end + (1ull << 30) - 1) >> 30;
  uint64_t max = (VMM_SYSAREA_END - VMM_PML4_GPA - 2 * VMM_PAGE_SIZE) / VMM_PAGE_SIZE;
  return (gib < max ? gib : max) << 30;
}

static bool vmm_pv_insn_writes_memory(const struct vmm_emu_insn *insn) {
  for (unsigned i = 0; i < insn->z.operand_count; i++)
    if (insn->ops[i].type == ZYDIS_OPERAND_TYPE_MEMORY &&
        (insn->ops[i].actions & ZYDIS_OPERAND_ACTION_MASK_WRITE))
      return true;
  return false;
}

static uint64_t *vmm_pv_msr(vmm_cpu_state_t *st, uint32_t index) {
  switch (index) {
    case 0x0000001b: return &st->apic_base;
    case 0x00000174: return &st->sysenter_cs;
    case 0x00000175: return &st->sysenter_esp;
    case 0x00000176: return &st->sysenter_eip;
    case 0x000001a0: return &st->misc_enable;
    case 0x00000277: return &st->pat;
    case 0xc0000080: return &st->efer;
    case 0xc0000081: return &st->star;
    case 0xc0000082: return &st->lstar;
    case 0xc0000083: return &st->cstar;
    case 0xc0000084: return &st->sfmask;
    case 0xc0000102: return &st->kernel_gs_base;
    case 0xc0000103: return &st->tsc_aux;
    default: return NULL;
  }
}


/* RDMSR/WRMSR at virtual CPL0 against the shadow MSRs. Returns false for #GP(0). */
static bool vmm_pv_msr_access(struct vmm_pv_vcpu *pv, vmm_regs_t *r, bool write) {
  uint32_t index = (uint32_t)r->rcx;
  uint64_t v = (r->rdx << 32) | (uint32_t)r->rax;
  uint64_t *field = vmm_pv_msr(&pv->st, index);
  if (write) {
    switch (index) {
      case 0xc0000100:
      case 0xc0000101:
        /* The host kernel sets only lower-half bases for a process (see docs/pv.md). */
        if (!vmm__pv_base_ok(v)) return false;
        if (index == 0xc0000100) pv->ur.fs_base = v;
        else pv->ur.gs_base = v;
        return true;
      case 0x00000010: pv->tsc_offset = (int64_t)(v - vmm__pv_rdtsc()); return true;
      case 0xc0000080:
        /* Long mode stays on: a pv guest cannot leave it. */
        if ((v ^ pv->st.efer) & (VMM_EFER_LME | VMM_EFER_LMA)) return false;
        break;
      case 0xc0000082:
      case 0xc0000083:
      case 0xc0000102:
      case 0x00000175:
      case 0x00000176:
        if (!vmm__canonical(v)) return false;
        break;
      default: break;
    }
    if (field == NULL) return false;
    *field = v;
    return true;
  }
  switch (index) {
    case 0xc0000100: v = pv->ur.fs_base; break;
    case 0xc0000101: v = pv->ur.gs_base; break;
    case 0x00000010: v = vmm__pv_rdtsc() + (uint64_t)pv->tsc_offset; break;
    default:
      if (field == NULL) return false;
      v = *field;
      break;
  }
  r->rax = (uint32_t)v;
  r->rdx = v >> 32;
  return true;
}

static int vmm_pv_gp(struct vmm_pv_vcpu *pv, vmm_exit_t *exit, uint32_t err) {
  vmm__pv_exception(exit, 13, true, err, pv->ur.rip, 0);
  return 1;
}

static int vmm_pv_page_fault(struct vmm_pv_vcpu *pv, vmm_exit_t *exit, uint64_t addr,
                             uint32_t err) {
  pv->st.cr2 = addr;
  vmm__pv_exception(exit, 14, true, err, pv->ur.rip, addr);
  return 1;
}

/* A memory fault of an instruction: MMIO, low RAM the sandbox cannot map, a write to
 * read-only memory, or a page fault beyond the guest's identity map. */
static int vmm_pv_fault(vmm_vcpu_t *vcpu, const siginfo_t *si, const struct vmm_emu_cpu *cpu,
                        bool decoded, vmm_exit_t *exit) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  vmm_vm_t *vm = vcpu->vm;
  uint64_t addr = (uint64_t)(uintptr_t)si->si_addr;
  bool cpl3 = (pv->st.cs.selector & 3) == 3;
  bool fetch = !decoded || (addr >= cpu->rip && addr - cpu->rip < 16);
  bool write = decoded && !fetch && vmm_pv_insn_writes_memory(&pv->insn);
  uint32_t err = (si->si_code == SEGV_ACCERR ? 1u : 0u) | (write ? 2u : 0u) |
                 (cpl3 ? 4u : 0u) | (fetch ? 0x10u : 0u);
  struct vmm_region *r = vmm__region_find(vm, addr, 1);
  bool rom_write = r && (r->flags & VMM_MEM_READONLY) && write;
  bool low_ram = r && addr < vmm__pv_map_floor() && !rom_write;
  bool mmio = !r && addr < vmm_pv_idmap_span(vm);
  if (fetch || !(low_ram || rom_write || mmio)) return vmm_pv_page_fault(pv, exit, addr, err);

  int rc = vmm__emu_mmio_start(cpu, &pv->insn, &pv->acc);
  if (rc != 0) {
    const char *what = low_ram     ? "RAM below mmap_min_addr"
                       : rom_write ? "read-only memory"
                                   : "MMIO";
    vmm__exit_internal(exit, VMM_ENOSYS,
                       "pv: %s at %#llx accesses %s at %#llx; only MOV/MOVZX/MOVSX can",
                       ZydisMnemonicGetString(pv->insn.z.mnemonic),
                       (unsigned long long)cpu->rip, what, (unsigned long long)addr);
    VMM_LOG_E("%s", exit->internal.message);
    return 1;
  }
  if (low_ram) {
    /* RAM the sandbox cannot map: do the access on the VMM's mapping of it. */
    uint64_t v = 0;
    rc = pv->acc.is_write ? vmm_vm_write(vm, pv->acc.addr, &pv->acc.value, pv->acc.size)
                          : vmm_vm_read(vm, pv->acc.addr, &v, pv->acc.size);
    if (rc) return vmm_pv_page_fault(pv, exit, addr, err);
    vmm_regs_t regs;
    vmm_pv_live_regs(pv, &regs);
    rc = vmm_pv_finish(vcpu, &regs, pv->ur.fs_base, pv->ur.gs_base, v);
    if (rc) return rc;
    vmm_pv_set_live_regs(pv, &regs);
    pv->stat_emulated++;
    return 0;
  }
  return vmm_pv_access_exit(vcpu, exit, false);
}

/* SIGSEGV: a #GP of a privileged instruction (the sandbox runs at CPL3 with IOPL 0 and RDTSC
 * disabled) or a page fault. */
static int vmm_pv_segv(vmm_vcpu_t *vcpu, vmm_exit_t *exit) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  vmm_vm_t *vm = vcpu->vm;
  if (vmm_pv_vm(vm)->layered) {
    /* A clone's base pages are mapped readable and executable: a protection fault on one is
     * a write, whatever the instruction (no decoding needed). */
    siginfo_t si;
    int rc = vmm_pv_siginfo(pv, &si);
    if (rc) return rc;
    uint64_t addr = (uint64_t)(uintptr_t)si.si_addr;
    struct vmm_region *r = si.si_code == SEGV_ACCERR ? vmm__region_find(vm, addr, 1) : NULL;
    if (r && r->layered && !(r->flags & VMM_MEM_READONLY) && addr >= vmm__pv_map_floor()) {
      rc = vmm__pv_layer_write_fault(vcpu, r, addr);
      if (rc == 0) return 0;
      vmm__exit_internal(exit, rc, "pv: a clone's page at %#llx could not become its own",
                         (unsigned long long)addr);
      VMM_LOG_E("%s", exit->internal.message);
      return 1;
    }
  }
  bool cpl3 = (pv->st.cs.selector & 3) == 3;
  bool iopl3 = (pv->vflags & VMM_RFLAGS_IOPL3) == VMM_RFLAGS_IOPL3;
  vmm_regs_t regs;
  vmm_pv_live_regs(pv, &regs);
  struct vmm_emu_cpu cpu;
  vmm_pv_regs_to_emu(&regs, pv->ur.fs_base, pv->ur.gs_base, &cpu);
  struct vmm_emu_mem mem = {vmm_pv_mem_read, vmm_pv_mem_write, vm};
  int drc = vmm__emu_decode(&cpu, &mem, &pv->insn);
  bool decoded = drc == 0;
  if (drc == VMM_EFAULT) {
    /* Executing outside guest RAM (the vsyscall page, the stub, nothing): a fetch fault. */
    return vmm_pv_page_fault(pv, exit, regs.rip, 0x10u | (cpl3 ? 4u : 0u));
  }
  enum vmm_emu_kind kind = decoded ? pv->insn.kind : VMM_EMU_OTHER;
  uint8_t len = decoded ? vmm__emu_len(&pv->insn) : 0;
  int rc;

  switch (kind) {
    case VMM_EMU_IN:
    case VMM_EMU_OUT:
    case VMM_EMU_INS:
    case VMM_EMU_OUTS:
      /* String I/O moves one element per access; while handlers consume them, the next ones
       * are done here rather than by faulting again (bounded, and a kick ends it). */
      for (unsigned n = 0;; n++) {
        rc = vmm__emu_pio_start(&cpu, &mem, &pv->insn, &pv->acc);
        if (rc == VMM_EFAULT) return vmm_pv_gp(pv, exit, 0);
        if (rc) return vmm_pv_gp(pv, exit, 0);
        /* At CPL3 without IOPL 3 the TSS bitmap decides, as on hardware and on bt. */
        if (n == 0 && cpl3 && !iopl3 &&
            !vmm__emu_io_bitmap_allows(&mem, pv->st.tr.base, pv->st.tr.limit,
                                       (uint16_t)pv->acc.addr, pv->acc.size ? pv->acc.size : 1))
          return vmm_pv_gp(pv, exit, 0);
        if (pv->acc.size == 0) {
          /* REP with RCX = 0: nothing to move. */
          rc = vmm_pv_finish(vcpu, &regs, pv->ur.fs_base, pv->ur.gs_base, 0);
          if (rc) return rc;
          vmm_pv_set_live_regs(pv, &regs);
          return 0;
        }
        rc = vmm_pv_access_exit(vcpu, exit, true);
        if (rc != 0 || pv->ur.rip != pv->insn.rip || n >= 4096 || atomic_load(&pv->kicked))
          return rc;
        vmm_pv_live_regs(pv, &regs);
        vmm_pv_regs_to_emu(&regs, pv->ur.fs_base, pv->ur.gs_base, &cpu);
      }
    case VMM_EMU_HLT:
      if (cpl3) return vmm_pv_gp(pv, exit, 0);
      regs.rip += len;
      vmm_pv_set_live_regs(pv, &regs);
      memset(exit, 0, sizeof(*exit));
      exit->reason = VMM_EXIT_HLT;
      return 1;
    case VMM_EMU_CLI:
    case VMM_EMU_STI:
      if (cpl3 && !iopl3) return vmm_pv_gp(pv, exit, 0);
      if (kind == VMM_EMU_CLI) pv->vflags &= ~VMM_RFLAGS_IF;
      else pv->vflags |= VMM_RFLAGS_IF;
      regs.rip += len;
      vmm_pv_set_live_regs(pv, &regs);
      pv->stat_emulated++;
      return 0;
    case VMM_EMU_RDMSR:
    case VMM_EMU_WRMSR:
      if (cpl3 || !vmm_pv_msr_access(pv, &regs, kind == VMM_EMU_WRMSR))
        return vmm_pv_gp(pv, exit, 0);
      regs.rip += len;
      vmm_pv_set_live_regs(pv, &regs);
      pv->stat_emulated++;
      return 0;
    case VMM_EMU_RDTSC:
    case VMM_EMU_RDTSCP: {
      if (cpl3 && (pv->st.cr4 & VMM_PV_CR4_TSD)) return vmm_pv_gp(pv, exit, 0);
      uint64_t t = vmm__pv_rdtsc() + (uint64_t)pv->tsc_offset;
      regs.rax = (uint32_t)t;
      regs.rdx = t >> 32;
      if (kind == VMM_EMU_RDTSCP) regs.rcx = (uint32_t)pv->st.tsc_aux;
      regs.rip += len;
      vmm_pv_set_live_regs(pv, &regs);
      pv->stat_emulated++;
      return 0;
    }
    case VMM_EMU_INT: {
      unsigned n = (unsigned)(pv->insn.ops[0].imm.value.u & 0xff);
      /* The IDT of vmm_vcpu_setup_long_mode: vectors 3 and 4 may be raised from CPL3. */
      if (cpl3 && n != 3 && n != 4) return vmm_pv_gp(pv, exit, (n << 3) | 2);
      regs.rip += len;
      vmm_pv_set_live_regs(pv, &regs);
      vmm__pv_exception(exit, n, false, 0, regs.rip, 0);
      return 1;
    }
    default: break;
  }

  siginfo_t si;
  rc = vmm_pv_siginfo(pv, &si);
  if (rc) return rc;
  if (si.si_code != VMM_PV_SI_KERNEL) return vmm_pv_fault(vcpu, &si, &cpu, decoded, exit);
  /* #GP: a non-canonical address, or a privileged instruction pv does not emulate. */
  if (decoded && kind == VMM_EMU_MEM) return vmm_pv_gp(pv, exit, 0);
  if (!decoded || cpl3) return vmm_pv_gp(pv, exit, 0);
  vmm__exit_internal(exit, VMM_ENOSYS,
                     "pv: guest executed %s at %#llx, a privileged instruction pv guests may "
                     "not use (see docs/pv.md)",
                     ZydisMnemonicGetString(pv->insn.z.mnemonic), (unsigned long long)regs.rip);
  VMM_LOG_E("%s", exit->internal.message);
  return 1;
}

int vmm__pv_on_signal(vmm_vcpu_t *vcpu, int sig, vmm_exit_t *exit) {
  struct vmm_pv_vcpu *pv = vmm_pv_vcpu(vcpu);
  siginfo_t si;
  int rc;
  if (sig == SIGSTOP) {
    if (!atomic_exchange(&pv->kicked, false)) return 0; /* A kick that was already taken. */
    memset(exit, 0, sizeof(*exit));
    exit->reason = VMM_EXIT_KICKED;
    pv->stat_kicks++;
    return 1;
  }
  if (sig == SIGBUS) {
    /* Dirty logging's write-protection (no registers needed): note the page, go on. */
    rc = vmm_pv_siginfo(pv, &si);
    if (rc) return rc;
    uint64_t page = (uint64_t)(uintptr_t)si.si_addr / VMM_PAGE_SIZE;
    uint64_t gen = atomic_load(&pv->protect_gen);
    pv->wp_repeats = page == pv->wp_last_page && gen == pv->wp_last_gen ? pv->wp_repeats + 1 : 0;
    pv->wp_last_page = page;
    pv->wp_last_gen = gen;
    if (si.si_code == BUS_ADRERR && pv->wp_repeats < 1000) {
      rc = vmm__pv_dirty_fault(vcpu, (uint64_t)(uintptr_t)si.si_addr);
      if (rc) return rc < 0 ? rc : 0;
    }
  }
  rc = vmm__pv_getregs(pv);
  if (rc) return rc;
  switch (sig) {
    case SIGSEGV: return vmm_pv_segv(vcpu, exit);
    case SIGILL: vmm__pv_exception(exit, 6, false, 0, pv->ur.rip, 0); return 1;
    case SIGFPE:
      rc = vmm_pv_siginfo(pv, &si);
      if (rc) return rc;
      if (si.si_code == FPE_INTDIV || si.si_code == FPE_INTOVF)
        vmm__pv_exception(exit, 0, false, 0, pv->ur.rip, 0);
      else
        vmm__pv_exception(exit, 19, false, 0, pv->ur.rip, 0);
      return 1;
    case SIGTRAP:
      rc = vmm_pv_siginfo(pv, &si);
      if (rc) return rc;
      if (si.si_code == TRAP_TRACE && pv->single_step) {
        memset(exit, 0, sizeof(*exit));
        exit->reason = VMM_EXIT_DEBUG;
        exit->debug.rip = pv->ur.rip;
        exit->debug.dr6 = 0xffff4ff0;
        return 1;
      }
      /* int3 reports RIP after it, like the IDT stub frame on kvm. */
      vmm__pv_exception(exit, si.si_code == VMM_PV_SI_KERNEL ? 3 : 1, false, 0, pv->ur.rip, 0);
      return 1;
    case SIGBUS:
      if (si.si_code == BUS_ADRALN) {
        vmm__pv_exception(exit, 17, true, 0, pv->ur.rip, 0);
        return 1;
      }
      vmm__exit_internal(exit, VMM_EFAULT, "pv: bus error at %#llx (rip %#llx)",
                         (unsigned long long)(uintptr_t)si.si_addr,
                         (unsigned long long)pv->ur.rip);
      return 1;
    case SIGSYS: {
      /* Only the kernel's vsyscall emulation can get here (guest syscalls never reach
       * seccomp under SYSEMU): the filter refused it, and the kernel already "returned".
       * Undo that and report what kvm reports for a jump to an unmapped page. */
      rc = vmm_pv_siginfo(pv, &si);
      if (rc) return rc;
      uint64_t addr = (uint64_t)(uintptr_t)si.si_call_addr;
      bool cpl3 = (pv->st.cs.selector & 3) == 3;
      pv->ur.rip = addr;
      pv->ur.rsp -= 8;
      pv->ur_dirty = true;
      VMM_LOG_D("pv: guest called the vsyscall page at %#llx", (unsigned long long)addr);
      return vmm_pv_page_fault(pv, exit, addr, 0x10u | (cpl3 ? 4u : 0u));
    }
    default:
      /* Someone signalled the sandbox: the guest does not see host signals. */
      VMM_LOG_D("pv: dropped signal %d sent to sandbox %d", sig, (int)pv->pid);
      return 0;
  }
}
