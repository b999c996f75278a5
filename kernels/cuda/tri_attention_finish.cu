// TriAttention score finishing (the op: policies/src/tri_attention/normalize.rs): per-row
// statistics, then the reduction.
#define THREADS 256
#define MIN_STD 1e-6

// Mean and clamped deviation of the finite values of row blockIdx.x in [first, last), in f64, and
// whether there were any: stats[3 row .. 3 row + 3].
extern "C" __global__ void tri_row_stats(const float* raw, double* stats, int n, int first, int last) {
    __shared__ double sums[THREADS];
    __shared__ unsigned int counts[THREADS];
    const float* row = raw + (u64)blockIdx.x * n;
    const int tid = threadIdx.x;
    double s = 0.0;
    unsigned int c = 0;
    for (int j = first + tid; j < last; j += THREADS) {
        const float x = row[j];
        if (isfinite(x)) { s = __dadd_rn(s, (double)x); ++c; }
    }
    sums[tid] = s;
    counts[tid] = c;
    __syncthreads();
    for (int stride = THREADS / 2; stride > 0; stride >>= 1) {
        if (tid < stride) {
            sums[tid] = __dadd_rn(sums[tid], sums[tid + stride]);
            counts[tid] += counts[tid + stride];
        }
        __syncthreads();
    }
    const unsigned int count = counts[0];
    const double mean = count ? __ddiv_rn(sums[0], (double)count) : 0.0;
    __syncthreads();
    double v = 0.0;
    for (int j = first + tid; j < last; j += THREADS) {
        const float x = row[j];
        if (isfinite(x)) {
            const double d = __dsub_rn((double)x, mean);
            v = __dadd_rn(v, __dmul_rn(d, d));
        }
    }
    sums[tid] = v;
    __syncthreads();
    for (int stride = THREADS / 2; stride > 0; stride >>= 1) {
        if (tid < stride) sums[tid] = __dadd_rn(sums[tid], sums[tid + stride]);
        __syncthreads();
    }
    if (tid == 0) {
        double* out = stats + 3 * (u64)blockIdx.x;
        out[0] = mean;
        out[1] = count ? fmax(__dsqrt_rn(__ddiv_rn(sums[0], (double)count)), MIN_STD) : 1.0;
        out[2] = count ? 1.0 : 0.0;
    }
}

// Per entry: the rows' z-scores (raw values where normalisation is off or a row had no finite
// candidate), reduced by mean (summed in row order from -0, then divided) or max, plus the noise.
extern "C" __global__ void tri_finish(const float* raw, const double* stats, const float* noise,
                                      float* out, int n, int group, int normalize, int mean) {
    for (u64 j = blockIdx.x * (u64)blockDim.x + threadIdx.x; j < (u64)n; j += (u64)blockDim.x * gridDim.x) {
        float acc = mean ? -0.0f : __int_as_float(0xff800000);
        for (int h = 0; h < group; ++h) {
            float x = raw[(u64)h * n + j];
            const double* s = stats + 3 * h;
            if (normalize && s[2] != 0.0) x = (float)__ddiv_rn(__dsub_rn((double)x, s[0]), s[1]);
            acc = mean ? __fadd_rn(acc, x) : fmaxf(acc, x);
        }
        if (mean) acc = __fdiv_rn(acc, (float)group);
        out[j] = __fadd_rn(acc, noise[j]);
    }
}
