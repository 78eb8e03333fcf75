/* Fused spectral entropy of every 32x32 grid patch of an 8-bit 3-channel image, in one pass.
 *
 * 16 patches of one patch row sit side by side, one per SIMD lane, so every patch runs the same
 * instructions: read the 8-bit pixels once, R+G+B in integers, remove each patch's mean exactly,
 * a 2-D real FFT (32-point radix-2 butterflies: pairs of pixel rows packed as one complex row,
 * then 17 complex column FFTs), magnitude, A*log(A) and the sums. The scalar end (the entropy in
 * float64) follows nsnet_sdk/preprocess/patches.py (_band_entropies), the fallback it must agree with.
 *
 * The same source is compiled three times (portable, AVX2, AVX-512) and picked at runtime by CPU
 * features. Built with -ffp-contract=off, each lane performs the same IEEE operations in the same
 * order on every ISA, so the three variants return bit-identical results.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define P 32  /* patch side */
#define L 8   /* patches per group (SIMD lanes: one AVX2 register of floats) */
#define K 17  /* P/2 + 1 half-spectrum columns */

typedef float vf __attribute__((vector_size(L * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(L * sizeof(int32_t))));
typedef double vd __attribute__((vector_size(L * sizeof(double))));

#define INLINE static inline __attribute__((always_inline))

/* exp(-2*pi*i*j/32), j = 0..15, rounded from double once at import. */
static float TW_RE[P / 2], TW_IM[P / 2];
static const int BITREV[P] = {0, 16, 8, 24, 4, 20, 12, 28, 2, 18, 10, 26, 6, 22, 14, 30,
                              1, 17, 9, 25, 5, 21, 13, 29, 3, 19, 11, 27, 7, 23, 15, 31};

/* One radix-2 butterfly on (a, b) with twiddle TW[t]. Twiddles 1, -i and (+-1 - i)/sqrt(2) skip
 * multiplications (only the FFT's own rounding changes, not the result it approximates). */
INLINE void bfly(vf *ar, vf *ai, vf *br, vf *bi, const int t) {
    const vf xr = *br, xi = *bi;
    const float c = TW_RE[4];
    vf tr, ti;
    if (t == 0) {
        tr = xr, ti = xi;
    } else if (t == 8) {           /* -i */
        tr = xi, ti = -xr;
    } else if (t == 4) {           /* (1 - i)/sqrt(2) */
        tr = (xr + xi) * c, ti = (xi - xr) * c;
    } else if (t == 12) {          /* (-1 - i)/sqrt(2) */
        tr = (xi - xr) * c, ti = -(xr + xi) * c;
    } else {
        tr = xr * TW_RE[t] - xi * TW_IM[t], ti = xr * TW_IM[t] + xi * TW_RE[t];
    }
    *br = *ar - tr;
    *bi = *ai - ti;
    *ar += tr;
    *ai += ti;
}

/* Radix-2 stages `half` and `2*half` in one pass over memory (a radix-2^2 pass): each group of
 * four elements goes through both stages in registers, with the same operations as two passes. */
INLINE void stage_pair(vf *re, vf *im, const vf *sr, const vf *si, const int stride, const int half) {
    const int s1 = (P / 2) / half, s2 = s1 / 2;
    _Pragma("GCC unroll 32") for (int blk = 0; blk < P; blk += 4 * half)
        _Pragma("GCC unroll 32") for (int j = 0; j < half; j++) {
            const int a = blk + j, b = a + half, c = b + half, d = c + half;
            /* The first pass reads its input straight from the source in bit-reversed order. */
            const int ia = sr ? BITREV[a] * stride : a, ib = sr ? BITREV[b] * stride : b;
            const int ic = sr ? BITREV[c] * stride : c, id = sr ? BITREV[d] * stride : d;
            const vf *xr = sr ? sr : re, *xi = sr ? si : im;
            vf ar = xr[ia], ai = xi[ia], br = xr[ib], bi = xi[ib];
            vf cr = xr[ic], ci = xi[ic], dr = xr[id], di = xi[id];
            bfly(&ar, &ai, &br, &bi, j * s1);
            bfly(&cr, &ci, &dr, &di, j * s1);
            bfly(&ar, &ai, &cr, &ci, j * s2);
            bfly(&br, &bi, &dr, &di, (j + half) * s2);
            re[a] = ar, im[a] = ai, re[b] = br, im[b] = bi;
            re[c] = cr, im[c] = ci, re[d] = dr, im[d] = di;
        }
}

/* 32-point complex FFT of L lanes: sr[n*stride] + i si[n*stride], n = 0..31 → re[k] + i im[k]. */
INLINE void fft32(vf *re, vf *im, const vf *sr, const vf *si, const int stride) {
    stage_pair(re, im, sr, si, stride, 1);       /* stages 1, 2 */
    stage_pair(re, im, NULL, NULL, 0, 4);        /* stages 4, 8 */
    _Pragma("GCC unroll 32") for (int j = 0; j < P / 2; j++)  /* stage 16 */
        bfly(&re[j], &im[j], &re[j + P / 2], &im[j + P / 2], j);
}

/* Natural log of positive normal floats (Cephes logf: ~1 ulp), vectorised with integer bit ops. */
INLINE vf vlog(vf x) {
    const vi b = (vi)x;
    vi e = ((b >> 23) & 0xff) - 126;                 /* x = m * 2^e, m in [0.5, 1) */
    const vf m = (vf)((b & 0x007fffff) | 0x3f000000);
    const vi small = m < 0.707106781186547524f;      /* all-ones where m < sqrt(1/2) */
    e = e + small;                                   /* ... then use 2m and e - 1 */
    const vf f = (m + (vf)((vi)m & small)) - 1.0f;   /* exact: 2m - 1 or m - 1 */
    const vf ef = __builtin_convertvector(e, vf);
    const vf z = f * f;
    vf y = 7.0376836292E-2f * f - 1.1514610310E-1f;
    y = y * f + 1.1676998740E-1f;
    y = y * f - 1.2420140846E-1f;
    y = y * f + 1.4249322787E-1f;
    y = y * f - 1.6668057665E-1f;
    y = y * f + 2.0000714765E-1f;
    y = y * f - 2.4999993993E-1f;
    y = y * f + 3.3333331174E-1f;
    y = y * f * z;
    y = y + -2.12194440E-4f * ef;
    y = y + -0.5f * z;
    return (f + y) + 0.693359375f * ef;
}

INLINE vf vsqrt(vf x) {
    vf r;
    for (int l = 0; l < L; l++) r[l] = __builtin_sqrtf(x[l]);
    return r;
}

typedef uint16_t vu16 __attribute__((vector_size(8 * sizeof(uint16_t))));

/* s[0], s[3], ..., s[21] widened to int32 (two shuffles of three unaligned loads). */
INLINE vi every_third(const uint16_t *s) {
    vu16 a, b, c;
    memcpy(&a, s, sizeof a), memcpy(&b, s + 8, sizeof b), memcpy(&c, s + 16, sizeof c);
    const vu16 x = __builtin_shuffle(a, b, (vu16){0, 3, 6, 9, 12, 15, 0, 0});
    return __builtin_convertvector(__builtin_shuffle(x, c, (vu16){0, 1, 2, 3, 4, 5, 10, 13}), vi);
}

/* Work space of one group: the mean-removed grey patches, then their row spectra. */
typedef struct {
    vf g[P][P];      /* g[i][n]: pixel row i, column n of each lane's patch */
    vf xr[P][K];     /* row spectra, real / imaginary: xr[i][k] */
    vf xi[P][K];
} work_t;

/* Entropies of `lanes` (1..L) adjacent patches whose top-left pixel is at `px`. */
INLINE void group(const uint8_t *px, Py_ssize_t stride, int lanes, work_t *w, double *out) {
    vf sum = {0};
    const int nb = lanes * P * 3;
    uint16_t s3[L * P * 3];  /* a local: the compiler sees it cannot alias the image */
    for (int j = nb - 2; j < L * P * 3; j++) s3[j] = 0;  /* absent lanes read zeros */
    for (int i = 0; i < P; i++) {
        const uint8_t *src = px + i * stride;
        /* Sliding sums of 3 bytes over the interleaved row: contiguous, so it vectorises; the
         * sums that start at a pixel (every third) are that pixel's R+G+B. */
        for (int j = 0; j < nb - 2; j++)
            s3[j] = (uint16_t)((uint16_t)src[j] + (uint16_t)src[j + 1] + (uint16_t)src[j + 2]);
        for (int n0 = 0; n0 < P; n0 += 8) {
            /* v[l] = pixels n0..n0+7 of lane l; an 8x8 transpose puts one pixel of every lane
             * in each vector (shuffles instead of 64 scalar loads). */
            vi v[L], t[L], u[L];
            for (int l = 0; l < L; l++) v[l] = every_third(s3 + 3 * (l * P + n0));
            for (int l = 0; l < L; l += 2) {
                t[l] = __builtin_shuffle(v[l], v[l + 1], (vi){0, 8, 1, 9, 4, 12, 5, 13});
                t[l + 1] = __builtin_shuffle(v[l], v[l + 1], (vi){2, 10, 3, 11, 6, 14, 7, 15});
            }
            for (int l = 0; l < L; l += 4)
                for (int h = 0; h < 2; h++) {
                    u[l + 2 * h] = __builtin_shuffle(t[l + h], t[l + h + 2], (vi){0, 1, 8, 9, 4, 5, 12, 13});
                    u[l + 2 * h + 1] = __builtin_shuffle(t[l + h], t[l + h + 2], (vi){2, 3, 10, 11, 6, 7, 14, 15});
                }
            for (int c = 0; c < 4; c++) {
                const vf lo = __builtin_convertvector(
                    __builtin_shuffle(u[c], u[c + 4], (vi){0, 1, 2, 3, 8, 9, 10, 11}), vf);
                const vf hi = __builtin_convertvector(
                    __builtin_shuffle(u[c], u[c + 4], (vi){4, 5, 6, 7, 12, 13, 14, 15}), vf);
                w->g[i][n0 + c] = lo, w->g[i][n0 + c + 4] = hi;
                sum += lo + hi;  /* integer patch sums below 2^24: exact in any order */
            }
        }
    }
    /* sum / 1024 is exact, and so is every g - mean: a flat patch becomes exactly zero. */
    const vf mean = sum * (1.0f / (P * P));
    for (int i = 0; i < P; i++)
        for (int n = 0; n < P; n++) w->g[i][n] -= mean;

    vf re[P], im[P];
    /* Rows 2m and 2m+1 as one complex row z = a + ib; A[k] = (Z[k] + conj Z[-k]) / 2,
     * B[k] = (Z[k] - conj Z[-k]) / 2i. */
    for (int m = 0; m < P / 2; m++) {
        fft32(re, im, w->g[2 * m], w->g[2 * m + 1], 1);
        for (int k = 0; k < K; k++) {
            const int nk = (P - k) & (P - 1);
            w->xr[2 * m][k] = (re[k] + re[nk]) * 0.5f;
            w->xi[2 * m][k] = (im[k] - im[nk]) * 0.5f;
            w->xr[2 * m + 1][k] = (im[k] + im[nk]) * 0.5f;
            w->xi[2 * m + 1][k] = (re[nk] - re[k]) * 0.5f;
        }
    }
    /* Column FFTs over the half spectrum; columns 1..15 stand for their Hermitian mirrors too. */
    double s_ac[L] = {0}, l_ac[L] = {0};
    const vf tiny = (vf){0} + 1e-30f;
    for (int k = 0; k < K; k++) {
        fft32(re, im, &w->xr[0][k], &w->xi[0][k], K);
        /* DC: the exact sum is used below; a zero term adds exactly +-0 to the sums, the same as
         * skipping it, and keeps the loop below branch-free so it unrolls. */
        if (k == 0) re[0] = im[0] = (vf){0};
        /* Sums of 8 terms in float32, then float64: plain float32 sums over a column would add
         * ~1e-6 of error to the entropy (more than the fallback's); this keeps it ~2e-7. */
        vd sa = {0}, sl = {0};
        for (int u0 = 0; u0 < P; u0 += 8) {
            vf pa = {0}, pl = {0};
            _Pragma("GCC unroll 8") for (int u = u0; u < u0 + 8; u++) {
                /* log A = log(A^2) / 2: the log no longer waits for the square root. */
                const vf a2 = re[u] * re[u] + im[u] * im[u];
                const vf a = vsqrt(a2);
                const vf a2max = (vf)(((vi)a2 & (vi)(a2 > tiny)) | ((vi)tiny & ~(vi)(a2 > tiny)));
                pa += a;
                pl += a * (vlog(a2max) * 0.5f);
            }
            sa += __builtin_convertvector(pa, vd);
            sl += __builtin_convertvector(pl, vd);
        }
        const double wk = (k == 0 || k == K - 1) ? 1.0 : 2.0;
        for (int l = 0; l < L; l++) {
            s_ac[l] += wk * sa[l];
            l_ac[l] += wk * sl[l];
        }
    }
    for (int l = 0; l < lanes; l++) {
        const double dc = (double)sum[l];
        const double s = dc + s_ac[l];
        /* -sum q log q with q = A/S  ==  log S - (sum A log A)/S; only DC non-zero -> exactly 0. */
        out[l] = s_ac[l] > 0 ? log(s) - ((dc > 0 ? dc * log(dc) : 0.0) + l_ac[l]) / s : 0.0;
    }
}

INLINE void run_all(const uint8_t *img, Py_ssize_t stride, Py_ssize_t nr, Py_ssize_t nc,
                    work_t *w, double *out) {
    for (Py_ssize_t r = 0; r < nr; r++)
        for (Py_ssize_t c = 0; c < nc; c += L) {
            const int lanes = (int)(nc - c < L ? nc - c : L);
            group(img + r * P * stride + c * P * 3, stride, lanes, w, out + r * nc + c);
        }
}

typedef void (*kernel_fn)(const uint8_t *, Py_ssize_t, Py_ssize_t, Py_ssize_t, work_t *, double *);

static void k_portable(const uint8_t *img, Py_ssize_t s, Py_ssize_t nr, Py_ssize_t nc, work_t *w,
                       double *out) {
    run_all(img, s, nr, nc, w, out);
}

#if defined(__GNUC__) && defined(__x86_64__)
#define HAVE_X86 1
__attribute__((target("avx2"))) static void k_avx2(const uint8_t *img, Py_ssize_t s, Py_ssize_t nr,
                                                   Py_ssize_t nc, work_t *w, double *out) {
    run_all(img, s, nr, nc, w, out);
}
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))) static void k_avx512(
    const uint8_t *img, Py_ssize_t s, Py_ssize_t nr, Py_ssize_t nc, work_t *w, double *out) {
    run_all(img, s, nr, nc, w, out);
}
#endif

