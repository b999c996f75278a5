// AdamW's update in one pass (the op: plugins/src/optimizers/fused/adamw.rs).
template <typename T>
__device__ void adamw(u64 n, const T* w, const T* g, const T* m, const T* v,
                      T* w_out, T* m_out, T* v_out,
                      T b1, T one_minus_b1, T b2, T one_minus_b2, T cm, T cv, T eps, T lr, T ws) {
    typedef Rn<T> R;
    GRID_STRIDE_LOOP(i, n) {
        const T gi = g[i];
        const T mi = R::add(R::mul(m[i], b1), R::mul(gi, one_minus_b1));
        const T vi = R::add(R::mul(v[i], b2), R::mul(R::mul(gi, gi), one_minus_b2));
        const T d = R::div(R::mul(mi, cm), R::add(R::sqrt(R::mul(vi, cv)), eps));
        w_out[i] = R::sub(R::mul(w[i], ws), R::mul(d, lr));
        m_out[i] = mi;
        v_out[i] = vi;
    }
}
#define ADAMW(NAME, T) \
extern "C" __global__ void NAME(u64 n, const T* w, const T* g, const T* m, const T* v, \
                                T* w_out, T* m_out, T* v_out, T b1, T one_minus_b1, T b2, \
                                T one_minus_b2, T cm, T cv, T eps, T lr, T ws) { \
    adamw<T>(n, w, g, m, v, w_out, m_out, v_out, b1, one_minus_b1, b2, one_minus_b2, cm, cv, \
             eps, lr, ws); \
}
ADAMW(adamw_f32, float)
ADAMW(adamw_f64, double)
