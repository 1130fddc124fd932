/* The legacy PC bits Linux touches on its way to a console, none of which it needs to work:
 * an i8042 with nothing behind it (its reset command is how Linux reboots), an MC146818 clock
 * that reads the host's time, and the POST port 0x80 that inb_p/outb_p write to. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "linux_internal.h"

#define I8042_DATA 0x60
#define I8042_CMD 0x64
#define I8042_RESET 0xfe
#define CMOS_INDEX 0x70
#define POST_PORT 0x80

struct vmm_linux_pc {
  struct vmm_device dev;
  vmm_handler_t *h_data, *h_cmd, *h_cmos, *h_post;
  pthread_mutex_t lock;
  uint8_t cmos_index;
  uint8_t nvram[128];
};

/* Status reads "output buffer full, input buffer empty" and the data port reads 0: Linux's
 * probe drains 16 bytes and reports no controller, and its reboot path, which waits for the
 * input buffer to empty, writes the reset command at once. */
static int vmm_pc_i8042(vmm_vcpu_t *vcpu, uint64_t offset, uint32_t size, int is_write,
                        uint64_t *data, void *user_data) {
  (void)size;
  bool cmd_port = user_data != NULL;
  if (!is_write) {
    *data = cmd_port ? 0x01 : 0x00;
    return VMM_HANDLED;
  }
  if (cmd_port && offset == 0 && (uint8_t)*data == I8042_RESET)
    vmm_vcpu_request_exit(vcpu, VMM_LINUX_RESET_STATUS);
  return VMM_HANDLED;
}

static uint8_t bcd(int v) { return (uint8_t)(((v / 10) << 4) | (v % 10)); }

static uint8_t vmm_pc_cmos_read(struct vmm_linux_pc *pc, uint8_t reg) {
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  switch (reg) {
    case 0x00: return bcd(tm.tm_sec > 59 ? 59 : tm.tm_sec);
    case 0x02: return bcd(tm.tm_min);
    case 0x04: return bcd(tm.tm_hour);
    case 0x06: return bcd(tm.tm_wday + 1);
    case 0x07: return bcd(tm.tm_mday);
    case 0x08: return bcd(tm.tm_mon + 1);
    case 0x09: return bcd(tm.tm_year % 100);
    case 0x32: return bcd(19 + tm.tm_year / 100);
    case 0x0a: return 0x26;  /* 32.768 kHz base, 1024 Hz rate, no update in progress. */
    case 0x0b: return 0x02;  /* 24-hour BCD, no interrupts enabled. */
    case 0x0c: return 0x00;  /* No interrupt flags. */
    case 0x0d: return 0x80;  /* Battery good. */
    default: return pc->nvram[reg & 0x7f];
  }
}

static int vmm_pc_cmos(vmm_vcpu_t *vcpu, uint64_t offset, uint32_t size, int is_write,
                       uint64_t *data, void *user_data) {
  (void)vcpu, (void)size;
  struct vmm_linux_pc *pc = user_data;
  pthread_mutex_lock(&pc->lock);
  if (offset == 0) {
    if (is_write) pc->cmos_index = (uint8_t)*data & 0x7f; /* Bit 7 masks NMIs. */
    else *data = pc->cmos_index;
  } else if (is_write) {
    /* The clock is the host's; only NVRAM bytes keep what the guest writes. */
    uint8_t i = pc->cmos_index & 0x7f;
    if (i > 0x0d && i != 0x32) pc->nvram[i] = (uint8_t)*data;
  } else {
    *data = vmm_pc_cmos_read(pc, pc->cmos_index);
  }
  pthread_mutex_unlock(&pc->lock);
  return VMM_HANDLED;
}

static int vmm_pc_post(vmm_vcpu_t *vcpu, uint64_t offset, uint32_t size, int is_write,
                       uint64_t *data, void *user_data) {
  (void)vcpu, (void)offset, (void)size, (void)is_write, (void)data, (void)user_data;
  return VMM_HANDLED;
}

static void vmm_pc_destroy(vmm_device_t *dev) {
  struct vmm_linux_pc *pc = (struct vmm_linux_pc *)dev;
  if (dev->vm) {
    vmm_vm_remove_handler(dev->vm, pc->h_data);
    vmm_vm_remove_handler(dev->vm, pc->h_cmd);
    vmm_vm_remove_handler(dev->vm, pc->h_cmos);
    vmm_vm_remove_handler(dev->vm, pc->h_post);
  }
  pthread_mutex_destroy(&pc->lock);
  free(pc);
}

