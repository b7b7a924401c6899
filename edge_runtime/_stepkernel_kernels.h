/* The arithmetic of edge_runtime/_stepkernel.c: a portable C version of every kernel and an AVX2 + FMA one
   (x86-64 Linux, chosen at run time by the CPU's flags), behind one table of function pointers.

   Matrices (Mat) are packed by edge_runtime/native.py: outputs in groups of GROUP, inputs in pairs; int8:
   [group][pair][GROUP][2], float: [group][input][GROUP]. Output buffers hold out_pad floats. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#include <immintrin.h>
#define X86_AVX2_KERNELS 1
#endif

#define GROUP 32 /* outputs per packed group */
/* min/max as comparisons: fminf/fmaxf are library calls unless NaN semantics are given up */
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

typedef struct {
    int out, in, out_pad, in_pad; /* in_pad: even; out_pad: multiple of GROUP */
    int quantized, relu;
    int8_t *w8;       /* quantized weights, packed */
    float *wf;        /* float weights, packed */
    float *scale;     /* [out_pad] per-channel weight scales (quantized) */
    float *bias;      /* [out_pad] */
    int32_t *colsum;  /* [out_pad] sum of each output's weights (for the input zero point) */
} Mat;

typedef struct {
    const char *name;
    /* z[i] = tanh(a[i] + c[i]) * sigmoid(a[H + i] + c[H + i]); c (the gate's conditioning) may be NULL */
    void (*gate)(const float *a, const float *c, int H, float *z);
    /* x[n] -> q[n_pad] (int8 values in int16, zero-padded); returns the inverse scale, sets the zero point */
    float (*quantize)(const float *x, int n, int n_pad, int16_t *q, int *zero_point);
    /* y[out_pad] = act(W q * scale + b) for int8 W, with q's inverse scale and zero point */
    void (*gemv_q)(const Mat *m, const int16_t *q, float inv_scale, int zero_point, float *y);
    /* y[out_pad] = act(W x + b) for float W; x has in_pad readable values (zero beyond in) */
    void (*gemv_f)(const Mat *m, const float *x, float *y);
    /* argmax(logits + noise), noise may be NULL; the first index wins ties (as numpy) */
    int (*argmax)(const float *logits, const float *noise, int Q);
} Kernels;

/* ------------------------------------------------------------------------------------ portable C */

/* e^x for x in [-87, 88]: range reduction by ln 2 (split in two for accuracy), then Cephes' degree-6
   polynomial; relative error about 1e-7. */
static inline float exp_approx(float x) {
    x = MIN(MAX(x, -87.0f), 88.0f);
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = n * -0.693359375f + x;
    r = n * 2.12194440e-4f + r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } s;
    s.i = ((int32_t)n + 127) << 23;
    return p * s.f;
}

/* tanh(f) = 2 sigmoid(2 f) - 1: one exponential each */
static inline float gate_one(float f, float g) {
    return (2.0f / (1.0f + exp_approx(-2.0f * f)) - 1.0f) / (1.0f + exp_approx(-g));
}

static void gate_c(const float *a, const float *c, int H, float *z) {
    for (int i = 0; i < H; i++) z[i] = c ? gate_one(a[i] + c[i], a[H + i] + c[H + i]) : gate_one(a[i], a[H + i]);
}

/* XNNPACK's asymmetric dynamic-range parameters (what LiteRT's dynamic-range products use): min and max
   widened to include 0, inverse scale 255 / (max - min), the zero point taken from the end with the smaller
   rounding error, clamped and rounded to an integer. */
static float qparams(float lo, float hi, int *zero_point) {
    lo = MIN(lo, 0.0f);
    hi = MAX(hi, 0.0f);
    float inv = lo == hi ? 1.0f : 255.0f / (hi - lo);
    float from_min = -128.0f + lo * inv, from_max = 127.0f + hi * inv;
    float zp = from_min + from_max > 0 ? -128.0f - lo * inv : 127.0f - hi * inv;
    *zero_point = (int)rintf(MIN(MAX(zp, -128.0f), 127.0f));
    return inv;
}

