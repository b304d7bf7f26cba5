/* The two LayerNorms of a parallel block, forward and backward, for CPU in fp32.

   In GPT-NeoX's parallel block, attention and the MLP each normalize the same residual rows
   with their own weights. Both share the row's mean and 1/std, so one pass reads each row once
   and writes both outputs; the backward pass is linear in the gradient of the normalized row,
   so the two branches' gradients combine before one LayerNorm backward, and x's gradient
   through both comes out of one pass instead of two and an addition.

   Rows are split among PyTorch's OpenMP threads, a row computed whole by one thread. The
   weight and bias gradients are summed over fixed chunks of rows, then over the chunks in
   order, so results do not depend on the number of threads. D, the row width, is a multiple
   of 8.
*/
#include <math.h>

#include "vec.h"

#define CHUNK 64 /* rows per partial sum of the weight and bias gradients */

/* x (N, D) -> y1 = xhat * w1 + b1 and y2 = xhat * w2 + b2, xhat = (x - mean) * rstd per row;
   mean and rstd (N,) are kept for the backward pass. */
void layer_norm_pair_forward(const float *x, const float *w1, const float *b1, const float *w2,
                             const float *b2, float *y1, float *y2, float *mean, float *rstd,
                             long N, int D, float eps, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long i = 0; i < N; i++) {
        const float *xi = x + i * D;
        v8 acc = {0};
        for (int j = 0; j < D; j += 8) acc += ld(xi + j);
        float m = hsum(acc) / (float)D;
        v8 vm = splat(m), sq = {0};
        for (int j = 0; j < D; j += 8) {
            v8 c = ld(xi + j) - vm;
            sq += c * c;
        }
        float r = 1.0f / sqrtf(hsum(sq) / (float)D + eps);
        v8 vr = splat(r);
        float *o1 = y1 + i * D, *o2 = y2 + i * D;
        for (int j = 0; j < D; j += 8) {
            v8 xh = (ld(xi + j) - vm) * vr;
            st(o1 + j, xh * ld(w1 + j) + ld(b1 + j));
            st(o2 + j, xh * ld(w2 + j) + ld(b2 + j));
        }
        mean[i] = m;
        rstd[i] = r;
    }
}

/* The gradients g1, g2 (N, D) of layer_norm_pair_forward's y1, y2 -> dx (N, D) and grads
   (4, D): those of w1, b1, w2, b2. partial holds ceil(N / CHUNK) * 4 * D floats of scratch. */
void layer_norm_pair_backward(const float *x, const float *w1, const float *w2,
                              const float *mean, const float *rstd, const float *g1,
                              const float *g2, float *dx, float *grads, float *partial, long N,
                              int D, int threads) {
    long chunks = (N + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long c = 0; c < chunks; c++) {
        float *dw1 = partial + c * 4 * D, *db1 = dw1 + D, *dw2 = db1 + D, *db2 = dw2 + D;
        for (int j = 0; j < 4 * D; j++) dw1[j] = 0.0f;
        long end = (c + 1) * CHUNK < N ? (c + 1) * CHUNK : N;
        for (long i = c * CHUNK; i < end; i++) {
            const float *xi = x + i * D, *a = g1 + i * D, *b = g2 + i * D;
            v8 vm = splat(mean[i]), vr = splat(rstd[i]), s1 = {0}, s2 = {0};
            for (int j = 0; j < D; j += 8) {
                v8 xh = (ld(xi + j) - vm) * vr, ga = ld(a + j), gb = ld(b + j);
                v8 dxh = ga * ld(w1 + j) + gb * ld(w2 + j);
                s1 += dxh;
                s2 += dxh * xh;
                st(dw1 + j, ld(dw1 + j) + ga * xh);
                st(db1 + j, ld(db1 + j) + ga);
                st(dw2 + j, ld(dw2 + j) + gb * xh);
                st(db2 + j, ld(db2 + j) + gb);
            }
            v8 m1 = splat(hsum(s1) / (float)D), m2 = splat(hsum(s2) / (float)D);
            float *o = dx + i * D;
            for (int j = 0; j < D; j += 8) {
                v8 xh = (ld(xi + j) - vm) * vr;
                v8 dxh = ld(a + j) * ld(w1 + j) + ld(b + j) * ld(w2 + j);
                st(o + j, vr * (dxh - m1 - xh * m2));
            }
        }
    }
    for (int j = 0; j < 4 * D; j++) grads[j] = 0.0f;
    for (long c = 0; c < chunks; c++)
        for (int j = 0; j < 4 * D; j += 8)
            st(grads + j, ld(grads + j) + ld(partial + c * 4 * D + j));
}
