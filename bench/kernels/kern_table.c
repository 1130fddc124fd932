#include "kernels.h"

const struct kern_desc kern_table[] = {
    {"int", kern_int, 60000},
    {"mem", kern_mem, 20},
    {"call", kern_call, 400},
};
const unsigned kern_count = sizeof(kern_table) / sizeof(kern_table[0]);
