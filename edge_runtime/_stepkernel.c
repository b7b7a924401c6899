/* The WaveNet step of an exported step graph as one compiled loop (the "native" engine of edge_runtime).

Why: at batch 1 a step is ~40 small matrix-vector products and ~150 element-wise ops. Run through LiteRT, each
op pays XNNPACK's dispatch and (for dynamic-range graphs) its own input quantization, and each sample pays a
Python round trip; on AVX2-class CPUs that is about a third of the loop (docs/performance.md). Here a whole
chunk of samples runs in C: ring buffer, layers, head, Gumbel-max sampling.

What it computes is read from the graph (edge_runtime/native.py extracts the weights and checks this code
against LiteRT on the same inputs at load). Matrices come in two kinds:
  - int8 weights with per-output-channel scales (the "dynamic" variant): each product quantizes its input
    vector to int8 with XNNPACK's asymmetric dynamic-range parameters, accumulates in int32, and rescales
    (the arithmetic LiteRT's qd8 kernels do);
  - float32 weights (the float32 and float16 variants).
Weights arrive packed by native.py: outputs in groups of 32, inputs in pairs (int8: [group][pair][32 x 2];
float: [group][input][32]), so the AVX2 kernels read one contiguous stream per group.

Python API (buffers: anything with the buffer protocol, C-contiguous; native.py passes numpy arrays):
  Engine(dims, dilations, embedding, mats)   dims = (L, R, G, S, HD, Q, k, E, ring)
  Engine.reset()                             zeroes the history, t = 0
  Engine.set_history(hist)                   hist [ring][L][R] float32; t = 0
  Engine.run(n, prev, cond, cond_stride, extra, noise, forced, logits_out, samples_out[, lpc]) -> last sample
  Engine.set_lpc(signal_table, prediction_table, decode, order)
                                             LPCNet's inputs (format 3): layer 0's row becomes
                                             emb[e] + signal_table[mu(s)] + prediction_table[mu(p)] (float32 [Q][R]
                                             each), decode [Q] float64 the µ-law decode table; run then takes lpc,
                                             float64 [n][order]: the coefficients of each sample being generated
  Engine.lpc_push(sample, coefficients)      filters one sample into the LPC state (teacher forcing's first)
  Engine.set_period(period_table, silence)   the excitation one period back (format 4, after set_lpc): the row
                                             adds period_table[e[t - lag]] (silence before the first sample); run
                                             then takes lags, int64 [n]: each generated sample's lag
*/
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_stepkernel_kernels.h"

#define PERIOD_RING 1024  /* classes kept for the period input: above any lag (native.py checks the longest) */

typedef struct {
    PyObject_HEAD
    int L, R, G, H, S, HD, Q, k, E, ring;
    int *dil;
    float *emb;       /* [Q][R] */
    Mat *mats;        /* L layer, L-1 residual, skip, head1, head2 */
    int n_mats;
    float *hist;      /* [ring][L][R] */
    long long t;
    float *in_buf, *a, *zs, *x, *skip, *hidden, *logits; /* scratch, each at least every out_pad and in_pad */
    int16_t *q;       /* quantized input scratch, [max in_pad] */
    const Kernels *kern;
    /* LPCNet's inputs (0 = off): the synthesis filter's state, as edge_runtime/lpc.py's InputRows holds it */
    int lpc_order;
    float *emb_s, *emb_p;   /* [Q][R] each */
    double *decode;         /* [Q] */
    double past[64], signal; /* s[t-1], s[t-2], ...; the last filtered sample */
    /* The period input (NULL = off): the classes generated so far, as edge_runtime/period.py's PeriodHistory */
    float *emb_l;           /* [Q][R] */
    int period_ring[PERIOD_RING], silence;
    long long period_t;     /* index of the next sample */
} Engine;

/* µ-law class of x (clipped to [-1, 1]), in edge_runtime/audio.py's mu_law_encode's float64 operations. */
static int mu_law_class(double x, int classes) {
    double mu = classes - 1;
    if (x != x) x = 0.0;  /* NaN (never from a finite mel and a stable filter): a valid class, not an overrun */
    x = x < -1.0 ? -1.0 : x > 1.0 ? 1.0 : x;
    double sign = x > 0 ? 1.0 : x < 0 ? -1.0 : 0.0;
    double y = sign * log1p(mu * fabs(x)) / log1p(mu);
    return (int)floor((y + 1.0) / 2.0 * mu + 0.5);
}

