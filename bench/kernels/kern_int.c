/* Integer/branchy kernel (CoreMark-like, written for libvmm). */
#include "kernels.h"

struct node {
  struct node *next;
  int32_t data;
  int32_t idx;
};

#define NNODES 512
#define MAT 24
#define TEXT 1024

static struct node nodes[NNODES];
static int32_t mat_a[MAT * MAT], mat_b[MAT * MAT], mat_c[MAT * MAT];
static uint8_t text[TEXT];

static uint16_t crc16_byte(uint16_t crc, uint8_t b) {
  for (int i = 0; i < 8; i++) {
    uint16_t x = (uint16_t)((crc ^ b) & 1);
    b >>= 1;
    crc >>= 1;
    if (x) crc ^= 0xa001;
  }
  return crc;
}

static struct node *list_reverse(struct node *l) {
  struct node *r = 0;
  while (l) {
    struct node *n = l->next;
    l->next = r;
    r = l;
    l = n;
  }
  return r;
}

static int32_t list_find_sum(const struct node *l, int32_t key) {
  int32_t s = 0;
  for (; l; l = l->next) {
    if (l->data == key) return s + l->idx;
    if (l->data & 1) s += l->data;
    else s -= l->idx;
  }
  return s;
}

static int32_t matrix_step(int32_t k) {
  for (int i = 0; i < MAT; i++)
    for (int j = 0; j < MAT; j++) {
      int32_t acc = 0;
      for (int x = 0; x < MAT; x++) acc += mat_a[i * MAT + x] * mat_b[x * MAT + j];
      mat_c[i * MAT + j] = acc + k;
    }
  int32_t s = 0;
  for (int i = 0; i < MAT * MAT; i++) {
    s += (mat_c[i] >> 3) & 0xff;
    mat_a[i] = (mat_a[i] + (mat_c[i] & 7)) & 0x3ff;
  }
  return s;
}

enum { ST_START, ST_INT, ST_FRAC, ST_EXP, ST_SIGN, ST_ERR };

static uint32_t state_machine(const uint8_t *p, int n) {
  uint32_t counts[6] = {0};
  int st = ST_START;
  for (int i = 0; i < n; i++) {
    uint8_t c = p[i];
    if (c == ',') {
      counts[st]++;
      st = ST_START;
      continue;
    }
    switch (st) {
      case ST_START:
        if (c >= '0' && c <= '9') st = ST_INT;
        else if (c == '+' || c == '-') st = ST_SIGN;
        else if (c == '.') st = ST_FRAC;
        else st = ST_ERR;
        break;
      case ST_SIGN: st = (c >= '0' && c <= '9') ? ST_INT : c == '.' ? ST_FRAC : ST_ERR; break;
      case ST_INT:
        if (c == '.') st = ST_FRAC;
        else if (c == 'e' || c == 'E') st = ST_EXP;
        else if (c < '0' || c > '9') st = ST_ERR;
        break;
      case ST_FRAC:
        if (c == 'e' || c == 'E') st = ST_EXP;
        else if (c < '0' || c > '9') st = ST_ERR;
        break;
      case ST_EXP:
        if ((c < '0' || c > '9') && c != '+' && c != '-') st = ST_ERR;
        break;
      default: break;
    }
  }
  return counts[0] + 3 * counts[1] + 5 * counts[2] + 7 * counts[3] + 11 * counts[4] +
         13 * counts[5];
}

uint64_t kern_int(uint64_t iterations) {
  uint32_t seed = 0x12345678;
  for (int i = 0; i < NNODES; i++) {
    seed = seed * 1103515245u + 12345u;
    nodes[i].data = (int32_t)((seed >> 8) & 0xffff);
    nodes[i].idx = i;
    nodes[i].next = i + 1 < NNODES ? &nodes[i + 1] : 0;
  }
  for (int i = 0; i < MAT * MAT; i++) {
    seed = seed * 1103515245u + 12345u;
    mat_a[i] = (int32_t)((seed >> 12) & 0x3ff);
    mat_b[i] = (int32_t)((seed >> 3) & 0x3ff);
  }
  static const char alphabet[] = "0123456789.+-eE,x";
  for (int i = 0; i < TEXT; i++) {
    seed = seed * 1103515245u + 12345u;
    text[i] = (uint8_t)alphabet[(seed >> 16) % (sizeof(alphabet) - 1)];
  }
  struct node *list = &nodes[0];
  uint16_t crc = 0;
  uint64_t acc = 0;
  for (uint64_t it = 0; it < iterations; it++) {
    list = list_reverse(list);
    int32_t a = list_find_sum(list, nodes[it % NNODES].data);
    int32_t b = list_find_sum(list, -1);
    int32_t m = (it % 4 == 0) ? matrix_step((int32_t)it) : 0;
    uint32_t s = state_machine(text, TEXT);
    text[it % TEXT] = (uint8_t)alphabet[(s + it) % (sizeof(alphabet) - 1)];
    crc = crc16_byte(crc, (uint8_t)a);
    crc = crc16_byte(crc, (uint8_t)b);
    crc = crc16_byte(crc, (uint8_t)m);
    crc = crc16_byte(crc, (uint8_t)s);
    acc = acc * 31 + (uint64_t)(uint32_t)(a ^ b ^ m) + s + crc;
  }
  return acc;
}
