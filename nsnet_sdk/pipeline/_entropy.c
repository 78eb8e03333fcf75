/* Fused spectral entropy of every 32x32 grid patch of an 8-bit 3-channel image, in one pass.
 *
 * 8 or 16 patches of one patch row sit side by side, one per SIMD lane, so every patch runs the same
 * instructions: read the 8-bit pixels once, R+G+B in integers, transposed so that one vector holds
 * one pixel of every lane; a 2-D real FFT (32-point radix-2 butterflies: pairs of pixel rows packed
 * as one complex row, then 17 complex column FFTs over the half spectrum); magnitude, A*log(A)
 * (table + polynomial log) and the sums. The mean is never subtracted: it reaches only the DC bin,
 * which is the exact integer sum. The scalar end (the entropy in float64) follows
 * nsnet_sdk/pipeline/patches.py (_band_entropies), the fallback it must agree with.
 *
 * The lane-generic part (_entropy_lanes.h) is instantiated for 8 and 16 lanes and compiled four
 * times (portable, AVX2 and AVX-512 with 8 lanes; AVX-512 with 16 and its own row loader:
 * c-avx512x16); which runs is measured at first use (nsnet_sdk/pipeline/patches.py,
 * measured_variant). Built with -ffp-contract=off and using only IEEE additions, multiplications,
 * square roots and exact integer / shuffle operations, each lane performs the same floating-point
 * operations in the same order on every ISA and at either width, so every variant returns
 * bit-identical results.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__)
#define HAVE_X86 1
#include <immintrin.h>
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
#endif

#define P 32  /* patch side */
#define K 17  /* P/2 + 1 half-spectrum columns */

#define INLINE static inline __attribute__((always_inline))

/* exp(-2*pi*i*j/32), j = 0..15, rounded from double once at import. */
static float TW_RE[P / 2], TW_IM[P / 2];
/* For the log: c_j = 1 + (j + 1/2)/16, j = 0..15: log c_j and 2^-23 / c_j (see _entropy_lanes.h). */
static float LOG_C[16] __attribute__((aligned(64))), INV_C[16] __attribute__((aligned(64)));
static const int BITREV[P] = {0, 16, 8, 24, 4, 20, 12, 28, 2, 18, 10, 26, 6, 22, 14, 30,
                              1, 17, 9, 25, 5, 21, 13, 29, 3, 19, 11, 27, 7, 23, 15, 31};

typedef uint16_t vu16 __attribute__((vector_size(8 * sizeof(uint16_t))));
typedef int32_t vi8 __attribute__((vector_size(8 * sizeof(int32_t))));
typedef float vf8 __attribute__((vector_size(8 * sizeof(float))));

/* s[0], s[3], ..., s[21] widened to int32 (two shuffles of three unaligned loads). */
INLINE vi8 every_third(const uint16_t *s) {
    vu16 a, b, c;
    memcpy(&a, s, sizeof a), memcpy(&b, s + 8, sizeof b), memcpy(&c, s + 16, sizeof c);
    const vu16 x = __builtin_shuffle(a, b, (vu16){0, 3, 6, 9, 12, 15, 0, 0});
    return __builtin_convertvector(__builtin_shuffle(x, c, (vu16){0, 1, 2, 3, 4, 5, 10, 13}), vi8);
}

/* 8 lanes' R+G+B sums (s3: lane l's pixel n at s3[3 * (l * P + n)]), pixels 0..7: an 8x8
 * transpose (shuffles instead of 64 scalar loads); lo[c] = pixel c and hi[c] = pixel c + 4 of
 * every lane, as floats (exact: integers below 2^24). */
INLINE void transpose8(const uint16_t *s3, vf8 lo[4], vf8 hi[4]) {
    vi8 v[8], t[8], u[8];
    for (int l = 0; l < 8; l++) v[l] = every_third(s3 + 3 * l * P);
    for (int l = 0; l < 8; l += 2) {
        t[l] = __builtin_shuffle(v[l], v[l + 1], (vi8){0, 8, 1, 9, 4, 12, 5, 13});
        t[l + 1] = __builtin_shuffle(v[l], v[l + 1], (vi8){2, 10, 3, 11, 6, 14, 7, 15});
    }
    for (int l = 0; l < 8; l += 4)
        for (int h = 0; h < 2; h++) {
            u[l + 2 * h] = __builtin_shuffle(t[l + h], t[l + h + 2], (vi8){0, 1, 8, 9, 4, 5, 12, 13});
            u[l + 2 * h + 1] = __builtin_shuffle(t[l + h], t[l + h + 2], (vi8){2, 3, 10, 11, 6, 7, 14, 15});
        }
    for (int c = 0; c < 4; c++) {
        lo[c] = __builtin_convertvector(__builtin_shuffle(u[c], u[c + 4], (vi8){0, 1, 2, 3, 8, 9, 10, 11}), vf8);
        hi[c] = __builtin_convertvector(__builtin_shuffle(u[c], u[c + 4], (vi8){4, 5, 6, 7, 12, 13, 14, 15}), vf8);
    }
}

