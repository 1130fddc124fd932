/* vmm_cpu_state_t <-> JSON for snapshot files. 64-bit values are hex strings (JSON numbers lose
 * precision past 2^53); the XSAVE area is base64. Reading checks every field's presence, type
 * and range. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "snapshot.h"

#define U64_FIELD(f) {#f, offsetof(vmm_cpu_state_t, f)}

static const struct {
  const char *name;
  size_t off;
} vmm_u64_fields[] = {
    {"rax", offsetof(vmm_cpu_state_t, regs.rax)}, {"rbx", offsetof(vmm_cpu_state_t, regs.rbx)},
    {"rcx", offsetof(vmm_cpu_state_t, regs.rcx)}, {"rdx", offsetof(vmm_cpu_state_t, regs.rdx)},
    {"rsi", offsetof(vmm_cpu_state_t, regs.rsi)}, {"rdi", offsetof(vmm_cpu_state_t, regs.rdi)},
    {"rsp", offsetof(vmm_cpu_state_t, regs.rsp)}, {"rbp", offsetof(vmm_cpu_state_t, regs.rbp)},
    {"r8", offsetof(vmm_cpu_state_t, regs.r8)},   {"r9", offsetof(vmm_cpu_state_t, regs.r9)},
    {"r10", offsetof(vmm_cpu_state_t, regs.r10)}, {"r11", offsetof(vmm_cpu_state_t, regs.r11)},
    {"r12", offsetof(vmm_cpu_state_t, regs.r12)}, {"r13", offsetof(vmm_cpu_state_t, regs.r13)},
    {"r14", offsetof(vmm_cpu_state_t, regs.r14)}, {"r15", offsetof(vmm_cpu_state_t, regs.r15)},
    {"rip", offsetof(vmm_cpu_state_t, regs.rip)}, {"rflags", offsetof(vmm_cpu_state_t, regs.rflags)},
    U64_FIELD(cr0), U64_FIELD(cr2), U64_FIELD(cr3), U64_FIELD(cr4), U64_FIELD(cr8),
    U64_FIELD(efer), U64_FIELD(xcr0), U64_FIELD(apic_base), U64_FIELD(star), U64_FIELD(lstar),
    U64_FIELD(cstar), U64_FIELD(sfmask), U64_FIELD(kernel_gs_base), U64_FIELD(sysenter_cs),
    U64_FIELD(sysenter_esp), U64_FIELD(sysenter_eip), U64_FIELD(pat), U64_FIELD(tsc),
    U64_FIELD(tsc_aux), U64_FIELD(misc_enable), U64_FIELD(dr0), U64_FIELD(dr1), U64_FIELD(dr2),
    U64_FIELD(dr3), U64_FIELD(dr6), U64_FIELD(dr7),
    {"exception.payload", offsetof(vmm_cpu_state_t, exception.payload)},
};

static const struct {
  const char *name;
  size_t off;
} vmm_seg_fields[] = {
    {"cs", offsetof(vmm_cpu_state_t, cs)}, {"ds", offsetof(vmm_cpu_state_t, ds)},
    {"es", offsetof(vmm_cpu_state_t, es)}, {"fs", offsetof(vmm_cpu_state_t, fs)},
    {"gs", offsetof(vmm_cpu_state_t, gs)}, {"ss", offsetof(vmm_cpu_state_t, ss)},
    {"tr", offsetof(vmm_cpu_state_t, tr)}, {"ldt", offsetof(vmm_cpu_state_t, ldt)},
};

/* Single bytes (flags, vectors), each checked against its maximum on load. */
static const struct {
  const char *name;
  size_t off;
  unsigned max;
} vmm_byte_fields[] = {
    {"exception.injected", offsetof(vmm_cpu_state_t, exception.injected), 1},
    {"exception.pending", offsetof(vmm_cpu_state_t, exception.pending), 1},
    {"exception.vector", offsetof(vmm_cpu_state_t, exception.vector), 31},
    {"exception.has_error_code", offsetof(vmm_cpu_state_t, exception.has_error_code), 1},
    {"interrupt.injected", offsetof(vmm_cpu_state_t, interrupt.injected), 1},
    {"interrupt.vector", offsetof(vmm_cpu_state_t, interrupt.vector), 255},
    {"interrupt.soft", offsetof(vmm_cpu_state_t, interrupt.soft), 1},
    {"interrupt.shadow", offsetof(vmm_cpu_state_t, interrupt.shadow), 3},
    {"interrupt.nmi_injected", offsetof(vmm_cpu_state_t, interrupt.nmi_injected), 1},
    {"interrupt.nmi_pending", offsetof(vmm_cpu_state_t, interrupt.nmi_pending), 1},
    {"interrupt.nmi_masked", offsetof(vmm_cpu_state_t, interrupt.nmi_masked), 1},
    {"halted", offsetof(vmm_cpu_state_t, halted), 1},
};

