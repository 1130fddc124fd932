/* 16550A UART: enough of the chip for a Linux console and for polled guest drivers.
 * Transmission is instantaneous (THR is always empty); received bytes wait in a bounded ring
 * filled by vmm_uart_input() from any thread. */
#include <errno.h>
#include <signal.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../core/internal.h"

enum {
  UART_RBR_THR = 0, UART_IER = 1, UART_IIR_FCR = 2, UART_LCR = 3,
  UART_MCR = 4, UART_LSR = 5, UART_MSR = 6, UART_SCR = 7,
};

#define IER_RDA 0x01
#define IER_THRE 0x02
#define IER_RLS 0x04
#define IER_MSI 0x08
#define IIR_NONE 0x01
#define IIR_THRE 0x02
#define IIR_RDA 0x04
#define IIR_FIFO 0xc0
#define LCR_DLAB 0x80
#define MCR_OUT2 0x08
#define MCR_LOOP 0x10
#define LSR_DR 0x01
#define LSR_THRE 0x20
#define LSR_TEMT 0x40
#define FCR_ENABLE 0x01
#define FCR_CLEAR_RX 0x02

struct vmm_uart {
  struct vmm_device dev;
  vmm_handler_t *handler;
  vmm_uart_config_t cfg;

  pthread_mutex_t lock;
  uint8_t ier, lcr, mcr, scr, fcr, dll, dlm;
  bool thre_pending;
  bool irq_level;
  uint8_t *rx;
  uint32_t rx_cap, rx_head, rx_count;
};

static bool vmm_uart_rx_ready(const struct vmm_uart *u) { return u->rx_count > 0; }

static uint8_t vmm_uart_iir(const struct vmm_uart *u) {
  uint8_t fifo = (u->fcr & FCR_ENABLE) ? IIR_FIFO : 0;
  if ((u->ier & IER_RDA) && vmm_uart_rx_ready(u)) return IIR_RDA | fifo;
  if ((u->ier & IER_THRE) && u->thre_pending) return IIR_THRE | fifo;
  return IIR_NONE | fifo;
}

/* Called with the lock held; the line is only driven when it changes. */
static void vmm_uart_update_irq(struct vmm_uart *u) {
  bool level = !(vmm_uart_iir(u) & IIR_NONE) && (u->mcr & MCR_OUT2);
  if (level == u->irq_level || u->cfg.irq < 0 || u->dev.vm == NULL) return;
  u->irq_level = level;
  vmm_vm_set_irq(u->dev.vm, (uint32_t)u->cfg.irq, level);
}

static void vmm_uart_rx_push(struct vmm_uart *u, uint8_t b) {
  if (u->rx_count == u->rx_cap) return; /* Overrun: the byte is lost, as on the chip. */
  u->rx[(u->rx_head + u->rx_count) % u->rx_cap] = b;
  u->rx_count++;
}

/* One byte to the output fd. A reader that went away must not kill the host process with
 * SIGPIPE: the signal is blocked around the write and a SIGPIPE it raised is consumed. */