/* acc = sum_k a_k s[t-k], k in order (lpc.py's prediction() is -acc, its filter's s[t] = e[t] - acc). */
static double lpc_acc(const Engine *e, const double *a) {
    double acc = 0.0;
    for (int k = 0; k < e->lpc_order; k++) acc += a[k] * e->past[k];
    return acc;
}

/* The sample e (a class) through the synthesis filter: s[t] = e - acc becomes the newest past sample. */
static void lpc_filter(Engine *e, int sample, double acc) {
    double y = e->decode[sample] - acc;
    memmove(e->past + 1, e->past, (e->lpc_order - 1) * sizeof(double));
    e->past[0] = y;
    e->signal = y;
}

/* Layer 0's row of an lpc_inputs model: the three embeddings summed in float32, as the Keras model does. */
static void lpc_row(const Engine *e, int prev, double acc, float *row) {
    const float *a = e->emb + (size_t)prev * e->R;
    const float *b = e->emb_s + (size_t)mu_law_class(e->signal, e->Q) * e->R;
    const float *c = e->emb_p + (size_t)mu_law_class(-acc, e->Q) * e->R;
    for (int i = 0; i < e->R; i++) row[i] = (a[i] + b[i]) + c[i];
}

/* The period input's class for the next sample: the one generated lag samples before it, or silence. */
static int period_class(const Engine *e, long long lag) {
    long long source = e->period_t - lag;
    return source >= 0 ? e->period_ring[source & (PERIOD_RING - 1)] : e->silence;
}

static void period_push(Engine *e, int sample) {
    e->period_ring[e->period_t & (PERIOD_RING - 1)] = sample;
    e->period_t++;
}

/* y = act(W x + b) for one matrix; x has m->in_pad readable floats (zero beyond m->in), y holds m->out_pad. */
static void matvec(const Engine *e, const Mat *m, const float *x, float *y) {
    if (m->quantized) {
        int zero_point;
        float inv_scale = e->kern->quantize(x, m->in, m->in_pad, e->q, &zero_point);
        e->kern->gemv_q(m, e->q, inv_scale, zero_point, y);
    } else {
        e->kern->gemv_f(m, x, y);
    }
}

/* ------------------------------------------------------------------------------------ one sample */

/* One step: history row t holds layer 0's current input (the embedding, written by the caller); fills the
   other layers' rows and e->logits. cond: L*G gate inputs or NULL; extra: E conditioning channels or NULL. */
static void step(Engine *e, const float *cond, const float *extra) {
    const int L = e->L, R = e->R, G = e->G, H = e->H, mask = e->ring - 1;
    float *now = e->hist + (size_t)(e->t & mask) * L * R;
    /* The taps of the widest layers were written hundreds of samples ago and the weights stream through the
       cache every sample, so they come from L3: ask for all of them (and this sample's conditioning) now, so
       that the loads overlap the first layers' products instead of stalling each layer. */
    for (int l = 0; l < L; l++)
        for (int j = 0; j < e->k - 1; j++) {
            const char *row = (const char *)(e->hist + ((size_t)((e->t - (long long)(e->k - 1 - j) * e->dil[l]) & mask) * L + l) * R);
            for (size_t b = 0; b < R * sizeof(float); b += 64) __builtin_prefetch(row + b);
        }
    if (cond)
        for (size_t b = 0; b < (size_t)L * G * sizeof(float); b += 64) __builtin_prefetch((const char *)cond + b);
    memcpy(e->x, now, R * sizeof(float));
    for (int l = 0; l < L; l++) {
        float *in = e->in_buf;
        for (int j = 0; j < e->k - 1; j++) {  /* tap j multiplies x[t - (k-1-j) d] */
            long long past = e->t - (long long)(e->k - 1 - j) * e->dil[l];
            memcpy(in, e->hist + ((size_t)(past & mask) * L + l) * R, R * sizeof(float));
            in += R;
        }
        memcpy(in, e->x, R * sizeof(float));
        in += R;
        if (e->E) memcpy(in, extra, e->E * sizeof(float));
        matvec(e, &e->mats[l], e->in_buf, e->a);
        e->kern->gate(e->a, cond ? cond + (size_t)l * G : NULL, H, e->zs + l * H);
        if (l < L - 1) {
            float *res = e->a;  /* the gate input is used up */
            matvec(e, &e->mats[L + l], e->zs + l * H, res);
            for (int i = 0; i < R; i++) e->x[i] += res[i];
            memcpy(now + (size_t)(l + 1) * R, e->x, R * sizeof(float));
        }
    }
    matvec(e, &e->mats[2 * L - 1], e->zs, e->skip);
    matvec(e, &e->mats[2 * L], e->skip, e->hidden);
    matvec(e, &e->mats[2 * L + 1], e->hidden, e->logits);
}

