/* The lane-generic part of _entropy.c, included once per lane count: L (8 or 16) patches side by
 * side, one per SIMD lane. Every name below is suffixed by SFX so both instances coexist. */
#define vf SFX(vf)
#define vi SFX(vi)
#define vd SFX(vd)
#define work_t SFX(work_t)
#define bfly SFX(bfly)
#define stage_pair SFX(stage_pair)
#define fft32 SFX(fft32)
#define vsqrt SFX(vsqrt)
#define group SFX(group)
#define run_all SFX(run_all)
#define load_row SFX(load_row)
#define transpose16 SFX(transpose16)
#define rgb_sums SFX(rgb_sums)
#define vector_u32 SFX(vector_u32)

/* The L/8 transposed halves x[h][c] as one vector: a register shuffle where the compiler has one
 * (a memcpy through memory makes a 512-bit load wait for two 256-bit stores to retire). */
#if L == 8
#define JOIN(x, c) (x)[0][c]
#elif defined(__has_builtin) && __has_builtin(__builtin_shufflevector)
#define JOIN(x, c) __builtin_shufflevector((x)[0][c], (x)[1][c], 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, \
                                           11, 12, 13, 14, 15)
#else
#define JOIN(x, c) join16((x)[0][c], (x)[1][c])
INLINE TARGET vf join16(vf8 a, vf8 b) {
    vf r;
    memcpy(&r, &a, sizeof a), memcpy((char *)&r + sizeof a, &b, sizeof b);
    return r;
}
#endif

