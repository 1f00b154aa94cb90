// Batch-invariant GEMM for the CPU (see kernels/matmul.py for the contract).
//
// Reduction order, the one thing that matters: every output element is
//     acc = 0; for k = 0, 1, ..., K-1: acc = fma(A[m,k], B[k,n], acc)
// in fp32, one correctly rounded fused multiply-add per k, in increasing k. Nothing
// else touches acc until it is rounded once into the output. The order is fixed by
// K alone: register blocking, cache blocking over K (the partial acc is parked in
// an fp32 buffer and picked up again, which is exact), the vector width, edge tiles
// and OpenMP's split of the output tiles all leave it unchanged, because we
// vectorise over output columns n (each SIMD lane is a different element) and never
// across k. An FMA is one rounding in every ISA, so AVX-512, AVX2 and the scalar
// fallback (std::fma) give the same bits for the same element.
//
// bf16/fp16 operands are widened to fp32 while packing (exact); the output is rounded
// to the output dtype once, after the epilogue (alpha * acc + beta * bias, in fp32).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace {

// ---- micro-kernel: MR rows x NR cols of C, a sequential FMA chain over k per element
#if defined(__AVX512F__)
constexpr int MR = 8, NR = 32, VL = 16;
using vec = __m512;
inline vec vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, vec v) { _mm512_storeu_ps(p, v); }
inline vec vbcast(float x) { return _mm512_set1_ps(x); }
inline vec vzero() { return _mm512_setzero_ps(); }
inline vec vfma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int MR = 6, NR = 16, VL = 8;
using vec = __m256;
inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, vec v) { _mm256_storeu_ps(p, v); }
inline vec vbcast(float x) { return _mm256_set1_ps(x); }
inline vec vzero() { return _mm256_setzero_ps(); }
inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
#else
constexpr int MR = 4, NR = 8, VL = 1;
using vec = float;
inline vec vload(const float* p) { return *p; }
inline void vstore(float* p, vec v) { *p = v; }
inline vec vbcast(float x) { return x; }
inline vec vzero() { return 0.0f; }
inline vec vfma(vec a, vec b, vec c) { return std::fma(a, b, c); }
#endif
constexpr int NV = NR / VL;

// Cache blocking. KC bounds the packed B micro-panel (KC x NR fp32) to stay in L1/L2;
// MC x KC of packed A stays in L2; KC x NC of packed B in L2/L3. None of these change
// an element's reduction order (see the top of the file).
constexpr int64_t KC = 256;
constexpr int64_t MC = MR * 16;
constexpr int64_t NC = NR * 128;

