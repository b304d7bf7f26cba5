/* Mean cross-entropy of logits against labels, with its gradient, for CPU in fp32.

   One pass per row computes the row's loss and writes the gradient of the mean loss,
   (softmax(row) - onehot(label)) / rows counted, into the gradient buffer, so the backward pass
   has nothing to do when the loss's own gradient is 1: no log-softmax kept, no second exp, no
   zero-filled gradient to scatter into. Rows whose label is `ignore` count for nothing
   and get a zero gradient. Rows are split among PyTorch's OpenMP threads; a row is computed
   whole by one thread and the loss is summed in row order, so results do not depend on the
   number of threads.
*/
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "vec.h"


/* loss of one row (V values), its gradient (softmax - onehot) * scale into g */
static float row(const float *x, int64_t label, int V, float scale, float *g) {
    const v8i lane = {0, 1, 2, 3, 4, 5, 6, 7};
    int whole = V / 8 * 8;
    float target = x[label];
    v8 vmax = splat(-INFINITY);
    for (int j = 0; j < whole; j += 8) {
        v8 s = ld(x + j);
        vmax = vselect(s > vmax, s, vmax);
    }
    float m = hmax(vmax);
    for (int j = whole; j < V; j++) m = x[j] > m ? x[j] : m;
    v8 vsum = {0};
    for (int j = 0; j < whole; j += 8) {
        v8 e = vexp(ld(x + j) - m);
        vsum += e;
        st(g + j, e);
    }
    if (whole < V) { /* the tail, through a full vector with the missing lanes at -inf */
        v8 s = splat(-INFINITY);
        for (int l = 0; whole + l < V; l++) s[l] = x[whole + l];
        v8 e = (v8)((v8i)vexp(s - m) & ((lane + whole) < V));
        vsum += e;
        for (int l = 0; whole + l < V; l++) g[whole + l] = e[l];
    }
    float sum = hsum(vsum);
    v8 inv = splat(scale / sum);
    for (int j = 0; j < whole; j += 8) st(g + j, ld(g + j) * inv);
    for (int j = whole; j < V; j++) g[j] *= inv[0];
    g[label] -= scale;
    return logf(sum) + m - target;
}

/* logits (N, V), labels (N,) -> grad (N, V) = (softmax - onehot) / count per row (0 for
   ignored rows), row_loss (N,); returns count, the number of rows counted, or -1 when a label
   is out of range (the first such row's index in *bad). *total gets the sum of the counted
   rows' losses. */
long cross_entropy(const float *logits, const int64_t *labels, float *grad, float *row_loss,
                   long N, int V, int64_t ignore, int threads, double *total, long *bad) {
    long count = 0;
    for (long i = 0; i < N; i++) {
        if (labels[i] == ignore) continue;
        if (labels[i] < 0 || labels[i] >= V) {
            *bad = i;
            return -1;
        }
        count++;
    }
    float scale = count ? 1.0f / (float)count : 0.0f;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long i = 0; i < N; i++) {
        float *g = grad + i * (long)V;
        if (labels[i] == ignore) {
            memset(g, 0, sizeof(float) * V);
            row_loss[i] = 0;
            continue;
        }
        row_loss[i] = row(logits + i * (long)V, labels[i], V, scale, g);
    }
    double sum = 0;
    for (long i = 0; i < N; i++)
        if (labels[i] != ignore) sum += row_loss[i];
    *total = sum;
    return count;
}
