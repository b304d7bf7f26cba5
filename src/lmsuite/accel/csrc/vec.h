/* 8 floats at a time with GCC/Clang vector extensions (AVX on x86-64, NEON pairs on ARM). */
#ifndef LMSUITE_VEC_H
#define LMSUITE_VEC_H

typedef float v8 __attribute__((vector_size(32), aligned(4)));
typedef int v8i __attribute__((vector_size(32), aligned(4)));

static inline v8 ld(const float *p) { return *(const v8 *)p; }
static inline void st(float *p, v8 v) { *(v8 *)p = v; }
static inline v8 splat(float x) { return (v8){0} + x; }
static inline v8 vselect(v8i mask, v8 a, v8 b) { return (v8)(((v8i)a & mask) | ((v8i)b & ~mask)); }
/* A store that bypasses the cache (p 32-byte aligned), for data not read again soon; call
   stream_fence() before others read it. A plain store where there is no such instruction. */
#ifdef __AVX__
#include <immintrin.h>
static inline void stream(float *p, v8 v) { _mm256_stream_ps(p, (__m256)v); }
static inline void stream_fence(void) { _mm_sfence(); }
#else
static inline void stream(float *p, v8 v) { st(p, v); }
static inline void stream_fence(void) {}
#endif

/* Keep a loaded vector in registers. Without this the compiler folds the load into each
   multiply-add that uses the vector, one load per use, and the loads, not the multiply-adds,
   set the pace (on x86-64; elsewhere it does nothing). */
static inline void in_register(v8 *v) {
#if defined(__x86_64__) && defined(__AVX__)
    __asm__("" : "+x"(*v));
#else
    (void)v;
#endif
}

static inline float hsum(v8 v) {
    float s = 0;
    for (int l = 0; l < 8; l++) s += v[l];
    return s;
}
static inline float hmax(v8 v) {
    float m = v[0];
    for (int l = 1; l < 8; l++) m = v[l] > m ? v[l] : m;
    return m;
}

/* e^x for x <= 88 (below -87.3 it returns e^-87.3, about 1e-38): 2^n * p(r) with Cephes'
   polynomial, within 2 ulp. */
static inline v8 vexp(v8 x) {
    x = vselect(x < splat(-87.3f), splat(-87.3f), x);
    v8 fx = x * 1.44269504088896341f + 128.5f; /* positive: truncation is floor */
    v8i n = __builtin_convertvector(fx, v8i) - 128;
    v8 fn = __builtin_convertvector(n, v8);
    v8 r = x - fn * 0.693359375f + fn * 2.12194440e-4f;
    v8 r2 = r * r;
    v8 p = splat(1.9875691500E-4f);
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r2 + r + 1.0f;
    v8i bits = (n + 127) << 23;
    return p * (v8)bits;
}

#endif
