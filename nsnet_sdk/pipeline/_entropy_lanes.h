/* The lane-generic part of _entropy.c, included once per lane count: L (8 or 16) patches side by
 * side, one per SIMD lane. Every name below is suffixed by SFX so both instances coexist. */
#define vf SFX(vf)
#define vi SFX(vi)
#define vd SFX(vd)
#define work_t SFX(work_t)
#define bfly SFX(bfly)
#define stage_pair SFX(stage_pair)
#define fft32 SFX(fft32)
#define vlog SFX(vlog)
#define vsqrt SFX(vsqrt)
#define group SFX(group)
#define run_all SFX(run_all)

/* The L/8 transposed halves x[h][c] as one vector: a register shuffle where the compiler has one
 * (a memcpy through memory makes a 512-bit load wait for two 256-bit stores to retire). */
#if L == 8
#define JOIN(x, c) (x)[0][c]
#elif defined(__has_builtin) && __has_builtin(__builtin_shufflevector)
#define JOIN(x, c) __builtin_shufflevector((x)[0][c], (x)[1][c], 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, \
                                           11, 12, 13, 14, 15)
#else
#define JOIN(x, c) join16((x)[0][c], (x)[1][c])
INLINE vf join16(vf8 a, vf8 b) {
    vf r;
    memcpy(&r, &a, sizeof a), memcpy((char *)&r + sizeof a, &b, sizeof b);
    return r;
}
#endif

typedef float vf __attribute__((vector_size(L * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(L * sizeof(int32_t))));
typedef double vd __attribute__((vector_size(L * sizeof(double))));

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

/* Work space of one group: the mean-removed grey patches, then their row spectra. */
typedef struct {
    vf g[P][P];      /* g[i][n]: pixel row i, column n of each lane's patch */
    vf xr[P][K];     /* row spectra, real / imaginary: xr[i][k] */
    vf xi[P][K];
} work_t;


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
            /* Pixels n0..n0+7 of 8 lanes at a time, transposed so that each vector holds one
             * pixel of every lane; 16 lanes join two such halves. */
            vf8 lo[L / 8][4], hi[L / 8][4];
            for (int h = 0; h < L / 8; h++) transpose8(s3 + 3 * (h * 8 * P + n0), lo[h], hi[h]);
            for (int c = 0; c < 4; c++) {
                const vf a = JOIN(lo, c), b = JOIN(hi, c);
                w->g[i][n0 + c] = a, w->g[i][n0 + c + 4] = b;
                sum += a + b;  /* integer patch sums below 2^24: exact in any order */
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
#undef vf
#undef vi
#undef vd
#undef work_t
#undef bfly
#undef stage_pair
#undef fft32
#undef vlog
#undef vsqrt
#undef group
#undef run_all
#undef JOIN
