// Compiles the row loop DYSAMPLE_ROWS (a header, with transpose_cl.h before it) twice: as it
// is (namespace dysample::portable) and, on x86-64 with GCC, under target("avx2")
// (dysample::avx2), chosen at run time by use_avx2(). Same arithmetic, same results, in both.
#define DYSAMPLE_ISA portable
#include "transpose_cl.h"
#include DYSAMPLE_ROWS
#undef DYSAMPLE_ISA

#ifdef DYSAMPLE_AVX2_DISPATCH
#pragma GCC push_options
#pragma GCC target("avx2")
#define DYSAMPLE_ISA avx2
#define DYSAMPLE_ISA_AVX2 1
#include "transpose_cl.h"
#include DYSAMPLE_ROWS
#undef DYSAMPLE_ISA_AVX2
#undef DYSAMPLE_ISA
#pragma GCC pop_options
#endif
