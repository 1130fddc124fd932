/* bt backend: the rewrite families of the translator - memory operands redirected into the
 * window, stack operations, branches (chained exits, inline lookups, the return caches) and
 * string instructions. See vmm__bt_translate.c for the overview. */
#include <stdlib.h>
#include <string.h>

#include "bt_xlate.h"


/* ---- bookkeeping ---- */

void vmm__tx_map(struct bt_tx *t, uint32_t fixup) {
  struct bt_vcpu *v = t->v;
  if (v->nmaps == v->maps_cap) {
    uint32_t cap = v->maps_cap ? v->maps_cap * 2 : 4096;
    struct bt_map *n = realloc(v->maps, cap * sizeof(*n));
    if (n == NULL) {
      t->failed = true;
      return;
    }
    v->maps = n;
    v->maps_cap = cap;
  }
  v->maps[v->nmaps++] = (struct bt_map){
      .host_off = t->b.len, .rip_off = (uint32_t)(t->rip - t->start), .fixup = fixup,
      .rsp_adj = t->rsp_delta};
}

void vmm__tx_sync_rsp(struct bt_tx *t) {
  if (t->rsp_delta == 0) return;
  bt_e_lea_rsp(&t->b, t->rsp_delta);
  t->rsp_delta = 0;
  vmm__tx_map(t, 0);
}


static void tx_exit_branch(struct bt_tx *t, uint32_t at, uint64_t target) {
  if (t->nexits >= BT_MAX_EXITS) {
    t->failed = true;
    return;
  }
  t->exits[t->nexits].at = at;
  t->exits[t->nexits].target = target;
  t->nexits++;
}

/* jmp to the stub for target (linked later). */
void vmm__tx_jmp_to(struct bt_tx *t, uint64_t target) {
  vmm__tx_sync_rsp(t); /* a no-op but where a block ends after pushes or pops */
  uint32_t at = bt_e_jmp_rel32(&t->b, 0);
  tx_exit_branch(t, at, target);
}

void vmm__tx_helper(struct bt_tx *t, enum bt_helper_kind kind) {
  vmm__tx_sync_rsp(t); /* helpers read RSP from the host's */
  struct bt_desc d = {.rip = t->rip, .kind = kind, .len = t->z ? t->z->length : 0};
  if (t->z) memcpy(d.bytes, t->bytes, t->z->length);
  uint32_t idx = vmm__bt_desc_add(t->v, &d);
  if (idx == UINT32_MAX) {
    t->failed = true;
    return;
  }
  bt_e_store(&t->b, BT_RSP, bt_ea_ctrl(BT_C_GPR + 4 * 8));
  bt_e_load(&t->b, BT_RSP, bt_ea_ctrl(BT_C_HOST_RSP));
  bt_e_store_imm(&t->b, bt_ea_ctrl(BT_C_HELPER_ARG), idx, 8);
  bt_e_call_mem(&t->b, bt_ea_ctrl(BT_C_FN_HELPER));
  bt_e_load(&t->b, BT_RSP, bt_ea_ctrl(BT_C_GPR + 4 * 8));
}

/* A helper that always leaves the block (the helper decides where execution goes on). */
void vmm__tx_helper_end(struct bt_tx *t, enum bt_helper_kind kind) {
  vmm__tx_helper(t, kind);
  vmm__tx_jmp_to(t, t->rip + (t->z ? t->z->length : 0));
  t->ended = true;
}

/* Inline lookup of the guest address in rdx; rcx and rdx are spilled. A miss tells the
 * dispatcher `site` (return-cache site + 1, or 0). */
