/* String helpers, formatted console output and exit for freestanding guests. */
#include "vmm_guest.h"

void *memset(void *dst, int c, size_t n) {
  uint8_t *d = dst;
  while (n--) *d++ = (uint8_t)c;
  return dst;
}

void *memcpy(void *dst, const void *src, size_t n) {
  uint8_t *d = dst;
  const uint8_t *s = src;
  while (n--) *d++ = *s++;
  return dst;
}

void *memmove(void *dst, const void *src, size_t n) {
  uint8_t *d = dst;
  const uint8_t *s = src;
  if (d < s) {
    while (n--) *d++ = *s++;
  } else {
    while (n--) d[n] = s[n];
  }
  return dst;
}

int memcmp(const void *a, const void *b, size_t n) {
  const uint8_t *x = a, *y = b;
  for (size_t i = 0; i < n; i++)
    if (x[i] != y[i]) return x[i] < y[i] ? -1 : 1;
  return 0;
}

size_t strlen(const char *s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}

int strcmp(const char *a, const char *b) {
  while (*a && *a == *b) a++, b++;
  return (unsigned char)*a - (unsigned char)*b;
}

void vmm_puts(const char *s) { vmm_console_write(s, strlen(s)); }

struct vmm_out {
  char *buf;
  size_t cap, len;
};

static void vmm_out_c(struct vmm_out *o, char c) {
  if (o->len + 1 < o->cap) o->buf[o->len] = c;
  o->len++;
}

static void vmm_out_num(struct vmm_out *o, uint64_t v, unsigned base, int upper, int width,
                        char pad, int neg) {
  char tmp[24];
  int n = 0;
  const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
  do {
    tmp[n++] = digits[v % base];
    v /= base;
  } while (v);
  if (neg) tmp[n++] = '-';
  while (width-- > n) vmm_out_c(o, pad);
  while (n) vmm_out_c(o, tmp[--n]);
}

int vmm_vsnprintf(char *buf, size_t cap, const char *fmt, va_list ap) {
  struct vmm_out o = {buf, cap, 0};
  for (; *fmt; fmt++) {
    if (*fmt != '%') {
      vmm_out_c(&o, *fmt);
      continue;
    }
    fmt++;
    char pad = ' ';
    int width = 0, lng = 0;
    if (*fmt == '0') pad = '0', fmt++;
    while (*fmt >= '0' && *fmt <= '9') width = width * 10 + (*fmt++ - '0');
    while (*fmt == 'l') lng++, fmt++;
    switch (*fmt) {
      case 'd':
      case 'i': {
        int64_t v = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
        vmm_out_num(&o, v < 0 ? -(uint64_t)v : (uint64_t)v, 10, 0, width, pad, v < 0);
        break;
      }
      case 'u': vmm_out_num(&o, lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 10, 0, width, pad, 0); break;
      case 'x':
      case 'X':
        vmm_out_num(&o, lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned), 16, *fmt == 'X', width,
                    pad, 0);
        break;
      case 'p':
        vmm_out_c(&o, '0');
        vmm_out_c(&o, 'x');
        vmm_out_num(&o, (uintptr_t)va_arg(ap, void *), 16, 0, width, pad, 0);
        break;
      case 's': {
        const char *s = va_arg(ap, const char *);
        if (!s) s = "(null)";
        int len = (int)strlen(s);
        while (width-- > len) vmm_out_c(&o, ' ');
        while (*s) vmm_out_c(&o, *s++);
        break;
      }
      case 'c': vmm_out_c(&o, (char)va_arg(ap, int)); break;
      case '%': vmm_out_c(&o, '%'); break;
      case '\0': fmt--; break;
      default: vmm_out_c(&o, '%'); vmm_out_c(&o, *fmt); break;
    }
  }
  if (cap) buf[o.len < cap ? o.len : cap - 1] = '\0';
  return (int)o.len;
}

int vmm_snprintf(char *buf, size_t cap, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vmm_vsnprintf(buf, cap, fmt, ap);
  va_end(ap);
  return n;
}

int vmm_printf(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vmm_vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  vmm_console_write(buf, (uint64_t)(n < (int)sizeof(buf) ? n : (int)sizeof(buf) - 1));
  return n;
}

void vmm_rt_exit(int64_t status) { vmm_exit(status); }
