// keep_top_k per head (the op: core/src/ops/top_k.rs): one block per row.
#define THREADS 1024

__device__ __forceinline__ unsigned int rank_of(float s) {
    const unsigned int bits = isnan(s) ? 0xff800000u : __float_as_uint(s);
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Exclusive prefix sum of one value per thread, in thread order.
__device__ unsigned int exclusive_scan(unsigned int v, unsigned int* buffer) {
    const int tid = threadIdx.x;
    buffer[tid] = v;
    __syncthreads();
    for (int offset = 1; offset < THREADS; offset <<= 1) {
        const unsigned int add = tid >= offset ? buffer[tid - offset] : 0u;
        __syncthreads();
        buffer[tid] += add;
        __syncthreads();
    }
    const unsigned int inclusive = buffer[tid];
    __syncthreads();
    return inclusive - v;
}

extern "C" __global__ void keep_top_k(const float* scores, unsigned int* out, int n, int sinks,
                                      int window, int budget) {
    __shared__ unsigned int histogram[256];
    __shared__ unsigned int scan[THREADS];
    __shared__ unsigned int chosen[3];
    const int tid = threadIdx.x;
    const float* row = scores + (u64)blockIdx.x * n;
    unsigned int* kept = out + (u64)blockIdx.x * budget;
    const int rest_end = n - window;
    const int fill = budget - sinks - window;
    unsigned int prefix = 0u, mask = 0u, taken = (unsigned int)fill, ties = 0u;
    if (fill > 0) {
        for (int shift = 24; shift >= 0; shift -= 8) {
            if (tid < 256) histogram[tid] = 0u;
            __syncthreads();
            // Every thread runs the same iterations, so that whole warps meet in __match_any_sync:
            // lanes with one digit add their count with a single atomic.
            for (int base = sinks; base < rest_end; base += THREADS) {
                const int j = base + tid;
                const unsigned int image = j < rest_end ? rank_of(row[j]) : 0u;
                const bool counted = j < rest_end && (image & mask) == prefix;
                const unsigned int digit = counted ? (image >> shift) & 255u : 256u;
                const unsigned int peers = __match_any_sync(0xffffffffu, digit);
                if (counted && __ffs(peers) - 1 == (tid & 31)) atomicAdd(&histogram[digit], (unsigned int)__popc(peers));
            }
            __syncthreads();
            if (tid == 0) {
                unsigned int remaining = taken;
                for (int d = 255; d >= 0; --d) {
                    if (histogram[d] >= remaining) {
                        chosen[0] = prefix | ((unsigned int)d << shift);
                        chosen[2] = histogram[d];
                        break;
                    }
                    remaining -= histogram[d];
                }
                chosen[1] = remaining;
            }
            __syncthreads();
            prefix = chosen[0];
            taken = chosen[1];
            ties = chosen[2];
            mask |= 255u << shift;
        }
    }
    // Candidates above the threshold are kept; of those equal to it, the `taken` newest. Each thread
    // walks one contiguous segment, so prefix sums over threads follow index order.
    const int segment = (n + THREADS - 1) / THREADS;
    const int begin = min(n, tid * segment);
    const int end = min(n, begin + segment);
    unsigned int local_ties = 0u;
    if (fill > 0) {
        for (int j = max(begin, sinks); j < min(end, rest_end); ++j) local_ties += rank_of(row[j]) == prefix;
    }
    unsigned int seen = exclusive_scan(local_ties, scan);
    unsigned int local_kept = 0u;
    for (int pass = 0; pass < 2; ++pass) {
        unsigned int tie = seen, at = 0u;
        if (pass == 1) at = exclusive_scan(local_kept, scan);
        for (int j = begin; j < end; ++j) {
            bool keep = j < sinks || j >= rest_end;
            if (!keep && fill > 0) {
                const unsigned int image = rank_of(row[j]);
                if (image == prefix) {
                    ++tie;
                    keep = ties - tie < taken;
                } else {
                    keep = image > prefix;
                }
            }
            if (keep) {
                if (pass == 0) ++local_kept;
                else kept[at++] = (unsigned int)j;
            }
        }
    }
}
