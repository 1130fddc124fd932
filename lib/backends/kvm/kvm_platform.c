/* kvm backend: the in-kernel PIC + I/O APIC + local APICs (KVM_CREATE_IRQCHIP) and PIT
 * (KVM_CREATE_PIT2) that VMM_VM_IRQCHIP asks for. With them KVM delivers interrupts, runs the
 * timer and keeps a halted vCPU inside KVM_RUN until an interrupt wakes it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "kvm_platform.h"

int vmm__kvm_platform_init(vmm_vm_t *vm, struct vmm_kvm_vm *k) {
  (void)vm;
  static const struct {
    int cap;
    const char *name;
  } needed[] = {
      {KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"},
      {KVM_CAP_PIT2, "KVM_CAP_PIT2"},
      {KVM_CAP_IRQ_INJECT_STATUS, "KVM_CAP_IRQ_INJECT_STATUS"},
  };
  for (size_t i = 0; i < VMM_ARRAY_SIZE(needed); i++) {
    if (ioctl(k->vm_fd, KVM_CHECK_EXTENSION, needed[i].cap) <= 0) {
      VMM_LOG_E("kvm: VMM_VM_IRQCHIP needs %s, which this KVM lacks", needed[i].name);
      return VMM_ENOSYS;
    }
  }
  if (ioctl(k->vm_fd, KVM_CREATE_IRQCHIP, 0) != 0) {
    int e = errno;
    VMM_LOG_E("kvm: KVM_CREATE_IRQCHIP failed: %s", strerror(e));
    return e == ENOMEM ? VMM_ENOMEM : VMM_EBACKEND;
  }
  /* The dummy speaker makes KVM answer port 0x61 too, which Linux polls while it calibrates
   * the TSC against PIT channel 2. */
  struct kvm_pit_config pit;
  memset(&pit, 0, sizeof(pit));
  pit.flags = KVM_PIT_SPEAKER_DUMMY;
  if (ioctl(k->vm_fd, KVM_CREATE_PIT2, &pit) != 0) {
    int e = errno;
    VMM_LOG_E("kvm: KVM_CREATE_PIT2 failed: %s", strerror(e));
    return e == ENOMEM ? VMM_ENOMEM : VMM_EBACKEND;
  }
  k->has_irqchip = true;
  return 0;
}

/* ---- snapshots: the in-kernel devices' state ----
 *
 * As JSON, binary structures in hex: the PIC pair and the I/O APIC (KVM_GET_IRQCHIP), the PIT
 * (KVM_GET_PIT2), the clock (KVM_GET_CLOCK), and per vCPU the local APIC (KVM_GET_LAPIC) and the
 * MSRs of the APIC timer and of KVM's paravirtual interfaces that Linux enables (kvmclock, PV
 * EOI, async page faults, steal time), which the backend-neutral CPU state does not carry.
 * Restorable only into a kvm VM made with VMM_VM_IRQCHIP. */

/* In the order they are written back (the async page fault vector before its enable). */
static const uint32_t vmm_kvm_platform_msrs[] = {
    0x0000003b, /* IA32_TSC_ADJUST */
    0x00000048, /* IA32_SPEC_CTRL */
    0x00000da0, /* IA32_XSS */
    0x000006e0, /* IA32_TSC_DEADLINE */
    0x00000011, /* MSR_KVM_WALL_CLOCK */
    0x00000012, /* MSR_KVM_SYSTEM_TIME */
    0x4b564d00, /* MSR_KVM_WALL_CLOCK_NEW */
    0x4b564d01, /* MSR_KVM_SYSTEM_TIME_NEW */
    0x4b564d06, /* MSR_KVM_ASYNC_PF_INT */
    0x4b564d02, /* MSR_KVM_ASYNC_PF_EN */
    0x4b564d03, /* MSR_KVM_STEAL_TIME */
    0x4b564d04, /* MSR_KVM_PV_EOI_EN */
    0x4b564d05, /* MSR_KVM_POLL_CONTROL */
};

/* One MSR through KVM_GET_MSRS / KVM_SET_MSRS; true when KVM took it. */
static bool vmm_kvm_msr(int fd, unsigned long req, uint32_t index, uint64_t *value) {
  struct {
    struct kvm_msrs hdr;
    struct kvm_msr_entry e;
  } one;
  memset(&one, 0, sizeof(one));
  one.hdr.nmsrs = 1;
  one.e.index = index;
  one.e.data = *value;
  if (ioctl(fd, req, &one) != 1) return false;
  *value = one.e.data;
  return true;
}

static char *vmm_kvm_hex(const void *p, size_t n) {
  static const char digits[] = "0123456789abcdef";
  char *s = malloc(2 * n + 1);
  if (s == NULL) return NULL;
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++) {
    s[2 * i] = digits[b[i] >> 4];
    s[2 * i + 1] = digits[b[i] & 15];
  }
  s[2 * n] = 0;
  return s;
}