static void tx_lookup_site(struct bt_tx *t, uint32_t site) {
  struct bt_buf *b = &t->b;
  int32_t table = t->cpl == 3 ? BT_C_TABLE3 : BT_C_TABLE0;
  struct bt_ea tab = {.base = -1, .index = BT_RCX, .scale = 8, .disp = BT_G(table), .gs = true};
  struct bt_ea tab_host = tab;
  tab_host.disp += 8;
  uint32_t jr = 0;
  if (!(t->mode & 4)) {
    bt_e_movzwl(b, BT_RCX, BT_RDX);
    bt_e_lea(b, BT_RCX, (struct bt_ea){.base = BT_RCX, .index = BT_RCX, .scale = 1});
    bt_e_load(b, BT_RCX, tab);
    bt_e_not(b, BT_RCX);
    bt_e_lea(b, BT_RCX, (struct bt_ea){.base = BT_RCX, .index = BT_RDX, .scale = 1, .disp = 1});
    bt_e8(b, 0xe3); /* jrcxz hit */
    jr = b->len;
    bt_e8(b, 0);
  }
  /* miss */
  bt_e_store(b, BT_RDX, bt_ea_ctrl(BT_C_RIP));
  bt_e_store_imm(b, bt_ea_ctrl(BT_C_EXIT_SITE), site, 8);
  bt_e_load(b, BT_RCX, bt_ea_ctrl(spill(BT_RCX)));
  bt_e_load(b, BT_RDX, bt_ea_ctrl(spill(BT_RDX)));
  bt_e_jmp_mem(b, bt_ea_ctrl(BT_C_FN_EXIT_INDIRECT));
  if (t->mode & 4) return;
  if (b->len - (jr + 1) > 127) {
    t->failed = true;
    return;
  }
  if (jr < b->cap) b->p[jr] = (uint8_t)(b->len - (jr + 1));
  /* hit: the table holds the block's indirect entry, which reloads rcx itself, so the jump
   * goes through a register rather than a stored and reloaded target. */
  bt_e_movzwl(b, BT_RCX, BT_RDX);
  bt_e_lea(b, BT_RCX, (struct bt_ea){.base = BT_RCX, .index = BT_RCX, .scale = 1});
  bt_e_load(b, BT_RCX, tab_host);
  bt_e_load(b, BT_RDX, bt_ea_ctrl(spill(BT_RDX)));
  bt_e8(b, 0xff), bt_e8(b, 0xe1); /* jmp *%rcx */
}

static void tx_lookup(struct bt_tx *t) { tx_lookup_site(t, 0); }

/* Inline return cache at a RET (rdx = target; rcx, rdx spilled): BT_RET_SLOTS compares
 * `lea -T(%rdx),%rcx; jrcxz` against targets the dispatcher fills in, each hit a chained
 * direct jump, so that returns to a few callers are predicted as conditional branches. */
static void tx_ret_cache(struct bt_tx *t) {
  struct bt_buf *b = &t->b;
  if ((t->mode & 4) || t->nexits + BT_RET_SLOTS > BT_MAX_EXITS) {
    tx_lookup(t);
    return;
  }
  uint32_t site = bt_pos(b);
  uint32_t jr[BT_RET_SLOTS];
  for (unsigned k = 0; k < BT_RET_SLOTS; k++) {
    /* 48 8d 8a disp32: a fixed 7-byte form, so slot k sits at site + 9 * k. */
    bt_e8(b, 0x48), bt_e8(b, 0x8d), bt_e8(b, 0x8a);
    bt_e32(b, (uint32_t)-(int32_t)BT_RET_EMPTY);
    bt_e8(b, 0xe3);
    jr[k] = b->len;
    bt_e8(b, 0);
  }
  /* Until every slot is filled, misses go to the dispatcher, which fills them; then this
   * jump is re-pointed at the table lookup (BT_RET_MISS_LEN bytes after the miss exit). */
  bt_e8(b, 0xe9);
  uint32_t to_miss = b->len;
  bt_e32(b, 0);
  for (unsigned k = 0; k < BT_RET_SLOTS; k++) {
    if (jr[k] < b->cap) b->p[jr[k]] = (uint8_t)(b->len - (jr[k] + 1));
    bt_e_load(b, BT_RCX, bt_ea_ctrl(spill(BT_RCX)));
    bt_e_load(b, BT_RDX, bt_ea_ctrl(spill(BT_RDX)));
    vmm__tx_jmp_to(t, BT_RET_EMPTY);
  }
  bt_patch32(b, to_miss, b->len - (to_miss + 4));
  uint32_t miss = b->len;
  bt_e_store(b, BT_RDX, bt_ea_ctrl(BT_C_RIP));
  bt_e_store_imm(b, bt_ea_ctrl(BT_C_EXIT_SITE), site + 1, 8);
  bt_e_load(b, BT_RCX, bt_ea_ctrl(spill(BT_RCX)));
  bt_e_load(b, BT_RDX, bt_ea_ctrl(spill(BT_RDX)));
  bt_e_jmp_mem(b, bt_ea_ctrl(BT_C_FN_EXIT_INDIRECT));
  if (b->len - miss != BT_RET_MISS_LEN) t->failed = true;
  tx_lookup_site(t, site + 1);
}

/* ---- the return cache ---- */

/* Emits: switch to the shadow stack, host CALL (pushing the continuation), then the
 * continuation, which checks that the guest returned to `ret_rip` (in rdx; rcx and rdx are
 * spilled by the RET sequence) and goes there, or looks the real target up. Returns the buffer
 * position of the CALL's rel32, to be pointed at the callee part the caller emits next. */