// C[MR x NR] (row stride ldc) (+)= Ap[kc x MR] . Bp[kc x NR]
inline void micro_kernel(int64_t kc, const float* __restrict Ap, const float* __restrict Bp,
                         float* __restrict C, int64_t ldc, bool first) {
  vec acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) acc[i][j] = first ? vzero() : vload(C + i * ldc + j * VL);
  for (int64_t k = 0; k < kc; ++k) {
    vec b[NV];
    for (int j = 0; j < NV; ++j) b[j] = vload(Bp + k * NR + j * VL);
    for (int i = 0; i < MR; ++i) {
      const vec a = vbcast(Ap[k * MR + i]);
      for (int j = 0; j < NV; ++j) acc[i][j] = vfma(a, b[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) vstore(C + i * ldc + j * VL, acc[i][j]);
}

// Edge tile (mr < MR or nr < NR): run the same micro-kernel on a padded local tile.
// Padding rows/cols of Ap/Bp are zero; they only feed padding elements of the tile.
inline void micro_kernel_edge(int64_t kc, const float* Ap, const float* Bp, float* C, int64_t ldc,
                              int64_t mr, int64_t nr, bool first) {
  alignas(64) float tile[MR * NR];
  if (!first) {
    std::memset(tile, 0, sizeof(tile));
    for (int64_t i = 0; i < mr; ++i) std::memcpy(tile + i * NR, C + i * ldc, nr * sizeof(float));
  }
  micro_kernel(kc, Ap, Bp, tile, NR, first);
  for (int64_t i = 0; i < mr; ++i) std::memcpy(C + i * ldc, tile + i * NR, nr * sizeof(float));
}

template <typename T>
inline float to_f32(T x) { return static_cast<float>(x); }

// Ap[ir panel][k][MR] <- A[m0 + ir*MR + i, k0 + k], zero padded past mc.
template <typename T>
void pack_a(const T* A, int64_t sam, int64_t sak, int64_t m0, int64_t mc, int64_t k0, int64_t kc, float* Ap) {
  for (int64_t ir = 0; ir < mc; ir += MR) {
    float* dst = Ap + ir * kc;
    const int64_t mr = std::min<int64_t>(MR, mc - ir);
    for (int64_t i = 0; i < MR; ++i) {
      if (i >= mr) {
        for (int64_t k = 0; k < kc; ++k) dst[k * MR + i] = 0.0f;
        continue;
      }
      const T* src = A + (m0 + ir + i) * sam + k0 * sak;
      for (int64_t k = 0; k < kc; ++k) dst[k * MR + i] = to_f32(src[k * sak]);
    }
  }
}

// One NR-wide panel: Bp[k][NR] <- B[k0 + k, n0 + j], zero padded past nr.
template <typename T>
void pack_b_panel(const T* B, int64_t sbk, int64_t sbn, int64_t k0, int64_t kc, int64_t n0, int64_t nr, float* Bp) {
  if (sbn == 1) {
    for (int64_t k = 0; k < kc; ++k) {
      const T* src = B + (k0 + k) * sbk + n0;
      float* dst = Bp + k * NR;
      int64_t j = 0;
      for (; j < nr; ++j) dst[j] = to_f32(src[j]);
      for (; j < NR; ++j) dst[j] = 0.0f;
    }
  } else {  // k-contiguous (b = W.t()): walk each column along k
    for (int64_t j = 0; j < NR; ++j) {
      if (j >= nr) {
        for (int64_t k = 0; k < kc; ++k) Bp[k * NR + j] = 0.0f;
        continue;
      }
      const T* src = B + k0 * sbk + (n0 + j) * sbn;
      for (int64_t k = 0; k < kc; ++k) Bp[k * NR + j] = to_f32(src[k * sbk]);
    }
  }
}

// C[M x N] fp32 (row stride ldc) = A[M x K] . B[K x N]; A, B any strides.
template <typename T>
void gemm_f32acc(const T* A, int64_t sam, int64_t sak, const T* B, int64_t sbk, int64_t sbn,
                 float* C, int64_t ldc, int64_t M, int64_t N, int64_t K) {
  const int64_t mc_max = std::min<int64_t>(MC, (M + MR - 1) / MR * MR);
  const int64_t nc_max = std::min<int64_t>(NC, (N + NR - 1) / NR * NR);
  const int64_t kc_max = std::min<int64_t>(KC, K);
  std::vector<float> Bp_buf(static_cast<size_t>(nc_max * kc_max) + 16);
  std::vector<float> Ap_buf(static_cast<size_t>(mc_max * kc_max) + 16);
  float* Bp = Bp_buf.data();
  float* Ap = Ap_buf.data();
  const int nthreads = omp_get_max_threads();

#pragma omp parallel num_threads(nthreads)
  for (int64_t jc = 0; jc < N; jc += NC) {
    const int64_t nc = std::min<int64_t>(NC, N - jc);
    const int64_t npanels = (nc + NR - 1) / NR;
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = std::min<int64_t>(KC, K - pc);
      const bool first = pc == 0;
#pragma omp for schedule(static)
      for (int64_t jr = 0; jr < npanels; ++jr)
        pack_b_panel(B, sbk, sbn, pc, kc, jc + jr * NR, std::min<int64_t>(NR, nc - jr * NR), Bp + jr * NR * kc);
      for (int64_t ic = 0; ic < M; ic += MC) {
        const int64_t mc = std::min<int64_t>(MC, M - ic);
        const int64_t mpanels = (mc + MR - 1) / MR;
#pragma omp for schedule(static)
        for (int64_t ir = 0; ir < mpanels; ++ir)
          pack_a(A, sam, sak, ic + ir * MR, std::min<int64_t>(MR, mc - ir * MR), pc, kc, Ap + ir * MR * kc);
#pragma omp for collapse(2) schedule(static)
        for (int64_t jr = 0; jr < npanels; ++jr) {
          for (int64_t ir = 0; ir < mpanels; ++ir) {
            const int64_t mr = std::min<int64_t>(MR, mc - ir * MR);
            const int64_t nr = std::min<int64_t>(NR, nc - jr * NR);
            float* c = C + (ic + ir * MR) * ldc + jc + jr * NR;
            const float* ap = Ap + ir * MR * kc;
            const float* bp = Bp + jr * NR * kc;
            if (mr == MR && nr == NR) micro_kernel(kc, ap, bp, c, ldc, first);
            else micro_kernel_edge(kc, ap, bp, c, ldc, mr, nr, first);
          }
        }
      }
    }
  }
}

void check_2d(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2, "mm_gemm: expected 2-D operands");
  TORCH_CHECK(a.size(1) == b.size(0), "mm_gemm: inner dimensions differ");
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "mm_gemm: dtypes differ");
  TORCH_CHECK(a.device().is_cpu() && b.device().is_cpu(), "mm_gemm: CPU tensors expected");
}