static int vmm_kvm_nibble(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/* Decodes item `name` of j into exactly n bytes (out may be NULL to only check). */
static bool vmm_kvm_unhex(const cJSON *j, const char *name, void *out, size_t n) {
  const cJSON *it = cJSON_GetObjectItemCaseSensitive(j, name);
  if (!cJSON_IsString(it) || strlen(it->valuestring) != 2 * n) {
    VMM_LOG_E("kvm: platform state: %s missing or not %zu bytes of hex", name, n);
    return false;
  }
  const char *s = it->valuestring;
  for (size_t i = 0; i < n; i++) {
    int hi = vmm_kvm_nibble(s[2 * i]), lo = vmm_kvm_nibble(s[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      VMM_LOG_E("kvm: platform state: %s is not hex", name);
      return false;
    }
    if (out) ((uint8_t *)out)[i] = (uint8_t)(hi << 4 | lo);
  }
  return true;
}

static bool vmm_kvm_add_hex(cJSON *j, const char *name, const void *p, size_t n) {
  char *h = vmm_kvm_hex(p, n);
  bool ok = h && cJSON_AddStringToObject(j, name, h);
  free(h);
  return ok;
}

static const char *const vmm_kvm_chip_names[3] = {"pic_master", "pic_slave", "ioapic"};

cJSON *vmm__kvm_platform_save(vmm_vm_t *vm, int *rc) {
  struct vmm_kvm_vm *k = vmm_kvm_vm(vm);
  *rc = VMM_ENOMEM;
  cJSON *j = cJSON_CreateObject();
  cJSON *vcpus = j ? cJSON_AddArrayToObject(j, "vcpus") : NULL;
  if (vcpus == NULL) goto fail;
  for (uint32_t c = 0; c < 3; c++) {
    struct kvm_irqchip chip;
    memset(&chip, 0, sizeof(chip));
    chip.chip_id = c;
    if ((*rc = vmm__kvm_ioctl(k->vm_fd, KVM_GET_IRQCHIP, &chip, "KVM_GET_IRQCHIP")) < 0) goto fail;
    if (!vmm_kvm_add_hex(j, vmm_kvm_chip_names[c], &chip.chip, sizeof(chip.chip))) goto nomem;
  }
  struct kvm_pit_state2 pit;
  memset(&pit, 0, sizeof(pit));
  if ((*rc = vmm__kvm_ioctl(k->vm_fd, KVM_GET_PIT2, &pit, "KVM_GET_PIT2")) < 0) goto fail;
  if (!vmm_kvm_add_hex(j, "pit", &pit, sizeof(pit))) goto nomem;
  struct kvm_clock_data clk;
  memset(&clk, 0, sizeof(clk));
  if ((*rc = vmm__kvm_ioctl(k->vm_fd, KVM_GET_CLOCK, &clk, "KVM_GET_CLOCK")) < 0) goto fail;
  char num[32];
  snprintf(num, sizeof(num), "0x%llx", (unsigned long long)clk.clock);
  if (!cJSON_AddStringToObject(j, "clock", num)) goto nomem;
  for (uint32_t i = 0; i < VMM_MAX_VCPUS; i++) {
    vmm_vcpu_t *v = vm->vcpus[i];
    if (v == NULL) continue;
    struct vmm_kvm_vcpu *kv = vmm_kvm_vcpu(v);
    cJSON *o = cJSON_CreateObject();
    if (o == NULL || !cJSON_AddItemToArray(vcpus, o)) {
      cJSON_Delete(o);
      goto nomem;
    }
    struct kvm_lapic_state lapic;
    if ((*rc = vmm__kvm_ioctl(kv->fd, KVM_GET_LAPIC, &lapic, "KVM_GET_LAPIC")) < 0) goto fail;
    if (!vmm_kvm_add_hex(o, "lapic", &lapic, sizeof(lapic))) goto nomem;
    /* The full MP state (the CPU state says only halted or not): application processors
     * waiting for INIT/SIPI must come back waiting, with the SIPI vector they were given. */
    struct kvm_mp_state mp;
    struct kvm_vcpu_events ev;
    if ((*rc = vmm__kvm_ioctl(kv->fd, KVM_GET_MP_STATE, &mp, "KVM_GET_MP_STATE")) < 0 ||
        (*rc = vmm__kvm_ioctl(kv->fd, KVM_GET_VCPU_EVENTS, &ev, "KVM_GET_VCPU_EVENTS")) < 0)
      goto fail;
    if (!cJSON_AddNumberToObject(o, "mp_state", mp.mp_state) ||
        !cJSON_AddNumberToObject(o, "sipi_vector", ev.sipi_vector))
      goto nomem;
    cJSON *msrs = cJSON_AddObjectToObject(o, "msrs");
    if (msrs == NULL) goto nomem;
    for (size_t m = 0; m < VMM_ARRAY_SIZE(vmm_kvm_platform_msrs); m++) {
      uint64_t value = 0;
      if (!vmm_kvm_msr(kv->fd, KVM_GET_MSRS, vmm_kvm_platform_msrs[m], &value))
        continue; /* this KVM lacks it */
      char key[16];
      snprintf(key, sizeof(key), "0x%x", vmm_kvm_platform_msrs[m]);
      snprintf(num, sizeof(num), "0x%llx", (unsigned long long)value);
      if (!cJSON_AddStringToObject(msrs, key, num)) goto nomem;
    }
  }
  *rc = 0;
  return j;
nomem:
  *rc = VMM_ENOMEM;
fail:
  cJSON_Delete(j);
  return NULL;
}

static bool vmm_kvm_parse_u64(const char *s, uint64_t *out) {
  if (s == NULL || s[0] != '0' || s[1] != 'x') return false;
  char *end = NULL;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 16);
  if (errno || end == s + 2 || *end) return false;
  *out = v;
  return true;
}

static bool vmm_kvm_u64(const cJSON *it, uint64_t *out) {
  return cJSON_IsString(it) && vmm_kvm_parse_u64(it->valuestring, out);
}

static bool vmm_kvm_msr_known(uint32_t index) {
  for (size_t m = 0; m < VMM_ARRAY_SIZE(vmm_kvm_platform_msrs); m++)
    if (vmm_kvm_platform_msrs[m] == index) return true;
  return false;
}

int vmm__kvm_platform_check(vmm_vm_t *vm, const cJSON *j) {
  uint32_t nvcpus = 0;
  for (uint32_t i = 0; i < VMM_MAX_VCPUS; i++) nvcpus += vm->vcpus[i] != NULL;
  const cJSON *vcpus = cJSON_GetObjectItemCaseSensitive(j, "vcpus");
  uint64_t clock;
  if (!cJSON_IsObject(j) || !cJSON_IsArray(vcpus) ||
      (uint32_t)cJSON_GetArraySize(vcpus) != nvcpus ||
      !vmm_kvm_u64(cJSON_GetObjectItemCaseSensitive(j, "clock"), &clock)) {
    VMM_LOG_E("kvm: platform state: not an object with a clock and one entry per vCPU (%u)",
              nvcpus);
    return VMM_ECORRUPT;
  }
  struct kvm_irqchip chip;
  struct kvm_pit_state2 pit;
  for (uint32_t c = 0; c < 3; c++)
    if (!vmm_kvm_unhex(j, vmm_kvm_chip_names[c], NULL, sizeof(chip.chip))) return VMM_ECORRUPT;
  if (!vmm_kvm_unhex(j, "pit", NULL, sizeof(pit))) return VMM_ECORRUPT;
  const cJSON *o;
  cJSON_ArrayForEach(o, vcpus) {
    struct kvm_lapic_state lapic;
    const cJSON *msrs = cJSON_GetObjectItemCaseSensitive(o, "msrs"), *m;
    const cJSON *mp = cJSON_GetObjectItemCaseSensitive(o, "mp_state");
    const cJSON *sipi = cJSON_GetObjectItemCaseSensitive(o, "sipi_vector");
    if (!vmm_kvm_unhex(o, "lapic", NULL, sizeof(lapic)) || !cJSON_IsObject(msrs) ||
        !cJSON_IsNumber(mp) || mp->valuedouble < KVM_MP_STATE_RUNNABLE ||
        mp->valuedouble > KVM_MP_STATE_SIPI_RECEIVED || mp->valuedouble != (int)mp->valuedouble ||
        !cJSON_IsNumber(sipi) || sipi->valuedouble < 0 || sipi->valuedouble > 255 ||
        sipi->valuedouble != (int)sipi->valuedouble) {
      VMM_LOG_E("kvm: platform state: a vCPU entry lacks its local APIC, MSRs or MP state");
      return VMM_ECORRUPT;
    }
    cJSON_ArrayForEach(m, msrs) {
      uint64_t index, value;
      if (!vmm_kvm_parse_u64(m->string, &index) || index > UINT32_MAX ||
          !vmm_kvm_msr_known((uint32_t)index) || !vmm_kvm_u64(m, &value)) {
        VMM_LOG_E("kvm: platform state: MSR entry %s is not one this library saves",
                  m->string ? m->string : "(unnamed)");
        return VMM_ECORRUPT;
      }
      /* This KVM must have it (the snapshot may come from another host): a read tells. */
      vmm_vcpu_t *v0 = NULL;
      for (uint32_t i = 0; i < VMM_MAX_VCPUS && v0 == NULL; i++) v0 = vm->vcpus[i];
      uint64_t now = 0;
      if (v0 && !vmm_kvm_msr(vmm_kvm_vcpu(v0)->fd, KVM_GET_MSRS, (uint32_t)index, &now)) {
        VMM_LOG_E("kvm: the snapshot has MSR %#x, which this host's KVM lacks", (unsigned)index);
        return VMM_ENOSYS;
      }
    }
  }
  return 0;
}

/* touch_memory false: everything but the wall-clock MSRs, whose write makes KVM write the
 * wall clock into guest RAM at once (a restore's trial must change no RAM; those MSRs take any
 * value this KVM has, which the check already asked). */
static int vmm_kvm_platform_apply(vmm_vm_t *vm, const cJSON *j, bool touch_memory) {
  struct vmm_kvm_vm *k = vmm_kvm_vm(vm);
  int rc = vmm__kvm_platform_check(vm, j);
  if (rc) return rc;
  /* Per vCPU first (the CPU state is already in: APIC base, TSC), then the chips and timer. */
  const cJSON *o = cJSON_GetObjectItemCaseSensitive(j, "vcpus")->child;
  for (uint32_t i = 0; i < VMM_MAX_VCPUS && o; i++) {
    vmm_vcpu_t *v = vm->vcpus[i];
    if (v == NULL) continue;
    struct vmm_kvm_vcpu *kv = vmm_kvm_vcpu(v);
    struct kvm_lapic_state lapic;
    vmm_kvm_unhex(o, "lapic", &lapic, sizeof(lapic));
    if ((rc = vmm__kvm_ioctl(kv->fd, KVM_SET_LAPIC, &lapic, "KVM_SET_LAPIC")) < 0) return rc;
    struct kvm_vcpu_events ev;
    if ((rc = vmm__kvm_ioctl(kv->fd, KVM_GET_VCPU_EVENTS, &ev, "KVM_GET_VCPU_EVENTS")) < 0)
      return rc;
    ev.sipi_vector = (uint32_t)cJSON_GetObjectItemCaseSensitive(o, "sipi_vector")->valueint;
    ev.flags |= KVM_VCPUEVENT_VALID_SIPI_VECTOR;
    if ((rc = vmm__kvm_ioctl(kv->fd, KVM_SET_VCPU_EVENTS, &ev, "KVM_SET_VCPU_EVENTS")) < 0)
      return rc;
    struct kvm_mp_state mp = {
        .mp_state = (uint32_t)cJSON_GetObjectItemCaseSensitive(o, "mp_state")->valueint};
    if ((rc = vmm__kvm_ioctl(kv->fd, KVM_SET_MP_STATE, &mp, "KVM_SET_MP_STATE")) < 0) return rc;
    const cJSON *m;
    cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(o, "msrs")) {
      uint64_t index = 0, value = 0;
      vmm_kvm_parse_u64(m->string, &index);
      vmm_kvm_u64(m, &value);
      if (!touch_memory && (index == 0x11 || index == 0x4b564d00)) continue;
      if (!vmm_kvm_msr(kv->fd, KVM_SET_MSRS, (uint32_t)index, &value)) {
        VMM_LOG_E("kvm: MSR %#x of the snapshot could not be set on vCPU %u", (unsigned)index, i);
        return VMM_EBACKEND;
      }
    }
    o = o->next;
  }
  for (uint32_t c = 0; c < 3; c++) {
    struct kvm_irqchip chip;
    memset(&chip, 0, sizeof(chip));
    chip.chip_id = c;
    vmm_kvm_unhex(j, vmm_kvm_chip_names[c], &chip.chip, sizeof(chip.chip));
    if ((rc = vmm__kvm_ioctl(k->vm_fd, KVM_SET_IRQCHIP, &chip, "KVM_SET_IRQCHIP")) < 0) return rc;
  }
  struct kvm_pit_state2 pit;
  vmm_kvm_unhex(j, "pit", &pit, sizeof(pit));
  if ((rc = vmm__kvm_ioctl(k->vm_fd, KVM_SET_PIT2, &pit, "KVM_SET_PIT2")) < 0) return rc;
  struct kvm_clock_data clk;
  memset(&clk, 0, sizeof(clk));
  uint64_t clock = 0;
  vmm_kvm_u64(cJSON_GetObjectItemCaseSensitive(j, "clock"), &clock);
  clk.clock = clock;
  if ((rc = vmm__kvm_ioctl(k->vm_fd, KVM_SET_CLOCK, &clk, "KVM_SET_CLOCK")) < 0) return rc;
  return 0;
}

int vmm__kvm_platform_load(vmm_vm_t *vm, const cJSON *j) {
  return vmm_kvm_platform_apply(vm, j, true);
}

int vmm__kvm_platform_try(vmm_vm_t *vm, const cJSON *j) {
  return vmm_kvm_platform_apply(vm, j, false);
}