static uint32_t tx_shadow_call(struct bt_tx *t, uint64_t ret_rip) {
  struct bt_buf *b = &t->b;
  bt_e_store(b, BT_RSP, bt_ea_ctrl(BT_C_SAVE_RSP));
  bt_e_load(b, BT_RSP, bt_ea_ctrl(BT_C_SHADOW_SP));
  bt_e8(b, 0xe8);
  uint32_t call_at = b->len;
  bt_e32(b, 0);
  /* continuation */
  bt_e_store(b, BT_RSP, bt_ea_ctrl(BT_C_SHADOW_SP));
  bt_e_load(b, BT_RSP, bt_ea_ctrl(BT_C_SAVE_RSP));
  bt_e_lea(b, BT_RCX, (struct bt_ea){.base = BT_RDX, .index = -1, .scale = 1,
                                     .disp = -(int32_t)ret_rip});
  bt_e8(b, 0xe3); /* jrcxz match */
  bt_e8(b, 5);
  bt_e8(b, 0xe9); /* jmp mismatch */
  uint32_t mis_at = b->len;
  bt_e32(b, 0);
  /* match */
  bt_e_load(b, BT_RCX, bt_ea_ctrl(spill(BT_RCX)));
  bt_e_load(b, BT_RDX, bt_ea_ctrl(spill(BT_RDX)));
  vmm__tx_jmp_to(t, ret_rip);
  /* mismatch */
  bt_patch32(b, mis_at, b->len - (mis_at + 4));
  tx_lookup(t);
  /* the callee part follows */
  bt_patch32(b, call_at, b->len - (call_at + 4));
  bt_e_store(b, BT_RSP, bt_ea_ctrl(BT_C_SHADOW_SP));
  bt_e_load(b, BT_RSP, bt_ea_ctrl(BT_C_SAVE_RSP));
  return call_at;
}

static bool tx_shadow_ok(const struct bt_tx *t, uint64_t ret_rip) {
  return t->v->use_rsb && !(t->mode & 4) && ret_rip < 0x7fffffffull;
}

/* ---- operand helpers ---- */

int vmm__tx_gpr_num(ZydisRegister r) {
  if (r == ZYDIS_REGISTER_NONE) return -1;
  ZydisRegister big = ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, r);
  if (big >= ZYDIS_REGISTER_RAX && big <= ZYDIS_REGISTER_R15) return (int)(big - ZYDIS_REGISTER_RAX);
  return -2;
}

static uint32_t regs_used(const ZydisDecodedInstruction *z, const ZydisDecodedOperand *ops) {
  uint32_t m = 1u << BT_RSP;
  for (unsigned i = 0; i < z->operand_count; i++) {
    const ZydisDecodedOperand *o = &ops[i];
    int n;
    if (o->type == ZYDIS_OPERAND_TYPE_REGISTER) {
      if ((n = vmm__tx_gpr_num(o->reg.value)) >= 0) m |= 1u << n;
    } else if (o->type == ZYDIS_OPERAND_TYPE_MEMORY) {
      if ((n = vmm__tx_gpr_num(o->mem.base)) >= 0) m |= 1u << n;
      if ((n = vmm__tx_gpr_num(o->mem.index)) >= 0) m |= 1u << n;
    }
  }
  return m;
}

static int pick_scratch(uint32_t used) {
  static const int order[] = {BT_RAX, BT_RCX, BT_RDX, BT_RBX, BT_RSI, BT_RDI, 8, 9, 10, 11};
  for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++)
    if (!(used & (1u << order[i]))) return order[i];
  return -1;
}

static uint64_t seg_base(struct bt_tx *t, ZydisRegister seg) {
  if (seg == ZYDIS_REGISTER_FS) {
    t->flags |= BT_BLK_USES_FS;
    return t->v->sys.fs.base;
  }
  if (seg == ZYDIS_REGISTER_GS) {
    t->flags |= BT_BLK_USES_GS;
    return t->v->sys.gs.base;
  }
  return 0;
}

/* The guest memory operand as a window address (GS, 32-bit addressing). */
bool vmm__tx_guest_ea(struct bt_tx *t, const ZydisDecodedOperand *op, int32_t extra,
                        struct bt_ea *ea) {
  uint64_t sb = seg_base(t, op->mem.segment);
  *ea = (struct bt_ea){.base = -1, .index = -1, .scale = 1, .gs = tx_gs(t), .a32 = true};
  uint64_t disp = op->mem.disp.has_displacement ? (uint64_t)op->mem.disp.value : 0;
  if (op->mem.base == ZYDIS_REGISTER_RIP || op->mem.base == ZYDIS_REGISTER_EIP) {
    ea->disp = (int32_t)(uint32_t)(t->rip + t->z->length + disp + sb + (uint64_t)(int64_t)extra);
    return true;
  }
  int b = vmm__tx_gpr_num(op->mem.base), i = vmm__tx_gpr_num(op->mem.index);
  if (b < -1 || i < -1 || i == BT_RSP) return false;
  ea->base = b;
  ea->index = i;
  ea->scale = op->mem.scale ? op->mem.scale : 1;
  ea->disp = (int32_t)(uint32_t)(disp + sb + (uint64_t)(int64_t)extra);
  return true;
}

