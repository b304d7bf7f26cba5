/* Causal self-attention with rotary position embedding, forward and backward, for CPU in fp32.

   One call handles a whole layer: it reads the fused QKV projection (batch, seq, heads * 3 *
   HD, laid out per head as [q | k | v] as in GPT-NeoX), rotates q and k, attends causally, and
   writes the heads' outputs side by side (batch, seq, heads * HD), ready for the output
   projection. The backward pass writes the gradient in the fused QKV layout. This replaces the
   transposes, slices, concatenations and copies that rotary and attention otherwise cost per
   layer, which on a CPU weigh as much as the attention arithmetic when heads are small.

   The softmax probabilities are kept for the backward pass (batch * heads * seq^2 floats; none
   when no backward pass follows), so it is meant for short sequences. Each (sequence, head) pair is computed whole by one thread,
   so results do not depend on the number of threads. HD, the head dimension, is fixed at
   compile time (a multiple of 8).
*/
#include <stdlib.h>
#include <string.h>

#include "vec.h"

#ifndef HD
#error "compile with -DHD=<head dim>"
#endif
#define R 4 /* rows per block: the helpers below hold 4 rows of accumulators */
#if HD % 8
#error "HD must be a multiple of 8"
#endif
#define NV (HD / 8)

typedef struct {
    const float *qkv, *cos, *sin, *dres;
    float *res, *probs, *dqkv;
    int B, T, H, width;
    float scale;
    int first, last; /* (b, h) pairs of this thread */
    int *failed;     /* set when a thread cannot get its scratch memory */
} job_t;

static inline int tpad(int T) { return (T + 7) / 8 * 8; } /* rows padded to whole vectors */

/* q, k, v of head h of sequence b into padded (T8 x HD) buffers, rotary applied to q and k,
   q scaled. */
static void load_head(const job_t *a, int b, int h, float *q, float *k, float *v) {
    int T = a->T, T8 = tpad(T), H = a->H, width = a->width, half = width / 2;
    float scale = a->scale;
    for (int i = 0; i < T; i++) {
        const float *src = a->qkv + ((size_t)b * T + i) * 3 * H * HD + (size_t)h * 3 * HD;
        float *qi = q + i * HD, *ki = k + i * HD, *vi = v + i * HD;
        for (int c = 0; c < NV; c++) {
            st(qi + 8 * c, ld(src + 8 * c) * scale);
            st(ki + 8 * c, ld(src + HD + 8 * c));
            st(vi + 8 * c, ld(src + 2 * HD + 8 * c));
        }
        const float *cs = a->cos + (size_t)i * width, *sn = a->sin + (size_t)i * width;
        for (int d = 0; d < width; d++) { /* x * cos + rotate_half(x) * sin */
            float cq = src[d], ck = src[HD + d];
            float rq = d < half ? -src[d + half] : src[d - half];
            float rk = d < half ? -src[HD + d + half] : src[HD + d - half];
            qi[d] = (cq * cs[d] + rq * sn[d]) * scale;
            ki[d] = ck * cs[d] + rk * sn[d];
        }
    }
    size_t rest = (size_t)(T8 - T) * HD * sizeof(float);
    memset(q + T * HD, 0, rest);
    memset(k + T * HD, 0, rest);
    memset(v + T * HD, 0, rest);
}

/* out[r][j] = x[i0 + r] . yT[:, j] for r < 4, j < n rounded up to 8  (yT: HD x T8).
   Two column vectors at a time: 8 independent sums hide the latency of the multiply-adds. */
static inline void rows_dot(const float *x, const float *yT, int T8, int i0, int n, float *out) {
    const float *xr = x + i0 * HD;
    int j = 0;
    for (; j + 8 < n; j += 16) {
        v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
        for (int c = 0; c < HD; c++) {
            v8 y = ld(yT + c * T8 + j), z = ld(yT + c * T8 + j + 8);
            float x0 = xr[c], x1 = xr[HD + c], x2 = xr[2 * HD + c], x3 = xr[3 * HD + c];
            a0 += x0 * y;
            a1 += x1 * y;
            a2 += x2 * y;
            a3 += x3 * y;
            b0 += x0 * z;
            b1 += x1 * z;
            b2 += x2 * z;
            b3 += x3 * z;
        }
        st(out + j, a0);
        st(out + T8 + j, a1);
        st(out + 2 * T8 + j, a2);
        st(out + 3 * T8 + j, a3);
        st(out + j + 8, b0);
        st(out + T8 + j + 8, b1);
        st(out + 2 * T8 + j + 8, b2);
        st(out + 3 * T8 + j + 8, b3);
    }
    for (; j < n; j += 8) {
        v8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (int c = 0; c < HD; c++) {
            v8 y = ld(yT + c * T8 + j);
            a0 += xr[c] * y;
            a1 += xr[HD + c] * y;
            a2 += xr[2 * HD + c] * y;
            a3 += xr[3 * HD + c] * y;
        }
        st(out + j, a0);
        st(out + T8 + j, a1);
        st(out + 2 * T8 + j, a2);
        st(out + 3 * T8 + j, a3);
    }
}

