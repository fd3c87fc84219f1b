"""The fixed CUDA C prelude every generated translation unit starts with.

Plain CUDA C++: only <cuda_fp16.h>, <cuda_bf16.h> and <stdint.h>, no torch, so the kernel part
compiles alone with `nvcc -c`. Half/bfloat16 conversions use the explicit intrinsics
(`__half2float`, `__float2half_rn`), because PyTorch's extension builds define
__CUDA_NO_HALF_CONVERSIONS__ and friends. Math helpers come in float and double overloads
(non-fast-math `expf` etc., as PyTorch's CUDA kernels use) and templates for integer types;
`kmax`/`kmin` propagate NaN like torch.maximum/clamp. Guarded, so several generated kernels can
share one translation unit.
"""

PRELUDE = r"""#ifndef KILN_CUDA_PRELUDE
#define KILN_CUDA_PRELUDE
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>

namespace kiln {

#define KILN_MATH1(name, f32, f64) \
  __device__ __forceinline__ float name(float x) { return f32(x); } \
  __device__ __forceinline__ double name(double x) { return f64(x); }
KILN_MATH1(k_exp, expf, exp)
KILN_MATH1(k_log, logf, log)
KILN_MATH1(k_log1p, log1pf, log1p)
KILN_MATH1(k_sqrt, sqrtf, sqrt)
KILN_MATH1(k_rsqrt, rsqrtf, rsqrt)
KILN_MATH1(k_sin, sinf, sin)
KILN_MATH1(k_cos, cosf, cos)
KILN_MATH1(k_tanh, tanhf, tanh)
KILN_MATH1(k_erf, erff, erf)
KILN_MATH1(k_exp2, exp2f, exp2)
KILN_MATH1(k_expm1, expm1f, expm1)
#undef KILN_MATH1

__device__ __forceinline__ float k_pow(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double k_pow(double x, double y) { return pow(x, y); }
__device__ __forceinline__ float k_atan2(float x, float y) { return atan2f(x, y); }
__device__ __forceinline__ double k_atan2(double x, double y) { return atan2(x, y); }

// floor/ceil/trunc/abs: identity (abs: negation) on integers, libm on floats
template <typename T> __device__ __forceinline__ T k_floor(T x) { return x; }
template <typename T> __device__ __forceinline__ T k_ceil(T x) { return x; }
template <typename T> __device__ __forceinline__ T k_trunc(T x) { return x; }
template <typename T> __device__ __forceinline__ T k_abs(T x) { return x < (T)0 ? (T)-x : x; }
__device__ __forceinline__ float k_floor(float x) { return floorf(x); }
__device__ __forceinline__ double k_floor(double x) { return floor(x); }
__device__ __forceinline__ float k_ceil(float x) { return ceilf(x); }
__device__ __forceinline__ double k_ceil(double x) { return ceil(x); }
__device__ __forceinline__ float k_trunc(float x) { return truncf(x); }
__device__ __forceinline__ double k_trunc(double x) { return trunc(x); }
__device__ __forceinline__ float k_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double k_abs(double x) { return fabs(x); }
__device__ __forceinline__ bool k_abs(bool x) { return x; }

// NaN-propagating max/min (x != x only for NaN; folds away for integers)
template <typename T> __device__ __forceinline__ T kmax(T a, T b) { return (a != a || a > b) ? a : b; }
template <typename T> __device__ __forceinline__ T kmin(T a, T b) { return (a != a || a < b) ? a : b; }
template <typename T> __device__ __forceinline__ T sign(T x) { return (T)(((T)0 < x) - (x < (T)0)); }

// activations, in PyTorch's formulation (opmath type T: float or double)
template <typename T> __device__ __forceinline__ T sigmoid(T x) { return (T)1 / ((T)1 + k_exp(-x)); }
template <typename T> __device__ __forceinline__ T silu(T x) { return x / ((T)1 + k_exp(-x)); }
template <typename T> __device__ __forceinline__ T gelu(T x) {
  return x * (T)0.5 * ((T)1 + k_erf(x * (T)0.70710678118654752440));
}
template <typename T> __device__ __forceinline__ T gelu_tanh(T x) {
  return (T)0.5 * x * ((T)1 + k_tanh((T)0.79788456080286535588 * (x + (T)0.044715 * x * x * x)));
}

// N elements moved as one aligned vector access (16- or 32-byte loads/stores)
template <typename T, int N> struct alignas(sizeof(T) * N) vec { T v[N]; };

// reduction identities and combiners (accumulators are float, double or int64_t)
template <typename T> __device__ __forceinline__ T lowest();
template <typename T> __device__ __forceinline__ T highest();
template <> __device__ __forceinline__ float lowest<float>() { return -__int_as_float(0x7f800000); }
template <> __device__ __forceinline__ float highest<float>() { return __int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double lowest<double>() { return -__longlong_as_double(0x7ff0000000000000LL); }
template <> __device__ __forceinline__ double highest<double>() { return __longlong_as_double(0x7ff0000000000000LL); }
template <> __device__ __forceinline__ int64_t lowest<int64_t>() { return INT64_MIN; }
template <> __device__ __forceinline__ int64_t highest<int64_t>() { return INT64_MAX; }
struct add_op { template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; } };
struct max_op { template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return kmax(a, b); } };
struct min_op { template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return kmin(a, b); } };

// Block-wide reduction (blockDim.x a multiple of 32, at most 1024): warp shuffles, one partial per
// warp in shared memory, warp 0 folds the partials. The result is valid in thread 0; the closing
// barrier lets the caller reuse `shm` for the next row.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T init, T* shm) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shm[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = (threadIdx.x < (blockDim.x >> 5)) ? shm[lane] : init;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, o));
  }
  __syncthreads();
  return v;
}

}  // namespace kiln
#endif  // KILN_CUDA_PRELUDE

"""