typedef float vf __attribute__((vector_size(L * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(L * sizeof(int32_t))));
typedef double vd __attribute__((vector_size(L * sizeof(double))));
typedef uint32_t vector_u32 __attribute__((vector_size(L * sizeof(uint32_t))));

/* One radix-2 butterfly on (a, b) with twiddle TW[t]. Twiddles 1, -i and (+-1 - i)/sqrt(2) skip
 * multiplications (only the FFT's own rounding changes, not the result it approximates). */
INLINE TARGET void bfly(vf *ar, vf *ai, vf *br, vf *bi, const int t) {
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
INLINE TARGET void stage_pair(vf *re, vf *im, const vf *sr, const vf *si, const int stride, const int half) {
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
INLINE TARGET void fft32(vf *re, vf *im, const vf *sr, const vf *si, const int stride) {
    stage_pair(re, im, sr, si, stride, 1);       /* stages 1, 2 */
    stage_pair(re, im, NULL, NULL, 0, 4);        /* stages 4, 8 */
    _Pragma("GCC unroll 32") for (int j = 0; j < P / 2; j++)  /* stage 16 */
        bfly(&re[j], &im[j], &re[j + P / 2], &im[j + P / 2], j);
}

INLINE TARGET vf vsqrt(vf x) {
    vf r;
    for (int l = 0; l < L; l++) r[l] = __builtin_sqrtf(x[l]);
    return r;
}

/* Work space of one group: the row spectra, real / imaginary: xr[i][k]. */
typedef struct {
    vf xr[P][K];
    vf xi[P][K];
} work_t;

#if L == 16
/* 16 x 16 transpose of 32-bit elements in four steps of 16 two-register shuffles (log2 16): step
 * b swaps the off-diagonal b x b blocks of every pair of rows (r, r + b). */
INLINE TARGET void transpose16(vi w[16]) {
#define TSTEP(b)                                                                                   \
    for (int r = 0; r < 16; r++) {                                                                 \
        if (r & (b)) continue;                                                                     \
        const vi x = w[r], y = w[r + (b)];                                                         \
        w[r] = __builtin_shuffle(x, y, LO##b);                                                     \
        w[r + (b)] = __builtin_shuffle(x, y, HI##b);                                               \
    }
    const vi LO8 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
    const vi HI8 = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
    const vi LO4 = {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27};
    const vi HI4 = {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31};
    const vi LO2 = {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29};
    const vi HI2 = {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31};
    const vi LO1 = {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30};
    const vi HI1 = {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31};
    TSTEP(8) TSTEP(4) TSTEP(2) TSTEP(1)
#undef TSTEP
}

/* R+G+B of 16 pixels (48 bytes at the start of x's dwords d0..d0+11) as 16 int32: each 128-bit
 * lane takes 4 pixels (vpermd), spreads them one per dword as R, G, B, 0 (vpshufb), and two
 * multiply-adds with ones sum each dword's bytes. */
INLINE TARGET __m512i rgb_sums(__m512i x, const int d0) {
    const __m512i at = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 0, 3, 4, 5, 0, 6, 7, 8, 0, 9, 10, 11, 0),
                                        _mm512_set1_epi32(d0));
    const __m512i spread = _mm512_broadcast_i32x4(
        _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1));
    x = _mm512_shuffle_epi8(_mm512_permutexvar_epi32(at, x), spread);
    return _mm512_madd_epi16(_mm512_maddubs_epi16(x, _mm512_set1_epi8(1)), _mm512_set1_epi16(1));
}

/* One pixel row of the 16 lanes' patches (row pointer src, lanes present) as g[n] = pixel n of
 * every lane, R+G+B as floats. Each lane's 96 bytes are read by two 64-byte loads (bytes 0..63 and
 * 32..95: nothing outside the patch), summed per pixel, packed to 16 bits (pixels 4q..4q+3 and
 * 16+4q..16+4q+3 in 128-bit lane q), and one 16 x 16 transpose of pixel pairs puts one pixel of
 * every patch in each vector. */
INLINE TARGET void load_row(const uint8_t *src, int lanes, vf g[P]) {
    vi w[16];
    for (int l = 0; l < 16; l++) {
        if (l < lanes) {
            const __m512i lo = rgb_sums(_mm512_loadu_si512(src + 96 * l), 0);
            const __m512i hi = rgb_sums(_mm512_loadu_si512(src + 96 * l + 32), 4);
            w[l] = (vi)_mm512_packus_epi32(lo, hi);
        } else {
            w[l] = (vi){0};  /* absent lanes: zeros */
        }
    }
    transpose16(w);  /* w[d]: the d-th pixel pair of every lane */
    _Pragma("GCC unroll 16") for (int d = 0; d < 16; d++) {
        const int q = d / 4, t = d % 4, n = (t < 2 ? 4 * q + 2 * t : 16 + 4 * q + 2 * (t - 2));
        g[n] = __builtin_convertvector(w[d] & 0xffff, vf);
        g[n + 1] = __builtin_convertvector((vi)((vector_u32)w[d] >> 16), vf);
    }
}
#else
/* One pixel row of the 8 lanes' patches as g[n] (pixel n of every lane), R+G+B as floats: sliding
 * sums of 3 bytes over the interleaved row (contiguous, so it vectorises; the sums that start at a
 * pixel, every third, are that pixel's R+G+B), then 8 x 8 transposes. */
INLINE TARGET void load_row(const uint8_t *src, int lanes, vf g[P]) {
    const int nb = lanes * P * 3;
    uint16_t s3[L * P * 3];  /* a local: the compiler sees it cannot alias the image */
    for (int j = nb - 2; j < L * P * 3; j++) s3[j] = 0;  /* absent lanes read zeros */
    for (int j = 0; j < nb - 2; j++)
        s3[j] = (uint16_t)((uint16_t)src[j] + (uint16_t)src[j + 1] + (uint16_t)src[j + 2]);
    for (int n0 = 0; n0 < P; n0 += 8) {
        vf8 lo[4], hi[4];
        transpose8(s3 + 3 * n0, lo, hi);
        for (int c = 0; c < 4; c++) g[n0 + c] = lo[c], g[n0 + c + 4] = hi[c];
    }
}
#endif

INLINE TARGET void group(const uint8_t *px, Py_ssize_t stride, int lanes, work_t *w, double *out) {
    vf sum = {0};
    vf re[P], im[P], ga[P], gb[P];
    /* The mean is not removed: it only enters the DC bin, which is replaced by the exact sum. Every
     * other bin is bit-identical with or without it, because the values that hold the mean (the
     * DC outputs of sub-FFTs: sums of integers below 2^24) are exact, so no rounding ever sees it;
     * a flat patch still gets an exactly zero spectrum. */
    for (int m = 0; m < P / 2; m++) {
        for (int h = 0; h < 2; h++) {
            vf *g = h ? gb : ga;
            load_row(px + (2 * m + h) * stride, lanes, g);
        }
        /* Rows 2m and 2m+1 as one complex row z = a + ib; A[k] = (Z[k] + conj Z[-k]) / 2,
         * B[k] = (Z[k] - conj Z[-k]) / 2i. */
        fft32(re, im, ga, gb, 1);
        for (int k = 0; k < K; k++) {
            const int nk = (P - k) & (P - 1);
            w->xr[2 * m][k] = (re[k] + re[nk]) * 0.5f;
            w->xi[2 * m][k] = (im[k] - im[nk]) * 0.5f;
            w->xr[2 * m + 1][k] = (im[k] + im[nk]) * 0.5f;
            w->xi[2 * m + 1][k] = (re[nk] - re[k]) * 0.5f;
        }
    }
    /* Column FFTs over the half spectrum; columns 1..15 stand for their Hermitian mirrors too. */
    double s_ac[L] = {0}, e_ac[L] = {0}, l_ac[L] = {0};
#if L == 16
    vf logc, invs;
    memcpy(&logc, LOG_C, sizeof logc), memcpy(&invs, INV_C, sizeof invs);
#define LOOKUP(t, j) __builtin_shuffle(t, j)
#else
    vf logc[2], invs[2];
    memcpy(logc, LOG_C, sizeof logc), memcpy(invs, INV_C, sizeof invs);
#define LOOKUP(t, j) __builtin_shuffle((t)[0], (t)[1], j)
#endif
    for (int k = 0; k < K; k++) {
        fft32(re, im, &w->xr[0][k], &w->xi[0][k], K);
        /* DC: the patch sum, exact (every value it passes through is an integer below 2^24, in
         * the row FFTs and here), kept apart; a zero term adds exactly +-0 to the sums, the same as
         * skipping it, and keeps the loop below branch-free so it unrolls. */
        if (k == 0) sum = re[0], re[0] = im[0] = (vf){0};
        /* A log A = A log(A^2) / 2 with A^2 = 2^e m, m in [1, 2): log(A^2) = e log 2 + log c_j +
         * log1p(r), c_j the centre of m's sixteenth of [1, 2) (its top 4 mantissa bits j, a table
         * lookup by register shuffle), r = (m - c_j) / c_j with |r| < 1/32, log1p a degree-3
         * minimax polynomial (error 3.7e-8). A e and A (log c_j + log1p r) are summed apart, so
         * the large e log 2 is never rounded in float32. m - c_j is exact: the low 19 mantissa bits
         * minus 2^18, times 2^-23 / c_j from the table. All integer bit arithmetic: A^2 = 0 (or a
         * subnormal) gives a finite garbage log, multiplied by A = 0 (or ~1e-20): no branch.
         * Sums of 8 terms in float32, then float64: plain float32 sums over a column would add
         * ~1e-6 of error to the entropy (more than the fallback's). */
        vd sa = {0}, se = {0}, sl = {0};
        for (int u0 = 0; u0 < P; u0 += 8) {
            vf pa = {0}, pe = {0}, pl = {0};
            _Pragma("GCC unroll 8") for (int u = u0; u < u0 + 8; u++) {
                const vf a2 = re[u] * re[u] + im[u] * im[u];
                const vf a = vsqrt(a2);
                const vi bits = (vi)a2;
                const vf e = __builtin_convertvector((bits >> 23) - 127, vf);
                const vi j = (bits >> 19) & 15;
                const vf r = __builtin_convertvector((bits & 0x7ffff) - 0x40000, vf) * LOOKUP(invs, j);
                const vf l1p = r + r * r * (0.33351711f * r - 0.50018967f);
                pa += a;
                pe += a * e;
                pl += a * (LOOKUP(logc, j) + l1p);
            }
            sa += __builtin_convertvector(pa, vd);
            se += __builtin_convertvector(pe, vd);
            sl += __builtin_convertvector(pl, vd);
        }
        const double wk = (k == 0 || k == K - 1) ? 1.0 : 2.0;
        for (int l = 0; l < L; l++) {
            s_ac[l] += wk * sa[l];
            e_ac[l] += wk * se[l];
            l_ac[l] += wk * sl[l];
        }
    }
#undef LOOKUP
    for (int l = 0; l < L; l++) l_ac[l] = 0.5 * (M_LN2 * e_ac[l] + l_ac[l]);  /* sum of A log A */
    for (int l = 0; l < lanes; l++) {
        const double dc = (double)sum[l];
        const double s = dc + s_ac[l];
        /* -sum q log q with q = A/S  ==  log S - (sum A log A)/S; only DC non-zero -> exactly 0. */
        out[l] = s_ac[l] > 0 ? log(s) - ((dc > 0 ? dc * log(dc) : 0.0) + l_ac[l]) / s : 0.0;
    }
}

INLINE TARGET void run_all(const uint8_t *img, Py_ssize_t stride, Py_ssize_t nr, Py_ssize_t nc,
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
#undef vsqrt
#undef group
#undef run_all
#undef load_row
#undef transpose16
#undef rgb_sums
#undef vector_u32
#undef JOIN
