/* What both compiled kernels (convert/_fused.c, quant/_q8_0.c) need to give the same bits on every CPU.

   No floating-point contraction: a fused multiply-add would change result bits on CPUs that have
   one. setup.py also passes -ffp-contract=off, which GCC needs (it ignores this pragma).

   On x86-64 with glibc (ifunc) a CLONES loop is compiled twice, for AVX2 and for the baseline
   (SSE2), and the loader picks one for the CPU it runs on: AVX2 takes about 0.6 of the time.
   Neither uses FMA (a separate feature), so both give the same bits. */
#ifndef EXPO_GGUF_KERNELS_H
#define EXPO_GGUF_KERNELS_H

#pragma STDC FP_CONTRACT OFF

#if defined(__x86_64__) && defined(__GLIBC__) && defined(__GNUC__) && (!defined(__clang__) || __clang_major__ >= 14)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

#endif