/* ---- copying ---- */

bool vmm__tx_is_seg_or_asz(uint8_t b) {
  return b == 0x26 || b == 0x2e || b == 0x36 || b == 0x3e || b == 0x64 || b == 0x65 || b == 0x67;
}

/* Re-encodes the guest instruction with Zydis's encoder, its memory operand replaced by
 * %gs:disp(base32, index32, scale) with 32-bit addressing: the window form. The guest's own
 * segment prefix goes (a FS/GS base is folded into disp by the caller), every other prefix
 * and operand stays as decoded. index -2 keeps the decoded index and scale (the vector index
 * of a VSIB operand: with 32-bit addressing each element's address is 32-bit too). False
 * when the encoder cannot express the result (for instance, longer than 15 bytes). */
static bool tx_encode_window(struct bt_tx *t, const ZydisDecodedOperand *mo, int base,
                             int index, uint8_t scale, uint32_t disp) {
  const ZydisDecodedInstruction *z = t->z;
  size_t k = (size_t)(mo - t->ops);
  /* EVEX (AVX-512) state is not part of what bt saves and restores. */
  if (k >= z->operand_count_visible || (z->attributes & ZYDIS_ATTRIB_HAS_EVEX)) return false;
  /* Without a register the encoder picks 64-bit addressing, which sign-extends disp32: the
   * same address only below 2 GiB. Above, the caller goes through a scratch register. */
  if (base < 0 && index < 0 && disp >= 0x80000000u) return false;
  ZydisEncoderRequest req;
  if (ZYAN_FAILED(ZydisEncoderDecodedInstructionToEncoderRequest(z, t->ops,
                                                                 z->operand_count_visible, &req)))
    return false;
  ZydisEncoderOperand *o = &req.operands[k];
  if (o->type != ZYDIS_OPERAND_TYPE_MEMORY) return false;
  o->mem.base = base >= 0 ? (ZydisRegister)(ZYDIS_REGISTER_EAX + base) : ZYDIS_REGISTER_NONE;
  if (index != -2) {
    o->mem.index = index >= 0 ? (ZydisRegister)(ZYDIS_REGISTER_EAX + index) : ZYDIS_REGISTER_NONE;
    o->mem.scale = index >= 0 ? scale : 0;
  }
  o->mem.displacement = (int32_t)disp;
  req.prefixes &= ~(ZydisInstructionAttributes)(
      ZYDIS_ATTRIB_HAS_SEGMENT_CS | ZYDIS_ATTRIB_HAS_SEGMENT_SS | ZYDIS_ATTRIB_HAS_SEGMENT_DS |
      ZYDIS_ATTRIB_HAS_SEGMENT_ES | ZYDIS_ATTRIB_HAS_SEGMENT_FS | ZYDIS_ATTRIB_HAS_SEGMENT_GS);
  if (tx_gs(t)) req.prefixes |= ZYDIS_ATTRIB_HAS_SEGMENT_GS;
  req.address_size_hint = ZYDIS_ADDRESS_SIZE_HINT_32;
  uint8_t out[ZYDIS_MAX_INSTRUCTION_LENGTH];
  ZyanUSize n = sizeof(out);
  if (ZYAN_FAILED(ZydisEncoderEncodeInstruction(&req, out, &n))) return false;
  /* The sandbox rests on the result: decode it again and insist on 32-bit addressing (or the
   * register-free form below 2 GiB, the same address either way) and on the window's segment:
   * GS in the GS window, neither FS nor GS (whose bases are the host's) in the low one. */
  ZydisDecodedInstruction chk;
  const ZydisInstructionAttributes fsgs = ZYDIS_ATTRIB_HAS_SEGMENT_FS | ZYDIS_ATTRIB_HAS_SEGMENT_GS;
  if (ZYAN_FAILED(ZydisDecoderDecodeInstruction(vmm__bt_decoder(), NULL, out, n, &chk)) ||
      chk.length != n || chk.mnemonic != z->mnemonic ||
      (chk.attributes & fsgs) != (tx_gs(t) ? ZYDIS_ATTRIB_HAS_SEGMENT_GS : 0) ||
      (chk.address_width != 32 && !(base < 0 && index == -1)))
    return false;
  bt_ebytes(&t->b, out, n);
  return true;
}

/* The scalar part of a VSIB operand (base, displacement, folded FS/GS base) as a window
 * address; the vector index stays out. False for a base that is not a general register. */
