/* Compute kernels shared by the benchmarks: each builds as a static Linux executable (native
 * flavor, reports through write(2)) and as a libvmm guest (reports through the console
 * hypercall). They use no library: the same object code runs in both flavors. */
#ifndef LIBVMM_BENCH_KERNELS_H
#define LIBVMM_BENCH_KERNELS_H

#include <stdint.h>

/* Integer and branchy work in the spirit of CoreMark: linked lists, small matrices, a state
 * machine and a CRC. Returns a checksum. */
uint64_t kern_int(uint64_t iterations);
/* Memory-bound work over a 48 MiB array: streaming read-modify-write and strided gathers. */
uint64_t kern_mem(uint64_t iterations);
/* Call-heavy work: recursion, calls through function-pointer tables, small leaf functions. */
uint64_t kern_call(uint64_t iterations);

/* Monotonic nanoseconds, from the flavor's shim: clock_gettime natively, a hypercall to the
 * benchmark program (KERN_HC_CLOCK) in a guest. */
uint64_t kern_now_ns(void);
#define KERN_HC_CLOCK 65 /* VMM_HC_USER_BASE + 1 */

struct kern_desc {
  const char *name;
  uint64_t (*fn)(uint64_t);
  uint64_t default_iterations;
};
extern const struct kern_desc kern_table[];
extern const unsigned kern_count;

#endif