static void vmm_uart_write_fd(int fd, uint8_t b) {
  sigset_t pipe_set, old;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
  sigset_t pending;
  sigpending(&pending);
  bool was_pending = sigismember(&pending, SIGPIPE);
  ssize_t n;
  while ((n = write(fd, &b, 1)) < 0 && errno == EINTR) {
  }
  if (n < 0 && errno == EPIPE && !was_pending) {
    struct timespec zero = {0, 0};
    sigtimedwait(&pipe_set, NULL, &zero);
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
}

static void vmm_uart_transmit(struct vmm_uart *u, uint8_t b) {
  if (u->mcr & MCR_LOOP) {
    vmm_uart_rx_push(u, b);
    return;
  }
  if (u->cfg.out_fn) {
    u->cfg.out_fn((const char *)&b, 1, u->cfg.out_user_data);
  } else if (u->cfg.out_fd >= 0) {
    vmm_uart_write_fd(u->cfg.out_fd, b);
  }
}

static uint8_t vmm_uart_read(struct vmm_uart *u, unsigned reg) {
  switch (reg) {
    case UART_RBR_THR: {
      if (u->lcr & LCR_DLAB) return u->dll;
      if (!vmm_uart_rx_ready(u)) return 0;
      uint8_t b = u->rx[u->rx_head];
      u->rx_head = (u->rx_head + 1) % u->rx_cap;
      u->rx_count--;
      return b;
    }
    case UART_IER: return (u->lcr & LCR_DLAB) ? u->dlm : u->ier;
    case UART_IIR_FCR: {
      uint8_t iir = vmm_uart_iir(u);
      /* Reading IIR acknowledges a THRE interrupt. */
      if ((iir & 0x0f) == IIR_THRE) u->thre_pending = false;
      return iir;
    }
    case UART_LCR: return u->lcr;
    case UART_MCR: return u->mcr;
    case UART_LSR: return LSR_THRE | LSR_TEMT | (vmm_uart_rx_ready(u) ? LSR_DR : 0);
    case UART_MSR:
      if (u->mcr & MCR_LOOP) {
        /* Loopback wires DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD. */
        return (uint8_t)(((u->mcr & 0x01) << 5) | ((u->mcr & 0x02) << 3) |
                         ((u->mcr & 0x04) << 4) | ((u->mcr & 0x08) << 4));
      }
      return 0xb0; /* DCD, DSR, CTS: a terminal is attached. */
    case UART_SCR: return u->scr;
    default: return 0xff;
  }
}

static void vmm_uart_write(struct vmm_uart *u, unsigned reg, uint8_t v) {
  switch (reg) {
    case UART_RBR_THR:
      if (u->lcr & LCR_DLAB) {
        u->dll = v;
      } else {
        vmm_uart_transmit(u, v);
        u->thre_pending = true;
      }
      break;
    case UART_IER:
      if (u->lcr & LCR_DLAB) {
        u->dlm = v;
      } else {
        /* Enabling the THRE interrupt with THR empty raises it at once. */
        if ((v & IER_THRE) && !(u->ier & IER_THRE)) u->thre_pending = true;
        u->ier = v & 0x0f;
      }
      break;
    case UART_IIR_FCR:
      u->fcr = v & 0xc9;
      if (v & FCR_CLEAR_RX) u->rx_head = u->rx_count = 0;
      break;
    case UART_LCR: u->lcr = v; break;
    case UART_MCR: u->mcr = v & 0x1f; break;
    case UART_SCR: u->scr = v; break;
    default: break; /* LSR and MSR are read-only. */
  }
}

static int vmm_uart_io(vmm_vcpu_t *vcpu, uint64_t offset, uint32_t size, int is_write,
                       uint64_t *data, void *user_data) {
  (void)vcpu;
  struct vmm_uart *u = user_data;
  pthread_mutex_lock(&u->lock);
  /* Wider accesses touch consecutive registers, lowest byte first. */
  uint64_t out = 0;
  for (uint32_t i = 0; i < size && offset + i < 8; i++) {
    if (is_write)
      vmm_uart_write(u, (unsigned)(offset + i), (uint8_t)(*data >> (8 * i)));
    else
      out |= (uint64_t)vmm_uart_read(u, (unsigned)(offset + i)) << (8 * i);
  }
  if (!is_write) *data = out;
  vmm_uart_update_irq(u);
  pthread_mutex_unlock(&u->lock);
  return VMM_HANDLED;
}

static void vmm_uart_destroy(vmm_device_t *dev) {
  struct vmm_uart *u = (struct vmm_uart *)dev;
  if (dev->vm) vmm_vm_remove_handler(dev->vm, u->handler);
  pthread_mutex_destroy(&u->lock);
  free(u->rx);
  free(u);
}

/* State: the registers and the bytes waiting in the receive buffer. */
static cJSON *vmm_uart_save(vmm_device_t *dev) {
  struct vmm_uart *u = (struct vmm_uart *)dev;
  cJSON *j = cJSON_CreateObject();
  if (j == NULL) return NULL;
  pthread_mutex_lock(&u->lock);
  const struct {
    const char *name;
    unsigned value;
  } regs[] = {{"ier", u->ier}, {"lcr", u->lcr}, {"mcr", u->mcr}, {"scr", u->scr},
              {"fcr", u->fcr}, {"dll", u->dll}, {"dlm", u->dlm}, {"thre_pending", u->thre_pending}};
  bool ok = true;
  for (size_t i = 0; i < VMM_ARRAY_SIZE(regs); i++)
    ok &= cJSON_AddNumberToObject(j, regs[i].name, regs[i].value) != NULL;
  cJSON *rx = cJSON_AddArrayToObject(j, "rx");
  ok &= rx != NULL;
  for (uint32_t i = 0; ok && i < u->rx_count; i++) {
    cJSON *b = cJSON_CreateNumber(u->rx[(u->rx_head + i) % u->rx_cap]);
    ok &= b != NULL && cJSON_AddItemToArray(rx, b);
  }
  pthread_mutex_unlock(&u->lock);
  if (!ok) {
    cJSON_Delete(j);
    return NULL;
  }
  return j;
}

static bool vmm_json_byte(const cJSON *j, const char *name, uint8_t *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, name);
  if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 255 ||
      v->valuedouble != (double)(int)v->valuedouble)
    return false;
  *out = (uint8_t)v->valueint;
  return true;
}

static int vmm_uart_check(const vmm_device_t *dev, const cJSON *j) {
  const struct vmm_uart *u = (const struct vmm_uart *)dev;
  uint8_t v;
  const cJSON *rx = cJSON_GetObjectItemCaseSensitive(j, "rx");
  static const char *const regs[] = {"ier", "lcr", "mcr", "scr", "fcr", "dll", "dlm",
                                     "thre_pending"};
  for (size_t i = 0; i < VMM_ARRAY_SIZE(regs); i++)
    if (!vmm_json_byte(j, regs[i], &v)) return VMM_ECORRUPT;
  if (!cJSON_IsArray(rx) || (uint32_t)cJSON_GetArraySize(rx) > u->rx_cap) return VMM_ECORRUPT;
  const cJSON *b;
  cJSON_ArrayForEach(b, rx) {
    if (!cJSON_IsNumber(b) || b->valuedouble < 0 || b->valuedouble > 255) return VMM_ECORRUPT;
  }
  return 0;
}