#define L 8
#define SFX(n) n##_8
#define TARGET
#include "_entropy_lanes.h"
#undef L
#undef SFX
#undef TARGET
#ifdef HAVE_X86
/* 16 lanes: AVX-512 only (its row loader uses AVX-512BW intrinsics), so every function of this
 * instance is compiled for it and inlined into k_avx512x16 alone. */
#define L 16
#define SFX(n) n##_16
#define TARGET AVX512
#include "_entropy_lanes.h"
#undef L
#undef SFX
#undef TARGET
#define WORK_BYTES sizeof(work_t_16)  /* the larger work space */
#else
#define WORK_BYTES sizeof(work_t_8)
#endif

typedef void (*kernel_fn)(const uint8_t *, Py_ssize_t, Py_ssize_t, Py_ssize_t, void *, double *);

static void k_portable(const uint8_t *img, Py_ssize_t s, Py_ssize_t nr, Py_ssize_t nc, void *w,
                       double *out) {
    run_all_8(img, s, nr, nc, w, out);
}

#ifdef HAVE_X86
__attribute__((target("avx2"))) static void k_avx2(const uint8_t *img, Py_ssize_t s, Py_ssize_t nr,
                                                   Py_ssize_t nc, void *w, double *out) {
    run_all_8(img, s, nr, nc, w, out);
}
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))) static void k_avx512(
    const uint8_t *img, Py_ssize_t s, Py_ssize_t nr, Py_ssize_t nc, void *w, double *out) {
    run_all_8(img, s, nr, nc, w, out);
}
/* 16 patches per group: one 512-bit register of floats per value (the 8-lane build above uses
 * half the register width). */
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))) static void k_avx512x16(
    const uint8_t *img, Py_ssize_t s, Py_ssize_t nr, Py_ssize_t nc, void *w, double *out) {
    run_all_16(img, s, nr, nc, w, out);
}
#endif

typedef struct {
    const char *name;
    kernel_fn fn;
} variant_t;

static variant_t VARIANTS[4];
static int N_VARIANTS = 0;  /* supported on this CPU, best first */

static kernel_fn find(const char *name) {
    for (int i = 0; i < N_VARIANTS; i++)
        if (strcmp(VARIANTS[i].name, name) == 0) return VARIANTS[i].fn;
    return NULL;
}

/* uint8 H x W x 3 with contiguous pixels and channels, any row stride: what the kernels read. */
static int is_image(const Py_buffer *b) {
    return b->ndim == 3 && b->itemsize == 1 && b->shape[2] == 3 && b->strides[2] == 1 &&
           b->strides[1] == 3 && b->strides[0] >= 3 * b->shape[1];
}

