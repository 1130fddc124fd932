/* kvm backend: probing /dev/kvm, VM creation, memory slots, dirty logs, CPUID, hypercall page. */
#include <cpuid.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "kvm.h"
#include "kvm_platform.h"

#define VMM_KVM_DEV "/dev/kvm"
/* Addresses KVM needs on Intel for real-mode emulation; they must not be RAM. */
#define VMM_KVM_IDENTITY_MAP 0xfffbc000ull
#define VMM_KVM_TSS 0xfffbd000ull
#define VMM_KVM_RESERVED_END 0xfffc0000ull

int vmm__kvm_ioctl(int fd, unsigned long req, void *arg, const char *what) {
  int r;
  do {
    r = ioctl(fd, req, arg);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    int e = errno;
    VMM_LOG_E("kvm: %s failed: %s", what, strerror(e));
    return e == ENOMEM ? VMM_ENOMEM : VMM_EBACKEND;
  }
  return r;
}

static int vmm_kvm_open(int *fd_out) {
  int fd = open(VMM_KVM_DEV, O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    VMM_LOG_I("kvm: cannot open %s: %s", VMM_KVM_DEV, strerror(errno));
    return VMM_ENODEV;
  }
  int v = ioctl(fd, KVM_GET_API_VERSION, 0);
  if (v != KVM_API_VERSION) {
    VMM_LOG_I("kvm: API version %d, need %d", v, KVM_API_VERSION);
    close(fd);
    return VMM_ENODEV;
  }
  static const struct {
    int cap;
    const char *name;
  } required[] = {
      {KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"},
      {KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"},
      {KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"},
      {KVM_CAP_VCPU_EVENTS, "KVM_CAP_VCPU_EVENTS"},
      {KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR"},
  };
  for (size_t i = 0; i < VMM_ARRAY_SIZE(required); i++) {
    if (ioctl(fd, KVM_CHECK_EXTENSION, required[i].cap) <= 0) {
      VMM_LOG_I("kvm: %s lacks %s", VMM_KVM_DEV, required[i].name);
      close(fd);
      return VMM_ENODEV;
    }
  }
  *fd_out = fd;
  return 0;
}

static int vmm_kvm_probe(void) {
  int fd;
  int rc = vmm_kvm_open(&fd);
  if (rc == 0) close(fd);
  return rc;
}

static bool vmm_host_is_intel(void) {
  unsigned a, b, c, d;
  __cpuid(0, a, b, c, d);
  return b == 0x756e6547 && d == 0x49656e69 && c == 0x6c65746e; /* "GenuineIntel" */
}

static struct kvm_cpuid_entry2 *vmm_kvm_cpuid_find(struct kvm_cpuid2 *c, uint32_t fn) {
  for (uint32_t i = 0; i < c->nent; i++)
    if (c->entries[i].function == fn) return &c->entries[i];
  return NULL;
}

/* What a guest OS looks for to know it runs on KVM: the hypervisor bit (CPUID.1:ECX[31]), which
 * KVM_GET_SUPPORTED_CPUID may leave clear, and the KVM signature leaf, without which Linux
 * neither finds kvmclock nor the other paravirt features of leaf 0x40000001. There is room for
 * two more entries (see vmm_kvm_load_cpuid). */
static void vmm_kvm_cpuid_fixup(struct kvm_cpuid2 *c) {
  struct kvm_cpuid_entry2 *e = vmm_kvm_cpuid_find(c, 1);
  if (e) e->ecx |= 1u << 31;
  struct kvm_cpuid_entry2 *feat = vmm_kvm_cpuid_find(c, 0x40000001);
  if (vmm_kvm_cpuid_find(c, 0x40000000) == NULL) {
    e = &c->entries[c->nent++];
    memset(e, 0, sizeof(*e));
    e->function = 0x40000000;
    e->eax = feat ? 0x40000001 : 0x40000000;
    memcpy(&e->ebx, "KVMK", 4);
    memcpy(&e->ecx, "VMKV", 4);
    memcpy(&e->edx, "M\0\0\0", 4);
  }
}

static int vmm_kvm_load_cpuid(struct vmm_kvm_vm *k) {
  for (uint32_t n = 64; n <= 4096; n *= 2) {
    struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + (n + 2) * sizeof(c->entries[0]));
    if (c == NULL) return VMM_ENOMEM;
    c->nent = n;
    if (ioctl(k->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
      vmm_kvm_cpuid_fixup(c);
      k->cpuid = c;
      return 0;
    }
    int e = errno;
    free(c);
    if (e != E2BIG) {
      VMM_LOG_E("kvm: KVM_GET_SUPPORTED_CPUID failed: %s", strerror(e));
      return VMM_EBACKEND;
    }
  }
  return VMM_EBACKEND;
}

/* The MSRs of vmm_cpu_state_t, in the order kvm_state.c expects; only those KVM can save. */
static const uint32_t vmm_kvm_wanted_msrs[] = {
    0xc0000081, /* STAR */
    0xc0000082, /* LSTAR */
    0xc0000083, /* CSTAR */
    0xc0000084, /* SFMASK */
    0xc0000102, /* KERNEL_GS_BASE */
    0x00000174, /* SYSENTER_CS */
    0x00000175, /* SYSENTER_ESP */
    0x00000176, /* SYSENTER_EIP */
    0x00000277, /* PAT */
    0x00000010, /* TSC */
    0xc0000103, /* TSC_AUX */
    0x000001a0, /* MISC_ENABLE */
};

static int vmm_kvm_load_msr_list(struct vmm_kvm_vm *k) {
  struct {
    struct kvm_msr_list l;
    uint32_t idx[1024];
  } list;
  list.l.nmsrs = 1024;
  if (ioctl(k->kvm_fd, KVM_GET_MSR_INDEX_LIST, &list) != 0) {
    VMM_LOG_E("kvm: KVM_GET_MSR_INDEX_LIST failed: %s", strerror(errno));
    return VMM_EBACKEND;
  }
  k->nmsrs = 0;
  for (size_t w = 0; w < VMM_ARRAY_SIZE(vmm_kvm_wanted_msrs); w++) {
    for (uint32_t i = 0; i < list.l.nmsrs && i < 1024; i++) {
      if (list.l.indices[i] == vmm_kvm_wanted_msrs[w]) {
        k->msr_index[k->nmsrs++] = vmm_kvm_wanted_msrs[w];
        break;
      }
    }
  }
  return 0;
}

static int vmm_kvm_vm_init(vmm_vm_t *vm) {
  struct vmm_kvm_vm *k = calloc(1, sizeof(*k));
  if (k == NULL) return VMM_ENOMEM;
  k->vm_fd = -1;
  int rc = vmm_kvm_open(&k->kvm_fd);
  if (rc) goto err_open;
  k->vm_fd = ioctl(k->kvm_fd, KVM_CREATE_VM, 0);
  if (k->vm_fd < 0) {
    VMM_LOG_E("kvm: KVM_CREATE_VM failed: %s", strerror(errno));
    rc = errno == ENOMEM ? VMM_ENOMEM : VMM_EBACKEND;
    goto err_vm;
  }
  int sz = ioctl(k->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (sz < (int)sizeof(struct kvm_run)) {
    rc = VMM_EBACKEND;
    goto err_caps;
  }
  k->run_size = (size_t)sz;
  int sync = ioctl(k->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS);
  k->sync_regs = sync > 0 ? ((uint32_t)sync & KVM_SYNC_X86_REGS) : 0;
  k->has_readonly = ioctl(k->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_READONLY_MEM) > 0;
  k->has_xsave = ioctl(k->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE) > 0;
  k->has_xcrs = ioctl(k->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XCRS) > 0;
  k->has_debugregs = ioctl(k->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_DEBUGREGS) > 0;
  int slots = ioctl(k->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_NR_MEMSLOTS);
  k->nr_slots = slots > 0 ? (uint32_t)slots : 32;
  if (k->nr_slots > VMM_KVM_MAX_SLOTS) k->nr_slots = VMM_KVM_MAX_SLOTS;
  k->is_intel = vmm_host_is_intel();
  if (k->is_intel) {
    uint64_t idmap = VMM_KVM_IDENTITY_MAP;
    if (ioctl(k->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &idmap) != 0 ||
        ioctl(k->vm_fd, KVM_SET_TSS_ADDR, (unsigned long)VMM_KVM_TSS) != 0) {
      VMM_LOG_E("kvm: cannot place the TSS and identity map: %s", strerror(errno));
      rc = VMM_EBACKEND;
      goto err_caps;
    }
  }
  if (vm->flags & VMM_VM_IRQCHIP) {
    rc = vmm__kvm_platform_init(vm, k);
    if (rc) goto err_caps;
  }
  rc = vmm_kvm_load_cpuid(k);
  if (rc) goto err_caps;
  k->xcr0_supported = 1;
  for (uint32_t i = 0; i < k->cpuid->nent; i++) {
    const struct kvm_cpuid_entry2 *e = &k->cpuid->entries[i];
    if (e->function == 0xd && e->index == 0) k->xcr0_supported = e->eax | (uint64_t)e->edx << 32;
  }
  rc = vmm_kvm_load_msr_list(k);
  if (rc) goto err_msrs;
  vm->backend_data = k;
  return 0;

err_msrs:
  free(k->cpuid);
err_caps:
  close(k->vm_fd);
err_vm:
  close(k->kvm_fd);
err_open:
  free(k);
  return rc;
}

static void vmm_kvm_vm_fini(vmm_vm_t *vm) {
  struct vmm_kvm_vm *k = vmm_kvm_vm(vm);
  if (k == NULL) return;
  close(k->vm_fd);
  close(k->kvm_fd);
  free(k->cpuid);
  free(k);
  vm->backend_data = NULL;
}

static int vmm_kvm_set_slot(struct vmm_kvm_vm *k, struct vmm_region *r, uint64_t size) {
  struct kvm_userspace_memory_region m = {
      .slot = r->slot,
      .flags = 0,
      .guest_phys_addr = r->gpa,
      .memory_size = size,
      .userspace_addr = (uint64_t)(uintptr_t)r->hva,
  };
  if (size && (r->flags & VMM_MEM_READONLY)) m.flags |= KVM_MEM_READONLY;
  if (size && r->dirty_log) m.flags |= KVM_MEM_LOG_DIRTY_PAGES;
  int rc = vmm__kvm_ioctl(k->vm_fd, KVM_SET_USER_MEMORY_REGION, &m, "KVM_SET_USER_MEMORY_REGION");
  return rc < 0 ? rc : 0;
}

static int vmm_kvm_region_add(vmm_vm_t *vm, struct vmm_region *r) {
  struct vmm_kvm_vm *k = vmm_kvm_vm(vm);
  if ((r->flags & VMM_MEM_READONLY) && !k->has_readonly) return VMM_ENOSYS;
  /* Clones share RAM through a private mapping here; a layered region's read-only base pages
   * would fault in KVM instead of being copied. */
  if (r->layered) return VMM_ENOSYS;
  if (k->is_intel && r->gpa < VMM_KVM_RESERVED_END && r->gpa + r->size > VMM_KVM_IDENTITY_MAP) {
    VMM_LOG_E("kvm: [%#llx, %#llx) is reserved for KVM's TSS and identity map on this host",
              VMM_KVM_IDENTITY_MAP, VMM_KVM_RESERVED_END);
    return VMM_EEXIST;
  }
  uint32_t slot = 0;
  while (slot < k->nr_slots && (k->slots_used[slot / 64] >> (slot % 64)) & 1) slot++;
  if (slot == k->nr_slots) return VMM_ELIMIT;
  r->slot = slot;
  int rc = vmm_kvm_set_slot(k, r, r->size);
  if (rc) return rc;
  k->slots_used[slot / 64] |= 1ull << (slot % 64);
  return 0;
}

static void vmm_kvm_region_remove(vmm_vm_t *vm, struct vmm_region *r) {
  struct vmm_kvm_vm *k = vmm_kvm_vm(vm);
  vmm_kvm_set_slot(k, r, 0);
  k->slots_used[r->slot / 64] &= ~(1ull << (r->slot % 64));
}

static int vmm_kvm_dirty_log_enable(vmm_vm_t *vm, struct vmm_region *r, bool enable) {
  bool old = r->dirty_log;
  r->dirty_log = enable;
  int rc = vmm_kvm_set_slot(vmm_kvm_vm(vm), r, r->size);
  r->dirty_log = old;
  return rc;
}

static int vmm_kvm_dirty_log_get(vmm_vm_t *vm, struct vmm_region *r, uint64_t *bitmap) {
  struct kvm_dirty_log log = {.slot = r->slot, .dirty_bitmap = bitmap};
  int rc = vmm__kvm_ioctl(vmm_kvm_vm(vm)->vm_fd, KVM_GET_DIRTY_LOG, &log, "KVM_GET_DIRTY_LOG");
  return rc < 0 ? rc : 0;
}

/* Entry n: mov $n,%eax; out %eax,$VMM_HC_PORT; ret. The VMM reads the arguments from the
 * registers and puts the result in rax before KVM finishes the OUT. */
static int vmm_kvm_fill_hypercall_page(vmm_vm_t *vm, uint64_t gpa, uint8_t *page) {
  (void)vm;
  (void)gpa;
  vmm__hypercall_page_port(page);
  return 0;
}

static int vmm_kvm_set_irq(vmm_vm_t *vm, uint32_t irq, int level) {
  struct vmm_kvm_vm *k = vmm_kvm_vm(vm);
  if (!k->has_irqchip) return VMM_ENOSYS;
  struct kvm_irq_level l = {.irq = irq, .level = level ? 1 : 0};
  int rc = vmm__kvm_ioctl(k->vm_fd, KVM_IRQ_LINE, &l, "KVM_IRQ_LINE");
  return rc < 0 ? rc : 0;
}

const struct vmm_backend_ops vmm__kvm_ops = {
    .id = VMM_BACKEND_KVM,
    .name = "kvm",
    .caps = VMM__CAP_IRQCHIP | VMM__CAP_RAM_COW,
    .probe = vmm_kvm_probe,
    .vm_init = vmm_kvm_vm_init,
    .vm_fini = vmm_kvm_vm_fini,
    .region_add = vmm_kvm_region_add,
    .platform_save = vmm__kvm_platform_save,
    .platform_check = vmm__kvm_platform_check,
    .platform_load = vmm__kvm_platform_load,
    .platform_try = vmm__kvm_platform_try,
    .region_remove = vmm_kvm_region_remove,
    .dirty_log_enable = vmm_kvm_dirty_log_enable,
    .dirty_log_get = vmm_kvm_dirty_log_get,
    .vcpu_init = vmm__kvm_vcpu_init,
    .vcpu_fini = vmm__kvm_vcpu_fini,
    .vcpu_run = vmm__kvm_vcpu_run,
    .flush_pending = vmm__kvm_flush_pending,
    .vcpu_kick = vmm__kvm_vcpu_kick,
    .get_regs = vmm__kvm_get_regs,
    .set_regs = vmm__kvm_set_regs,
    .get_state = vmm__kvm_get_state,
    .set_state = vmm__kvm_set_state,
    .set_single_step = vmm__kvm_set_single_step,
    .fill_hypercall_page = vmm_kvm_fill_hypercall_page,
    .set_irq = vmm_kvm_set_irq,
    .vcpu_stats = vmm__kvm_vcpu_stats,
};