/* Layer 0's current input: the previous sample's embedding, or an lpc_inputs model's three rows from this
   sample's coefficients a; returns the LPC sum acc the filter then subtracts (0 without LPC inputs). */
static double input_row(const Engine *e, int prev, const double *a, long long lag, float *now) {
    if (!a) {
        memcpy(now, e->emb + (size_t)prev * e->R, e->R * sizeof(float));
        return 0.0;
    }
    double acc = lpc_acc(e, a);
    lpc_row(e, prev, acc, now);
    if (e->emb_l) {  /* a fourth float32 add, after the three: the Keras model's order */
        const float *d = e->emb_l + (size_t)period_class(e, lag) * e->R;
        for (int i = 0; i < e->R; i++) now[i] += d[i];
    }
    return acc;
}

/* ------------------------------------------------------------------------------------ Python bindings */

/* A borrowed C-contiguous buffer of at least `bytes` bytes, or NULL with an exception set. */
static int get_buffer(PyObject *obj, Py_buffer *view, Py_ssize_t bytes, int writable, const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) return -1;
    if (view->len < bytes) {
        PyErr_Format(PyExc_ValueError, "%s: %zd bytes, need %zd", what, view->len, bytes);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* A private copy of a buffer's first `bytes` bytes (the engine outlives the arrays it was built from). */
static void *copy_buffer(PyObject *obj, Py_ssize_t bytes, const char *what) {
    Py_buffer view;
    if (get_buffer(obj, &view, bytes, 0, what) < 0) return NULL;
    void *out = malloc(bytes > 0 ? bytes : 1);
    if (out) memcpy(out, view.buf, bytes);
    else PyErr_NoMemory();
    PyBuffer_Release(&view);
    return out;
}

static void free_mats(Engine *e) {
    for (int i = 0; i < e->n_mats && e->mats; i++) {
        Mat *m = &e->mats[i];
        free(m->w8); free(m->wf); free(m->scale); free(m->bias); free(m->colsum);
    }
    free(e->mats);
    e->mats = NULL;
}

static void Engine_dealloc(Engine *e) {
    free_mats(e);
    free(e->dil); free(e->emb); free(e->hist); free(e->in_buf); free(e->a); free(e->zs); free(e->x);
    free(e->skip); free(e->hidden); free(e->logits); free(e->q); free(e->emb_s); free(e->emb_p); free(e->decode);
    free(e->emb_l);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

/* mats item: (out, in, out_pad, in_pad, quantized, relu, weights, scale or None, bias, colsum or None) */
static int load_mat(Mat *m, PyObject *item) {
    PyObject *w, *scale, *bias, *colsum;
    if (!PyArg_ParseTuple(item, "iiiiiiOOOO", &m->out, &m->in, &m->out_pad, &m->in_pad, &m->quantized, &m->relu,
                          &w, &scale, &bias, &colsum))
        return -1;
    if (m->out < 1 || m->in < 1 || m->out_pad % GROUP || m->out_pad < m->out || m->in_pad % 2 || m->in_pad < m->in) {
        PyErr_SetString(PyExc_ValueError, "matrix dimensions are not padded as the kernels need");
        return -1;
    }
    Py_ssize_t n = (Py_ssize_t)m->out_pad * m->in_pad;
    if (m->quantized) {
        if (!(m->w8 = copy_buffer(w, n, "int8 weights")) || !(m->scale = copy_buffer(scale, 4 * m->out_pad, "scales"))
            || !(m->colsum = copy_buffer(colsum, 4 * m->out_pad, "column sums")))
            return -1;
    } else if (!(m->wf = copy_buffer(w, 4 * n, "float weights"))) {
        return -1;
    }
    return (m->bias = copy_buffer(bias, 4 * m->out_pad, "bias")) ? 0 : -1;
}

static int check_dims(Engine *e) {
    int ok = e->L >= 1 && e->R >= 1 && e->G >= 2 && e->G % 2 == 0 && e->S >= 1 && e->HD >= 1 && e->Q >= 2
             && e->k >= 2 && e->E >= 0 && e->ring >= 2 && (e->ring & (e->ring - 1)) == 0;
    Mat *m = e->mats;
    for (int l = 0; ok && l < e->L; l++) {
        ok &= m[l].out == e->G && m[l].in == e->k * e->R + e->E;
        ok &= e->dil[l] >= 1 && (long long)(e->k - 1) * e->dil[l] < e->ring;
        if (l < e->L - 1) ok &= m[e->L + l].out == e->R && m[e->L + l].in == e->H;
    }
    ok = ok && m[2 * e->L - 1].in == e->L * e->H && m[2 * e->L - 1].out == e->S && m[2 * e->L].in == e->S
         && m[2 * e->L].out == e->HD && m[2 * e->L + 1].in == e->HD && m[2 * e->L + 1].out == e->Q;
    if (!ok) PyErr_SetString(PyExc_ValueError, "engine dimensions do not fit together");
    return ok ? 0 : -1;
}

static int alloc_scratch(Engine *e) {
    int big = 0;
    for (int i = 0; i < e->n_mats; i++) {
        big = e->mats[i].in_pad > big ? e->mats[i].in_pad : big;
        big = e->mats[i].out_pad > big ? e->mats[i].out_pad : big;
    }
    big += GROUP;
    e->hist = calloc((size_t)e->ring * e->L * e->R, sizeof(float));
    e->in_buf = calloc(big, sizeof(float)); e->a = calloc(big, sizeof(float)); e->zs = calloc(big, sizeof(float));
    e->x = calloc(big, sizeof(float)); e->skip = calloc(big, sizeof(float)); e->hidden = calloc(big, sizeof(float));
    e->logits = calloc(big, sizeof(float)); e->q = calloc(big, sizeof(int16_t));
    if (!(e->hist && e->in_buf && e->a && e->zs && e->x && e->skip && e->hidden && e->logits && e->q)) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static PyObject *Engine_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *dil, *emb, *mats;
    Engine *e = (Engine *)type->tp_alloc(type, 0);
    if (!e) return NULL;
    if (!PyArg_ParseTuple(args, "(iiiiiiiii)OOO!", &e->L, &e->R, &e->G, &e->S, &e->HD, &e->Q, &e->k, &e->E,
                          &e->ring, &dil, &emb, &PyList_Type, &mats))
        goto fail;
    e->H = e->G / 2;
    if (e->L < 1 || e->R < 1 || e->Q < 2 || PyList_GET_SIZE(mats) != 2 * e->L + 2) {
        PyErr_SetString(PyExc_ValueError, "need 2 L + 2 matrices (layers, residuals, skip, head1, head2)");
        goto fail;
    }
    if (!(e->dil = copy_buffer(dil, 4 * (Py_ssize_t)e->L, "dilations"))
        || !(e->emb = copy_buffer(emb, 4 * (Py_ssize_t)e->Q * e->R, "embedding")))
        goto fail;
    e->n_mats = 2 * e->L + 2;
    if (!(e->mats = calloc(e->n_mats, sizeof(Mat)))) { PyErr_NoMemory(); goto fail; }
    for (int i = 0; i < e->n_mats; i++) {
        if (load_mat(&e->mats[i], PyList_GET_ITEM(mats, i)) < 0) goto fail;
    }
    if (check_dims(e) < 0 || alloc_scratch(e) < 0) goto fail;
    e->kern = pick_kernels(getenv("WAVENET_EDGE_KERNELS"));
    return (PyObject *)e;
fail:
    Py_DECREF(e);
    return NULL;
}

static void reset_lpc(Engine *e) {
    memset(e->past, 0, sizeof(e->past));
    e->signal = 0.0;
    for (int i = 0; i < PERIOD_RING; i++) e->period_ring[i] = e->silence;
    e->period_t = 0;
}

static PyObject *Engine_reset(Engine *e, PyObject *unused) {
    memset(e->hist, 0, (size_t)e->ring * e->L * e->R * sizeof(float));
    e->t = 0;
    reset_lpc(e);
    Py_RETURN_NONE;
}

static PyObject *Engine_set_lpc(Engine *e, PyObject *args) {
    PyObject *signal, *prediction, *decode;
    int order;
    if (!PyArg_ParseTuple(args, "OOOi", &signal, &prediction, &decode, &order)) return NULL;
    if (order < 1 || order > 64 || e->emb_s) {
        PyErr_SetString(PyExc_ValueError, "LPC order must be in [1, 64], set once");
        return NULL;
    }
    Py_ssize_t table = 4 * (Py_ssize_t)e->Q * e->R;
    if (!(e->emb_s = copy_buffer(signal, table, "signal table"))
        || !(e->emb_p = copy_buffer(prediction, table, "prediction table"))
        || !(e->decode = copy_buffer(decode, 8 * (Py_ssize_t)e->Q, "decode table")))
        return NULL;
    e->lpc_order = order;
    reset_lpc(e);
    Py_RETURN_NONE;
}

static PyObject *Engine_set_period(Engine *e, PyObject *args) {
    PyObject *table;
    int silence;
    if (!PyArg_ParseTuple(args, "Oi", &table, &silence)) return NULL;
    if (!e->lpc_order || e->emb_l || silence < 0 || silence >= e->Q) {
        PyErr_SetString(PyExc_ValueError, "the period input needs LPC inputs first, is set once, silence a class");
        return NULL;
    }
    if (!(e->emb_l = copy_buffer(table, 4 * (Py_ssize_t)e->Q * e->R, "period table"))) return NULL;
    e->silence = silence;
    reset_lpc(e);
    Py_RETURN_NONE;
}

static PyObject *Engine_lpc_push(Engine *e, PyObject *args) {
    PyObject *coefficients;
    int sample;
    if (!PyArg_ParseTuple(args, "iO", &sample, &coefficients)) return NULL;
    if (!e->lpc_order || sample < 0 || sample >= e->Q) {
        PyErr_SetString(PyExc_ValueError, "lpc_push: no LPC inputs set, or sample out of range");
        return NULL;
    }
    Py_buffer view;
    if (get_buffer(coefficients, &view, 8 * (Py_ssize_t)e->lpc_order, 0, "coefficients") < 0) return NULL;
    lpc_filter(e, sample, lpc_acc(e, view.buf));
    if (e->emb_l) period_push(e, sample);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
}

/* Replaces the history [ring][L][R] (float32): to check the engine against LiteRT from the same state. */
static PyObject *Engine_set_history(Engine *e, PyObject *obj) {
    Py_buffer view;
    Py_ssize_t bytes = (Py_ssize_t)e->ring * e->L * e->R * sizeof(float);
    if (get_buffer(obj, &view, bytes, 0, "history") < 0) return NULL;
    memcpy(e->hist, view.buf, bytes);
    PyBuffer_Release(&view);
    e->t = 0;
    reset_lpc(e);
    Py_RETURN_NONE;
}

typedef struct { Py_buffer cond, extra, noise, forced, logits, samples, lpc, lags; } RunBuffers;

static void release_run(RunBuffers *b) {
    Py_buffer *all[] = {&b->cond, &b->extra, &b->noise, &b->forced, &b->logits, &b->samples, &b->lpc, &b->lags};
    for (int i = 0; i < 8; i++) if (all[i]->obj) PyBuffer_Release(all[i]);
}

/* An optional buffer: None leaves view->obj NULL. */
static int optional(PyObject *obj, Py_buffer *view, Py_ssize_t bytes, int writable, const char *what) {
    view->obj = NULL;
    return obj == Py_None ? 0 : get_buffer(obj, view, bytes, writable, what);
}

static PyObject *Engine_run(Engine *e, PyObject *args) {
    Py_ssize_t n, cond_stride;
    int prev;
    PyObject *cond, *extra, *noise, *forced, *logits_out, *samples_out, *lpc = Py_None, *lags = Py_None;
    if (!PyArg_ParseTuple(args, "niOnOOOOO|OO", &n, &prev, &cond, &cond_stride, &extra, &noise, &forced,
                          &logits_out, &samples_out, &lpc, &lags))
        return NULL;
    if (n < 0 || prev < 0 || prev >= e->Q || cond_stride < 0) {
        PyErr_SetString(PyExc_ValueError, "bad sample count, previous sample or conditioning stride");
        return NULL;
    }
    Py_ssize_t rows = n > 0 ? n : 1, cond_rows = cond_stride ? rows : 1;
    RunBuffers b = {0};
    if (optional(cond, &b.cond, 4 * ((cond_rows - 1) * cond_stride + (Py_ssize_t)e->L * e->G), 0, "cond") < 0
        || optional(extra, &b.extra, 4 * rows * e->E, 0, "extra") < 0
        || optional(noise, &b.noise, 4 * rows * e->Q, 0, "noise") < 0
        || optional(forced, &b.forced, 8 * rows, 0, "forced") < 0
        || optional(logits_out, &b.logits, 4 * rows * e->Q, 1, "logits_out") < 0
        || get_buffer(samples_out, &b.samples, 8 * rows, 1, "samples_out") < 0
        || optional(lpc, &b.lpc, 8 * rows * e->lpc_order, 0, "lpc") < 0
        || optional(lags, &b.lags, 8 * rows, 0, "lags") < 0) {
        release_run(&b);
        return NULL;
    }
    const char *mismatch = NULL;
    if ((e->E > 0) != (b.extra.obj != NULL)) mismatch = "extra conditioning given to a model without it";
    if ((e->lpc_order > 0) != (b.lpc.obj != NULL)) mismatch = "LPC coefficients given to a model without LPC inputs";
    if ((e->emb_l != NULL) != (b.lags.obj != NULL)) mismatch = "lags given to a model without a period input";
    if (mismatch) {
        release_run(&b);
        PyErr_Format(PyExc_ValueError, "%s, or missing", mismatch);
        return NULL;
    }
    const float *cond_p = b.cond.buf, *extra_p = b.extra.buf, *noise_p = b.noise.buf;
    const int64_t *forced_p = b.forced.buf;
    const double *lpc_p = b.lpc.buf;
    const int64_t *lags_p = b.lags.buf;
    float *logits_p = b.logits.buf;
    int64_t *samples_p = b.samples.buf;
    int bad = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        float *now = e->hist + (size_t)(e->t & (e->ring - 1)) * e->L * e->R;
        if (lags_p && (lags_p[i] < 1 || lags_p[i] >= PERIOD_RING)) { bad = 2; break; }
        double acc = input_row(e, prev, lpc_p ? lpc_p + i * e->lpc_order : NULL, lags_p ? lags_p[i] : 0, now);
        step(e, cond_p ? cond_p + i * cond_stride : NULL, extra_p ? extra_p + i * e->E : NULL);
        if (logits_p) memcpy(logits_p + i * e->Q, e->logits, e->Q * sizeof(float));
        if (forced_p) {
            if (forced_p[i] < 0 || forced_p[i] >= e->Q) { bad = 1; break; }
            prev = (int)forced_p[i];
        } else {
            prev = e->kern->argmax(e->logits, noise_p ? noise_p + i * e->Q : NULL, e->Q);
        }
        samples_p[i] = prev;
        if (lpc_p) lpc_filter(e, prev, acc);
        if (lags_p) period_push(e, prev);
        e->t++;
    }
    Py_END_ALLOW_THREADS
    release_run(&b);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, bad == 2 ? "lag out of range" : "forced sample out of range");
        return NULL;
    }
    return PyLong_FromLong(prev);
}