static int vmm_uart_load(vmm_device_t *dev, const cJSON *j) {
  struct vmm_uart *u = (struct vmm_uart *)dev;
  int rc = vmm_uart_check(dev, j);
  if (rc) return rc;
  uint8_t ier = 0, lcr = 0, mcr = 0, scr = 0, fcr = 0, dll = 0, dlm = 0, thre = 0;
  vmm_json_byte(j, "ier", &ier);
  vmm_json_byte(j, "lcr", &lcr);
  vmm_json_byte(j, "mcr", &mcr);
  vmm_json_byte(j, "scr", &scr);
  vmm_json_byte(j, "fcr", &fcr);
  vmm_json_byte(j, "dll", &dll);
  vmm_json_byte(j, "dlm", &dlm);
  vmm_json_byte(j, "thre_pending", &thre);
  const cJSON *rx = cJSON_GetObjectItemCaseSensitive(j, "rx"), *b;
  pthread_mutex_lock(&u->lock);
  u->ier = ier & 0x0f;
  u->lcr = lcr;
  u->mcr = mcr & 0x1f;
  u->scr = scr;
  u->fcr = fcr & 0xc9;
  u->dll = dll;
  u->dlm = dlm;
  u->thre_pending = thre != 0;
  u->rx_head = u->rx_count = 0;
  cJSON_ArrayForEach(b, rx) vmm_uart_rx_push(u, (uint8_t)b->valueint);
  /* Drive the line to what the loaded registers say, whatever it was before. */
  u->irq_level = !(!(vmm_uart_iir(u) & IIR_NONE) && (u->mcr & MCR_OUT2));
  vmm_uart_update_irq(u);
  pthread_mutex_unlock(&u->lock);
  return 0;
}

static void *vmm_uart_dup_config(const vmm_device_t *dev) {
  vmm_uart_config_t *c = malloc(sizeof(*c));
  if (c) *c = ((const struct vmm_uart *)dev)->cfg;
  return c;
}

static int vmm_uart_from_config(vmm_vm_t *vm, const void *config, vmm_device_t **out) {
  return vmm_uart_create(vm, config, out);
}

static const struct vmm_device_ops vmm_uart_ops = {
    .type = "uart16550",
    .version = 1,
    .destroy = vmm_uart_destroy,
    .save = vmm_uart_save,
    .load = vmm_uart_load,
    .check = vmm_uart_check,
    .dup_config = vmm_uart_dup_config,
    .create_from_config = vmm_uart_from_config,
};

int vmm_uart_create(vmm_vm_t *vm, const vmm_uart_config_t *config, vmm_device_t **out) {
  if (out) *out = NULL;
  if (vm == NULL || config == NULL || config->struct_size < offsetof(vmm_uart_config_t, reserved))
    return VMM_EINVAL;
  vmm_uart_config_t cfg = VMM_UART_CONFIG_INIT;
  memcpy(&cfg, config, config->struct_size < sizeof(cfg) ? config->struct_size : sizeof(cfg));
  if (cfg.port == 0) cfg.port = 0x3f8;
  if (cfg.port > 0xfff8 || cfg.rx_capacity > (64u << 20)) return VMM_EINVAL;
  if (cfg.rx_capacity == 0) cfg.rx_capacity = 4096;

  struct vmm_uart *u = calloc(1, sizeof(*u));
  if (u == NULL) return VMM_ENOMEM;
  u->rx = malloc(cfg.rx_capacity);
  if (u->rx == NULL) {
    free(u);
    return VMM_ENOMEM;
  }
  u->dev.ops = &vmm_uart_ops;
  u->cfg = cfg;
  u->rx_cap = cfg.rx_capacity;
  u->lcr = 0x03;
  u->dll = 0x0c;
  pthread_mutex_init(&u->lock, NULL);
  int rc = vmm_vm_add_pio_handler(vm, cfg.port, 8, vmm_uart_io, u, &u->handler);
  if (rc) {
    pthread_mutex_destroy(&u->lock);
    free(u->rx);
    free(u);
    return rc;
  }
  vmm__handler_set_device(u->handler, &u->dev);
  vmm__device_attach(vm, &u->dev);
  if (out) *out = &u->dev;
  return 0;
}

int vmm_uart_input(vmm_device_t *dev, const void *data, size_t len, size_t *accepted) {
  if (accepted) *accepted = 0;
  if (dev == NULL || dev->ops != &vmm_uart_ops || (data == NULL && len)) return VMM_EINVAL;
  struct vmm_uart *u = (struct vmm_uart *)dev;
  const uint8_t *p = data;
  size_t n = 0;
  pthread_mutex_lock(&u->lock);
  while (n < len && u->rx_count < u->rx_cap) vmm_uart_rx_push(u, p[n++]);
  vmm_uart_update_irq(u);
  pthread_mutex_unlock(&u->lock);
  if (accepted) *accepted = n;
  return 0;
}