static bool tx_vsib_scalar(struct bt_tx *t, const ZydisDecodedOperand *mo, struct bt_ea *ea) {
  int b = vmm__tx_gpr_num(mo->mem.base);
  if (b < -1 || mo->mem.base == ZYDIS_REGISTER_RIP || mo->mem.base == ZYDIS_REGISTER_EIP)
    return false;
  uint64_t disp = mo->mem.disp.has_displacement ? (uint64_t)mo->mem.disp.value : 0;
  *ea = (struct bt_ea){.base = b, .index = -1, .scale = 1, .gs = tx_gs(t), .a32 = true,
                       .disp = (int32_t)(uint32_t)(disp + seg_base(t, mo->mem.segment))};
  return true;
}

/* Copies the instruction with its memory operand redirected into the window. */
bool vmm__tx_copy_mem(struct bt_tx *t, const ZydisDecodedOperand *mo) {
  struct bt_ea ea;
  if (mo->mem.type == ZYDIS_MEMOP_TYPE_VSIB) {
    /* AVX2 gathers: a general base and a vector index. Without a base the encoder would use
     * 64-bit addressing; that form goes through a scratch base register instead. */
    if (!tx_vsib_scalar(t, mo, &ea) || ea.base < 0) return false;
    return tx_encode_window(t, mo, ea.base, -2, 0, (uint32_t)ea.disp);
  }
  if (!vmm__tx_guest_ea(t, mo, 0, &ea)) return false;
  return tx_encode_window(t, mo, ea.base, ea.index, (uint8_t)ea.scale, (uint32_t)ea.disp);
}

/* Fallback for instructions that would grow past 15 bytes, and for gathers without a base:
 * the address (for a gather, its scalar part) goes to a scratch register first and the copy
 * addresses %gs:(scratch32) (plus the vector index). */
bool vmm__tx_copy_mem_scratch(struct bt_tx *t, const ZydisDecodedOperand *mo) {
  const ZydisDecodedInstruction *z = t->z;
  int s = pick_scratch(regs_used(z, t->ops));
  if (s < 0 || (s & 7) == 4 || (s & 7) == 5) return false;
  bool vsib = mo->mem.type == ZYDIS_MEMOP_TYPE_VSIB;
  struct bt_ea ea;
  if (vsib ? !tx_vsib_scalar(t, mo, &ea) : !vmm__tx_guest_ea(t, mo, 0, &ea)) return false;
  size_t mark = t->b.len;
  bt_e_store(&t->b, (unsigned)s, bt_ea_ctrl(spill((unsigned)s)));
  /* lea (32-bit addressing, 32-bit result) */
  ea.gs = false;
  static const uint8_t lea[] = {0x8d};
  bt_emit_rm(&t->b, 0, lea, 1, (unsigned)s, &ea);
  vmm__tx_map(t, 1u << s);
  if (!tx_encode_window(t, mo, s, vsib ? -2 : -1, 1, 0)) {
    t->b.len = mark;
    if (t->v->nmaps) t->v->nmaps--;
    return false;
  }
  bt_e_load(&t->b, (unsigned)s, bt_ea_ctrl(spill((unsigned)s)));
  return true;
}

/* ---- stack ---- */

/* A pending RSP offset stays within this (the stores' displacements stay small). */
#define BT_RSP_DELTA_MAX 512

/* push of a register (size 2 or 8). A 64-bit push of a register other than RSP stores at the
 * pending offset and leaves the RSP update pending too (the translate loop decides). */
static void tx_push_reg(struct bt_tx *t, unsigned reg, unsigned size) {
  if (t->rsp_delta < -BT_RSP_DELTA_MAX) vmm__tx_sync_rsp(t);
  bt_e_mov_sized(&t->b, reg, tx_stack(t, t->rsp_delta - (int32_t)size), size, true);
  if (size == 8 && reg != BT_RSP) t->rsp_delta -= 8;
  else bt_e_lea_rsp(&t->b, -(int32_t)size);
}

/* Stores a 64-bit constant below the guest's RSP and moves RSP there, applying a pending
 * offset in the same lea; used by CALL. */
static void tx_push_const(struct bt_tx *t, uint64_t val) {
  int32_t d = t->rsp_delta;
  if ((int64_t)val >= INT32_MIN && (int64_t)val <= INT32_MAX) {
    bt_e_store_imm(&t->b, tx_stack(t, d - 8), (uint32_t)val, 8);
  } else {
    bt_e_store(&t->b, BT_RAX, bt_ea_ctrl(spill(BT_RAX)));
    bt_e_mov_imm64(&t->b, BT_RAX, val);
    vmm__tx_map(t, 1u << BT_RAX);
    bt_e_store(&t->b, BT_RAX, tx_stack(t, d - 8));
    bt_e_load(&t->b, BT_RAX, bt_ea_ctrl(spill(BT_RAX)));
  }
  bt_e_lea_rsp(&t->b, d - 8);
  t->rsp_delta = 0;
}

