// SnapKV vote + pooling (the op: policies/src/snap_kv_votes.rs).
#define THREADS 256
#define NEG_INF __int_as_float(0xff800000)

// Row blockIdx.x = member · window + i: the maximum of its visible logits (NaN ignored, as f32::max
// does) and the sum of exp(l - max) over them: stats[2 row], stats[2 row + 1].
extern "C" __global__ void snap_row_stats(const float* logits, const int* visible, float* stats,
                                          int n, int window) {
    __shared__ float partial[THREADS];
    const int tid = threadIdx.x;
    const float* row = logits + (u64)blockIdx.x * n;
    const int seen = visible[blockIdx.x % window];
    float m = NEG_INF;
    for (int j = tid; j < seen; j += THREADS) m = fmaxf(m, row[j]);
    partial[tid] = m;
    __syncthreads();
    for (int stride = THREADS / 2; stride > 0; stride >>= 1) {
        if (tid < stride) partial[tid] = fmaxf(partial[tid], partial[tid + stride]);
        __syncthreads();
    }
    const float max = partial[0];
    __syncthreads();
    float s = 0.0f;
    if (max != NEG_INF) {
        for (int j = tid; j < seen; j += THREADS) s = __fadd_rn(s, expf(__fsub_rn(row[j], max)));
    }
    partial[tid] = s;
    __syncthreads();
    for (int stride = THREADS / 2; stride > 0; stride >>= 1) {
        if (tid < stride) partial[tid] = __fadd_rn(partial[tid], partial[tid + stride]);
        __syncthreads();
    }
    if (tid == 0) {
        stats[2 * (u64)blockIdx.x] = max;
        stats[2 * (u64)blockIdx.x + 1] = partial[0];
    }
}

// Entry j of the prefix: each member's softmax weights summed over the window queries in order
// (0 / sum for a query that does not see j; nothing from a row without a finite maximum), then the
// members reduced by mean (summed from -0 in order, divided) or max.
extern "C" __global__ void snap_votes(const float* logits, const int* visible, const float* stats,
                                      float* votes, int n, int window, int group, int prefix, int mean) {
    for (u64 j = blockIdx.x * (u64)blockDim.x + threadIdx.x; j < (u64)prefix; j += (u64)blockDim.x * gridDim.x) {
        float reduced = mean ? -0.0f : NEG_INF;
        for (int h = 0; h < group; ++h) {
            float v = 0.0f;
            for (int i = 0; i < window; ++i) {
                const u64 row = (u64)h * window + i;
                const float max = stats[2 * row], sum = stats[2 * row + 1];
                if (max == NEG_INF) continue;
                const float w = j < (u64)visible[i] ? expf(__fsub_rn(logits[row * n + j], max)) : 0.0f;
                v = __fadd_rn(v, __fdiv_rn(w, sum));
            }
            reduced = mean ? __fadd_rn(reduced, v) : fmaxf(reduced, v);
        }
        votes[j] = mean ? __fdiv_rn(reduced, (float)group) : reduced;
    }
}

// Stride-1 pooling over the prefix with zero padding (avg: the window's sum from -0 in order over the
// kernel size; max: NaN wins), +inf for the window entries.
extern "C" __global__ void snap_pool(const float* votes, float* out, int n, int prefix, int kernel, int avg) {
    const int half = kernel / 2;
    for (u64 j = blockIdx.x * (u64)blockDim.x + threadIdx.x; j < (u64)n; j += (u64)blockDim.x * gridDim.x) {
        if (j >= (u64)prefix) { out[j] = __int_as_float(0x7f800000); continue; }
        const int first = (int)j - half > 0 ? (int)j - half : 0;
        const int last = (int)j + half + 1 < prefix ? (int)j + half + 1 : prefix;
        float acc = avg ? -0.0f : NEG_INF;
        for (int k = first; k < last; ++k) {
            const float x = votes[k];
            if (avg) acc = __fadd_rn(acc, x);
            else acc = (isnan(x) || isnan(acc)) ? __int_as_float(0x7fc00000) : fmaxf(acc, x);
        }
        out[j] = avg ? __fdiv_rn(acc, (float)kernel) : acc;
    }
}