static float quantize_c(const float *x, int n, int n_pad, int16_t *q, int *zero_point) {
    float lo = 0.0f, hi = 0.0f;
    for (int i = 0; i < n; i++) {
        lo = MIN(lo, x[i]);
        hi = MAX(hi, x[i]);
    }
    float inv = qparams(lo, hi, zero_point);
    for (int i = 0; i < n; i++) {
        float v = rintf(x[i] * inv) + (float)*zero_point;
        q[i] = (int16_t)MIN(MAX(v, -128.0f), 127.0f);
    }
    for (int i = n; i < n_pad; i++) q[i] = 0;
    return inv;
}

static void finish_c(const Mat *m, float *y) {
    for (int j = 0; j < m->out_pad; j++) {
        y[j] += m->bias[j];
        if (m->relu) y[j] = MAX(y[j], 0.0f);
    }
}

static void gemv_q_c(const Mat *m, const int16_t *q, float inv_scale, int zero_point, float *y) {
    const float in_scale = 1.0f / inv_scale;
    for (int g = 0; g < m->out_pad / GROUP; g++) {
        int32_t s[GROUP] = {0};
        const int8_t *w = m->w8 + (size_t)g * (m->in_pad / 2) * GROUP * 2;
        for (int p = 0; p < m->in_pad / 2; p++, w += GROUP * 2) {
            int32_t x0 = q[2 * p], x1 = q[2 * p + 1];
            for (int j = 0; j < GROUP; j++) s[j] += x0 * w[2 * j] + x1 * w[2 * j + 1];
        }
        for (int j = 0; j < GROUP; j++) {
            int o = g * GROUP + j;
            y[o] = (float)(s[j] - zero_point * m->colsum[o]) * (in_scale * m->scale[o]);
        }
    }
    finish_c(m, y);
}

static void gemv_f_c(const Mat *m, const float *x, float *y) {
    for (int g = 0; g < m->out_pad / GROUP; g++) {
        float s[GROUP] = {0};
        const float *w = m->wf + (size_t)g * m->in_pad * GROUP;
        for (int i = 0; i < m->in_pad; i++, w += GROUP)
            for (int j = 0; j < GROUP; j++) s[j] += x[i] * w[j];
        memcpy(y + g * GROUP, s, sizeof s);
    }
    finish_c(m, y);
}

static int argmax_c(const float *logits, const float *noise, int Q) {
    int best = 0;
    float top = logits[0] + (noise ? noise[0] : 0.0f);
    for (int i = 1; i < Q; i++) {
        float v = logits[i] + (noise ? noise[i] : 0.0f);
        if (v > top) { top = v; best = i; }
    }
    return best;
}

static const Kernels KERNELS_C = {"generic", gate_c, quantize_c, gemv_q_c, gemv_f_c, argmax_c};

/* ------------------------------------------------------------------------------------ AVX2 + FMA */
#if defined(X86_AVX2_KERNELS)
#define AVX2 __attribute__((target("avx2,fma")))

AVX2 static inline __m256 exp_avx2(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(88.0f));
    __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693359375f), x);
    r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

AVX2 static void gate_avx2(const float *a, const float *c, int H, float *z) {
    if (H % 8) {
        gate_c(a, c, H, z);
        return;
    }
    const __m256 one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f);
    for (int i = 0; i < H; i += 8) {
        __m256 f = _mm256_loadu_ps(a + i), g = _mm256_loadu_ps(a + H + i);
        if (c) {
            f = _mm256_add_ps(f, _mm256_loadu_ps(c + i));
            g = _mm256_add_ps(g, _mm256_loadu_ps(c + H + i));
        }
        __m256 th = _mm256_sub_ps(_mm256_div_ps(two, _mm256_add_ps(one, exp_avx2(_mm256_mul_ps(f, _mm256_set1_ps(-2.0f))))), one);
        __m256 sg = _mm256_add_ps(one, exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), g)));
        _mm256_storeu_ps(z + i, _mm256_div_ps(th, sg));
    }
}