bool vmm__tx_push(struct bt_tx *t) {
  const ZydisDecodedInstruction *z = t->z;
  const ZydisDecodedOperand *o = &t->ops[0];
  unsigned size = z->operand_width / 8;
  if (size != 2 && size != 8) return false;
  if (o->type == ZYDIS_OPERAND_TYPE_REGISTER) {
    int r = vmm__tx_gpr_num(o->reg.value);
    if (r < 0) {
      vmm__tx_helper(t, BT_H_SEG); /* push fs/gs */
      return true;
    }
    tx_push_reg(t, (unsigned)r, size);
    return true;
  }
  if (o->type == ZYDIS_OPERAND_TYPE_IMMEDIATE) {
    bt_e_store_imm(&t->b, tx_stack(t, -(int32_t)size), (uint32_t)o->imm.value.s, size);
    bt_e_lea_rsp(&t->b, -(int32_t)size);
    return true;
  }
  if (o->type == ZYDIS_OPERAND_TYPE_MEMORY) {
    struct bt_ea ea;
    int s = pick_scratch(regs_used(z, t->ops));
    if (s < 0 || !vmm__tx_guest_ea(t, o, 0, &ea)) return false;
    bt_e_store(&t->b, (unsigned)s, bt_ea_ctrl(spill((unsigned)s)));
    vmm__tx_map(t, 1u << s);
    bt_e_mov_sized(&t->b, (unsigned)s, ea, size, false);
    vmm__tx_map(t, 1u << s);
    bt_e_mov_sized(&t->b, (unsigned)s, tx_stack(t, -(int32_t)size), size, true);
    bt_e_load(&t->b, (unsigned)s, bt_ea_ctrl(spill((unsigned)s)));
    bt_e_lea_rsp(&t->b, -(int32_t)size);
    return true;
  }
  return false;
}

bool vmm__tx_pop(struct bt_tx *t) {
  const ZydisDecodedInstruction *z = t->z;
  const ZydisDecodedOperand *o = &t->ops[0];
  unsigned size = z->operand_width / 8;
  if (size != 2 && size != 8) return false;
  if (o->type == ZYDIS_OPERAND_TYPE_REGISTER) {
    int r = vmm__tx_gpr_num(o->reg.value);
    if (r < 0) {
      vmm__tx_helper(t, BT_H_SEG);
      return true;
    }
    if (t->rsp_delta > BT_RSP_DELTA_MAX) vmm__tx_sync_rsp(t);
    bt_e_mov_sized(&t->b, (unsigned)r, tx_stack(t, t->rsp_delta), size, false);
    if (size == 8 && r != BT_RSP) t->rsp_delta += 8;
    else if (r != BT_RSP) bt_e_lea_rsp(&t->b, (int32_t)size);
    return true;
  }
  if (o->type == ZYDIS_OPERAND_TYPE_MEMORY) {
    /* The destination address is computed with RSP already incremented. */
    struct bt_ea ea;
    int32_t extra = vmm__tx_gpr_num(o->mem.base) == BT_RSP ? (int32_t)size : 0;
    int s = pick_scratch(regs_used(z, t->ops));
    if (s < 0 || !vmm__tx_guest_ea(t, o, extra, &ea)) return false;
    bt_e_store(&t->b, (unsigned)s, bt_ea_ctrl(spill((unsigned)s)));
    vmm__tx_map(t, 1u << s);
    bt_e_mov_sized(&t->b, (unsigned)s, tx_stack(t, 0), size, false);
    vmm__tx_map(t, 1u << s);
    bt_e_mov_sized(&t->b, (unsigned)s, ea, size, true);
    bt_e_load(&t->b, (unsigned)s, bt_ea_ctrl(spill((unsigned)s)));
    bt_e_lea_rsp(&t->b, (int32_t)size);
    return true;
  }
  return false;
}

/* ---- control flow ---- */

static void tx_indirect_target(struct bt_tx *t, const ZydisDecodedOperand *o, bool *ok) {
  /* rdx = target; rcx and rdx are spilled first so the operand sees guest values. */
  bt_e_store(&t->b, BT_RCX, bt_ea_ctrl(spill(BT_RCX)));
  bt_e_store(&t->b, BT_RDX, bt_ea_ctrl(spill(BT_RDX)));
  *ok = true;
  if (o->type == ZYDIS_OPERAND_TYPE_REGISTER) {
    int r = vmm__tx_gpr_num(o->reg.value);
    if (r < 0 || o->size != 64) {
      *ok = false;
      return;
    }
    if (r != BT_RDX) bt_e_mov_rr(&t->b, BT_RDX, (unsigned)r);
  } else if (o->type == ZYDIS_OPERAND_TYPE_MEMORY && o->size == 64) {
    struct bt_ea ea;
    if (!vmm__tx_guest_ea(t, o, 0, &ea)) {
      *ok = false;
      return;
    }
    vmm__tx_map(t, (1u << BT_RCX) | (1u << BT_RDX));
    bt_e_load(&t->b, BT_RDX, ea);
  } else {
    *ok = false;
  }
}