static PyObject *Engine_kernels(Engine *e, void *closure) {
    return PyUnicode_FromString(e->kern->name);
}

static PyMethodDef Engine_methods[] = {
    {"reset", (PyCFunction)Engine_reset, METH_NOARGS, "Zeroes the history (silence before the first sample)."},
    {"set_lpc", (PyCFunction)Engine_set_lpc, METH_VARARGS,
     "set_lpc(signal_table, prediction_table, decode, order): LPCNet's inputs in layer 0's row"},
    {"set_period", (PyCFunction)Engine_set_period, METH_VARARGS,
     "set_period(period_table, silence): the excitation one period back in layer 0's row (format 4)"},
    {"lpc_push", (PyCFunction)Engine_lpc_push, METH_VARARGS,
     "lpc_push(sample, coefficients): one sample through the LPC state (teacher forcing's first)"},
    {"set_history", (PyCFunction)Engine_set_history, METH_O, "Replaces the history [ring, L, R] (float32) and restarts at t = 0."},
    {"run", (PyCFunction)Engine_run, METH_VARARGS,
     "run(n, prev, cond, cond_stride, extra, noise, forced, logits_out, samples_out) -> last sample"},
    {NULL}};

static PyGetSetDef Engine_getset[] = {
    {"kernels", (getter)Engine_kernels, NULL, "which matrix kernels run: avx2 or generic", NULL}, {NULL}};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "edge_runtime._stepkernel.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A WaveNet step graph's weights as one compiled sample loop.",
    .tp_methods = Engine_methods,
    .tp_getset = Engine_getset,
    .tp_new = Engine_new,
};