AVX2 static float hmin(__m256 v) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_min_ss(m, _mm_shuffle_ps(m, m, 1)));
}

AVX2 static float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}

AVX2 static float quantize_avx2(const float *x, int n, int n_pad, int16_t *q, int *zero_point) {
    __m256 lo8 = _mm256_setzero_ps(), hi8 = lo8;
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        lo8 = _mm256_min_ps(lo8, v);
        hi8 = _mm256_max_ps(hi8, v);
    }
    float lo = hmin(lo8), hi = hmax(hi8);
    for (; i < n; i++) {
        lo = MIN(lo, x[i]);
        hi = MAX(hi, x[i]);
    }
    const float inv = qparams(lo, hi, zero_point);
    const __m256 vinv = _mm256_set1_ps(inv);
    const __m256i z = _mm256_set1_epi32(*zero_point), qlo = _mm256_set1_epi32(-128), qhi = _mm256_set1_epi32(127);
    for (i = 0; i + 16 <= n; i += 16) {  /* round to nearest even (the default mode), as rintf */
        __m256i a = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i), vinv)), z);
        __m256i b = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + i + 8), vinv)), z);
        a = _mm256_min_epi32(_mm256_max_epi32(a, qlo), qhi);
        b = _mm256_min_epi32(_mm256_max_epi32(b, qlo), qhi);
        /* packs works within 128-bit lanes: put the four 64-bit quarters back in order */
        __m256i packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8);
        _mm256_storeu_si256((__m256i *)(q + i), packed);
    }
    for (; i < n; i++) {
        float v = rintf(x[i] * inv) + (float)*zero_point;
        q[i] = (int16_t)MIN(MAX(v, -128.0f), 127.0f);
    }
    for (; i < n_pad; i++) q[i] = 0;
    return inv;
}

AVX2 static void finish_avx2(const Mat *m, float *y) {
    const __m256 zero = _mm256_setzero_ps();
    for (int j = 0; j < m->out_pad; j += 8) {
        __m256 v = _mm256_add_ps(_mm256_loadu_ps(y + j), _mm256_loadu_ps(m->bias + j));
        _mm256_storeu_ps(y + j, m->relu ? _mm256_max_ps(v, zero) : v);
    }
}

/* 8 outputs' weights for one input pair, int8 -> int16, times the broadcast pair: 8 int32 sums of two products
   (vpmaddwd; no overflow: |sum| <= 2 * 128 * 127). */
#define PAIR8(w, xv) _mm256_madd_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w))), xv)

AVX2 static void dequantize_avx2(__m256i acc, const Mat *m, int o, __m256 in_scale, __m256i zp, float *y) {
    __m256i c = _mm256_sub_epi32(acc, _mm256_mullo_epi32(zp, _mm256_loadu_si256((const __m256i *)(m->colsum + o))));
    _mm256_storeu_ps(y + o, _mm256_mul_ps(_mm256_cvtepi32_ps(c), _mm256_mul_ps(in_scale, _mm256_loadu_ps(m->scale + o))));
}

