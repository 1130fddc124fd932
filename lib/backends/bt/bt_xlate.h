/* The translator's private state, shared by vmm__bt_translate.c (classification, blocks) and
 * bt_xlate.c (the rewrite families: stack, branches, strings, memory operands, lookups). */
#ifndef LIBVMM_BT_XLATE_H
#define LIBVMM_BT_XLATE_H

#include "bt.h"
#include "bt_emit.h"

#define BT_MAX_INSNS 64
#define BT_INSN_ROOM 512 /* Worst-case host bytes for one guest instruction, stubs included. */

struct bt_tx {
  struct bt_vcpu *v;
  struct bt_buf b;
  uint64_t start, rip;
  uint8_t mode;
  unsigned cpl;
  uint8_t flags;
  uint32_t map_first;
  struct { uint32_t at; uint64_t target; } exits[BT_MAX_EXITS];
  unsigned nexits;
  bool ended;
  bool failed;
  /* Guest RSP minus host RSP: runs of register pushes and pops address the stack at this
   * offset and move RSP once, when an instruction that needs it comes (vmm__tx_sync_rsp). */
  int32_t rsp_delta;
  uint16_t ninsn;
  uint64_t pa[2];
  unsigned npages;
  uint64_t cur_pa; /* Guest-physical page of the instruction being translated. */
  const ZydisDecodedInstruction *z;
  const ZydisDecodedOperand *ops;
  const uint8_t *bytes;
};

static inline uint32_t spill(unsigned reg) { return BT_C_SPILL + reg * 8; }
/* Guest memory is %gs:(32-bit address) in the GS window, (32-bit address) in the low one. */
static inline bool tx_gs(const struct bt_tx *t) { return !t->v->low; }
static inline struct bt_ea tx_stack(const struct bt_tx *t, int32_t disp) {
  return bt_ea_stack(disp, tx_gs(t));
}

void vmm__tx_map(struct bt_tx *t, uint32_t fixup);
/* Applies a pending RSP offset (lea, which keeps the flags) and maps what follows. */
void vmm__tx_sync_rsp(struct bt_tx *t);
void vmm__tx_jmp_to(struct bt_tx *t, uint64_t target);
void vmm__tx_helper(struct bt_tx *t, enum bt_helper_kind kind);
void vmm__tx_helper_end(struct bt_tx *t, enum bt_helper_kind kind);
int vmm__tx_gpr_num(ZydisRegister r);
bool vmm__tx_branch(struct bt_tx *t);
bool vmm__tx_push(struct bt_tx *t);
bool vmm__tx_pop(struct bt_tx *t);
bool vmm__tx_string(struct bt_tx *t);
bool vmm__tx_copy_mem(struct bt_tx *t, const ZydisDecodedOperand *mo);
bool vmm__tx_copy_mem_scratch(struct bt_tx *t, const ZydisDecodedOperand *mo);
bool vmm__tx_guest_ea(struct bt_tx *t, const ZydisDecodedOperand *op, int32_t extra, struct bt_ea *ea);
bool vmm__tx_is_seg_or_asz(uint8_t b);

#endif /* LIBVMM_BT_XLATE_H */