typedef struct {
    const char *name;
    kernel_fn fn;
} variant_t;

static variant_t VARIANTS[3];
static int N_VARIANTS = 0;  /* supported on this CPU, best first */

static kernel_fn find(const char *name) {
    for (int i = 0; i < N_VARIANTS; i++)
        if (strcmp(VARIANTS[i].name, name) == 0) return VARIANTS[i].fn;
    return NULL;
}

PyDoc_STRVAR(entropies_doc,
"entropies(image, out, variant)\n--\n\n"
"Write the spectral entropy of every 32x32 grid patch of `image` (uint8 HxWx3, pixels and\n"
"channels contiguous, any row stride; channel order does not matter) into `out` (a writable\n"
"C-contiguous float64 buffer of (H//32)*(W//32) items, raster order). `variant` is one of\n"
"variants(). The GIL is released while it runs.");

static PyObject *py_entropies(PyObject *self, PyObject *args) {
    PyObject *img_obj, *out_obj;
    const char *name;
    if (!PyArg_ParseTuple(args, "OOs", &img_obj, &out_obj, &name)) return NULL;
    kernel_fn fn = find(name);
    if (!fn) return PyErr_Format(PyExc_ValueError, "unknown or unsupported kernel variant %s", name);
    Py_buffer img, out;
    if (PyObject_GetBuffer(img_obj, &img, PyBUF_RECORDS_RO) < 0) return NULL;
    if (img.ndim != 3 || img.itemsize != 1 || img.shape[2] != 3 || img.strides[2] != 1 ||
        img.strides[1] != 3 || img.strides[0] < 3 * img.shape[1]) {
        PyBuffer_Release(&img);
        return PyErr_Format(PyExc_ValueError, "image must be uint8 HxWx3 with contiguous pixels");
    }
    if (PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&img);
        return NULL;
    }
    const Py_ssize_t nr = img.shape[0] / P, nc = img.shape[1] / P;
    if (out.len != (Py_ssize_t)(nr * nc * sizeof(double))) {
        PyBuffer_Release(&img);
        PyBuffer_Release(&out);
        return PyErr_Format(PyExc_ValueError, "out holds %zd bytes, need %zd float64", out.len, nr * nc);
    }
    work_t *w = aligned_alloc(64, (sizeof(work_t) + 63) / 64 * 64);
    if (!w) {
        PyBuffer_Release(&img);
        PyBuffer_Release(&out);
        return PyErr_NoMemory();
    }
    Py_BEGIN_ALLOW_THREADS
    fn((const uint8_t *)img.buf, img.strides[0], nr, nc, w, (double *)out.buf);
    Py_END_ALLOW_THREADS
    free(w);
    PyBuffer_Release(&img);
    PyBuffer_Release(&out);
    Py_RETURN_NONE;
}