/* The buffers of n objects (C-contiguous, writable where asked), or -1 with an exception set and none held. */
static int get_buffers(PyObject *const *obj, Py_buffer *v, const int *writable, int n, const char *what) {
    for (int i = 0; i < n; i++) {
        if (get_buffer(obj[i], &v[i], 0, writable[i], what) < 0) {
            while (i--) PyBuffer_Release(&v[i]);
            return -1;
        }
    }
    return 0;
}

/* Releases get_buffers' n buffers; None, or NULL with `error` as a ValueError where !ok. */
static PyObject *release_buffers(Py_buffer *v, int n, int ok, const char *error) {
    for (int i = 0; i < n; i++) PyBuffer_Release(&v[i]);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, error);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* lpc_synthesis(samples, coefficients, past, offset, hop): s[t] = e[t] - sum_k a_k s[t-k] in place, for one
   stream (edge_runtime/lpc.py). samples: float64 [n], e in, s out; coefficients: float64 [frames, p], the frame
   of local sample i being (offset + i) / hop; past: float64 [p], s[t-1], s[t-2], ... carried across calls.
   The same float64 operations in the same order as lpc.py's fallback loop. */
static PyObject *lpc_synthesis(PyObject *self, PyObject *args) {
    PyObject *obj[3];  /* samples, coefficients, past */
    Py_buffer v[3];
    const int writable[3] = {1, 0, 1};
    Py_ssize_t offset, hop;
    if (!PyArg_ParseTuple(args, "OOOnn", &obj[0], &obj[1], &obj[2], &offset, &hop)
        || get_buffers(obj, v, writable, 3, "lpc_synthesis buffer") < 0)
        return NULL;
    Py_ssize_t n = v[0].len / (Py_ssize_t)sizeof(double), p = v[2].len / (Py_ssize_t)sizeof(double);
    Py_ssize_t frames = p ? v[1].len / (Py_ssize_t)sizeof(double) / p : 0;
    int ok = p > 0 && p <= 64 && hop > 0 && offset >= 0 && (n == 0 || (offset + n - 1) / hop < frames);
    if (ok) {
        double *s = v[0].buf, *past = v[2].buf, hist[64];
        const double *a = v[1].buf;
        memcpy(hist, past, p * sizeof(double));
        for (Py_ssize_t i = 0; i < n; i++) {
            const double *ak = a + ((offset + i) / hop) * p;
            double acc = 0.0;
            for (Py_ssize_t k = 0; k < p; k++) acc += ak[k] * hist[k];
            double y = s[i] - acc;
            memmove(hist + 1, hist, (p - 1) * sizeof(double));
            hist[0] = y;
            s[i] = y;
        }
        memcpy(past, hist, p * sizeof(double));
    }
    return release_buffers(v, 3, ok, "lpc_synthesis: bad order, hop, offset, or too few coefficient frames");
}