static const char vmm_b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *vmm_base64(const uint8_t *p, size_t n) {
  char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;
  if (out == NULL) return NULL;
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) |
                 (i + 2 < n ? p[i + 2] : 0);
    *o++ = vmm_b64[(v >> 18) & 63];
    *o++ = vmm_b64[(v >> 12) & 63];
    *o++ = i + 1 < n ? vmm_b64[(v >> 6) & 63] : '=';
    *o++ = i + 2 < n ? vmm_b64[v & 63] : '=';
  }
  *o = '\0';
  return out;
}

/* Decodes exactly `n` bytes; anything else (length, alphabet, padding) is an error. */
static int vmm_unbase64(const char *s, uint8_t *out, size_t n) {
  size_t len = strlen(s);
  if (len != (n + 2) / 3 * 4) return -1;
  size_t o = 0;
  for (size_t i = 0; i < len; i += 4) {
    uint32_t v = 0;
    int pad = 0;
    for (int k = 0; k < 4; k++) {
      char c = s[i + k];
      const char *q = c ? strchr(vmm_b64, c) : NULL;
      if (c == '=' && i + 4 == len && k >= 2) {
        pad++;
        v <<= 6;
      } else if (q && !pad) {
        v = v << 6 | (uint32_t)(q - vmm_b64);
      } else {
        return -1;
      }
    }
    uint8_t b[3] = {(uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    for (int k = 0; k < 3 - pad; k++) {
      if (o == n) return -1;
      out[o++] = b[k];
    }
  }
  return o == n ? 0 : -1;
}

static cJSON *vmm_hex(uint64_t v) {
  char buf[24];
  snprintf(buf, sizeof(buf), "0x%" PRIx64, v);
  return cJSON_CreateString(buf);
}

/* Parses "0x..." into a uint64; false for anything else. */
bool vmm__json_hex(const cJSON *j, uint64_t *out);
bool vmm__json_hex(const cJSON *j, uint64_t *out) {
  if (!cJSON_IsString(j) || j->valuestring == NULL) return false;
  const char *s = j->valuestring;
  if (s[0] != '0' || s[1] != 'x' || s[2] == '\0' || strlen(s) > 18) return false;
  uint64_t v = 0;
  for (const char *p = s + 2; *p; p++) {
    unsigned d;
    if (*p >= '0' && *p <= '9') d = (unsigned)(*p - '0');
    else if (*p >= 'a' && *p <= 'f') d = (unsigned)(*p - 'a' + 10);
    else return false;
    v = v << 4 | d;
  }
  *out = v;
  return true;
}

cJSON *vmm__cpu_state_to_json(const vmm_cpu_state_t *st) {
  cJSON *j = cJSON_CreateObject();
  if (j == NULL) return NULL;
  const uint8_t *base = (const uint8_t *)st;
  bool ok = true;
  for (size_t i = 0; i < VMM_ARRAY_SIZE(vmm_u64_fields); i++) {
    uint64_t v;
    memcpy(&v, base + vmm_u64_fields[i].off, 8);
    ok &= cJSON_AddItemToObject(j, vmm_u64_fields[i].name, vmm_hex(v));
  }
  for (size_t i = 0; i < VMM_ARRAY_SIZE(vmm_seg_fields); i++) {
    const vmm_segment_t *s = (const vmm_segment_t *)(base + vmm_seg_fields[i].off);
    cJSON *o = cJSON_AddObjectToObject(j, vmm_seg_fields[i].name);
    ok &= o && cJSON_AddItemToObject(o, "base", vmm_hex(s->base)) &&
          cJSON_AddNumberToObject(o, "limit", s->limit) &&
          cJSON_AddNumberToObject(o, "selector", s->selector) &&
          cJSON_AddNumberToObject(o, "attrs",
                                  s->type | s->s << 4 | s->dpl << 5 | s->present << 7 |
                                      s->avl << 8 | s->l << 9 | s->db << 10 | s->g << 11 |
                                      s->unusable << 12);
  }
  const vmm_dtable_t *dt[2] = {&st->gdt, &st->idt};
  const char *dtn[2] = {"gdt", "idt"};
  for (int i = 0; i < 2; i++) {
    cJSON *o = cJSON_AddObjectToObject(j, dtn[i]);
    ok &= o && cJSON_AddItemToObject(o, "base", vmm_hex(dt[i]->base)) &&
          cJSON_AddNumberToObject(o, "limit", dt[i]->limit);
  }
  for (size_t i = 0; i < VMM_ARRAY_SIZE(vmm_byte_fields); i++)
    ok &= cJSON_AddNumberToObject(j, vmm_byte_fields[i].name, base[vmm_byte_fields[i].off]) != NULL;
  ok &= cJSON_AddNumberToObject(j, "exception.error_code", st->exception.error_code) != NULL;
  char *x = vmm_base64(st->xsave, VMM_XSAVE_SIZE);
  ok &= x && cJSON_AddStringToObject(j, "xsave", x);
  free(x);
  if (!ok) {
    cJSON_Delete(j);
    return NULL;
  }
  return j;
}

static bool vmm_json_uint(const cJSON *j, double max, uint64_t *out) {
  if (!cJSON_IsNumber(j) || j->valuedouble < 0 || j->valuedouble > max ||
      j->valuedouble != (double)(uint64_t)j->valuedouble)
    return false;
  *out = (uint64_t)j->valuedouble;
  return true;
}

int vmm__cpu_state_from_json(const cJSON *j, vmm_cpu_state_t *st) {
  if (!cJSON_IsObject(j)) return VMM_ECORRUPT;
  memset(st, 0, sizeof(*st));
  st->struct_size = sizeof(*st);
  uint8_t *base = (uint8_t *)st;
  for (size_t i = 0; i < VMM_ARRAY_SIZE(vmm_u64_fields); i++) {
    uint64_t v;
    if (!vmm__json_hex(cJSON_GetObjectItemCaseSensitive(j, vmm_u64_fields[i].name), &v)) {
      VMM_LOG_E("snapshot: CPU state field %s missing or malformed", vmm_u64_fields[i].name);
      return VMM_ECORRUPT;
    }
    memcpy(base + vmm_u64_fields[i].off, &v, 8);
  }
  for (size_t i = 0; i < VMM_ARRAY_SIZE(vmm_seg_fields); i++) {
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(j, vmm_seg_fields[i].name);
    vmm_segment_t *s = (vmm_segment_t *)(base + vmm_seg_fields[i].off);
    uint64_t limit, sel, attrs;
    if (!cJSON_IsObject(o) || !vmm__json_hex(cJSON_GetObjectItemCaseSensitive(o, "base"), &s->base) ||
        !vmm_json_uint(cJSON_GetObjectItemCaseSensitive(o, "limit"), 4294967295.0, &limit) ||
        !vmm_json_uint(cJSON_GetObjectItemCaseSensitive(o, "selector"), 65535, &sel) ||
        !vmm_json_uint(cJSON_GetObjectItemCaseSensitive(o, "attrs"), 8191, &attrs)) {
      VMM_LOG_E("snapshot: segment %s missing or malformed", vmm_seg_fields[i].name);
      return VMM_ECORRUPT;
    }
    s->limit = (uint32_t)limit;
    s->selector = (uint16_t)sel;
    s->type = attrs & 15;
    s->s = (attrs >> 4) & 1;
    s->dpl = (attrs >> 5) & 3;
    s->present = (attrs >> 7) & 1;
    s->avl = (attrs >> 8) & 1;
    s->l = (attrs >> 9) & 1;
    s->db = (attrs >> 10) & 1;
    s->g = (attrs >> 11) & 1;
    s->unusable = (attrs >> 12) & 1;
  }
  vmm_dtable_t *dt[2] = {&st->gdt, &st->idt};
  const char *dtn[2] = {"gdt", "idt"};
  for (int i = 0; i < 2; i++) {
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(j, dtn[i]);
    uint64_t limit;
    if (!cJSON_IsObject(o) || !vmm__json_hex(cJSON_GetObjectItemCaseSensitive(o, "base"), &dt[i]->base) ||
        !vmm_json_uint(cJSON_GetObjectItemCaseSensitive(o, "limit"), 65535, &limit)) {
      VMM_LOG_E("snapshot: %s missing or malformed", dtn[i]);
      return VMM_ECORRUPT;
    }
    dt[i]->limit = (uint16_t)limit;
  }
  for (size_t i = 0; i < VMM_ARRAY_SIZE(vmm_byte_fields); i++) {
    uint64_t v;
    if (!vmm_json_uint(cJSON_GetObjectItemCaseSensitive(j, vmm_byte_fields[i].name),
                       vmm_byte_fields[i].max, &v)) {
      VMM_LOG_E("snapshot: CPU state field %s missing or out of range", vmm_byte_fields[i].name);
      return VMM_ECORRUPT;
    }
    base[vmm_byte_fields[i].off] = (uint8_t)v;
  }
  uint64_t ec;
  if (!vmm_json_uint(cJSON_GetObjectItemCaseSensitive(j, "exception.error_code"), 4294967295.0, &ec)) {
    VMM_LOG_E("snapshot: exception error code missing or out of range");
    return VMM_ECORRUPT;
  }
  st->exception.error_code = (uint32_t)ec;
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(j, "xsave");
  if (!cJSON_IsString(x) || vmm_unbase64(x->valuestring, st->xsave, VMM_XSAVE_SIZE) != 0) {
    VMM_LOG_E("snapshot: XSAVE area missing or not %d bytes of base64", VMM_XSAVE_SIZE);
    return VMM_ECORRUPT;
  }
  return 0;
}