static PyObject *py_variants(PyObject *self, PyObject *unused) {
    PyObject *t = PyTuple_New(N_VARIANTS);
    if (!t) return NULL;
    for (int i = 0; i < N_VARIANTS; i++) {
        PyObject *s = PyUnicode_FromString(VARIANTS[i].name);
        if (!s) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, s);
    }
    return t;
}

static PyMethodDef methods[] = {
    {"entropies", py_entropies, METH_VARARGS, entropies_doc},
    {"variants", py_variants, METH_NOARGS, "Kernel variants this CPU runs, best first."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_entropy",
                                    "Fused compiled 32x32 patch-entropy kernel.", -1, methods};

PyMODINIT_FUNC PyInit__entropy(void) {
    for (int j = 0; j < P / 2; j++) {
        TW_RE[j] = (float)cos(2.0 * M_PI * j / P);
        TW_IM[j] = (float)-sin(2.0 * M_PI * j / P);
    }
    N_VARIANTS = 0;
#ifdef HAVE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        VARIANTS[N_VARIANTS++] = (variant_t){"c-avx512", k_avx512};
    if (__builtin_cpu_supports("avx2")) VARIANTS[N_VARIANTS++] = (variant_t){"c-avx2", k_avx2};
#endif
    VARIANTS[N_VARIANTS++] = (variant_t){"c-portable", k_portable};
    return PyModule_Create(&module);
}