/* One stream's row of lpc_rows: the three embeddings summed in float32, then Port.quantize's float32
   operations where scale > 0 (x / scale rounded half to even, + zero, clipped). */
static void write_row(const float *x, const float *y, const float *z, Py_ssize_t R, double scale, int zero,
                      void *out) {
    for (Py_ssize_t i = 0; i < R; i++) {
        float row = (x[i] + y[i]) + z[i];
        if (scale <= 0) {
            ((float *)out)[i] = row;
        } else {
            float q = rintf(row / (float)scale) + (float)zero;
            ((int8_t *)out)[i] = (int8_t)(q < -128.0f ? -128.0f : q > 127.0f ? 127.0f : q);
        }
    }
}

/* lpc_rows(rows, prev, emb, emb_s, emb_p, coefficients, past, signal, acc, scale, zero): LPCNet's input rows of
   B streams for the LiteRT loop (edge_runtime/lpc.py InputRows; the native engine does the same inside its loop).
   rows: [B][R] out, float32, or int8 when scale > 0; prev: int64 [B]; emb, emb_s, emb_p: float32 [Q][R];
   coefficients, past: float64 [B][p] (this sample's coefficients, s[t-1], s[t-2], ...); signal: float64 [B],
   s[t-1]; acc: float64 [B] out, sum_k a_k s[t-k] (the prediction, negated, which the filter then subtracts). */
