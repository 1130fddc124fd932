/* Shared by the bt emulation files: guest exceptions raised by emulated instructions. */
#ifndef LIBVMM_BT_PRIV_H
#define LIBVMM_BT_PRIV_H

#include "bt.h"

/* An exception an emulated instruction raises. */
struct bt_exc {
  uint8_t vec;
  bool has_err;
  uint32_t err;
  uint64_t cr2;
};

/* Results of emulating one instruction. */
enum bt_emu_result {
  BT_EMU_NEXT = 0,  /* Done; execution continues with the next instruction in the block. */
  BT_EMU_JUMP,      /* Done; execution continues at ctrl->rip (the block must be left). */
  BT_EMU_EXC,       /* Raise v->exc at the instruction. */
  BT_EMU_OUT,       /* v->out holds an exit for the caller. */
  BT_EMU_ERROR,     /* Host failure: v->run_error holds the code. */
};

#define BT_GP0(e) (*(e) = (struct bt_exc){.vec = 13, .has_err = true, .err = 0}, BT_EMU_EXC)
#define BT_UD(e) (*(e) = (struct bt_exc){.vec = 6}, BT_EMU_EXC)


/* Guest memory for emulation: ok, or an exception in *e (#PF with cr2, or #GP). Returns
 * false on failure; *e is then set (vector 255 for a host-side fault: not RAM). */
bool vmm__bt_read_mem(struct bt_vcpu *v, uint64_t la, void *buf, size_t len, bool user,
                 struct bt_exc *e);
bool vmm__bt_write_mem(struct bt_vcpu *v, uint64_t la, const void *buf, size_t len, bool user,
                  struct bt_exc *e);
/* Loads a segment descriptor for a selector; #GP(sel) / #NP(sel) on failure. */
bool vmm__bt_load_seg(struct bt_vcpu *v, uint16_t sel, vmm_segment_t *seg, struct bt_exc *e);
void vmm__bt_set_cpl_segments(struct bt_vcpu *v, const vmm_segment_t *cs, const vmm_segment_t *ss);

/* bt_excp.c */
int vmm__bt_deliver(struct bt_vcpu *v, unsigned vec, bool has_err, uint32_t err, bool soft,
               uint64_t ret_rip, struct bt_exc *e);
enum bt_emu_result vmm__bt_emu_iret(struct bt_vcpu *v, const ZydisDecodedInstruction *z,
                               struct bt_exc *e);
enum bt_emu_result vmm__bt_emu_int(struct bt_vcpu *v, const struct bt_desc *d,
                              const ZydisDecodedInstruction *z, const ZydisDecodedOperand *ops,
                              struct bt_exc *e);
enum bt_emu_result vmm__bt_emu_syscall(struct bt_vcpu *v, const struct bt_desc *d, struct bt_exc *e);
enum bt_emu_result vmm__bt_emu_sysret(struct bt_vcpu *v, const ZydisDecodedInstruction *z,
                                 struct bt_exc *e);
enum bt_emu_result vmm__bt_emu_far(struct bt_vcpu *v, const struct bt_desc *d,
                              const ZydisDecodedInstruction *z, const ZydisDecodedOperand *ops,
                              struct bt_exc *e);
enum bt_emu_result vmm__bt_emu_seg(struct bt_vcpu *v, const struct bt_desc *d,
                              const ZydisDecodedInstruction *z, const ZydisDecodedOperand *ops,
                              struct bt_exc *e);
uint64_t vmm__bt_operand_la(struct bt_vcpu *v, const struct bt_desc *d,
                       const ZydisDecodedInstruction *z, const ZydisDecodedOperand *op);

/* bt_io.c */
enum bt_emu_result vmm__bt_emu_io(struct bt_vcpu *v, struct bt_exc *e);
enum bt_emu_result vmm__bt_emu_hypercall(struct bt_vcpu *v, const struct bt_desc *d);

#endif /* LIBVMM_BT_PRIV_H */