/* Snapshots: the CMOS index and RAM (the clock itself reads the host's time). */
static cJSON *vmm_pc_save(vmm_device_t *dev) {
  struct vmm_linux_pc *pc = (struct vmm_linux_pc *)dev;
  cJSON *j = cJSON_CreateObject(), *nv = j ? cJSON_AddArrayToObject(j, "nvram") : NULL;
  pthread_mutex_lock(&pc->lock);
  bool ok = nv && cJSON_AddNumberToObject(j, "cmos_index", pc->cmos_index);
  for (size_t i = 0; ok && i < sizeof(pc->nvram); i++)
    ok = cJSON_AddItemToArray(nv, cJSON_CreateNumber(pc->nvram[i]));
  pthread_mutex_unlock(&pc->lock);
  if (!ok) {
    cJSON_Delete(j);
    return NULL;
  }
  return j;
}

static bool vmm_pc_byte(const cJSON *v) {
  return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= 255 &&
         v->valuedouble == (double)(int)v->valuedouble;
}

static int vmm_pc_check(const vmm_device_t *dev, const cJSON *j) {
  const struct vmm_linux_pc *pc = (const struct vmm_linux_pc *)dev;
  const cJSON *nv = cJSON_GetObjectItemCaseSensitive(j, "nvram"), *b;
  const cJSON *idx = cJSON_GetObjectItemCaseSensitive(j, "cmos_index");
  /* The index register has 7 bits (bit 7 of the port write masks NMIs). */
  if (!vmm_pc_byte(idx) || idx->valueint > 0x7f || !cJSON_IsArray(nv) ||
      (size_t)cJSON_GetArraySize(nv) != sizeof(pc->nvram))
    return VMM_ECORRUPT;
  cJSON_ArrayForEach(b, nv) {
    if (!vmm_pc_byte(b)) return VMM_ECORRUPT;
  }
  return 0;
}

static int vmm_pc_load(vmm_device_t *dev, const cJSON *j) {
  struct vmm_linux_pc *pc = (struct vmm_linux_pc *)dev;
  int rc = vmm_pc_check(dev, j);
  if (rc) return rc;
  const cJSON *b;
  size_t i = 0;
  pthread_mutex_lock(&pc->lock);
  pc->cmos_index = (uint8_t)cJSON_GetObjectItemCaseSensitive(j, "cmos_index")->valueint;
  cJSON_ArrayForEach(b, cJSON_GetObjectItemCaseSensitive(j, "nvram")) pc->nvram[i++] = (uint8_t)b->valueint;
  pthread_mutex_unlock(&pc->lock);
  return 0;
}

/* Clones: the device has no creation parameters. */
static void *vmm_pc_dup_config(const vmm_device_t *dev) {
  (void)dev;
  return calloc(1, 1);
}

static int vmm_pc_from_config(vmm_vm_t *vm, const void *config, vmm_device_t **out) {
  (void)config;
  return vmm_linux_pc_create(vm, out);
}

static const struct vmm_device_ops vmm_pc_ops = {
    .type = "linux-pc",
    .version = 1,
    .destroy = vmm_pc_destroy,
    .save = vmm_pc_save,
    .load = vmm_pc_load,
    .check = vmm_pc_check,
    .dup_config = vmm_pc_dup_config,
    .create_from_config = vmm_pc_from_config,
};

int vmm_linux_pc_create(vmm_vm_t *vm, vmm_device_t **out) {
  if (out) *out = NULL;
  if (vm == NULL) return VMM_EINVAL;
  struct vmm_linux_pc *pc = calloc(1, sizeof(*pc));
  if (pc == NULL) return VMM_ENOMEM;
  pc->dev.ops = &vmm_pc_ops;
  pthread_mutex_init(&pc->lock, NULL);
  /* A non-NULL user pointer marks the command port. */
  int rc = vmm_vm_add_pio_handler(vm, I8042_DATA, 1, vmm_pc_i8042, NULL, &pc->h_data);
  if (rc == 0) rc = vmm_vm_add_pio_handler(vm, I8042_CMD, 1, vmm_pc_i8042, pc, &pc->h_cmd);
  if (rc == 0) rc = vmm_vm_add_pio_handler(vm, CMOS_INDEX, 2, vmm_pc_cmos, pc, &pc->h_cmos);
  if (rc == 0) rc = vmm_vm_add_pio_handler(vm, POST_PORT, 1, vmm_pc_post, NULL, &pc->h_post);
  if (rc != 0) {
    /* Removing a handler that was never added (NULL) is refused harmlessly. */
    if (pc->h_data) vmm_vm_remove_handler(vm, pc->h_data);
    if (pc->h_cmd) vmm_vm_remove_handler(vm, pc->h_cmd);
    if (pc->h_cmos) vmm_vm_remove_handler(vm, pc->h_cmos);
    pthread_mutex_destroy(&pc->lock);
    free(pc);
    return rc;
  }
  /* The device's own handlers: clones re-create the device rather than copy them. */
  vmm__handler_set_device(pc->h_data, &pc->dev);
  vmm__handler_set_device(pc->h_cmd, &pc->dev);
  vmm__handler_set_device(pc->h_cmos, &pc->dev);
  vmm__handler_set_device(pc->h_post, &pc->dev);
  vmm__device_attach(vm, &pc->dev);
  if (out) *out = &pc->dev;
  return 0;
}