/* 8-byte integer items (numpy's int64 is 'q' or 'l'). */
static int is_int64(const Py_buffer *b) {
    return b->itemsize == 8 && b->format && strchr("qlLQ", b->format[strlen(b->format) - 1]) != NULL;
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
    if (!is_image(&img)) {
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
    void *w = aligned_alloc(64, (WORK_BYTES + 63) / 64 * 64);
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

PyDoc_STRVAR(select_doc,
"select(entropies, out)\n--\n\n"
"Write into `out` (a C-contiguous int64 buffer of k items) the raster indices of the patches for\n"
"the k mosaic slots, given `entropies` (a C-contiguous float64 buffer, no NaN): order patches by\n"
"entropy descending, ties by index ascending; take the first ceil(k/2), then the last floor(k/2)\n"
"of that order from the end; with fewer than k patches, the order repeated. The compiled twin\n"
"of patches.mosaic_slots.");

/* Patch a comes before patch b in the selection order. */
static inline int before(const double *e, int64_t a, int64_t b) {
    return e[a] > e[b] || (e[a] == e[b] && a < b);
}

/* The first m of the order (after = 0), or the last m from the end (after = 1), into top[0..m):
 * one pass, each index inserted into a sorted list of at most m. */
static void extreme(const double *e, Py_ssize_t n, int64_t *top, Py_ssize_t m, int after) {
    Py_ssize_t t = 0;
    for (int64_t i = 0; m > 0 && i < n; i++) {
        if (t == m && (after ? !before(e, top[m - 1], i) : !before(e, i, top[m - 1]))) continue;
        Py_ssize_t j = t < m ? t++ : m - 1;
        while (j > 0 && (after ? before(e, top[j - 1], i) : before(e, i, top[j - 1]))) {
            top[j] = top[j - 1];
            j--;
        }
        top[j] = i;
    }
}

static PyObject *py_select(PyObject *self, PyObject *args) {
    PyObject *e_obj, *out_obj;
    if (!PyArg_ParseTuple(args, "OO", &e_obj, &out_obj)) return NULL;
    Py_buffer eb, ob;
    if (PyObject_GetBuffer(e_obj, &eb, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (PyObject_GetBuffer(out_obj, &ob, PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&eb);
        return NULL;
    }
    const char *why = NULL;
    const Py_ssize_t n = eb.len / 8, k = ob.len / 8;
    const double *e = (const double *)eb.buf;
    int64_t *out = (int64_t *)ob.buf;
    if (eb.itemsize != 8 || !eb.format || eb.format[strlen(eb.format) - 1] != 'd')
        why = "entropies must be float64";
    else if (!is_int64(&ob))
        why = "out must be int64";
    else if (n < 1 || k < 1)
        why = "entropies and out must not be empty";
    for (Py_ssize_t i = 0; !why && i < n; i++)
        if (isnan(e[i])) why = "an entropy is NaN";
    if (!why && n >= k) {
        const Py_ssize_t high = (k + 1) / 2;
        extreme(e, n, out, high, 0);
        extreme(e, n, out + high, k - high, 1);
    } else if (!why) {
        extreme(e, n, out, n, 0);  /* the whole order (n < k patches: a small image) */
        for (Py_ssize_t i = n; i < k; i++) out[i] = out[i % n];
    }
    PyBuffer_Release(&eb);
    PyBuffer_Release(&ob);
    if (why) return PyErr_Format(PyExc_ValueError, "%s", why);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(mosaic_doc,
"mosaic(image, slots, out, patch)\n--\n\n"
"Copy grid patch `slots[i]` (raster index into the (H//patch) x (W//patch) grid of `image`,\n"
"uint8 HxWx3 with contiguous pixels, any row stride) to mosaic slot i of `out` (a C-contiguous\n"
"uint8 (g*patch, g*patch, 3) buffer, g*g = len(slots)): row i // g, column i % g. `slots`: a\n"
"contiguous int64 buffer. The compiled twin of the gather in patches.patch_mosaic.");

static PyObject *py_mosaic(PyObject *self, PyObject *args) {
    PyObject *img_obj, *idx_obj, *out_obj;
    Py_ssize_t p;
    if (!PyArg_ParseTuple(args, "OOOn", &img_obj, &idx_obj, &out_obj, &p)) return NULL;
    Py_buffer img, idx, out;
    if (PyObject_GetBuffer(img_obj, &img, PyBUF_RECORDS_RO) < 0) return NULL;
    if (PyObject_GetBuffer(idx_obj, &idx, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&img);
        return NULL;
    }
    if (PyObject_GetBuffer(out_obj, &out, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&img);
        PyBuffer_Release(&idx);
        return NULL;
    }
    const char *why = NULL;
    Py_ssize_t g = 0, n = idx.len / (Py_ssize_t)sizeof(int64_t);
    while ((g + 1) * (g + 1) <= n) g++;
    if (!is_image(&img))
        why = "image must be uint8 HxWx3 with contiguous pixels";
    else if (!is_int64(&idx))
        why = "slots must be int64";
    else if (p < 1 || n < 1 || g * g != n)
        why = "slots must hold a square number of patches";
    else if (out.len != g * p * g * p * 3)
        why = "out must be uint8 (g*patch, g*patch, 3) for g*g slots";
    const Py_ssize_t nr = why ? 0 : img.shape[0] / p, nc = why ? 0 : img.shape[1] / p;
    const int64_t *slot = (const int64_t *)idx.buf;
    for (Py_ssize_t i = 0; !why && i < n; i++)
        if (slot[i] < 0 || slot[i] >= nr * nc) why = "a slot names no patch of the image";
    if (!why) {
        const uint8_t *src = (const uint8_t *)img.buf;
        uint8_t *dst = (uint8_t *)out.buf;
        const Py_ssize_t run = p * 3, line = g * run;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t i = 0; i < n; i++) {
            const uint8_t *from = src + (slot[i] / nc) * p * img.strides[0] + (slot[i] % nc) * run;
            uint8_t *to = dst + (i / g) * p * line + (i % g) * run;
            for (Py_ssize_t y = 0; y < p; y++) memcpy(to + y * line, from + y * img.strides[0], run);
        }
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&img);
    PyBuffer_Release(&idx);
    PyBuffer_Release(&out);
    if (why) return PyErr_Format(PyExc_ValueError, "%s", why);
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
    {"mosaic", py_mosaic, METH_VARARGS, mosaic_doc},
    {"select", py_select, METH_VARARGS, select_doc},
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
    for (int j = 0; j < 16; j++) {
        const double c = 1.0 + (j + 0.5) / 16;
        LOG_C[j] = (float)log(c);
        INV_C[j] = (float)(0x1p-23 / c);
    }
    N_VARIANTS = 0;
#ifdef HAVE_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
        VARIANTS[N_VARIANTS++] = (variant_t){"c-avx512x16", k_avx512x16};
        VARIANTS[N_VARIANTS++] = (variant_t){"c-avx512", k_avx512};
    }
    if (__builtin_cpu_supports("avx2")) VARIANTS[N_VARIANTS++] = (variant_t){"c-avx2", k_avx2};
#endif
    VARIANTS[N_VARIANTS++] = (variant_t){"c-portable", k_portable};
    return PyModule_Create(&module);
}
