/* Causal self-attention with rotary position embedding, forward and backward, for CPU in fp32.

   One call handles a whole layer: it reads the fused QKV projection (batch, seq, heads * 3 *
   HD, laid out per head as [q | k | v] as in GPT-NeoX), rotates q and k, attends causally, and
   writes the heads' outputs side by side (batch, seq, heads * HD), ready for the output
   projection. The backward pass writes the gradient in the fused QKV layout. This replaces the
   transposes, slices, concatenations and copies that rotary and attention otherwise cost per
   layer, which on a CPU weigh as much as the attention arithmetic when heads are small.

   The softmax probabilities are kept for the backward pass (batch * heads * seq^2 floats; none
   when no backward pass follows), so it is meant for short sequences. Each (sequence, head)
   pair is computed whole by one thread, so results do not depend on the number of threads.
   HD, the head dimension, is fixed at compile time (a multiple of 8).
*/
#include <stdint.h>
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
            in_register(&y);
            in_register(&z);
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
            in_register(&y);
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

/* out[r] = sum_{j < n} w[r * T8 + j] * x[j] for r < 4: 4 rows of w (T8 apart) times x
   (rows of HD). */
static inline void rows_comb(const float *w, int T8, const float *x, int n, float *out) {
    v8 a0[NV] = {0}, a1[NV] = {0}, a2[NV] = {0}, a3[NV] = {0};
    for (int j = 0; j < n; j++) {
        float p0 = w[j], p1 = w[T8 + j], p2 = w[2 * T8 + j], p3 = w[3 * T8 + j];
        for (int c = 0; c < NV; c++) {
            v8 xj = ld(x + j * HD + 8 * c);
            in_register(&xj);
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

/* Causal softmax of rows i0 .. i0 + 3 of the scores, in place (rows T8 apart): row i over its
   columns j <= i. With i0 a multiple of 4, the four rows span the same vectors, of which only the
   last is cut by the diagonal, so they go through each pass together: four independent chains
   instead of one row's chain of reductions after another. Leaves each row's exponentials,
   zero past the diagonal, in the first tpad(i0 + 4) columns, and 1 / their sum in inv: the
   caller scales the row's output and the probabilities it keeps, instead of a third pass over
   the row here. */
static inline void softmax_block(float *P, int T8, int i0, float *inv) {
    const v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
    int last = i0 / 8 * 8; /* the first column of the vector the diagonal cuts */
    v8 m[R], sum[R];
    v8i causal[R];
    float mx[R];
    for (int r = 0; r < R; r++) {
        m[r] = splat(-3.0e38f);
        sum[r] = splat(0.0f);
        causal[r] = (lane + last) <= (i0 + r);
    }
    for (int j = 0; j < last; j += 8)
        for (int r = 0; r < R; r++) {
            v8 s = ld(P + (size_t)r * T8 + j);
            m[r] = vselect(s > m[r], s, m[r]);
        }
    for (int r = 0; r < R; r++) {
        v8 s = vselect(causal[r], ld(P + (size_t)r * T8 + last), m[r]);
        mx[r] = hmax(vselect(s > m[r], s, m[r]));
    }
    for (int j = 0; j < last; j += 8)
        for (int r = 0; r < R; r++) {
            float *p = P + (size_t)r * T8 + j;
            v8 e = vexp(ld(p) - mx[r]);
            sum[r] += e;
            st(p, e);
        }
    for (int r = 0; r < R; r++) {
        float *p = P + (size_t)r * T8 + last;
        v8 e = (v8)((v8i)vexp(ld(p) - mx[r]) & causal[r]);
        sum[r] += e;
        st(p, e);
        inv[r] = 1.0f / hsum(sum[r]);
    }
}

/* The 4 rows at src (T8 apart), their first `len` columns, each scaled by its inv (which makes
   the exponentials probabilities), into dst (rows T8 apart) for the backward pass. It reads
   them only after the whole layer, so they bypass the cache (streaming stores, when dst is
   aligned for them): they are not first read from memory, and do not push out what this pass
   works on. */
static inline void keep(const float *src, const float *inv, float *dst, int T8, int len,
                        int stream_ok) {
    for (int r = 0; r < R; r++) {
        v8 scale = splat(inv[r]);
        for (int j = 0; j < len; j += 8) {
            v8 p = ld(src + (size_t)r * T8 + j) * scale;
            if (stream_ok)
                stream(dst + (size_t)r * T8 + j, p);
            else
                st(dst + (size_t)r * T8 + j, p);
        }
    }
}

/* acc[j] += sum_r w[r * T8 + j] * x[r] for j < n: 4 rows of w (T8 apart) times 4 rows of x,
   transposed, added into the rows of acc, r in order. Row by row, so that a block's rows of dS
   and P serve dk and dv while they are in cache, instead of a second pass down their columns. */
static inline void outer_add(const float *w, int T8, const float *x, int n, float *acc) {
    v8 x0[NV], x1[NV], x2[NV], x3[NV];
    for (int c = 0; c < NV; c++) {
        x0[c] = ld(x + 8 * c);
        x1[c] = ld(x + HD + 8 * c);
        x2[c] = ld(x + 2 * HD + 8 * c);
        x3[c] = ld(x + 3 * HD + 8 * c);
    }
    for (int j = 0; j < n; j++) {
        float w0 = w[j], w1 = w[T8 + j], w2 = w[2 * T8 + j], w3 = w[3 * T8 + j];
        float *aj = acc + (size_t)j * HD;
        for (int c = 0; c < NV; c++) {
            v8 s = ld(aj + 8 * c);
            s += w0 * x0[c];
            s += w1 * x1[c];
            s += w2 * x2[c];
            s += w3 * x3[c];
            st(aj + 8 * c, s);
        }
    }
}

static void transpose(const float *x, int T8, float *xT) {
    for (int i = 0; i < T8; i++)
        for (int c = 0; c < HD; c++) xT[c * T8 + i] = x[i * HD + c];
}

/* n floats on a cache-line boundary (NULL when out of memory), freed with free(). malloc's
   16-byte alignment would leave every other vector of the scratch arrays split across two
   cache lines whenever a block lands 16 or 48 bytes past one, as it often does. */
static float *scratch(size_t n) {
    return aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
}

static void *forward_job(void *arg) {
    const job_t *a = arg;
    int T = a->T, T8 = tpad(T), H = a->H;
    float *buf = scratch((size_t)T8 * HD * 4 + (size_t)R * T8);
    if (buf == NULL) {
        *a->failed = 1;
        return NULL;
    }
    float *q = buf, *k = q + T8 * HD, *v = k + T8 * HD, *kT = v + T8 * HD, *rows = kT + T8 * HD;
    float o[R][HD];
    int stream_ok = ((uintptr_t)a->probs & 31) == 0;
    for (int bh = a->first; bh < a->last; bh++) {
        int b = bh / H, h = bh % H;
        load_head(a, b, h, q, k, v);
        transpose(k, T8, kT);
        for (int i0 = 0; i0 < T8; i0 += R) {
            int n = i0 + R;
            float *P = rows; /* this block's rows of P */
            float inv[R];
            rows_dot(q, kT, T8, i0, n, P);
            softmax_block(P, T8, i0, inv);
            /* Rows i0 .. i0 + 3 now hold P / inv in their first tpad(n) columns, zero past the
               diagonal; nothing reads a row past them, here or in the backward pass. */
            rows_comb(P, T8, v, n, &o[0][0]);
            if (a->probs)
                keep(P, inv, a->probs + ((size_t)bh * T8 + i0) * T8, T8, tpad(n), stream_ok);
            for (int r = 0; r < R && i0 + r < T; r++) {
                float *dst = a->res + ((size_t)b * T + i0 + r) * H * HD + (size_t)h * HD;
                for (int c = 0; c < NV; c++) st(dst + 8 * c, ld(o[r] + 8 * c) * inv[r]);
            }
        }
    }
    stream_fence();
    free(buf);
    return NULL;
}

static void *backward_job(void *arg) {
    const job_t *a = arg;
    int T = a->T, T8 = tpad(T), H = a->H, width = a->width, half = width / 2;
    float *buf = scratch((size_t)T8 * HD * 8 + (size_t)R * T8 + T8);
    if (buf == NULL) {
        *a->failed = 1;
        return NULL;
    }
    float *q = buf, *k = q + T8 * HD, *v = k + T8 * HD, *vT = v + T8 * HD, *dO = vT + T8 * HD,
          *dq = dO + T8 * HD, *dk = dq + T8 * HD, *dv = dk + T8 * HD, *dS = dv + T8 * HD,
          *D = dS + (size_t)R * T8;
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
        memset(dk, 0, sizeof(float) * T8 * HD);
        memset(dv, 0, sizeof(float) * T8 * HD);
        for (int i0 = 0; i0 < T8; i0 += R) { /* rows i0 .. i0 + 3 of dS, then their shares */
            int n = i0 + R;
            const float *Pb = P + (size_t)i0 * T8;
            rows_dot(dO, vT, T8, i0, n, dS);
            for (int r = 0; r < R; r++) { /* dS = P (dP - D) */
                float *s = dS + (size_t)r * T8;
                const float *p = Pb + (size_t)r * T8;
                v8 Di = splat(D[i0 + r]);
                for (int j = 0; j < n; j += 8) st(s + j, ld(p + j) * (ld(s + j) - Di));
            }
            rows_comb(dS, T8, k, n, dq + i0 * HD);
            outer_add(dS, T8, q + i0 * HD, n, dk); /* dk = dS^T q */
            outer_add(Pb, T8, dO + i0 * HD, n, dv); /* dv = P^T dO */
        }
        for (int i = 0; i < T; i++)
            memcpy(a->dqkv + ((size_t)b * T + i) * 3 * H * HD + (size_t)h * 3 * HD + 2 * HD,
                   dv + i * HD, HD * sizeof(float));
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