/* out[r] = sum_{first <= j < last} w[r * rs + j * js] * x[j] for r < 4  (x: T8 x HD rows).
   With w at row i0 of a T8 x T8 matrix, rs = T8, js = 1: rows i0 .. i0 + 3 of w times x;
   with w at column j0, rs = 1, js = T8: columns j0 .. j0 + 3, the transposed product. */
static inline void comb(const float *w, long rs, long js, const float *x, int first, int last,
                        float *out) {
    v8 a0[NV] = {0}, a1[NV] = {0}, a2[NV] = {0}, a3[NV] = {0};
    for (int j = first; j < last; j++) {
        const float *wj = w + j * js;
        float p0 = wj[0], p1 = wj[rs], p2 = wj[2 * rs], p3 = wj[3 * rs];
        for (int c = 0; c < NV; c++) {
            v8 xj = ld(x + j * HD + 8 * c);
            a0[c] += p0 * xj;
            a1[c] += p1 * xj;
            a2[c] += p2 * xj;
            a3[c] += p3 * xj;
        }
    }
    for (int c = 0; c < NV; c++) {
        st(out + 8 * c, a0[c]);
        st(out + HD + 8 * c, a1[c]);
        st(out + 2 * HD + 8 * c, a2[c]);
        st(out + 3 * HD + 8 * c, a3[c]);
    }
}

/* rows i0 .. i0 + 3 of w (T8 x T8) times x, over columns j < n */
static inline void rows_comb(const float *w, const float *x, int T8, int i0, int n, float *out) {
    comb(w + (size_t)i0 * T8, T8, 1, x, 0, n, out);
}

/* columns j0 .. j0 + 3 of w, transposed, times x, over rows i >= j0 (causal: w is 0 above) */
static inline void cols_comb(const float *w, const float *x, int T8, int j0, float *out) {
    comb(w + j0, 1, T8, x, j0, T8, out);
}

static void transpose(const float *x, int T8, float *xT) {
    for (int i = 0; i < T8; i++)
        for (int c = 0; c < HD; c++) xT[c * T8 + i] = x[i * HD + c];
}

static void *forward_job(void *arg) {
    const job_t *a = arg;
    int T = a->T, T8 = tpad(T), H = a->H;
    float *buf = malloc(sizeof(float) * ((size_t)T8 * HD * 4 + (size_t)R * T8));
    if (buf == NULL) {
        *a->failed = 1;
        return NULL;
    }
    float *q = buf, *k = q + T8 * HD, *v = k + T8 * HD, *kT = v + T8 * HD, *rows = kT + T8 * HD;
    float o[R][HD];
    for (int bh = a->first; bh < a->last; bh++) {
        int b = bh / H, h = bh % H;
        load_head(a, b, h, q, k, v);
        transpose(k, T8, kT);
        for (int i0 = 0; i0 < T8; i0 += R) {
            int n = i0 + R;
            /* this block's rows of P: kept for the backward pass, or scratch without one */
            float *P = a->probs ? a->probs + ((size_t)bh * T8 + i0) * T8 : rows;
            rows_dot(q, kT, T8, i0, n, P);
            for (int r = 0; r < R; r++) {
                float *p = P + (size_t)r * T8;
                int i = i0 + r;
                const v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
                v8 vmax = splat(-3.0e38f);
                for (int j = 0; j <= i; j += 8) { /* causal: columns j <= i */
                    v8 s = vselect((lane + j) <= i, ld(p + j), vmax);
                    vmax = vselect(s > vmax, s, vmax);
                }
                float m = hmax(vmax);
                v8 vsum = {0};
                int j = 0;
                for (; j <= i; j += 8) {
                    v8 e = (v8)((v8i)vexp(ld(p + j) - m) & ((lane + j) <= i));
                    vsum += e;
                    st(p + j, e);
                }
                for (; j < T8; j++) p[j] = 0;
                v8 inv = splat(1.0f / hsum(vsum));
                for (j = 0; j <= i; j += 8) st(p + j, ld(p + j) * inv);
            }
            rows_comb(P, v, T8, 0, n, &o[0][0]);
            for (int r = 0; r < R && i0 + r < T; r++)
                memcpy(a->res + ((size_t)b * T + i0 + r) * H * HD + (size_t)h * HD, o[r],
                       HD * sizeof(float));
        }
    }
    free(buf);
    return NULL;
}