/* 32 outputs per pass over the input (one packed group: a contiguous stream of weights). */
AVX2 static void gemv_q_avx2(const Mat *m, const int16_t *q, float inv_scale, int zero_point, float *y) {
    const int pairs = m->in_pad / 2;
    const int32_t *qp = (const int32_t *)q;
    const __m256 in_scale = _mm256_set1_ps(1.0f / inv_scale);
    const __m256i zp = _mm256_set1_epi32(zero_point);
    for (int g = 0; g < m->out_pad / GROUP; g++) {
        const int8_t *w = m->w8 + (size_t)g * pairs * GROUP * 2;
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
        int p = 0;
        for (; p + 2 <= pairs; p += 2, w += GROUP * 4) {  /* two pairs per step: 4 accumulators, no spills */
            __m256i x0 = _mm256_set1_epi32(qp[p]), x1 = _mm256_set1_epi32(qp[p + 1]);
            a0 = _mm256_add_epi32(a0, _mm256_add_epi32(PAIR8(w, x0), PAIR8(w + 64, x1)));
            a1 = _mm256_add_epi32(a1, _mm256_add_epi32(PAIR8(w + 16, x0), PAIR8(w + 80, x1)));
            a2 = _mm256_add_epi32(a2, _mm256_add_epi32(PAIR8(w + 32, x0), PAIR8(w + 96, x1)));
            a3 = _mm256_add_epi32(a3, _mm256_add_epi32(PAIR8(w + 48, x0), PAIR8(w + 112, x1)));
        }
        if (p < pairs) {
            __m256i x0 = _mm256_set1_epi32(qp[p]);
            a0 = _mm256_add_epi32(a0, PAIR8(w, x0));
            a1 = _mm256_add_epi32(a1, PAIR8(w + 16, x0));
            a2 = _mm256_add_epi32(a2, PAIR8(w + 32, x0));
            a3 = _mm256_add_epi32(a3, PAIR8(w + 48, x0));
        }
        dequantize_avx2(a0, m, g * GROUP, in_scale, zp, y);
        dequantize_avx2(a1, m, g * GROUP + 8, in_scale, zp, y);
        dequantize_avx2(a2, m, g * GROUP + 16, in_scale, zp, y);
        dequantize_avx2(a3, m, g * GROUP + 24, in_scale, zp, y);
    }
    finish_avx2(m, y);
}

AVX2 static void gemv_f_avx2(const Mat *m, const float *x, float *y) {
    for (int g = 0; g < m->out_pad / GROUP; g++) {
        const float *w = m->wf + (size_t)g * m->in_pad * GROUP;
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int i = 0; i < m->in_pad; i++, w += GROUP) {
            __m256 xv = _mm256_set1_ps(x[i]);
            for (int b = 0; b < 4; b++) acc[b] = _mm256_fmadd_ps(_mm256_loadu_ps(w + 8 * b), xv, acc[b]);
        }
        for (int b = 0; b < 4; b++) _mm256_storeu_ps(y + g * GROUP + 8 * b, acc[b]);
    }
    finish_avx2(m, y);
}

AVX2 static int argmax_avx2(const float *logits, const float *noise, int Q) {
    if (Q % 8) return argmax_c(logits, noise, Q);
    __m256 top = _mm256_set1_ps(-INFINITY);
    for (int i = 0; i < Q; i += 8) {
        __m256 v = _mm256_loadu_ps(logits + i);
        top = _mm256_max_ps(top, noise ? _mm256_add_ps(v, _mm256_loadu_ps(noise + i)) : v);
    }
    float best = hmax(top);
    for (int i = 0; i < Q; i++)  /* the first index holding the maximum */
        if (logits[i] + (noise ? noise[i] : 0.0f) == best) return i;
    return argmax_c(logits, noise, Q);  /* NaN logits: no value equals the maximum */
}

static const Kernels KERNELS_AVX2 = {"avx2", gate_avx2, quantize_avx2, gemv_q_avx2, gemv_f_avx2, argmax_avx2};
#endif

/* The fastest kernels this CPU runs; ``generic`` forces the portable ones (to test them where AVX2 exists). */
static const Kernels *pick_kernels(const char *wanted) {
    if (wanted && strcmp(wanted, "generic") == 0) return &KERNELS_C;
#if defined(X86_AVX2_KERNELS)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &KERNELS_AVX2;
#endif
    return &KERNELS_C;
}
