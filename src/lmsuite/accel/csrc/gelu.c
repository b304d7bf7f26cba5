/* Exact GELU, x * Phi(x), and its derivative, for CPU in fp32.

   erf is Abramowitz and Stegun's 7.1.26 (absolute error below 1.5e-7), the formula PyTorch's
   own vectorized CPU erf uses; here its exp is vectorized too, and the derivative shares that
   one exp between erf and the Gaussian density. Elements are split among PyTorch's OpenMP threads
   in fixed chunks, each element computed alone, so results do not depend on the thread count.
*/
#include <string.h>

#include "vec.h"

#define CHUNK 4096

/* Phi(x) = 0.5 (1 + erf(x / sqrt 2)), and e = exp(-x^2 / 2) */
static inline v8 cdf(v8 x, v8 *e) {
    v8 z = x * 0.70710678118654752f;
    v8 az = vselect(z < splat(0.0f), -z, z);
    v8 t = splat(1.0f) / (az * 0.3275911f + 1.0f);
    v8 poly = splat(1.061405429f);
    poly = poly * t - 1.453152027f;
    poly = poly * t + 1.421413741f;
    poly = poly * t - 0.284496736f;
    poly = poly * t + 0.254829592f;
    *e = vexp(-(z * z));
    v8 erf_abs = 1.0f - poly * t * *e;
    v8 erf = vselect(z < splat(0.0f), -erf_abs, erf_abs);
    return 0.5f * (1.0f + erf);
}

static inline v8 load_part(const float *p, long n) { /* n < 8 values, the rest 0 */
    v8 v = {0};
    for (long l = 0; l < n; l++) v[l] = p[l];
    return v;
}

static inline void store_part(float *p, v8 v, long n) {
    for (long l = 0; l < n; l++) p[l] = v[l];
}

/* y = gelu(x) over n floats, and, when d is not NULL, the derivative
   d = gelu'(x) = Phi(x) + x * exp(-x^2 / 2) / sqrt(2 pi), from the same Phi and exp: the
   backward pass is then one multiplication, dx = dy * d, instead of a second erf and exp. */
void gelu_forward(const float *x, float *y, float *d, long n, int threads) {
    long chunks = (n + CHUNK - 1) / CHUNK;
    const float inv_sqrt_2pi = 0.39894228040143268f;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long c = 0; c < chunks; c++) {
        long end = (c + 1) * CHUNK < n ? (c + 1) * CHUNK : n;
        long i = c * CHUNK;
        v8 e;
        for (; i + 8 <= end; i += 8) {
            v8 v = ld(x + i);
            v8 phi = cdf(v, &e);
            st(y + i, v * phi);
            if (d) st(d + i, phi + v * e * inv_sqrt_2pi);
        }
        if (i < end) {
            v8 v = load_part(x + i, end - i);
            v8 phi = cdf(v, &e);
            store_part(y + i, v * phi, end - i);
            if (d) store_part(d + i, phi + v * e * inv_sqrt_2pi, end - i);
        }
    }
}
