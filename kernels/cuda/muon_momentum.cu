// Muon's momentum in one pass (the op: plugins/src/optimizers/fused/muon_momentum.rs).
#define BLOCK 256
// Writes b' (and d' with Nesterov) and each block's Σ d'² (f64) to partial[blockIdx.x]. The grid
// depends only on n, so the sum's rounding is the same on every run.
template <typename T>
__device__ void muon_momentum(u64 n, const T* b, const T* g, T* b_out, T* d_out, double* partial,
                              T mu, T one_minus_mu, int nesterov) {
    typedef Rn<T> R;
    double sum_sq = 0.0;
    GRID_STRIDE_LOOP(i, n) {
        const T gi = R::mul(g[i], one_minus_mu);
        const T bi = R::add(R::mul(b[i], mu), gi);
        b_out[i] = bi;
        T di = bi;
        if (nesterov) {
            di = R::add(gi, R::mul(bi, mu));
            d_out[i] = di;
        }
        sum_sq = __dadd_rn(sum_sq, __dmul_rn((double)di, (double)di));
    }
    __shared__ double warp_sums[BLOCK / 32];
    for (int offset = 16; offset > 0; offset >>= 1)
        sum_sq = __dadd_rn(sum_sq, __shfl_down_sync(0xffffffffu, sum_sq, offset));
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = sum_sq;
    __syncthreads();
    if (threadIdx.x < 32) {
        sum_sq = threadIdx.x < BLOCK / 32 ? warp_sums[threadIdx.x] : 0.0;
        for (int offset = 16; offset > 0; offset >>= 1)
            sum_sq = __dadd_rn(sum_sq, __shfl_down_sync(0xffffffffu, sum_sq, offset));
        if (threadIdx.x == 0) partial[blockIdx.x] = sum_sq;
    }
}
#define MUON_MOMENTUM(NAME, T) \
extern "C" __global__ void __launch_bounds__(BLOCK) NAME(u64 n, const T* b, const T* g, T* b_out, \
        T* d_out, double* partial, T mu, T one_minus_mu, int nesterov) { \
    muon_momentum<T>(n, b, g, b_out, d_out, partial, mu, one_minus_mu, nesterov); \
}
MUON_MOMENTUM(muon_momentum_f32, float)
MUON_MOMENTUM(muon_momentum_f64, double)