static void *backward_job(void *arg) {
    const job_t *a = arg;
    int T = a->T, T8 = tpad(T), H = a->H, width = a->width, half = width / 2;
    float *buf = malloc(sizeof(float) * ((size_t)T8 * HD * 7 + (size_t)T8 * T8 + T8));
    if (buf == NULL) {
        *a->failed = 1;
        return NULL;
    }
    float *q = buf, *k = q + T8 * HD, *v = k + T8 * HD, *vT = v + T8 * HD, *dO = vT + T8 * HD,
          *dq = dO + T8 * HD, *dk = dq + T8 * HD, *dS = dk + T8 * HD, *D = dS + (size_t)T8 * T8;
    float blk[R][HD];
    for (int bh = a->first; bh < a->last; bh++) {
        int b = bh / H, h = bh % H;
        load_head(a, b, h, q, k, v);
        transpose(v, T8, vT);
        for (int i = 0; i < T; i++) { /* dO, and D_i = dO_i . O_i */
            const float *g = a->dres + ((size_t)b * T + i) * H * HD + (size_t)h * HD;
            const float *y = a->res + ((size_t)b * T + i) * H * HD + (size_t)h * HD;
            v8 acc = {0};
            for (int c = 0; c < NV; c++) {
                v8 gc = ld(g + 8 * c);
                st(dO + i * HD + 8 * c, gc);
                acc += gc * ld(y + 8 * c);
            }
            float s = 0;
            for (int l = 0; l < 8; l++) s += acc[l];
            D[i] = s;
        }
        memset(dO + T * HD, 0, (size_t)(T8 - T) * HD * sizeof(float));
        for (int i = T; i < T8; i++) D[i] = 0;
        const float *P = a->probs + (size_t)bh * T8 * T8;
        for (int i0 = 0; i0 < T8; i0 += R) {
            int n = i0 + R;
            rows_dot(dO, vT, T8, i0, n, dS + (size_t)i0 * T8);
            for (int r = 0; r < R; r++) {
                int i = i0 + r;
                float *s = dS + (size_t)i * T8;
                const float *p = P + (size_t)i * T8;
                float Di = D[i];
                int j = 0;
                for (; j < n; j += 8) st(s + j, ld(p + j) * (ld(s + j) - Di)); /* dS = P (dP - D) */
                for (; j < T8; j++) s[j] = 0;
            }
            rows_comb(dS, k, T8, i0, n, dq + i0 * HD);
        }
        for (int j0 = 0; j0 < T8; j0 += R) {
            cols_comb(dS, q, T8, j0, dk + j0 * HD);
            cols_comb(P, dO, T8, j0, &blk[0][0]); /* dv */
            for (int r = 0; r < R && j0 + r < T; r++) {
                float *dst = a->dqkv + ((size_t)b * T + j0 + r) * 3 * H * HD + (size_t)h * 3 * HD;
                memcpy(dst + 2 * HD, blk[r], HD * sizeof(float));
            }
        }
        for (int i = 0; i < T; i++) { /* the gradient through rotary (its transpose) */
            float *dst = a->dqkv + ((size_t)b * T + i) * 3 * H * HD + (size_t)h * 3 * HD;
            const float *cs = a->cos + (size_t)i * width, *sn = a->sin + (size_t)i * width;
            const float *gq = dq + i * HD, *gk = dk + i * HD;
            for (int c = 0; c < NV; c++) {
                st(dst + 8 * c, ld(gq + 8 * c) * a->scale);
                st(dst + HD + 8 * c, ld(gk + 8 * c));
            }
            for (int d = 0; d < width; d++) {
                float rq = d < half ? gq[d + half] * sn[d + half] : -gq[d - half] * sn[d - half];
                float rk = d < half ? gk[d + half] * sn[d + half] : -gk[d - half] * sn[d - half];
                dst[d] = (gq[d] * cs[d] + rq) * a->scale;
                dst[HD + d] = gk[d] * cs[d] + rk;
            }
        }
    }
    free(buf);
    return NULL;
}

/* One (sequence, head) pair per task, on the caller's OpenMP threads (PyTorch's own pool
   when loaded into PyTorch, whose libgomp shares the soname). */
static void run(job_t base, int threads, void *(*fn)(void *)) {
    int pairs = base.B * base.H;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int t = 0; t < threads; t++) {
        job_t job = base;
        job.first = (int)((long)pairs * t / threads);
        job.last = (int)((long)pairs * (t + 1) / threads);
        fn(&job);
    }
}

/* qkv (B, T, H*3*HD), cos and sin (T, width) -> res (B, T, H*HD) and probs (B, H, T8, T8),
   T8 = T rounded up to 8, which the backward pass needs; probs may be NULL when there is none.
   Returns 0, or -1 when out of memory. */
int attention_forward(const float *qkv, const float *cos, const float *sin, float *res,
                      float *probs, int B, int T, int H, int width, float scale, int threads) {
    int failed = 0;
    job_t a = {.qkv = qkv, .cos = cos, .sin = sin, .res = res, .probs = probs,
               .B = B, .T = T, .H = H, .width = width, .scale = scale, .failed = &failed};
    run(a, threads, forward_job);
    return failed ? -1 : 0;
}

/* The gradient of attention_forward's res, dres (B, T, H*HD), -> dqkv (B, T, H*3*HD).
   Returns 0, or -1 when out of memory. */
int attention_backward(const float *qkv, const float *cos, const float *sin, const float *res,
                       const float *dres, const float *probs, float *dqkv, int B, int T, int H,
                       int width, float scale, int threads) {
    int failed = 0;
    job_t a = {.qkv = qkv, .cos = cos, .sin = sin, .dres = dres, .res = (float *)res,
               .probs = (float *)probs, .dqkv = dqkv, .B = B, .T = T, .H = H, .width = width,
               .scale = scale, .failed = &failed};
    run(a, threads, backward_job);
    return failed ? -1 : 0;
}