bool vmm__tx_branch(struct bt_tx *t) {
  const ZydisDecodedInstruction *z = t->z;
  const ZydisDecodedOperand *o = &t->ops[0];
  uint64_t next = t->rip + z->length;
  ZydisMnemonic m = z->mnemonic;
  uint64_t target = 0;
  bool rel = o->type == ZYDIS_OPERAND_TYPE_IMMEDIATE && o->imm.is_relative;
  if (rel && ZYAN_FAILED(ZydisCalcAbsoluteAddress(z, o, t->rip, &target))) return false;
  t->ended = true;
  switch (m) {
    case ZYDIS_MNEMONIC_JMP:
      if (rel) {
        vmm__tx_jmp_to(t, target);
        return true;
      }
      if (o->type == ZYDIS_OPERAND_TYPE_POINTER ||
          (o->type == ZYDIS_OPERAND_TYPE_MEMORY && o->size != 64)) {
        vmm__tx_helper_end(t, BT_H_FAR);
        return true;
      }
      {
        bool ok;
        tx_indirect_target(t, o, &ok);
        if (!ok) return false;
        if (t->v->indirect_slots) tx_ret_cache(t); /* the RET slots, for indirect jumps */
        else tx_lookup(t);
      }
      return true;
    case ZYDIS_MNEMONIC_CALL:
      if (rel) {
        tx_push_const(t, next);
        if (tx_shadow_ok(t, next)) tx_shadow_call(t, next);
        vmm__tx_jmp_to(t, target);
        return true;
      }
      if (o->type == ZYDIS_OPERAND_TYPE_POINTER ||
          (o->type == ZYDIS_OPERAND_TYPE_MEMORY && o->size != 64)) {
        vmm__tx_helper_end(t, BT_H_FAR);
        return true;
      }
      {
        bool ok;
        tx_indirect_target(t, o, &ok);
        if (!ok) return false;
        uint32_t fix = (1u << BT_RCX) | (1u << BT_RDX);
        if ((int64_t)next >= INT32_MIN && (int64_t)next <= INT32_MAX) {
          vmm__tx_map(t, fix);
          bt_e_store_imm(&t->b, tx_stack(t, -8), (uint32_t)next, 8);
        } else {
          bt_e_mov_imm64(&t->b, BT_RCX, next);
          vmm__tx_map(t, fix);
          bt_e_store(&t->b, BT_RCX, tx_stack(t, -8));
        }
        bt_e_lea_rsp(&t->b, -8);
        if (tx_shadow_ok(t, next)) tx_shadow_call(t, next);
        if (tx_shadow_ok(t, next) || !t->v->indirect_slots) tx_lookup(t);
        else tx_ret_cache(t);
      }
      return true;
    case ZYDIS_MNEMONIC_RET: {
      if (z->operand_width != 64) return false;
      int32_t pop = 8;
      if (z->operand_count_visible > 0 && o->type == ZYDIS_OPERAND_TYPE_IMMEDIATE)
        pop += (int32_t)(o->imm.value.u & 0xffff);
      bt_e_store(&t->b, BT_RCX, bt_ea_ctrl(spill(BT_RCX)));
      bt_e_store(&t->b, BT_RDX, bt_ea_ctrl(spill(BT_RDX)));
      vmm__tx_map(t, (1u << BT_RCX) | (1u << BT_RDX));
      /* A pending offset of the pops before goes into the same lea. */
      bt_e_load(&t->b, BT_RDX, tx_stack(t, t->rsp_delta));
      bt_e_lea_rsp(&t->b, pop + t->rsp_delta);
      t->rsp_delta = 0;
      if (t->v->use_rsb && !(t->mode & 4)) {
        /* Through the return cache: a host RET to the continuation of the matching CALL. */
        bt_e_store(&t->b, BT_RSP, bt_ea_ctrl(BT_C_SAVE_RSP));
        bt_e_load(&t->b, BT_RSP, bt_ea_ctrl(BT_C_SHADOW_SP));
        bt_e8(&t->b, 0xc3);
        return true;
      }
      tx_ret_cache(t);
      return true;
    }
    case ZYDIS_MNEMONIC_JRCXZ:
    case ZYDIS_MNEMONIC_JECXZ:
    case ZYDIS_MNEMONIC_LOOP:
    case ZYDIS_MNEMONIC_LOOPE:
    case ZYDIS_MNEMONIC_LOOPNE: {
      if (!rel) return false;
      /* Only rel8 forms exist: jump over the fall-through jmp to a taken jmp. */
      uint8_t op[4];
      unsigned n = 0;
      for (unsigned i = 0; i < z->raw.prefix_count; i++)
        if (t->bytes[i] == 0x67 || (t->bytes[i] & 0xf0) == 0x40) op[n++] = t->bytes[i];
      op[n++] = t->bytes[z->raw.prefix_count];
      op[n++] = 5;
      bt_ebytes(&t->b, op, n);
      vmm__tx_jmp_to(t, next);
      vmm__tx_jmp_to(t, target);
      return true;
    }
    default:
      /* Jcc: a side exit; the block goes on with the fall-through path while exits remain. */
      if (!rel) return false;
      {
        uint32_t at = bt_e_jcc_rel32(&t->b, z->opcode & 0x0f, 0);
        tx_exit_branch(t, at, target);
        if (t->nexits + 2 > BT_MAX_EXITS || (t->mode & 4)) {
          vmm__tx_jmp_to(t, next);
        } else {
          t->ended = false;
        }
      }
      return true;
  }
}

