// TriAttention key scores (the op: policies/src/tri_attention/key_scores.rs). One thread per key of a TILE-key tile; each block first
// builds the weights of its rows in shared memory (phases in double precision), then streams its
// tiles' keys through shared memory CHUNK bands at a time.

#define TILE 128
#define CHUNK 16
#define MAX_BANDS 128
#define MAX_ROWS 24
#define WEIGHTS 6144
#define MODE_MEAN 0
#define MODE_MAX 1
#define MODE_NORM 2
#define TAU 6.283185307179586

struct Bf16 { unsigned short bits; };
struct F16 { unsigned short bits; };

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(Bf16 x) { return __uint_as_float(((unsigned int)x.bits) << 16); }
__device__ __forceinline__ float to_float(F16 x) {
    const unsigned int sign = ((unsigned int)x.bits & 0x8000u) << 16;
    const unsigned int exponent = ((unsigned int)x.bits >> 10) & 0x1fu;
    const unsigned int mantissa = (unsigned int)x.bits & 0x3ffu;
    if (exponent == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (mantissa << 13));
    if (exponent == 0u) {
        // Zero or subnormal: mantissa · 2^-24, exact in float.
        const float magnitude = (float)mantissa * 5.9604644775390625e-8f;
        return sign ? -magnitude : magnitude;
    }
    return __uint_as_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// ω·p reduced to [0, 2π) as f64::rem_euclid does (fmod is exact).
__device__ __forceinline__ double phase(double inv_freq, u64 position) {
    const double r = fmod(__dmul_rn(inv_freq, (double)position), TAU);
    return r < 0.0 ? __dadd_rn(r, TAU) : r;
}

// scoring.rs `form_weights`: a(q̄re cos − q̄im sin), a(q̄im cos + q̄re sin).
__device__ __forceinline__ double form_u(double qre, double qim, double c, double s, double a) {
    return __dmul_rn(a, __dsub_rn(__dmul_rn(qre, c), __dmul_rn(qim, s)));
}
__device__ __forceinline__ double form_v(double qre, double qim, double c, double s, double a) {
    return __dmul_rn(a, __dadd_rn(__dmul_rn(qim, c), __dmul_rn(qre, s)));
}

// The block's shared memory, declared once per kernel (a template's own __shared__ arrays would be
// allocated once per instantiation).
struct Shared {
    float (*slab)[2 * CHUNK + 1];
    float* weights;
    double* mean_cos;
    double* mean_sin;
};

template <typename K, int MODE>
__device__ void key_scores(const K* keys, const double* params, float* out, int n, int bands,
                           int group, int offsets, int interleaved, double scaling, u64 position,
                           Shared shared) {
    float (*slab)[2 * CHUNK + 1] = shared.slab;
    float* weights = shared.weights;
    double* mean_cos = shared.mean_cos;
    double* mean_sin = shared.mean_sin;
    const double* inv_freq = params;
    const double* center_re = params + bands;
    const double* center_im = center_re + (u64)group * bands;
    const double* norm_weight = center_im + (u64)group * bands;
    const int tid = threadIdx.x;
    const int head_dim = 2 * bands;
    const int tiles = (n + TILE - 1) / TILE;
    // MODE_MAX: a block serves one query head and its rows are that head's offsets (consecutive
    // blocks serve the heads of one tile, which then meet its keys in L2). Otherwise a block serves
    // every query head, one row each.
    const int head = MODE == MODE_MAX ? (int)(blockIdx.x % group) : 0;
    const int first_tile = MODE == MODE_MAX ? (int)(blockIdx.x / group) : (int)blockIdx.x;
    const int tile_stride = MODE == MODE_MAX ? (int)(gridDim.x / group) : (int)gridDim.x;
    const int rows_total = MODE == MODE_MAX ? offsets : group;
    const int row_floats = MODE == MODE_MAX ? 2 * bands : (MODE == MODE_MEAN ? 3 * bands : bands);
    // MODE_MAX keeps the head's norm weights in front of the rows.
    const int reserved = MODE == MODE_MAX ? bands : 0;
    const int rows_per_pass = min(MAX_ROWS, (WEIGHTS - reserved) / row_floats);

    if (MODE == MODE_MEAN) {
        // The offsets' mean phasor per band, summed in offset order as the host does.
        for (int f = tid; f < bands; f += blockDim.x) {
            double c = 0.0, s = 0.0;
            for (int o = 0; o < offsets; ++o) {
                double sine, cosine;
                sincos(phase(inv_freq[f], position + (1ull << o)), &sine, &cosine);
                c = __dadd_rn(c, cosine);
                s = __dadd_rn(s, sine);
            }
            mean_cos[f] = __ddiv_rn(c, (double)offsets);
            mean_sin[f] = __ddiv_rn(s, (double)offsets);
        }
    }
    if (MODE == MODE_MAX) {
        for (int f = tid; f < bands; f += blockDim.x) weights[f] = (float)norm_weight[(u64)head * bands + f];
    }

    for (int first = 0; first < rows_total; first += rows_per_pass) {
        const int rows = min(rows_per_pass, rows_total - first);
        const bool last_pass = first + rows == rows_total;
        __syncthreads();  // the previous pass no longer reads the weights; mean_cos is written
        for (int i = tid; i < rows * bands; i += blockDim.x) {
            const int r = i / bands, f = i % bands;
            float* w = weights + reserved + r * row_floats;
            if (MODE == MODE_MAX) {
                const u64 at = (u64)head * bands + f;
                double sine, cosine;
                sincos(phase(inv_freq[f], position + (1ull << (first + r))), &sine, &cosine);
                w[f] = (float)form_u(center_re[at], center_im[at], cosine, sine, scaling);
                w[bands + f] = (float)form_v(center_re[at], center_im[at], cosine, sine, scaling);
            } else if (MODE == MODE_MEAN) {
                const u64 at = (u64)(first + r) * bands + f;
                w[f] = (float)form_u(center_re[at], center_im[at], mean_cos[f], mean_sin[f], scaling);
                w[bands + f] = (float)form_v(center_re[at], center_im[at], mean_cos[f], mean_sin[f], scaling);
                w[2 * bands + f] = (float)norm_weight[at];
            } else {
                w[f] = (float)norm_weight[(u64)(first + r) * bands + f];
            }
        }
        __syncthreads();
        for (int t = first_tile; t < tiles; t += tile_stride) {
            const int key = t * TILE + tid;
            float trig[MAX_ROWS], norm[MAX_ROWS];
#pragma unroll
            for (int r = 0; r < MAX_ROWS; ++r) { trig[r] = 0.0f; norm[r] = 0.0f; }
            for (int c0 = 0; c0 < bands; c0 += CHUNK) {
                // Stage bands c0..c0+CHUNK of the tile's keys: Re parts in columns 0..CHUNK, Im
                // parts after; each warp reads one key's coordinates, contiguous in memory.
                for (int e = tid; e < TILE * 2 * CHUNK; e += blockDim.x) {
                    const int k = e / (2 * CHUNK), s = e % (2 * CHUNK);
                    const int band = interleaved ? c0 + s / 2 : c0 + s % CHUNK;
                    const int part = interleaved ? s % 2 : s / CHUNK;
                    const int row_key = t * TILE + k;
                    float x = 0.0f;
                    if (row_key < n && band < bands) {
                        const int coordinate = interleaved ? 2 * band + part : part * bands + band;
                        x = to_float(keys[(u64)row_key * head_dim + coordinate]);
                    }
                    slab[k][part * CHUNK + (band - c0)] = x;
                }
                __syncthreads();
                const int width = min(CHUNK, bands - c0);
                for (int b = 0; b < width; ++b) {
                    const int f = c0 + b;
                    const float re = slab[tid][b], im = slab[tid][CHUNK + b];
                    const float modulus = __fsqrt_rn(__fadd_rn(__fmul_rn(re, re), __fmul_rn(im, im)));
#pragma unroll
                    for (int r = 0; r < MAX_ROWS; ++r) {
                        if (r < rows) {
                            const float* w = weights + reserved + r * row_floats;
                            if (MODE == MODE_NORM) {
                                norm[r] = __fadd_rn(norm[r], __fmul_rn(w[f], modulus));
                            } else {
                                trig[r] = __fadd_rn(trig[r], __fadd_rn(__fmul_rn(w[f], re), __fmul_rn(w[bands + f], im)));
                                if (MODE == MODE_MEAN) norm[r] = __fadd_rn(norm[r], __fmul_rn(w[2 * bands + f], modulus));
                            }
                        }
                    }
                    if (MODE == MODE_MAX && last_pass) norm[0] = __fadd_rn(norm[0], __fmul_rn(weights[f], modulus));
                }
                __syncthreads();
            }
            if (key < n) {
                if (MODE == MODE_MAX) {
                    // Earlier passes left their running maximum in `out`.
                    float best = first == 0 ? __int_as_float(0xff800000) : out[(u64)head * n + key];
#pragma unroll
                    for (int r = 0; r < MAX_ROWS; ++r) {
                        if (r < rows) best = fmaxf(best, trig[r]);
                    }
                    out[(u64)head * n + key] = last_pass ? __fadd_rn(best, norm[0]) : best;
                } else {
#pragma unroll
                    for (int r = 0; r < MAX_ROWS; ++r) {
                        if (r < rows) {
                            out[(u64)(first + r) * n + key] = __fadd_rn(MODE == MODE_MEAN ? trig[r] : 0.0f, norm[r]);
                        }
                    }
                }
            }
        }
    }
}

#define KEY_SCORES(NAME, K)                                                                       \
extern "C" __global__ void NAME(const K* keys, const double* params, float* out, int n,          \
                                int bands, int group, int offsets, int mode, int interleaved,    \
                                double scaling, u64 position) {                                  \
    __shared__ float slab[TILE][2 * CHUNK + 1];                                                   \
    __shared__ float weights[WEIGHTS];                                                            \
    __shared__ double mean_cos[MAX_BANDS];                                                        \
    __shared__ double mean_sin[MAX_BANDS];                                                        \
    const Shared shared = {slab, weights, mean_cos, mean_sin};                                    \
    if (mode == MODE_MEAN)                                                                        \
        key_scores<K, MODE_MEAN>(keys, params, out, n, bands, group, offsets, interleaved,        \
                                 scaling, position, shared);                                      \
    else if (mode == MODE_MAX)                                                                    \
        key_scores<K, MODE_MAX>(keys, params, out, n, bands, group, offsets, interleaved,         \
                                scaling, position, shared);                                       \
    else                                                                                          \
        key_scores<K, MODE_NORM>(keys, params, out, n, bands, group, offsets, interleaved,        \
                                 scaling, position, shared);                                      \
}
KEY_SCORES(tri_key_scores_f32, float)
KEY_SCORES(tri_key_scores_f16, F16)
KEY_SCORES(tri_key_scores_bf16, Bf16)
