/* Mean cross-entropy of logits against labels, with its gradient, for CPU in fp32.

   One pass per row computes the row's loss and writes softmax(row) - onehot(label) into the
   gradient buffer, so the backward pass is a single scaling: no log-softmax kept, no second
   exp, no zero-filled gradient to scatter into. Rows whose label is `ignore` count for nothing
   and get a zero gradient. Rows are split among PyTorch's OpenMP threads; a row is computed
   whole by one thread and the loss is summed in row order, so results do not depend on the
   number of threads. Written with GCC/Clang vector extensions: 8 floats at a time.
*/
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32), aligned(4)));
typedef int v8i __attribute__((vector_size(32), aligned(4)));
static inline v8 ld(const float *p) { return *(const v8 *)p; }
static inline void st(float *p, v8 v) { *(v8 *)p = v; }

/* e^x for x <= 0, 8 at a time: 2^n * p(r), Cephes' polynomial (as in attention.c). */
static inline v8 vexp(v8 x) {
    const v8 lo = {-87.3f, -87.3f, -87.3f, -87.3f, -87.3f, -87.3f, -87.3f, -87.3f};
    v8i low = x < lo;
    x = (v8)(((v8i)x & ~low) | ((v8i)lo & low));
    v8 fx = x * 1.44269504088896341f + 128.5f; /* in (2, 128.5]: truncation is floor */
    v8i n = __builtin_convertvector(fx, v8i) - 128;
    v8 fn = __builtin_convertvector(n, v8);
    v8 r = x - fn * 0.693359375f + fn * 2.12194440e-4f;
    v8 r2 = r * r;
    v8 p = (v8){0} + 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r2 + r + 1.0f;
    v8i bits = (n + 127) << 23;
    return p * (v8)bits;
}

/* loss of one row (V values), its gradient softmax - onehot into g */
static float row(const float *x, int64_t label, int V, float *g) {
    const v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
    int whole = V / 8 * 8;
    v8 vmax = (v8){0} - INFINITY;
    for (int j = 0; j < whole; j += 8) {
        v8 s = ld(x + j);
        v8i more = s > vmax;
        vmax = (v8)(((v8i)s & more) | ((v8i)vmax & ~more));
    }
    float m = vmax[0];
    for (int l = 1; l < 8; l++) m = vmax[l] > m ? vmax[l] : m;
    for (int j = whole; j < V; j++) m = x[j] > m ? x[j] : m;
    v8 vsum = {0};
    for (int j = 0; j < whole; j += 8) {
        v8 e = vexp(ld(x + j) - m);
        vsum += e;
        st(g + j, e);
    }
    if (whole < V) { /* the tail, through a full vector with the missing lanes at -inf */
        v8 s = (v8){0} - INFINITY;
        for (int l = 0; whole + l < V; l++) s[l] = x[whole + l];
        v8 e = (v8)((v8i)vexp(s - m) & ((lane + whole) < V));
        vsum += e;
        for (int l = 0; whole + l < V; l++) g[whole + l] = e[l];
    }
    float sum = 0;
    for (int l = 0; l < 8; l++) sum += vsum[l];
    v8 inv = (v8){0} + 1.0f / sum;
    for (int j = 0; j < whole; j += 8) st(g + j, ld(g + j) * inv);
    for (int j = whole; j < V; j++) g[j] *= inv[0];
    g[label] -= 1.0f;
    return logf(sum) + m - x[label];
}

/* logits (N, V), labels (N,) -> grad (N, V) = softmax - onehot per row (0 for ignored rows),
   row_loss (N,); returns the number of rows counted, or -1 when a label is out of range
   (the first such row's index in *bad). *total gets the sum of the counted rows' losses. */
long cross_entropy(const float *logits, const int64_t *labels, float *grad, float *row_loss,
                   long N, int V, int64_t ignore, int threads, double *total, long *bad) {
    long first_bad = -1;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long i = 0; i < N; i++) {
        const float *x = logits + i * (long)V;
        float *g = grad + i * (long)V;
        int64_t label = labels[i];
        if (label == ignore || label < 0 || label >= V) {
            memset(g, 0, sizeof(float) * V);
            row_loss[i] = 0;
            continue;
        }
        row_loss[i] = row(x, label, V, g);
    }
    long count = 0;
    double sum = 0;
    for (long i = 0; i < N; i++) {
        if (labels[i] == ignore) continue;
        if (labels[i] < 0 || labels[i] >= V) {
            first_bad = i;
            break;
        }
        count++;
        sum += row_loss[i];
    }
    *total = sum;
    if (first_bad >= 0) {
        *bad = first_bad;
        return -1;
    }
    return count;
}