// out[m, n] = round(alpha * acc[m, n] + beta * bias[m, n]) (terms dropped when alpha == 1
// or there is no bias); written in place of acc for fp32, else into out.
template <typename T>
void epilogue(const float* acc, int64_t M, int64_t N, const std::optional<at::Tensor>& bias, float beta,
              float alpha, T* out) {
  const bool has_bias = bias.has_value() && beta != 0.0f;
  const T* bp = has_bias ? bias->data_ptr<T>() : nullptr;
  const int64_t sbm = has_bias ? bias->stride(0) : 0, sbn = has_bias ? bias->stride(1) : 0;
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      float v = acc[m * N + n];
      if (alpha != 1.0f) v = alpha * v;
      if (has_bias) {
        const float bv = static_cast<float>(bp[m * sbm + n * sbn]);
        v = v + (beta == 1.0f ? bv : beta * bv);
      }
      out[m * N + n] = static_cast<T>(v);
    }
  }
}

template <typename T>
void gemm_into(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias, float beta,
               float alpha, at::Tensor& out) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  float* acc;
  at::Tensor ws;
  if constexpr (std::is_same_v<T, float>) {
    acc = out.data_ptr<float>();
  } else {
    ws = at::empty({M, N}, a.options().dtype(at::kFloat));
    acc = ws.data_ptr<float>();
  }
  gemm_f32acc<T>(a.data_ptr<T>(), a.stride(0), a.stride(1), b.data_ptr<T>(), b.stride(0), b.stride(1), acc, N,
                 M, N, K);
  const bool trivial = alpha == 1.0f && !(bias.has_value() && beta != 0.0f);
  if (!(trivial && std::is_same_v<T, float>)) epilogue<T>(acc, M, N, bias, beta, alpha, out.data_ptr<T>());
}

// mm_gemm: a [M, K] @ b [K, N] (any strides) -> [M, N] contiguous, dtype of a.
// bias, when given, is already broadcast to [M, N] (any strides, stride 0 allowed).
at::Tensor mm_gemm(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias, double beta,
                   double alpha) {
  check_2d(a, b);
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 2 && bias->size(0) == a.size(0) && bias->size(1) == b.size(1) &&
                    bias->scalar_type() == a.scalar_type(),
                "mm_gemm: bias must be [M, N] of the operands' dtype");
  }
  const float fb = static_cast<float>(beta), fa = static_cast<float>(alpha);
  switch (a.scalar_type()) {
    case at::kFloat: gemm_into<float>(a, b, bias, fb, fa, out); break;
    case at::kBFloat16: gemm_into<at::BFloat16>(a, b, bias, fb, fa, out); break;
    case at::kHalf: gemm_into<at::Half>(a, b, bias, fb, fa, out); break;
    default: TORCH_CHECK(false, "mm_gemm: unsupported dtype ", a.scalar_type());
  }
  return out;
}

// mm_bgemm: a [B, M, K] @ b [B, K, N] -> [B, M, N]; each batch element is one mm_gemm.
at::Tensor mm_bgemm(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0), "mm_bgemm: expected [B,M,K], [B,K,N]");
  at::Tensor out = at::empty({a.size(0), a.size(1), b.size(2)}, a.options());
  for (int64_t i = 0; i < a.size(0); ++i) {
    at::Tensor o = out.select(0, i);
    const at::Tensor ai = a.select(0, i), bi = b.select(0, i);
    check_2d(ai, bi);
    switch (a.scalar_type()) {
      case at::kFloat: gemm_into<float>(ai, bi, std::nullopt, 0.f, 1.f, o); break;
      case at::kBFloat16: gemm_into<at::BFloat16>(ai, bi, std::nullopt, 0.f, 1.f, o); break;
      case at::kHalf: gemm_into<at::Half>(ai, bi, std::nullopt, 0.f, 1.f, o); break;
      default: TORCH_CHECK(false, "mm_bgemm: unsupported dtype ", a.scalar_type());
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(exact_kernels, m) {
  m.def("mm_gemm(Tensor a, Tensor b, Tensor? bias, float beta, float alpha) -> Tensor");
  m.def("mm_bgemm(Tensor a, Tensor b) -> Tensor");
}

TORCH_LIBRARY_IMPL(exact_kernels, CPU, m) {
  m.impl("mm_gemm", &mm_gemm);
  m.impl("mm_bgemm", &mm_bgemm);
}