/* ---- strings ---- */

bool vmm__tx_string(struct bt_tx *t) {
  const ZydisDecodedInstruction *z = t->z;
  const uint8_t *in = t->bytes;
  bool uses_si = false, uses_di = false;
  switch (z->mnemonic) {
    case ZYDIS_MNEMONIC_MOVSB: case ZYDIS_MNEMONIC_MOVSW: case ZYDIS_MNEMONIC_MOVSD:
    case ZYDIS_MNEMONIC_MOVSQ: case ZYDIS_MNEMONIC_CMPSB: case ZYDIS_MNEMONIC_CMPSW:
    case ZYDIS_MNEMONIC_CMPSD: case ZYDIS_MNEMONIC_CMPSQ:
      uses_si = uses_di = true;
      break;
    case ZYDIS_MNEMONIC_STOSB: case ZYDIS_MNEMONIC_STOSW: case ZYDIS_MNEMONIC_STOSD:
    case ZYDIS_MNEMONIC_STOSQ: case ZYDIS_MNEMONIC_SCASB: case ZYDIS_MNEMONIC_SCASW:
    case ZYDIS_MNEMONIC_SCASD: case ZYDIS_MNEMONIC_SCASQ:
      uses_di = true;
      break;
    case ZYDIS_MNEMONIC_LODSB: case ZYDIS_MNEMONIC_LODSW: case ZYDIS_MNEMONIC_LODSD:
    case ZYDIS_MNEMONIC_LODSQ:
      uses_si = true;
      break;
    default: return false;
  }
  /* 32-bit addressing and FS/GS sources change which bytes are touched: not supported. */
  if (z->attributes & (ZYDIS_ATTRIB_HAS_ADDRESSSIZE | ZYDIS_ATTRIB_HAS_SEGMENT_FS |
                       ZYDIS_ATTRIB_HAS_SEGMENT_GS))
    return false;
  struct bt_buf *b = &t->b;
  bt_e_store(b, BT_RAX, bt_ea_ctrl(spill(BT_RAX)));
  bt_e_load(b, BT_RAX, bt_ea_ctrl(BT_C_WINDOW));
  if (uses_di) {
    bt_e_mov_rr32(b, BT_RDI, BT_RDI);
    bt_e_lea(b, BT_RDI, (struct bt_ea){.base = BT_RDI, .index = BT_RAX, .scale = 1});
  }
  if (uses_si) {
    bt_e_mov_rr32(b, BT_RSI, BT_RSI);
    bt_e_lea(b, BT_RSI, (struct bt_ea){.base = BT_RSI, .index = BT_RAX, .scale = 1});
  }
  bt_e_load(b, BT_RAX, bt_ea_ctrl(spill(BT_RAX)));
  vmm__tx_map(t, (uses_si ? BT_FIX_RSI_HOST : 0) | (uses_di ? BT_FIX_RDI_HOST : 0));
  for (unsigned i = 0; i < z->length; i++)
    if (!(i < z->raw.prefix_count && vmm__tx_is_seg_or_asz(in[i]))) bt_e8(b, in[i]);
  /* The window is 4 GiB aligned: the low half of the host pointer is the guest address. */
  if (uses_di) bt_e_mov_rr32(b, BT_RDI, BT_RDI);
  if (uses_si) bt_e_mov_rr32(b, BT_RSI, BT_RSI);
  return true;
}

