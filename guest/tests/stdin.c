/* Reads the serial port (COM1, polled) until a 'Q' and prints how many bytes came before it and
 * their sum: a host that drops input the UART had no room for shows up as a short count. */
#include "vmm_guest.h"

#define COM1 0x3f8
#define LSR_DATA_READY 0x01

int main(struct vmm_boot_info *bi) {
  (void)bi;
  uint32_t n = 0, sum = 0;
  for (;;) {
    while (!(inb(COM1 + 5) & LSR_DATA_READY)) {
    }
    uint8_t c = inb(COM1);
    if (c == 'Q') break;
    n++;
    sum += c;
  }
  vmm_printf("stdin bytes=%u sum=%u\n", n, sum);
  return 0;
}