static PyObject *lpc_rows(PyObject *self, PyObject *args) {
    PyObject *obj[9];
    Py_buffer v[9];
    double scale;
    int zero;
    const int writable[9] = {1, 0, 0, 0, 0, 0, 0, 0, 1};
    if (!PyArg_ParseTuple(args, "OOOOOOOOOdi", &obj[0], &obj[1], &obj[2], &obj[3], &obj[4], &obj[5], &obj[6],
                          &obj[7], &obj[8], &scale, &zero)
        || get_buffers(obj, v, writable, 9, "lpc_rows buffer") < 0)
        return NULL;
    Py_ssize_t B = v[7].len / 8, QR = v[2].len / 4, R = B ? v[0].len / (scale > 0 ? 1 : 4) / B : 0;
    Py_ssize_t p = B ? v[6].len / 8 / B : 0, Q = R ? QR / R : 0;
    int ok = B > 0 && R > 0 && QR % R == 0 && p > 0 && p <= 64 && v[1].len == 8 * B && v[8].len == 8 * B
             && v[3].len == v[2].len && v[4].len == v[2].len && v[5].len == v[6].len;
    const int64_t *prev = v[1].buf;
    for (Py_ssize_t b = 0; ok && b < B; b++) ok = prev[b] >= 0 && prev[b] < Q;
    const float *emb = v[2].buf, *emb_s = v[3].buf, *emb_p = v[4].buf;
    const double *a = v[5].buf, *past = v[6].buf, *signal = v[7].buf;
    double *acc = v[8].buf;
    for (Py_ssize_t b = 0; ok && b < B; b++) {
        double sum = 0.0;
        for (Py_ssize_t k = 0; k < p; k++) sum += a[b * p + k] * past[b * p + k];
        acc[b] = sum;
        write_row(emb + prev[b] * R, emb_s + (Py_ssize_t)mu_law_class(signal[b], (int)Q) * R,
                  emb_p + (Py_ssize_t)mu_law_class(-sum, (int)Q) * R, R, scale, zero,
                  (char *)v[0].buf + b * R * (scale > 0 ? 1 : 4));
    }
    return release_buffers(v, 9, ok, "lpc_rows: buffers of mismatched sizes, or a sample out of range");
}

/* lpc_feed(samples, decode, acc, past, signal): the samples just generated through each stream's synthesis
   filter, s = decode[e] - acc (acc from lpc_rows), in place: past (float64 [B][p]) shifts, signal (float64 [B])
   becomes s. */
static PyObject *lpc_feed(PyObject *self, PyObject *args) {
    PyObject *obj[5];
    Py_buffer v[5];
    const int writable[5] = {0, 0, 0, 1, 1};
    if (!PyArg_ParseTuple(args, "OOOOO", &obj[0], &obj[1], &obj[2], &obj[3], &obj[4])
        || get_buffers(obj, v, writable, 5, "lpc_feed buffer") < 0)
        return NULL;
    Py_ssize_t B = v[4].len / 8, Q = v[1].len / 8, p = B ? v[3].len / 8 / B : 0;
    int ok = B > 0 && p > 0 && v[0].len == 8 * B && v[2].len == 8 * B;
    const int64_t *e = v[0].buf;
    for (Py_ssize_t b = 0; ok && b < B; b++) ok = e[b] >= 0 && e[b] < Q;
    const double *decode = v[1].buf, *acc = v[2].buf;
    double *past = v[3].buf, *signal = v[4].buf;
    for (Py_ssize_t b = 0; ok && b < B; b++) {
        double y = decode[e[b]] - acc[b];
        memmove(past + b * p + 1, past + b * p, (p - 1) * sizeof(double));
        past[b * p] = y;
        signal[b] = y;
    }
    return release_buffers(v, 5, ok, "lpc_feed: buffers of mismatched sizes, or a sample out of range");
}

static PyMethodDef module_methods[] = {
    {"lpc_feed", lpc_feed, METH_VARARGS,
     "lpc_feed(samples, decode, acc, past, signal): one sample per stream through the LPC filter"},
    {"lpc_rows", lpc_rows, METH_VARARGS,
     "lpc_rows(rows, prev, emb, emb_s, emb_p, coefficients, past, signal, acc, scale, zero): LPCNet's input rows"},
    {"lpc_synthesis", lpc_synthesis, METH_VARARGS,
     "lpc_synthesis(samples, coefficients, past, offset, hop): the LPC synthesis filter in place (edge_runtime/lpc.py)"},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_stepkernel", "Compiled WaveNet step loop.", -1,
                                    module_methods};

PyMODINIT_FUNC PyInit__stepkernel(void) {
    if (PyType_Ready(&EngineType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0) {
        Py_DECREF(&EngineType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
